//! Audit records end to end (SPEC §7.3): one per exchange, exactly once, with every field, for
//! served, refused, failed and client-aborted requests; never a secret.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod server_common;

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use server_common::*;
use tokio::io::AsyncWriteExt;

#[tokio::test]
async fn pat_served_request_has_a_complete_record() {
    let upstream = Upstream::ok().await;
    let proxy = TestProxy::start(&pat_config(upstream.addr, Some("ghp_testpat"), "")).await;
    let response = proxy.get("/repos/Acme/Widgets/pulls?per_page=5").await;
    assert_eq!(response.status(), StatusCode::OK);
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let records = proxy.stop().await;
    assert_eq!(records.len(), 1);
    let r = &records[0];
    assert_audit_fields(r);
    let ts = r["ts"].as_str().unwrap();
    assert_eq!(ts.len(), 24, "{ts}");
    assert!(ts.ends_with('Z') && ts.as_bytes()[19] == b'.', "{ts}");
    assert_eq!(r["request_id"], request_id);
    assert!(r["client"].is_null());
    assert!(r["client_addr"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert_eq!(r["method"], "GET");
    assert_eq!(r["host"], upstream.addr.to_string());
    assert_eq!(r["path"], "/repos/Acme/Widgets/pulls");
    assert_eq!(r["owner"], "Acme");
    assert_eq!(r["repo"], "Widgets");
    assert_eq!(r["credential"], "pat");
    assert_eq!(r["reason"], "no_app");
    assert!(r["app_id"].is_null());
    assert!(r["installation_id"].is_null());
    assert_eq!(
        r["hashed_token"],
        gh_token_proxy::credential::hash_token("ghp_testpat")
    );
    assert_eq!(r["status"], 200);
    assert_eq!(r["upstream_status"], 200);
    assert_eq!(r["github_request_id"], "C0DE:1234");
    assert_eq!(r["rate_limit_remaining"], 4987);
    assert_eq!(r["rate_limit_resource"], "core");
    assert_eq!(r["bytes_out"], 11);
    assert!(r["duration_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(r["outcome"], "ok");
    assert!(!r.to_string().contains("ghp_testpat"));
}

#[tokio::test]
async fn refused_request_has_a_record_with_nulls() {
    let upstream = Upstream::ok().await;
    let proxy = TestProxy::start(&pat_config(upstream.addr, Some("ghp_testpat"), "")).await;
    let response = proxy.get("/repos/acme/..%2F/x").await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let records = proxy.stop().await;
    assert_eq!(records.len(), 1);
    let r = &records[0];
    assert_audit_fields(r);
    assert_eq!(r["credential"], "none");
    assert_eq!(r["reason"], "invalid_path");
    // It was addressed to the api origin; only its path was refused.
    assert_eq!(r["host"], upstream.addr.to_string());
    assert_eq!(r["status"], 400);
    assert!(r["upstream_status"].is_null());
    assert!(r["github_request_id"].is_null());
    assert!(r["hashed_token"].is_null());
    assert_eq!(r["outcome"], "refused");
    assert!(r["bytes_out"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn client_that_goes_away_mid_body_is_recorded_as_aborted() {
    // The upstream sends one chunk and then never finishes.
    let upstream = Upstream::start(|_req| async {
        let stream = futures_util::stream::unfold(0u32, |n| async move {
            if n == 0 {
                Some((Ok(Frame::data(Bytes::from(vec![b'z'; 4096]))), 1))
            } else {
                tokio::time::sleep(Duration::from_secs(60)).await;
                None
            }
        });
        let body: TestBody = StreamBody::new(stream).boxed();
        Response::new(body)
    })
    .await;
    let proxy = TestProxy::start(&pat_config(upstream.addr, Some("ghp_testpat"), "")).await;
    let stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let conn_task = tokio::spawn(conn);
    let req = Request::get("/repos/acme/widgets/tarball/main")
        .header("host", proxy.addr.to_string())
        .body(full(Bytes::new()))
        .unwrap();
    let response = tokio::time::timeout(WAIT, sender.send_request(req))
        .await
        .unwrap()
        .unwrap();
    let mut body = response.into_body();
    tokio::time::timeout(WAIT, body.frame()).await.unwrap();
    // Hang up.
    drop(body);
    drop(sender);
    conn_task.abort();

    let path = proxy.audit_path.clone();
    wait_until(|| {
        std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .count()
            == 1
    })
    .await;
    let records = proxy.stop().await;
    assert_eq!(records.len(), 1, "{records:?}");
    let r = &records[0];
    assert_audit_fields(r);
    assert_eq!(r["outcome"], "aborted");
    assert_eq!(r["status"], 200);
    assert_eq!(r["upstream_status"], 200);
    assert_eq!(r["credential"], "pat");
    assert_eq!(r["bytes_out"], 4096);
}

#[tokio::test]
async fn client_that_goes_away_before_the_answer_is_recorded_as_aborted() {
    let upstream = Upstream::start(|_req| async {
        tokio::time::sleep(Duration::from_secs(60)).await;
        Response::new(full("late"))
    })
    .await;
    let proxy = TestProxy::start(&pat_config(upstream.addr, Some("ghp_testpat"), "")).await;
    let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(
            format!(
                "GET /repos/acme/widgets HTTP/1.1\r\nHost: {}\r\n\r\n",
                proxy.addr
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let seen = upstream.seen.clone();
    wait_until(|| !seen.lock().unwrap().is_empty()).await;
    drop(stream);
    let path = proxy.audit_path.clone();
    wait_until(|| {
        std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .count()
            == 1
    })
    .await;
    let records = proxy.stop().await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["outcome"], "aborted");
    assert!(records[0]["status"].is_null());
}

#[tokio::test]
async fn every_request_of_a_burst_is_recorded_once() {
    let upstream = Upstream::ok().await;
    let proxy = TestProxy::start(&pat_config(upstream.addr, Some("ghp_testpat"), "")).await;
    let mut tasks = Vec::new();
    for i in 0..50 {
        let addr = proxy.addr;
        tasks.push(tokio::spawn(async move {
            let path = if i % 5 == 0 {
                "/app".to_owned()
            } else {
                format!("/repos/acme/r{i}")
            };
            send_to(
                addr,
                Request::get(path)
                    .header("host", addr.to_string())
                    .body(full(Bytes::new()))
                    .unwrap(),
            )
            .await
            .0
            .headers()["x-request-id"]
                .to_str()
                .unwrap()
                .to_owned()
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap());
    }
    let records = proxy.stop().await;
    assert_eq!(records.len(), 50);
    let mut logged: Vec<String> = records
        .iter()
        .map(|r| r["request_id"].as_str().unwrap().to_owned())
        .collect();
    logged.sort();
    ids.sort();
    assert_eq!(logged, ids);
}
