//! Connection handling and operations: `maxConnections` shedding, the header read timeout,
//! keep-alive reuse, the admin endpoints, and draining on shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod server_common;

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use server_common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn connections_beyond_the_limit_get_503_overloaded() {
    let upstream = Upstream::ok().await;
    let proxy = TestProxy::start(&pat_config(
        upstream.addr,
        Some("ghp_testpat"),
        "  maxConnections: 1\n",
    ))
    .await;
    // Hold the one slot with a kept-alive connection that has completed a request.
    let stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let (mut held, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get("/rate_limit")
        .header("host", proxy.addr.to_string())
        .body(full(Bytes::new()))
        .unwrap();
    let r = held.send_request(req).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.into_body().collect().await.unwrap();

    let text = raw_exchange(
        proxy.addr,
        format!("GET /rate_limit HTTP/1.1\r\nHost: {}\r\n\r\n", proxy.addr).as_bytes(),
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(text.contains("\"reason\":\"overloaded\""), "{text}");
    assert!(text.contains("x-credential-reason: overloaded"), "{text}");
    let shed_id = text
        .lines()
        .find_map(|l| l.strip_prefix("x-request-id: "))
        .unwrap()
        .trim()
        .to_owned();

    // The held connection still works, and once it closes a new one is accepted.
    let req = Request::get("/rate_limit")
        .header("host", proxy.addr.to_string())
        .body(full(Bytes::new()))
        .unwrap();
    assert_eq!(
        held.send_request(req).await.unwrap().status(),
        StatusCode::OK
    );
    drop(held);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let text = raw_exchange(
            proxy.addr,
            format!(
                "GET /rate_limit HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                proxy.addr
            )
            .as_bytes(),
        )
        .await;
        if text.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The shed request has its audit record too (§7.3: every request), under the id it was sent.
    let records = proxy.stop().await;
    let shed = records
        .iter()
        .find(|r| r["request_id"] == shed_id.as_str())
        .unwrap_or_else(|| panic!("no record for shed request {shed_id}: {records:?}"));
    assert_eq!(shed["method"], "GET");
    assert_eq!(shed["path"], "/rate_limit");
    assert_eq!(shed["credential"], "none");
    assert_eq!(shed["reason"], "overloaded");
    assert_eq!(shed["status"], 503);
    assert_eq!(shed["outcome"], "refused");
    assert!(shed["upstream_status"].is_null());
}

#[tokio::test]
async fn slow_request_head_is_disconnected() {
    let upstream = Upstream::ok().await;
    let proxy = TestProxy::start(&pat_config(
        upstream.addr,
        Some("ghp_testpat"),
        "  headerReadTimeoutMs: 200\n",
    ))
    .await;
    let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"GET /rate_limit HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut buf))
        .await
        .expect("not disconnected")
        .ok();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(upstream.seen().is_empty());
    proxy.stop().await;
}

#[tokio::test]
async fn keep_alive_connection_serves_many_requests() {
    let upstream = Upstream::ok().await;
    let proxy = TestProxy::start(&pat_config(upstream.addr, Some("ghp_testpat"), "")).await;
    let stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    for _ in 0..20 {
        let req = Request::get("/repos/acme/widgets")
            .header("host", proxy.addr.to_string())
            .body(full(Bytes::new()))
            .unwrap();
        let r = sender.send_request(req).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        r.into_body().collect().await.unwrap();
    }
    // Upstream connections are pooled: sequential requests reuse one.
    assert_eq!(
        upstream
            .connections
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    let records = proxy.stop().await;
    assert_eq!(records.len(), 20);
    let mut ids: Vec<_> = records.iter().map(|r| r["request_id"].clone()).collect();
    ids.dedup();
    assert_eq!(ids.len(), 20);
}

#[tokio::test]
async fn admin_endpoints_and_draining() {
    let (release_tx, release_rx) = tokio::sync::watch::channel(false);
    let upstream = Upstream::start(move |req| {
        let mut release = release_rx.clone();
        async move {
            if req.uri().path().contains("slow") {
                let _ = release.wait_for(|v| *v).await;
            }
            Response::builder()
                .header("x-ratelimit-remaining", "4321")
                .header("x-ratelimit-resource", "core")
                .body(full("{}"))
                .unwrap()
        }
    })
    .await;
    let mut proxy = TestProxy::start(&pat_config(
        upstream.addr,
        Some("ghp_testpat"),
        "  shutdownGraceSeconds: 20\n",
    ))
    .await;
    assert_eq!(proxy.admin_get("/healthz").await.status(), StatusCode::OK);
    assert_eq!(proxy.admin_get("/readyz").await.status(), StatusCode::OK);
    assert_eq!(
        proxy.get("/repos/acme/widgets").await.status(),
        StatusCode::OK
    );
    let metrics = proxy.admin_get("/metrics").await;
    let text = String::from_utf8(metrics.body().to_vec()).unwrap();
    assert!(
        text.contains("gh_token_proxy_requests_total{credential=\"pat\",reason=\"no_app\",status_class=\"2xx\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("gh_token_proxy_request_duration_seconds_count 1"),
        "{text}"
    );
    assert!(text.contains("gh_token_proxy_rate_limit_remaining{credential=\"pat\",app_id=\"\",installation_id=\"\",resource=\"core\"} 4321"), "{text}");
    assert!(text.contains("# TYPE gh_token_proxy_token_mints_total counter"));
    assert!(text.contains("# TYPE gh_token_proxy_token_cache_lookups_total counter"));

    // An exchange in flight when shutdown begins still completes.
    let addr = proxy.addr;
    let in_flight = tokio::spawn(async move {
        send_to(
            addr,
            Request::get("/repos/acme/slow")
                .header("host", addr.to_string())
                .body(full(Bytes::new()))
                .unwrap(),
        )
        .await
    });
    let seen = upstream.seen.clone();
    wait_until(|| seen.lock().unwrap().iter().any(|s| s.uri.contains("slow"))).await;
    proxy.begin_stop();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if proxy.admin_get("/readyz").await.status() == StatusCode::SERVICE_UNAVAILABLE {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // New connections are refused while draining.
    assert!(tokio::net::TcpStream::connect(proxy.addr).await.is_err());
    release_tx.send(true).unwrap();
    let (response, _) = tokio::time::timeout(WAIT, in_flight)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let records = proxy.stop().await;
    assert_eq!(records.len(), 2);
    assert_eq!(records[1]["path"], "/repos/acme/slow");
    assert_eq!(records[1]["outcome"], "ok");
}

/// Upstream that closes every connection after one response, with `Connection: close`.
#[tokio::test]
async fn upstream_closing_each_connection_still_serves_every_request() {
    let upstream = Upstream::start(|_req| async {
        Response::builder()
            .header("connection", "close")
            .body(full("{}"))
            .unwrap()
    })
    .await;
    let proxy = TestProxy::start(&pat_config(upstream.addr, Some("ghp_testpat"), "")).await;
    for _ in 0..10 {
        let r = proxy.get("/repos/acme/widgets").await;
        assert_eq!(r.status(), StatusCode::OK);
    }
    // Nothing closed was reused: one connection per request.
    assert_eq!(
        upstream
            .connections
            .load(std::sync::atomic::Ordering::SeqCst),
        10
    );
    let records = proxy.stop().await;
    assert_eq!(records.len(), 10);
    assert!(records.iter().all(|r| r["status"] == 200));
}

/// A raw upstream that answers one request per connection and then closes it silently (no
/// `Connection: close`): the pooled connection is stale by the time it is reused.
async fn silently_closing_upstream() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}")
                    .await;
                let _ = stream.shutdown().await;
            });
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn connections_the_upstream_closed_silently_are_not_reused() {
    let (addr, accepted) = silently_closing_upstream().await;
    let proxy = TestProxy::start(&pat_config(addr, Some("ghp_testpat"), "")).await;
    // Back to back and with pauses: either way the pool sees the close (a closed connection, or
    // one that fails to become ready) and opens a new one; no request fails.
    for i in 0..20 {
        let r = proxy.get("/repos/acme/widgets").await;
        assert_eq!(r.status(), StatusCode::OK, "request {i}");
        if i % 2 == 1 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 20);
    let records = proxy.stop().await;
    assert_eq!(records.len(), 20);
    assert!(
        records
            .iter()
            .all(|r| r["status"] == 200 && r["outcome"] == "ok")
    );
}

#[tokio::test]
async fn concurrent_burst_is_served_and_its_connections_are_reused_afterwards() {
    let upstream = Upstream::start(|_req| async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        Response::builder().body(full("{}")).unwrap()
    })
    .await;
    let proxy = std::sync::Arc::new(
        TestProxy::start(&pat_config(upstream.addr, Some("ghp_testpat"), "")).await,
    );
    let burst = |n: usize| {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..n {
            let proxy = proxy.clone();
            set.spawn(async move { proxy.get("/repos/acme/widgets").await.status() });
        }
        set
    };
    let mut first = burst(64);
    while let Some(status) = first.join_next().await {
        assert_eq!(status.unwrap(), StatusCode::OK);
    }
    let opened = upstream
        .connections
        .load(std::sync::atomic::Ordering::SeqCst);
    assert!((1..=64).contains(&opened), "opened {opened}");
    // The same burst again finds them idle in the pool: no new connection.
    let mut second = burst(opened);
    while let Some(status) = second.join_next().await {
        assert_eq!(status.unwrap(), StatusCode::OK);
    }
    assert_eq!(
        upstream
            .connections
            .load(std::sync::atomic::Ordering::SeqCst),
        opened
    );
    let proxy = std::sync::Arc::try_unwrap(proxy).ok().unwrap();
    assert_eq!(proxy.stop().await.len(), 64 + opened);
}

/// The admin listener answers other methods with `405` and `Allow` (RFC 9110 §15.5.6) on its
/// paths, `404` elsewhere whatever the method.
#[tokio::test]
async fn admin_405_names_the_allowed_methods() {
    let upstream = Upstream::ok().await;
    let proxy = TestProxy::start(&pat_config(upstream.addr, Some("ghp_testpat"), "")).await;
    let text = raw_exchange(
        proxy.admin_addr,
        b"POST /healthz HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 405 "), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("allow: get, head"),
        "{text}"
    );
    let text = raw_exchange(
        proxy.admin_addr,
        b"POST /nope HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 404 "), "{text}");
}
