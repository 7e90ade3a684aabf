//! Forwarding end to end (SPEC §4, §8): the three addressing forms, header rules both ways,
//! `Link` rewriting and learned repository ids, streaming in both directions, upstream failures.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod server_common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use server_common::*;

#[tokio::test]
async fn default_form_forwards_with_pat_and_strips_client_headers() {
    let upstream = Upstream::start(|_req| async {
        Response::builder()
            .header("connection", "x-up-hop")
            .header("x-up-hop", "secret-hop")
            .header("keep-alive", "timeout=5")
            .header("x-github-request-id", "C0DE:1")
            .body(full("{}"))
            .unwrap()
    })
    .await;
    let proxy = TestProxy::start(&pat_config(upstream.addr, Some("ghp_testpat"), "")).await;
    let req = Request::get("/repos/acme/widgets/pulls?state=open")
        .header("host", proxy.addr.to_string())
        .header("authorization", "Bearer client-chosen")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .header("x-github-owner", "other")
        .header("connection", "x-hop")
        .header("x-hop", "1")
        .header("te", "trailers")
        .header("accept", "application/vnd.github+json")
        .body(full(Bytes::new()))
        .unwrap();
    let (response, headers) = proxy.send(req).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(headers["x-credential-type"], "pat");
    assert_eq!(headers["x-credential-reason"], "no_app");
    assert_eq!(headers["x-request-id"].len(), 26);
    assert!(headers.get("x-up-hop").is_none());
    assert!(headers.get("keep-alive").is_none());
    assert_eq!(headers["x-github-request-id"], "C0DE:1");

    let seen = upstream.seen();
    assert_eq!(seen.len(), 1);
    let s = &seen[0];
    assert_eq!(s.uri, "/repos/acme/widgets/pulls?state=open");
    assert_eq!(s.headers["authorization"], "Bearer ghp_testpat");
    assert_eq!(s.headers["host"], upstream.addr.to_string());
    assert_eq!(s.headers["accept"], "application/vnd.github+json");
    assert!(
        s.headers["user-agent"]
            .to_str()
            .unwrap()
            .starts_with("gh-token-proxy/")
    );
    for gone in ["proxy-authorization", "x-github-owner", "x-hop", "te"] {
        assert!(s.headers.get(gone).is_none(), "{gone} was forwarded");
    }
    proxy.stop().await;
}

#[tokio::test]
async fn host_prefix_and_forward_proxy_forms_reach_the_same_origin() {
    let upstream = Upstream::ok().await;
    let proxy = TestProxy::start(&pat_config(upstream.addr, Some("ghp_testpat"), "")).await;
    let prefixed = proxy
        .get(&format!("/{}/repos/acme/widgets", upstream.addr))
        .await;
    assert_eq!(prefixed.status(), StatusCode::OK);
    let absolute = Request::get(format!("http://{}/repos/acme/widgets", upstream.addr))
        .header("host", upstream.addr.to_string())
        .body(full(Bytes::new()))
        .unwrap();
    let (absolute, _) = proxy.send(absolute).await;
    assert_eq!(absolute.status(), StatusCode::OK);
    let uris: Vec<String> = upstream.seen().into_iter().map(|s| s.uri).collect();
    assert_eq!(uris, vec!["/repos/acme/widgets", "/repos/acme/widgets"]);
    let records = proxy.stop().await;
    assert_eq!(records.len(), 2);
    for r in &records {
        assert_eq!(r["owner"], "acme");
        assert_eq!(r["repo"], "widgets");
        assert_eq!(r["host"], upstream.addr.to_string());
        assert_eq!(r["path"], "/repos/acme/widgets");
    }
}

#[tokio::test]
async fn link_is_rewritten_and_repository_ids_are_learned() {
    let upstream = Upstream::start(|req| async move {
        let link = format!(
            "<http://{}/repositories/4242/issues?page=2>; rel=\"next\"",
            req.headers()["host"].to_str().unwrap()
        );
        Response::builder()
            .header("link", link)
            .body(full("[]"))
            .unwrap()
    })
    .await;
    let proxy = TestProxy::start(&pat_config(upstream.addr, Some("ghp_testpat"), "")).await;
    let first = proxy.get("/repos/acme/widgets/issues").await;
    assert_eq!(
        first.headers()["link"],
        format!(
            "<http://{}/repositories/4242/issues?page=2>; rel=\"next\"",
            proxy.addr
        )
    );
    let second = proxy.get("/repositories/4242/issues?page=2").await;
    assert_eq!(second.status(), StatusCode::OK);
    let records = proxy.stop().await;
    assert_eq!(records[1]["path"], "/repositories/4242/issues");
    assert_eq!(records[1]["owner"], "acme");
    assert_eq!(records[1]["repo"], "widgets");
}

#[tokio::test]
async fn upload_streams_without_buffering() {
    // The upstream acknowledges the first chunk while the client still holds the rest: only
    // possible if the proxy forwards before the body is complete.
    let (first_seen_tx, first_seen_rx) = tokio::sync::oneshot::channel::<()>();
    let first_seen_tx = Arc::new(std::sync::Mutex::new(Some(first_seen_tx)));
    let upstream = Upstream::start(move |req| {
        let first_seen_tx = first_seen_tx.clone();
        async move {
            let mut body = req.into_body();
            let mut total = 0usize;
            while let Some(frame) = body.frame().await {
                let frame = frame.unwrap();
                if let Some(data) = frame.data_ref() {
                    total += data.len();
                    if let Some(tx) = first_seen_tx.lock().unwrap().take() {
                        let _ = tx.send(());
                    }
                }
            }
            Response::new(full(total.to_string()))
        }
    })
    .await;
    let proxy = TestProxy::start(&pat_config(upstream.addr, Some("ghp_testpat"), "")).await;

    let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
    let (tx, rx) = tokio::sync::mpsc::channel::<
        Result<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>,
    >(1);
    let body = StreamBody::new(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }));
    let req = Request::post("/repos/acme/widgets/releases/1/assets")
        .header("host", proxy.addr.to_string())
        .body(body.boxed())
        .unwrap();
    let addr = proxy.addr;
    let sending = tokio::spawn(async move { send_to(addr, req).await });
    tx.send(Ok(Frame::data(chunk.clone()))).await.unwrap();
    tokio::time::timeout(WAIT, first_seen_rx)
        .await
        .unwrap()
        .unwrap();
    // 16 MiB more after the upstream already saw data.
    for _ in 0..256 {
        tx.send(Ok(Frame::data(chunk.clone()))).await.unwrap();
    }
    drop(tx);
    let (response, _) = sending.await.unwrap();
    assert_eq!(response.body(), &Bytes::from((257 * 64 * 1024).to_string()));
    proxy.stop().await;
}

#[tokio::test]
async fn download_streams_without_buffering() {
    // The upstream sends one chunk, then waits until the client has it before finishing.
    let (got_first_tx, got_first_rx) = tokio::sync::oneshot::channel::<()>();
    let got_first_rx = Arc::new(tokio::sync::Mutex::new(Some(got_first_rx)));
    let upstream = Upstream::start(move |_req| {
        let got_first_rx = got_first_rx.clone();
        async move {
            let stream = futures_util::stream::unfold(0u32, move |n| {
                let got_first_rx = got_first_rx.clone();
                async move {
                    match n {
                        0 => Some((Ok(Frame::data(Bytes::from(vec![b'a'; 1024]))), 1)),
                        1 => {
                            if let Some(rx) = got_first_rx.lock().await.take() {
                                let _ = rx.await;
                            }
                            Some((Ok(Frame::data(Bytes::from(vec![b'b'; 1024]))), 2))
                        }
                        _ => None,
                    }
                }
            });
            let body: TestBody = StreamBody::new(stream).boxed();
            Response::new(body)
        }
    })
    .await;
    let proxy = TestProxy::start(&pat_config(upstream.addr, Some("ghp_testpat"), "")).await;
    let stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::get("/repos/acme/widgets/tarball/main")
        .header("host", proxy.addr.to_string())
        .body(full(Bytes::new()))
        .unwrap();
    let response = tokio::time::timeout(WAIT, sender.send_request(req))
        .await
        .unwrap()
        .unwrap();
    let mut body = response.into_body();
    let first = tokio::time::timeout(WAIT, body.frame())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.data_ref().unwrap()[0], b'a');
    got_first_tx.send(()).unwrap();
    let rest = tokio::time::timeout(WAIT, body.collect())
        .await
        .unwrap()
        .unwrap()
        .to_bytes();
    assert!(rest.ends_with(b"b"));
    let records = proxy.stop().await;
    assert_eq!(records[0]["bytes_out"], 2048);
    assert_eq!(records[0]["outcome"], "ok");
}

#[tokio::test]
async fn unreachable_upstream_is_502() {
    // A port that was just free: nothing listens there.
    let free = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = free.local_addr().unwrap();
    drop(free);
    let proxy = TestProxy::start(&pat_config(addr, Some("ghp_testpat"), "")).await;
    let response = proxy.get("/repos/acme/widgets").await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let body: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
    assert_eq!(body["reason"], "upstream_unreachable");
    assert_eq!(
        response.headers()["x-credential-reason"],
        "upstream_unreachable"
    );
    let records = proxy.stop().await;
    assert_eq!(records[0]["outcome"], "upstream_error");
    assert_eq!(records[0]["upstream_status"], serde_json::Value::Null);
    assert_eq!(records[0]["status"], 502);
}

#[tokio::test]
async fn tls_failure_is_502_upstream_tls() {
    // A plain-HTTP server behind an https:// base URL fails the TLS handshake.
    let upstream = Upstream::ok().await;
    let yaml = format!(
        "integrations:\n  github:\n    - host: github.com\n      apiBaseUrl: https://{}\n      token: ghp_testpat\nproxy:\n  listen: 127.0.0.1:0\n",
        upstream.addr
    );
    let proxy = TestProxy::start(&yaml).await;
    let response = proxy.get("/repos/acme/widgets").await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let body: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
    assert_eq!(body["reason"], "upstream_tls", "{body}");
    proxy.stop().await;
}

/// An HTTPS upstream answering `{}` whose certificate is self-signed and marked as a CA, as
/// `openssl req -x509` makes them, valid for `names` (expired when `expired`). Returns its
/// address and its certificate's PEM.
async fn self_signed_upstream(names: &[&str], expired: bool) -> (std::net::SocketAddr, String) {
    let (addr, pem, _) = tls_upstream(names, expired, true).await;
    (addr, pem)
}

/// Handshake kinds (full or resumed) of the connections an upstream accepted, in order.
type Handshakes = Arc<std::sync::Mutex<Vec<rustls::HandshakeKind>>>;

/// [`self_signed_upstream`], also recording how each TLS connection was established, and
/// closing each connection after one response unless `keep_alive`.
async fn tls_upstream(
    names: &[&str],
    expired: bool,
    keep_alive: bool,
) -> (std::net::SocketAddr, String, Handshakes) {
    let key = rcgen::KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut params = rcgen::CertificateParams::new(names).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    if expired {
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(30);
        params.not_after = now - time::Duration::days(1);
    }
    let cert = params.self_signed(&key).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handshakes = Handshakes::default();
    let seen = handshakes.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let seen = seen.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                if let Some(kind) = tls.get_ref().1.handshake_kind() {
                    seen.lock().unwrap().push(kind);
                }
                let service = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(Response::new(full("{}")))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .keep_alive(keep_alive)
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (addr, cert.pem(), handshakes)
}

/// The proxy in front of `upstream` as `https://localhost:PORT`, trusting `ca_pem` (caFile).
async fn proxy_trusting(
    upstream: std::net::SocketAddr,
    ca_pem: &str,
) -> (TestProxy, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("upstream.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();
    let yaml = format!(
        "integrations:\n  github:\n    - host: github.com\n      apiBaseUrl: https://localhost:{}\n      token: ghp_testpat\nproxy:\n  listen: 127.0.0.1:0\n  upstream:\n    caFile: {}\n",
        upstream.port(),
        ca_file.display()
    );
    (TestProxy::start(&yaml).await, dir)
}

#[tokio::test]
async fn self_signed_ca_certificate_named_in_ca_file_is_trusted_as_the_server_certificate() {
    // What `openssl req -x509` makes (CA:TRUE), listed in caFile: OpenSSL clients accept it, and
    // so does the proxy; WebPKI alone would refuse it (`CaUsedAsEndEntity`).
    let (upstream, pem) = self_signed_upstream(&["localhost"], false).await;
    let (proxy, _dir) = proxy_trusting(upstream, &pem).await;
    for _ in 0..2 {
        let response = proxy.get("/repos/acme/widgets").await;
        assert_eq!(response.status(), StatusCode::OK, "{response:?}");
        assert_eq!(response.body().as_ref(), b"{}");
    }
    let records = proxy.stop().await;
    assert!(records.iter().all(|r| r["outcome"] == "ok"), "{records:?}");
}

#[tokio::test]
async fn new_upstream_tls_connections_resume_the_previous_session() {
    // The upstream closes every connection after one response, so each request needs a new TLS
    // connection: the first is a full handshake, the following ones resume its session (the
    // pool's connections share one rustls client config and so its session cache).
    let (upstream, pem, handshakes) = tls_upstream(&["localhost"], false, false).await;
    let (proxy, _dir) = proxy_trusting(upstream, &pem).await;
    for _ in 0..4 {
        let response = proxy.get("/repos/acme/widgets").await;
        assert_eq!(response.status(), StatusCode::OK, "{response:?}");
    }
    proxy.stop().await;
    let kinds = handshakes.lock().unwrap().clone();
    assert_eq!(kinds.len(), 4, "one connection per request: {kinds:?}");
    assert_eq!(kinds[0], rustls::HandshakeKind::Full, "{kinds:?}");
    assert!(
        kinds[1..]
            .iter()
            .all(|k| *k == rustls::HandshakeKind::Resumed),
        "{kinds:?}"
    );
}

/// A `502 upstream_tls` whose message says `why`.
fn assert_tls_failure(response: &Response<Bytes>, why: &str) {
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY, "{response:?}");
    let body: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
    assert_eq!(body["reason"], "upstream_tls", "{body}");
    assert!(body["message"].as_str().unwrap().contains(why), "{body}");
}

#[tokio::test]
async fn self_signed_ca_certificate_is_refused_for_another_name_expired_or_not_listed() {
    // Trusting the listed certificate as it stands still checks its name and its dates, and a CA
    // certificate the operator did not list is refused as before.
    let (wrong_name, pem) = self_signed_upstream(&["other.example"], false).await;
    let (expired, expired_pem) = self_signed_upstream(&["localhost"], true).await;
    let (unlisted, _) = self_signed_upstream(&["localhost"], false).await;
    let (_, other_pem) = self_signed_upstream(&["localhost"], false).await;
    for (upstream, ca_pem, why) in [
        (wrong_name, pem, "not valid for name"),
        (expired, expired_pem, "expired"),
        (
            unlisted,
            other_pem,
            "does not list; list that exact certificate there",
        ),
    ] {
        let (proxy, _dir) = proxy_trusting(upstream, &ca_pem).await;
        assert_tls_failure(&proxy.get("/repos/acme/widgets").await, why);
        proxy.stop().await;
    }
}

#[tokio::test]
async fn slow_upstream_is_504_after_response_timeout() {
    let upstream = Upstream::start(|_req| async {
        tokio::time::sleep(Duration::from_secs(30)).await;
        Response::new(full("late"))
    })
    .await;
    let proxy = TestProxy::start(&pat_config(
        upstream.addr,
        Some("ghp_testpat"),
        "  upstream:\n    responseTimeoutMs: 200\n",
    ))
    .await;
    let started = std::time::Instant::now();
    let response = proxy.get("/repos/acme/widgets").await;
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(started.elapsed() < Duration::from_secs(10));
    let body: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
    assert_eq!(body["reason"], "upstream_timeout");
    proxy.stop().await;
}

#[tokio::test]
async fn conflicting_content_length_and_transfer_encoding_never_smuggle() {
    let upstream = Upstream::ok().await;
    let proxy = TestProxy::start(&pat_config(upstream.addr, Some("ghp_testpat"), "")).await;
    let raw = format!(
        "POST /repos/acme/widgets/issues HTTP/1.1\r\nHost: {}\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /repos/evil/smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        proxy.addr
    );
    let _ = raw_exchange(proxy.addr, raw.as_bytes()).await;
    let seen = upstream.seen();
    assert!(seen.iter().all(|s| !s.uri.contains("smuggled")), "{seen:?}");
    for s in &seen {
        assert!(s.headers.get("content-length").is_none_or(|v| v != "4"));
    }
    proxy.stop().await;
}

#[tokio::test]
async fn graphql_owner_comes_from_the_body_which_is_forwarded_intact() {
    let upstream = Upstream::start(|req| async move {
        let body = req.into_body().collect().await.unwrap().to_bytes();
        Response::new(full(body))
    })
    .await;
    let proxy = TestProxy::start(&pat_config(upstream.addr, Some("ghp_testpat"), "")).await;
    let query = r#"{"query":"query($owner:String!,$name:String!){repository(owner:$owner,name:$name){id}}","variables":{"owner":"acme","name":"widgets"}}"#;
    let (response, _) = proxy
        .send(
            Request::post("/graphql")
                .header("host", proxy.addr.to_string())
                .header("content-type", "application/json")
                .body(full(query))
                .unwrap(),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.body(), &Bytes::from(query));
    assert_eq!(upstream.seen()[0].uri, "/graphql");
    let records = proxy.stop().await;
    assert_eq!(records[0]["owner"], "acme");
    assert_eq!(records[0]["repo"], "widgets");
}

#[tokio::test]
async fn requests_without_owner_use_the_header_then_the_default_owner() {
    let upstream = Upstream::ok().await;
    let proxy = TestProxy::start(&pat_config(
        upstream.addr,
        Some("ghp_testpat"),
        "  defaultOwner: fallback-org\n",
    ))
    .await;
    let (r, _) = proxy
        .send(
            Request::get("/user")
                .header("host", proxy.addr.to_string())
                .header("x-github-owner", "acme")
                .body(full(Bytes::new()))
                .unwrap(),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(proxy.get("/rate_limit").await.status(), StatusCode::OK);
    assert!(upstream.seen()[0].headers.get("x-github-owner").is_none());
    let records = proxy.stop().await;
    assert_eq!(records[0]["owner"], "acme");
    assert_eq!(records[1]["owner"], "fallback-org");
    assert!(records[1]["repo"].is_null());
}

#[tokio::test]
async fn head_request_is_recorded_as_ok() {
    let upstream = Upstream::start(|_req| async {
        Response::builder()
            .header("content-length", "1234")
            .body(full(Bytes::new()))
            .unwrap()
    })
    .await;
    let proxy = TestProxy::start(&pat_config(upstream.addr, Some("ghp_testpat"), "")).await;
    let (r, _) = proxy
        .send(
            Request::head("/repos/acme/widgets")
                .header("host", proxy.addr.to_string())
                .body(full(Bytes::new()))
                .unwrap(),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let records = proxy.stop().await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["method"], "HEAD");
    assert_eq!(records[0]["outcome"], "ok");
    assert_eq!(records[0]["bytes_out"], 0);
}
