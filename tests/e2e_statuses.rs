//! End to end (SPEC §7.4): one clean case for each status and reason the proxy can produce,
//! against the real server and FakeGitHub over TLS. Each checks the status, the
//! `{"message","reason"}` body and the `X-Request-Id`/`X-Credential-*` headers, and that the
//! audit record agrees.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/e2e.rs"]
mod e2e;
mod server_common;
mod support;

use std::time::Duration;

use bytes::Bytes;
use e2e::{Reply, World, raw, request};
use http::Method;
use support::fake_github::Scripted;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The record of `reply` says the same status, credential, reason and outcome.
async fn assert_recorded(w: &World, reply: &Reply, outcome: &str) {
    let r = &w.record(reply).await;
    assert_eq!(r["status"], reply.status.as_u16());
    assert_eq!(r["credential"], reply.header("x-credential-type"));
    assert_eq!(r["reason"], reply.header("x-credential-reason"));
    assert_eq!(r["outcome"], outcome, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_400_invalid_path_for_an_encoded_dot_dot() {
    let w = World::start().await;
    let reply = w.get("/repos/acme/%2e%2e/issues").await;
    reply.assert_error(400, "none", "invalid_path");
    assert_recorded(&w, &reply, "refused").await;
    assert!(w.fake.requests().is_empty(), "never forwarded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_400_invalid_request_for_a_bad_owner_header() {
    let w = World::start().await;
    let reply = request(
        w.proxy.addr,
        Method::GET,
        "/user",
        &[("x-github-owner", "not/a login")],
        Bytes::new(),
    )
    .await;
    reply.assert_error(400, "none", "invalid_request");
    assert_recorded(&w, &reply, "refused").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_403_unknown_host_in_host_prefix_and_forward_proxy_forms() {
    let w = World::start().await;
    let reply = w.get("/evil.example.com/repos/acme/widgets").await;
    let message = reply.assert_error(403, "none", "unknown_host");
    assert!(message.contains("evil.example.com"), "{message}");
    assert_recorded(&w, &reply, "refused").await;
    let r = w.record(&reply).await;
    assert_eq!(r["host"], serde_json::Value::Null, "not routed: {r}");
    assert_eq!(r["upstream_status"], serde_json::Value::Null);
    let reply = raw(
        w.proxy.addr,
        b"GET http://evil.example.com/repos/acme/widgets HTTP/1.1\r\nHost: evil.example.com\r\nConnection: close\r\n\r\n",
    )
    .await;
    reply.assert_error(403, "none", "unknown_host");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_403_app_endpoint() {
    let w = World::start().await;
    let reply = w.get("/app/installations").await;
    reply.assert_error(403, "none", "app_endpoint");
    assert_recorded(&w, &reply, "refused").await;
    assert!(w.fake.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_403_no_credential_says_what_was_tried_and_what_to_do() {
    let w = World::start().await;
    let target = format!("/{}/api/v3/repos/other/thing", w.ghe_authority());
    let reply = w.get(&target).await;
    let message = reply.assert_error(403, "none", "no_credential");
    assert_eq!(
        message,
        format!(
            "no GitHub credential for other/thing on {}: GitHub App 202 is not installed on \
             'other' and integrations.github[1].token is not set; install the App on 'other' or \
             configure a PAT",
            w.ghe_authority()
        )
    );
    assert_recorded(&w, &reply, "refused").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_405_connect_not_supported() {
    let w = World::start().await;
    let reply = raw(
        w.proxy.addr,
        b"CONNECT api.github.com:443 HTTP/1.1\r\nHost: api.github.com:443\r\nConnection: close\r\n\r\n",
    )
    .await;
    let message = reply.assert_error(405, "none", "connect_not_supported");
    assert!(message.contains("http://"), "{message}");
    assert_recorded(&w, &reply, "refused").await;
}

const CLIENTS: &str = "  clients:
    - name: catalog
      key: catalog-key-0123456789
      allow: [\"acme/*\"]
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_407_without_a_client_key_and_403_client_policy_outside_allow() {
    let w = World::start_with(CLIENTS).await;
    let reply = w.get("/repos/acme/widgets").await;
    reply.assert_error(407, "none", "client_unauthenticated");
    assert_eq!(
        reply.header("proxy-authenticate"),
        "Basic realm=\"gh-token-proxy\""
    );
    assert_recorded(&w, &reply, "refused").await;

    let key = [("authorization", "Bearer catalog-key-0123456789")];
    let reply = request(
        w.proxy.addr,
        Method::GET,
        "/repos/other/thing",
        &key,
        Bytes::new(),
    )
    .await;
    reply.assert_error(403, "none", "client_policy");
    assert_eq!(w.record(&reply).await["client"], "catalog");

    // The same key inside its allow list is served (and never forwarded).
    let reply = request(
        w.proxy.addr,
        Method::GET,
        "/repos/acme/widgets",
        &key,
        Bytes::new(),
    )
    .await;
    reply.assert_served(200, "app", "installed");
    assert_eq!(reply.json()["auth"], format!("app:{}", e2e::INST1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_413_graphql_body_too_large() {
    let w = World::start().await;
    let body = format!(
        "{{\"query\":\"{}\",\"variables\":{{\"owner\":\"acme\"}}}}",
        "x".repeat(1024 * 1024 + 16)
    );
    let reply = request(
        w.proxy.addr,
        Method::POST,
        "/graphql",
        &[("content-type", "application/json")],
        Bytes::from(body),
    )
    .await;
    reply.assert_error(413, "none", "body_too_large");
    assert_recorded(&w, &reply, "refused").await;
    assert!(w.fake.requests().is_empty());
}

/// A GraphQL body must arrive within `headerReadTimeoutMs`, as the head must: a client that
/// sends it slowly cannot hold its inspection buffer (up to 1 MiB) for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_408_graphql_body_that_does_not_arrive_in_time() {
    let w = World::start_with("  headerReadTimeoutMs: 400\n").await;
    let mut stream = TcpStream::connect(w.proxy.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(
        &mut stream,
        b"POST /graphql HTTP/1.1\r\nHost: proxy\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"query\":",
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 4096];
        // Until the whole answer is in (the proxy closes after refusing mid-body).
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("no answer to the slow body");
    let reply = e2e::parse_raw(&out, stream.local_addr().unwrap());
    let message = reply.assert_error(408, "none", "invalid_request");
    assert!(message.contains("headerReadTimeoutMs"), "{message}");
    assert_recorded(&w, &reply, "refused").await;
    assert!(w.fake.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_414_and_431_invalid_request() {
    let w = World::start().await;
    let long = format!("/repos/acme/widgets/issues?q={}", "a".repeat(9 * 1024));
    let reply = w.get(&long).await;
    reply.assert_error(414, "none", "invalid_request");
    let big = "b".repeat(70 * 1024);
    let reply = request(
        w.proxy.addr,
        Method::GET,
        "/repos/acme/widgets",
        &[("x-big", &big)],
        Bytes::new(),
    )
    .await;
    reply.assert_error(431, "none", "invalid_request");
    let records = w.audit(2).await;
    assert!(records.iter().all(|r| r["outcome"] == "refused"));
    assert!(w.fake.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_502_upstream_unreachable_on_a_closed_port() {
    let w = World::start().await;
    let target = format!("/localhost:{}/repos/acme/widgets", w.closed_port);
    let reply = w.get(&target).await;
    // Upstream failures keep the credential that was tried.
    let message = reply.assert_error(502, "pat", "upstream_unreachable");
    assert!(
        message.contains(&format!("localhost:{}", w.closed_port)),
        "{message}"
    );
    assert_recorded(&w, &reply, "upstream_error").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_502_upstream_tls_when_the_ca_is_not_trusted() {
    let w = World::start().await;
    let target = format!(
        "/localhost:{}/repos/acme/widgets",
        w.untrusted.addr().port()
    );
    let reply = w.get(&target).await;
    let message = reply.assert_error(502, "pat", "upstream_tls");
    assert!(message.contains("TLS"), "{message}");
    assert_recorded(&w, &reply, "upstream_error").await;
    assert!(w.untrusted.requests().is_empty(), "no request got through");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_503_overloaded_beyond_max_connections() {
    let w = World::start_with("  maxConnections: 1\n").await;
    // The one allowed connection, held open (it completes one exchange to prove it is accepted).
    let held = TcpStream::connect(w.proxy.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(held))
            .await
            .unwrap();
    tokio::spawn(conn);
    let first = sender
        .send_request(
            http::Request::get("/repos/acme/widgets")
                .header("host", w.proxy.addr.to_string())
                .body(server_common::full(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    let mut stream = TcpStream::connect(w.proxy.addr).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(server_common::WAIT, stream.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let reply = e2e::parse_raw(&out, stream.local_addr().unwrap());
    reply.assert_error(503, "none", "overloaded");
    drop(sender);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_504_upstream_timeout_past_response_timeout() {
    let w = World::start().await;
    w.fake.script(
        "GET /repos/acme/slow",
        Scripted::json(serde_json::json!({}))
            .delay(Duration::from_millis(e2e::RESPONSE_TIMEOUT_MS + 2000)),
    );
    let started = std::time::Instant::now();
    let reply = w.get("/repos/acme/slow").await;
    let message = reply.assert_error(504, "app", "upstream_timeout");
    assert!(message.contains("responseTimeoutMs"), "{message}");
    assert!(started.elapsed() < Duration::from_millis(e2e::RESPONSE_TIMEOUT_MS + 1500));
    assert_recorded(&w, &reply, "upstream_error").await;
}

/// `responseTimeoutMs` is the wait for the response head once the request has gone out: an
/// upload that takes longer than it (a `git push` of a large pack) is not cut (§3.3, §8).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_longer_than_the_response_timeout_is_not_cut() {
    let w = World::start().await;
    w.fake.set_read_bodies(true);
    let mut stream = TcpStream::connect(w.proxy.addr).await.unwrap();
    let local = stream.local_addr().unwrap();
    use tokio::io::AsyncWriteExt as _;
    stream
        .write_all(b"POST /repos/acme/widgets/issues HTTP/1.1\r\nHost: proxy\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    // Twice the response timeout of upload, in pieces.
    let pieces = 8;
    let pause = Duration::from_millis(e2e::RESPONSE_TIMEOUT_MS * 2 / pieces);
    for i in 0..pieces {
        let chunk = format!("5\r\npart{i}\r\n");
        stream.write_all(chunk.as_bytes()).await.unwrap();
        tokio::time::sleep(pause).await;
    }
    stream.write_all(b"0\r\n\r\n").await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out))
        .await
        .expect("no answer")
        .unwrap();
    let reply = e2e::parse_raw(&out, local);
    reply.assert_served(200, "app", "installed");
    assert_recorded(&w, &reply, "ok").await;
}

/// A client whose own request body fails while it is being forwarded is not GitHub's fault: a
/// malformed chunked body gets `400 invalid_request`; a client that goes away mid-body is
/// recorded `aborted`. Neither is `upstream_unreachable`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_request_body_is_the_clients_fault_not_githubs() {
    let w = World::start().await;
    w.fake.set_read_bodies(true);
    let reply = raw(
        w.proxy.addr,
        b"POST /repos/acme/widgets/issues HTTP/1.1\r\nHost: proxy\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\n{\"a\r\nzz-not-hex\r\n\r\n",
    )
    .await;
    reply.assert_error(400, "app", "invalid_request");
    let r = w.record(&reply).await;
    assert_eq!(r["outcome"], "refused", "{r}");
    assert_eq!(r["reason"], "invalid_request", "{r}");

    // Promises 1000 bytes, sends 10, goes away.
    let mut stream = TcpStream::connect(w.proxy.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(
        &mut stream,
        b"POST /repos/acme/widgets/issues HTTP/1.1\r\nHost: proxy\r\nContent-Length: 1000\r\n\r\n0123456789",
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(stream);
    let records = w.audit(2).await;
    let r = &records[1];
    // As a client that leaves mid-download: the decision's reason, nothing sent to it.
    assert_eq!(r["outcome"], "aborted", "{r}");
    assert_eq!(
        (&r["credential"], &r["reason"]),
        (&"app".into(), &"installed".into()),
        "{r}"
    );
    assert!(r["status"].is_null(), "{r}");
    assert_eq!(r["bytes_out"], 0, "{r}");

    // The same while the proxy reads a GraphQL body to find its owner (nothing decided yet).
    let mut stream = TcpStream::connect(w.proxy.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(
        &mut stream,
        b"POST /graphql HTTP/1.1\r\nHost: proxy\r\nContent-Length: 1000\r\n\r\n{\"query\":",
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(stream);
    let records = w.audit(3).await;
    let r = &records[2];
    assert_eq!(r["outcome"], "aborted", "{r}");
    assert!(r["status"].is_null(), "{r}");
    assert_eq!(r["bytes_out"], 0, "{r}");
}
