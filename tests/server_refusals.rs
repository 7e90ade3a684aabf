//! The proxy's own answers (SPEC §7.4): status, reason, GitHub-shaped body and the three headers
//! for every refusal, and that none of them reaches GitHub.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod server_common;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use server_common::*;

#[tokio::test]
async fn refusals_have_status_reason_body_and_headers() {
    let upstream = Upstream::ok().await;
    let proxy = TestProxy::start(&pat_config(upstream.addr, Some("ghp_testpat"), "")).await;

    let r = proxy.get("/repos/acme/%2e%2e/x").await;
    assert_refusal(&r, StatusCode::BAD_REQUEST, "invalid_path");

    let r = proxy.get("/app/installations").await;
    assert_refusal(&r, StatusCode::FORBIDDEN, "app_endpoint");

    let (r, _) = proxy
        .send(
            Request::get("http://evil.example.com/repos/a/b")
                .header("host", "evil.example.com")
                .body(full(Bytes::new()))
                .unwrap(),
        )
        .await;
    assert_refusal(&r, StatusCode::FORBIDDEN, "unknown_host");

    let long = format!("/repos/acme/widgets?q={}", "a".repeat(9000));
    let r = proxy.get(&long).await;
    assert_refusal(&r, StatusCode::URI_TOO_LONG, "invalid_request");

    let mut req = Request::get("/repos/acme/widgets").header("host", proxy.addr.to_string());
    for i in 0..40 {
        req = req.header(format!("x-big-{i}"), "v".repeat(2000));
    }
    let (r, _) = proxy.send(req.body(full(Bytes::new())).unwrap()).await;
    assert_refusal(
        &r,
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "invalid_request",
    );

    let r = proxy
        .send(
            Request::get("/repos/acme/widgets")
                .header("host", proxy.addr.to_string())
                .header("x-github-owner", "not a login!")
                .body(full(Bytes::new()))
                .unwrap(),
        )
        .await
        .0;
    assert_refusal(&r, StatusCode::BAD_REQUEST, "invalid_request");

    let big = vec![b' '; 1024 * 1024 + 10];
    let (r, _) = proxy
        .send(
            Request::post("/graphql")
                .header("host", proxy.addr.to_string())
                .body(full(big))
                .unwrap(),
        )
        .await;
    assert_refusal(&r, StatusCode::PAYLOAD_TOO_LARGE, "body_too_large");

    assert!(upstream.seen().is_empty(), "{:?}", upstream.seen());
    let records = proxy.stop().await;
    assert_eq!(records.len(), 7);
    for r in &records {
        assert_eq!(r["outcome"], "refused");
        assert_eq!(r["credential"], "none");
        assert!(r["upstream_status"].is_null());
        assert!(r["hashed_token"].is_null());
    }
}

#[tokio::test]
async fn connect_is_405_with_advice() {
    let upstream = Upstream::ok().await;
    let proxy = TestProxy::start(&pat_config(upstream.addr, Some("ghp_testpat"), "")).await;
    let text = raw_exchange(
        proxy.addr,
        b"CONNECT api.github.com:443 HTTP/1.1\r\nHost: api.github.com:443\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 405"), "{text}");
    assert!(text.contains("connect_not_supported"), "{text}");
    assert!(text.contains("http:// base URL"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("x-request-id: "),
        "{text}"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn no_credential_is_403_with_what_to_fix() {
    let upstream = Upstream::ok().await;
    let proxy = TestProxy::start(&pat_config(upstream.addr, None, "")).await;
    let r = proxy.get("/repos/acme/widgets").await;
    assert_refusal(&r, StatusCode::FORBIDDEN, "no_credential");
    let body: serde_json::Value = serde_json::from_slice(r.body()).unwrap();
    assert!(body["message"].as_str().unwrap().contains("acme"), "{body}");
    assert!(upstream.seen().is_empty());
    proxy.stop().await;
}

#[tokio::test]
async fn anonymous_is_forwarded_without_authorization() {
    let upstream = Upstream::ok().await;
    let proxy =
        TestProxy::start(&pat_config(upstream.addr, None, "  allowAnonymous: true\n")).await;
    let r = proxy.get("/repos/acme/widgets").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["x-credential-type"], "anonymous");
    assert!(upstream.seen()[0].headers.get("authorization").is_none());
    let records = proxy.stop().await;
    assert_eq!(records[0]["credential"], "anonymous");
    assert!(records[0]["hashed_token"].is_null());
}

#[tokio::test]
async fn clients_need_a_key_and_stay_inside_their_policy() {
    let upstream = Upstream::ok().await;
    let clients = "  clients:\n    - name: catalog\n      key: k-catalog-123\n      allow: [\"acme/*\"]\n      methods: [GET]\n";
    let proxy = TestProxy::start(&pat_config(upstream.addr, Some("ghp_testpat"), clients)).await;

    let r = proxy.get("/repos/acme/widgets").await;
    assert_refusal(
        &r,
        StatusCode::PROXY_AUTHENTICATION_REQUIRED,
        "client_unauthenticated",
    );
    assert_eq!(
        r.headers()["proxy-authenticate"],
        "Basic realm=\"gh-token-proxy\""
    );

    let with_key = |method: Method, path: &str| {
        Request::builder()
            .method(method)
            .uri(path)
            .header("host", proxy.addr.to_string())
            .header("authorization", "Bearer k-catalog-123")
            .body(full(Bytes::new()))
            .unwrap()
    };
    let (r, _) = proxy.send(with_key(Method::GET, "/repos/other/x")).await;
    assert_refusal(&r, StatusCode::FORBIDDEN, "client_policy");
    let (r, _) = proxy
        .send(with_key(Method::DELETE, "/repos/acme/widgets"))
        .await;
    assert_refusal(&r, StatusCode::FORBIDDEN, "client_policy");
    let (r, _) = proxy
        .send(with_key(Method::GET, "/repos/acme/widgets"))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    // The client's key is never forwarded: the PAT is.
    assert_eq!(
        upstream.seen()[0].headers["authorization"],
        "Bearer ghp_testpat"
    );

    let records = proxy.stop().await;
    assert_eq!(records.len(), 4);
    assert!(records[0]["client"].is_null());
    assert_eq!(records[1]["client"], "catalog");
    assert_eq!(records[3]["client"], "catalog");
    let text = serde_json::to_string(&records).unwrap();
    assert!(!text.contains("k-catalog-123"));
    assert!(!text.contains("ghp_testpat"));
}

/// A configured origin's authority is GitHub's even when it shares the proxy's port, and even
/// outside the origin's path prefix: such a request is refused `unknown_host`, not read as one to
/// the proxy itself (which would send it to the default host, with the default host's PAT).
#[tokio::test]
async fn a_configured_authority_on_the_proxy_port_is_never_read_as_the_proxy() {
    let upstream = Upstream::ok().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let yaml = format!(
        "integrations:\n  github:\n    - host: github.com\n      apiBaseUrl: http://{}\n      token: ghp_default\n    - host: mirror.test\n      apiBaseUrl: http://127.0.0.2:{port}/api/v3\n      token: ghp_mirror\nproxy:\n  listen: 127.0.0.1:0\n",
        upstream.addr
    );
    let proxy = TestProxy::start_on(listener, &yaml).await;
    let absolute = |url: String| {
        let host = url.split('/').nth(2).unwrap().to_owned();
        Request::get(url)
            .header("host", host)
            .body(full(Bytes::new()))
            .unwrap()
    };
    // The mirror's authority, outside its `/api/v3` prefix.
    let (r, _) = proxy
        .send(absolute(format!("http://127.0.0.2:{port}/repos/o/r")))
        .await;
    assert_refusal(&r, StatusCode::FORBIDDEN, "unknown_host");
    // The proxy's own address is still read by its path (default host).
    let (r, _) = proxy
        .send(absolute(format!("http://127.0.0.1:{port}/repos/o/r")))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(upstream.seen().len(), 1);
    assert_eq!(upstream.seen()[0].uri, "/repos/o/r");
}

/// RFC 9112 §3.2: two `Host` headers, or one that is not `host[:port]`, get `400
/// invalid_request` and reach nothing (the Host is the base pagination links are rewritten to).
#[tokio::test]
async fn duplicate_or_malformed_host_is_an_invalid_request() {
    let upstream = Upstream::ok().await;
    let proxy = TestProxy::start(&pat_config(upstream.addr, Some("ghp_testpat"), "")).await;
    for host_lines in [
        "Host: a.example\r\nHost: b.example\r\n",
        "Host: evil.example/x?\r\n",
        "Host: user@evil.example\r\n",
        "Host: evil.example:80x\r\n",
        "Host: [::1\r\n",
    ] {
        let text = raw_exchange(
            proxy.addr,
            format!("GET /repos/o/r HTTP/1.1\r\n{host_lines}Connection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert!(text.starts_with("HTTP/1.1 400 "), "{host_lines:?}: {text}");
        assert!(text.contains("\"reason\":\"invalid_request\""), "{text}");
        assert!(
            text.contains("x-credential-reason: invalid_request"),
            "{text}"
        );
    }
    assert!(upstream.seen().is_empty());
    for host in ["gh-proxy.internal:8080", "127.0.0.1", "[::1]:8080", ""] {
        let text = raw_exchange(
            proxy.addr,
            format!("GET /repos/o/r HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await;
        assert!(text.starts_with("HTTP/1.1 200 "), "{host:?}: {text}");
    }
    assert_eq!(upstream.seen().len(), 4);
    let records = proxy.stop().await;
    assert_eq!(records.len(), 9);
    assert!(
        records[..5]
            .iter()
            .all(|r| r["reason"] == "invalid_request" && r["status"] == 400)
    );
}
