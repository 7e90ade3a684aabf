//! Who may use the proxy (SPEC §6), through the real server against a TLS FakeGitHub: keys in
//! each of the four forms, the 407 challenge, allow/methods/credentials rules, the no-owner and
//! GraphQL restrictions, `keySha256`, the client in the audit record, and that a client key never
//! leaves the proxy (not upstream, not in a response, an audit record or a log line).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod hostile_common;
mod server_common;
mod support;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use sha2::{Digest, Sha256};

use hostile_common::{INSTALLATION_ID, PAT, api_authority, fake_github, proxy};
use server_common::{TestProxy, assert_refusal, full};
use support::FakeGitHub;

const CATALOG_KEY: &str = "ck-catalog-CANARY-1111";
const READER_KEY: &str = "ck-reader-CANARY-2222";
const APPONLY_KEY: &str = "ck-apponly-CANARY-3333";
const ONEREPO_KEY: &str = "ck-onerepo-CANARY-4444";
const OPS_KEY: &str = "ck-ops-CANARY-5555";
/// Configured only as its SHA-256 (`keySha256`).
const HASHED_KEY: &str = "ck-hashed-CANARY-6666";
const ALL_KEYS: [&str; 6] = [
    CATALOG_KEY,
    READER_KEY,
    APPONLY_KEY,
    ONEREPO_KEY,
    OPS_KEY,
    HASHED_KEY,
];

fn clients_yaml() -> String {
    let hashed: String = Sha256::digest(HASHED_KEY.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!(
        "  clients:
    - name: catalog
      key: {CATALOG_KEY}
      allow: ['acme/*']
    - name: reader
      key: {READER_KEY}
      methods: [GET, HEAD]
    - name: apponly
      key: {APPONLY_KEY}
      credentials: [app]
    - name: onerepo
      key: {ONEREPO_KEY}
      allow: ['acme/widgets']
    - name: ops
      key: {OPS_KEY}
    - name: hashed
      keySha256: {hashed}
      allow: ['acme']
"
    )
}

/// Every log line of this test binary, at debug level (our crate at trace), including `log`
/// records from rustls/hyper-rustls: the canary test searches it for client keys.
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                "debug,gh_token_proxy=trace",
            ))
            .with_ansi(false)
            .with_writer(move || Capture(sink.clone()))
            .try_init();
        logs
    })
    .clone()
}

struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

async fn start() -> (FakeGitHub, TestProxy) {
    captured_logs();
    let fake = fake_github().await;
    let proxy = proxy(&fake, &clients_yaml()).await;
    (fake, proxy)
}

/// Sends `method target` with `headers` (a `Host` naming the proxy is added) and `body`.
async fn send(
    proxy: &TestProxy,
    method: Method,
    target: &str,
    headers: &[(&str, String)],
    body: &str,
) -> Response<Bytes> {
    let mut req = Request::builder()
        .method(method)
        .uri(target)
        .header("host", proxy.addr.to_string());
    for (name, value) in headers {
        req = req.header(*name, value);
    }
    let req = req.body(full(Bytes::from(body.to_string()))).unwrap();
    proxy.send(req).await.0
}

async fn get_as(proxy: &TestProxy, key: &str, target: &str) -> Response<Bytes> {
    let auth = ("authorization", format!("Bearer {key}"));
    send(proxy, Method::GET, target, &[auth], "").await
}

fn bearer(key: &str) -> (&'static str, String) {
    ("authorization", format!("Bearer {key}"))
}

fn message(response: &Response<Bytes>) -> String {
    let body: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
    body["message"].as_str().unwrap().to_string()
}

/// The token FakeGitHub last received, without its scheme.
fn upstream_token(fake: &FakeGitHub) -> String {
    let auth = fake
        .last_authorization()
        .expect("an Authorization upstream");
    let (_, token) = auth.split_once(' ').expect("scheme and token");
    token.to_string()
}

/// Served with the App's installation token (FakeGitHub's catch-all says `app:<installation>`).
fn assert_served_by_app(fake: &FakeGitHub, response: &Response<Bytes>) {
    assert_eq!(response.status(), StatusCode::OK, "{:?}", response.body());
    assert_eq!(response.headers()["x-credential-type"], "app");
    let body: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
    assert_eq!(body["auth"], format!("app:{INSTALLATION_ID}"), "{body}");
    let token = upstream_token(fake);
    assert!(token.starts_with("ghs_"), "{token}");
    assert!(fake.issued_tokens().contains(&token));
}

#[tokio::test]
async fn missing_key_gets_407_with_a_basic_challenge() {
    let (fake, proxy) = start().await;
    let r = send(&proxy, Method::GET, "/repos/acme/widgets", &[], "").await;
    assert_refusal(
        &r,
        StatusCode::PROXY_AUTHENTICATION_REQUIRED,
        "client_unauthenticated",
    );
    assert_eq!(
        r.headers()["proxy-authenticate"],
        "Basic realm=\"gh-token-proxy\""
    );
    assert!(message(&r).contains("Proxy-Authorization"));
    assert!(fake.requests().is_empty(), "{:?}", fake.requests());
    let records = proxy.stop().await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["reason"], "client_unauthenticated");
    assert_eq!(records[0]["status"], 407);
    assert!(records[0]["client"].is_null());
}

/// Without a valid key, nothing about the target is judged: a configured-host probe, a bad path
/// and an App endpoint all get the same `407`, so an unauthenticated caller cannot learn which
/// hosts the proxy serves or how it reads paths.
#[tokio::test]
async fn missing_key_gets_407_before_any_routing_or_path_refusal() {
    let (fake, proxy) = start().await;
    for target in [
        "/evil.example/repos/acme/widgets",
        "/repos/acme/widgets/%2e%2e/secret",
        "/repos/acme/../widgets",
        "/app/installations",
    ] {
        let r = send(&proxy, Method::GET, target, &[], "").await;
        assert_refusal(
            &r,
            StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            "client_unauthenticated",
        );
    }
    // With a key, the same requests get their own refusals.
    let key = [bearer(CATALOG_KEY)];
    let r = send(&proxy, Method::GET, "/evil.example/x", &key, "").await;
    assert_refusal(&r, StatusCode::FORBIDDEN, "unknown_host");
    let r = send(&proxy, Method::GET, "/repos/acme/../widgets", &key, "").await;
    assert_refusal(&r, StatusCode::BAD_REQUEST, "invalid_path");
    assert!(fake.requests().is_empty(), "{:?}", fake.requests());
    let records = proxy.stop().await;
    assert_eq!(records.len(), 6);
    for record in &records[..4] {
        assert_eq!(record["reason"], "client_unauthenticated", "{record}");
        assert!(record["client"].is_null(), "{record}");
        assert!(record["host"].is_null(), "{record}");
    }
    assert_eq!(records[4]["client"], "catalog");
}

/// `CONNECT` too: no key, `407`; with a key, `405` with advice, and the record names the client.
#[tokio::test]
async fn connect_is_authenticated_before_it_is_refused() {
    let (fake, proxy) = start().await;
    let connect = |extra: &str| {
        format!(
            "CONNECT api.github.com:443 HTTP/1.1\r\nHost: api.github.com:443\r\n{extra}Connection: close\r\n\r\n"
        )
    };
    let text = server_common::raw_exchange(proxy.addr, connect("").as_bytes()).await;
    assert!(text.starts_with("HTTP/1.1 407 "), "{text}");
    let text = server_common::raw_exchange(
        proxy.addr,
        connect(&format!("Proxy-Authorization: Bearer {CATALOG_KEY}\r\n")).as_bytes(),
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 405 "), "{text}");
    assert!(text.contains("connect_not_supported"), "{text}");
    assert!(fake.requests().is_empty());
    let records = proxy.stop().await;
    assert_eq!(records.len(), 2);
    assert_eq!(records[0]["reason"], "client_unauthenticated");
    assert_eq!(records[1]["reason"], "connect_not_supported");
    assert_eq!(records[1]["client"], "catalog");
}

#[tokio::test]
async fn wrong_key_gets_407() {
    let (fake, proxy) = start().await;
    for headers in [
        vec![bearer("ck-catalog-CANARY-1112")],
        vec![("authorization", format!("token {CATALOG_KEY}x"))],
        vec![("proxy-authorization", "Bearer nope".to_string())],
        vec![(
            "proxy-authorization",
            format!("Basic {}", BASE64.encode(format!("catalog:{CATALOG_KEY} "))),
        )],
        // The key is the secret, not the name: a right name with no key is nothing.
        vec![(
            "proxy-authorization",
            format!("Basic {}", BASE64.encode("catalog:")),
        )],
        // A scheme the proxy does not read.
        vec![("authorization", format!("Digest {CATALOG_KEY}"))],
    ] {
        let r = send(&proxy, Method::GET, "/repos/acme/widgets", &headers, "").await;
        assert_refusal(
            &r,
            StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            "client_unauthenticated",
        );
        assert_eq!(
            r.headers()["proxy-authenticate"],
            "Basic realm=\"gh-token-proxy\""
        );
    }
    assert!(fake.requests().is_empty(), "{:?}", fake.requests());
}

#[tokio::test]
async fn authorization_bearer_key_is_accepted() {
    let (fake, proxy) = start().await;
    let r = get_as(&proxy, CATALOG_KEY, "/repos/acme/widgets").await;
    assert_served_by_app(&fake, &r);
}

#[tokio::test]
async fn authorization_token_key_is_accepted() {
    let (fake, proxy) = start().await;
    let auth = ("authorization", format!("token {CATALOG_KEY}"));
    let r = send(&proxy, Method::GET, "/repos/acme/widgets", &[auth], "").await;
    assert_served_by_app(&fake, &r);
}

#[tokio::test]
async fn proxy_authorization_bearer_key_is_accepted() {
    let (fake, proxy) = start().await;
    let auth = ("proxy-authorization", format!("Bearer {CATALOG_KEY}"));
    let r = send(&proxy, Method::GET, "/repos/acme/widgets", &[auth], "").await;
    assert_served_by_app(&fake, &r);
}

#[tokio::test]
async fn proxy_authorization_basic_name_and_key_in_forward_proxy_form_is_accepted() {
    // What `HTTP_PROXY=http://catalog:KEY@proxy:8080` makes a client send.
    let (fake, proxy) = start().await;
    let target = format!("http://{}/repos/acme/widgets", api_authority(&fake));
    let basic = BASE64.encode(format!("catalog:{CATALOG_KEY}"));
    let req = Request::get(target.as_str())
        .header("host", api_authority(&fake))
        .header("proxy-authorization", format!("Basic {basic}"))
        .body(full(Bytes::new()))
        .unwrap();
    let (r, _) = proxy.send(req).await;
    assert_served_by_app(&fake, &r);
    let records = proxy.stop().await;
    assert_eq!(records[0]["client"], "catalog");
    assert_eq!(records[0]["host"], api_authority(&fake));
}

#[tokio::test]
async fn allow_pattern_admits_its_owner_and_refuses_others() {
    let (fake, proxy) = start().await;
    let r = get_as(&proxy, CATALOG_KEY, "/repos/acme/widgets").await;
    assert_served_by_app(&fake, &r);
    let r = get_as(&proxy, CATALOG_KEY, "/orgs/acme/repos").await;
    assert_served_by_app(&fake, &r);
    let before = fake.requests().len();

    for target in [
        "/repos/other/x",
        "/orgs/other",
        "/repos/acme-evil/widgets",
        "/search/issues?q=repo:other/x",
    ] {
        let r = get_as(&proxy, CATALOG_KEY, target).await;
        assert_refusal(&r, StatusCode::FORBIDDEN, "client_policy");
        let m = message(&r);
        assert!(m.contains("catalog") && m.contains("allow"), "{m}");
    }
    assert_eq!(fake.requests().len(), before, "{:?}", fake.requests());
}

#[tokio::test]
async fn methods_rule_refuses_other_methods() {
    let (fake, proxy) = start().await;
    let r = get_as(&proxy, READER_KEY, "/repos/acme/widgets").await;
    assert_served_by_app(&fake, &r);
    let before = fake.requests().len();
    for method in [Method::POST, Method::DELETE, Method::PATCH] {
        let r = send(
            &proxy,
            method.clone(),
            "/repos/acme/widgets/issues",
            &[bearer(READER_KEY)],
            "{}",
        )
        .await;
        assert_refusal(&r, StatusCode::FORBIDDEN, "client_policy");
        let m = message(&r);
        assert!(
            m.contains("reader") && m.contains(method.as_str()) && m.contains("GET"),
            "{m}"
        );
    }
    assert_eq!(fake.requests().len(), before);
}

#[tokio::test]
async fn credentials_rule_refuses_a_request_only_the_pat_would_serve() {
    let (fake, proxy) = start().await;
    // acme has the App: allowed.
    let r = get_as(&proxy, APPONLY_KEY, "/repos/acme/widgets").await;
    assert_served_by_app(&fake, &r);

    // other has no installation: only the PAT would serve it.
    let r = get_as(&proxy, APPONLY_KEY, "/repos/other/x").await;
    assert_refusal(&r, StatusCode::FORBIDDEN, "client_policy");
    let m = message(&r);
    assert!(
        m.contains("apponly")
            && m.contains("pat")
            && m.contains("credentials")
            && m.contains("not_installed"),
        "{m}"
    );
    // Resolving may look up installations; the request itself never went upstream.
    assert_eq!(fake.calls("/repos/other/x"), 0, "{:?}", fake.requests());
    assert!(fake.last_authorization().is_none_or(|a| !a.contains(PAT)));

    // The same request by a client allowed every kind gets the PAT.
    let r = get_as(&proxy, OPS_KEY, "/repos/other/x").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["x-credential-type"], "pat");

    let records = proxy.stop().await;
    let refused = records
        .iter()
        .find(|r| r["client"] == "apponly" && r["status"] == 403)
        .unwrap();
    assert_eq!(refused["reason"], "client_policy");
    assert_eq!(refused["credential"], "none");
    assert!(refused["hashed_token"].is_null());
    assert!(refused["upstream_status"].is_null());
}

#[tokio::test]
async fn no_owner_request_is_only_for_the_star_pattern() {
    let (fake, proxy) = start().await;
    for key in [CATALOG_KEY, ONEREPO_KEY, HASHED_KEY] {
        let r = get_as(&proxy, key, "/rate_limit").await;
        assert_refusal(&r, StatusCode::FORBIDDEN, "client_policy");
        assert!(message(&r).contains("no owner"), "{}", message(&r));
    }
    assert!(fake.requests().is_empty(), "{:?}", fake.requests());
    // `ops` has the default allow list, ["*"].
    let r = get_as(&proxy, OPS_KEY, "/rate_limit").await;
    assert_eq!(r.status(), StatusCode::OK, "{:?}", r.body());
    assert_eq!(r.headers()["x-credential-type"], "pat");
    assert_eq!(r.headers()["x-credential-reason"], "no_owner");
}

#[tokio::test]
async fn graphql_is_only_for_star_or_owner_star_patterns() {
    let (fake, proxy) = start().await;
    let query = r#"{"query":"query($owner:String!,$name:String!){repository(owner:$owner,name:$name){id}}","variables":{"owner":"acme","name":"widgets"}}"#;
    // A single-repo pattern never admits GraphQL, by body variables or by header.
    let r = send(
        &proxy,
        Method::POST,
        "/graphql",
        &[bearer(ONEREPO_KEY)],
        query,
    )
    .await;
    assert_refusal(&r, StatusCode::FORBIDDEN, "client_policy");
    assert!(message(&r).contains("GraphQL"), "{}", message(&r));
    let r = send(
        &proxy,
        Method::POST,
        "/graphql",
        &[bearer(ONEREPO_KEY), ("x-github-owner", "acme".to_string())],
        r#"{"query":"{viewer{login}}"}"#,
    )
    .await;
    assert_refusal(&r, StatusCode::FORBIDDEN, "client_policy");
    // Neither does an owner-only pattern (`acme`, the `hashed` client).
    let r = send(
        &proxy,
        Method::POST,
        "/graphql",
        &[bearer(HASHED_KEY)],
        query,
    )
    .await;
    assert_refusal(&r, StatusCode::FORBIDDEN, "client_policy");
    assert!(fake.calls("/graphql") == 0, "{:?}", fake.requests());

    // `acme/*` and `*` do.
    let r = send(
        &proxy,
        Method::POST,
        "/graphql",
        &[bearer(CATALOG_KEY)],
        query,
    )
    .await;
    assert_served_by_app(&fake, &r);
    let r = send(&proxy, Method::POST, "/graphql", &[bearer(OPS_KEY)], query).await;
    assert_served_by_app(&fake, &r);
    // `acme/*` still refuses GraphQL about another owner.
    let r = send(
        &proxy,
        Method::POST,
        "/graphql",
        &[bearer(CATALOG_KEY), ("x-github-owner", "other".to_string())],
        r#"{"query":"{viewer{login}}"}"#,
    )
    .await;
    assert_refusal(&r, StatusCode::FORBIDDEN, "client_policy");
    assert_eq!(fake.calls("/graphql"), 2);
}

#[tokio::test]
async fn key_sha256_client_is_accepted_by_its_key() {
    let (fake, proxy) = start().await;
    let r = get_as(&proxy, HASHED_KEY, "/repos/acme/widgets").await;
    assert_served_by_app(&fake, &r);
    // The configured hex itself is not a key.
    let hex: String = Sha256::digest(HASHED_KEY.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let r = get_as(&proxy, &hex, "/repos/acme/widgets").await;
    assert_refusal(
        &r,
        StatusCode::PROXY_AUTHENTICATION_REQUIRED,
        "client_unauthenticated",
    );
    let records = proxy.stop().await;
    assert_eq!(records[0]["client"], "hashed");
    assert!(records[1]["client"].is_null());
}

#[tokio::test]
async fn audit_record_names_the_client() {
    let (_fake, proxy) = start().await;
    get_as(&proxy, CATALOG_KEY, "/repos/acme/widgets").await;
    get_as(&proxy, READER_KEY, "/repos/other/x").await;
    get_as(&proxy, CATALOG_KEY, "/repos/other/x").await;
    let records = proxy.stop().await;
    let clients: Vec<_> = records
        .iter()
        .map(|r| (r["client"].clone(), r["status"].clone()))
        .collect();
    assert_eq!(
        clients,
        vec![
            ("catalog".into(), 200.into()),
            ("reader".into(), 200.into()),
            ("catalog".into(), 403.into()),
        ]
    );
}

#[tokio::test]
async fn audit_record_client_is_null_without_clients() {
    captured_logs();
    let fake = fake_github().await;
    let proxy = proxy(&fake, "").await;
    let r = get_as(&proxy, CATALOG_KEY, "/repos/acme/widgets").await;
    assert_served_by_app(&fake, &r);
    let records = proxy.stop().await;
    assert_eq!(records.len(), 1);
    assert!(records[0]["client"].is_null());
    assert!(records[0].as_object().unwrap().contains_key("client"));
}

#[tokio::test]
async fn client_key_is_never_forwarded_upstream() {
    let (fake, proxy) = start().await;
    let basic = BASE64.encode(format!("ops:{OPS_KEY}"));
    for headers in [
        vec![bearer(OPS_KEY)],
        vec![("authorization", format!("token {OPS_KEY}"))],
        vec![("proxy-authorization", format!("Bearer {OPS_KEY}"))],
        vec![("proxy-authorization", format!("Basic {basic}"))],
        // Both at once: neither may leak.
        vec![
            bearer(OPS_KEY),
            ("proxy-authorization", format!("Basic {basic}")),
        ],
    ] {
        let r = send(&proxy, Method::GET, "/repos/acme/widgets", &headers, "").await;
        assert_served_by_app(&fake, &r);
        let upstream = fake.last_authorization().unwrap();
        assert!(!upstream.contains(OPS_KEY) && !upstream.contains(&basic));
    }
    // A PAT-served request also carries the PAT, never the key.
    let r = get_as(&proxy, OPS_KEY, "/repos/other/x").await;
    assert_eq!(r.headers()["x-credential-type"], "pat");
    assert_eq!(upstream_token(&fake), PAT);
    let audit = std::fs::read_to_string(&proxy.audit_path).unwrap();
    assert!(!audit.contains(OPS_KEY) && !audit.contains(&basic));
}

/// The canary: clients with known keys make allowed and refused requests (in every key form,
/// right and wrong) with debug logging on; no key may appear in any response, audit record or
/// log line.
#[tokio::test]
async fn client_keys_never_appear_in_responses_audit_or_logs() {
    let (fake, proxy) = start().await;
    let mut responses = Vec::new();
    for key in ALL_KEYS {
        let basic = BASE64.encode(format!("someone:{key}"));
        let wrong = format!("{key}-wrong");
        for (target, method) in [
            ("/repos/acme/widgets", Method::GET),
            ("/repos/other/x", Method::GET),
            ("/rate_limit", Method::GET),
            ("/repos/acme/widgets/issues", Method::POST),
            ("/repos/acme/%2e%2e/x", Method::GET),
            ("/app/installations", Method::GET),
        ] {
            for headers in [
                vec![bearer(key)],
                vec![("authorization", format!("token {key}"))],
                vec![("proxy-authorization", format!("Bearer {key}"))],
                vec![("proxy-authorization", format!("Basic {basic}"))],
                vec![bearer(&wrong)],
            ] {
                responses.push(send(&proxy, method.clone(), target, &headers, "{}").await);
            }
        }
        let graphql = r#"{"query":"{viewer{login}}","variables":{"owner":"acme"}}"#;
        responses.push(send(&proxy, Method::POST, "/graphql", &[bearer(key)], graphql).await);
    }
    // Some were served, some refused, some unauthenticated.
    for status in [200, 403, 407, 400] {
        assert!(responses.iter().any(|r| r.status() == status), "{status}");
    }
    let issued = fake.issued_tokens();
    assert!(!issued.is_empty());
    let records = proxy.stop().await;
    assert_eq!(records.len(), responses.len());
    let audit: String = records.iter().map(|r| format!("{r}\n")).collect();
    let logs = String::from_utf8_lossy(&captured_logs().lock().unwrap()).to_string();
    assert!(!logs.is_empty());

    let mut secrets: Vec<String> = ALL_KEYS.iter().map(|k| k.to_string()).collect();
    secrets.push(PAT.to_string());
    secrets.extend(issued);
    for secret in &secrets {
        for r in &responses {
            assert!(
                !String::from_utf8_lossy(r.body()).contains(secret.as_str()),
                "response body leaks {secret}"
            );
            for (name, value) in r.headers() {
                assert!(
                    !String::from_utf8_lossy(value.as_bytes()).contains(secret.as_str()),
                    "response header {name} leaks {secret}"
                );
            }
        }
        assert!(!audit.contains(secret.as_str()), "audit leaks {secret}");
        assert!(!logs.contains(secret.as_str()), "logs leak {secret}");
    }
    // Nor the Basic form of any key.
    for key in ALL_KEYS {
        let basic = BASE64.encode(format!("someone:{key}"));
        assert!(!audit.contains(&basic) && !logs.contains(&basic));
    }
}

/// An owner named only by `X-GitHub-Owner` (or `defaultOwner`) picks the credential of an
/// ownerless request, but does not make it a request about that owner: GitHub acts on the path
/// (`/search/code?q=password` searches everything the credential can see), so §6's "no owner
/// matches only `*`" still applies.
#[tokio::test]
async fn owner_hint_does_not_make_an_ownerless_request_owned() {
    captured_logs();
    let fake = fake_github().await;
    let proxy = proxy(&fake, &format!("  defaultOwner: acme\n{}", clients_yaml())).await;
    for target in ["/rate_limit", "/search/code?q=password", "/user/repos"] {
        for hint in [Some("acme"), None] {
            let mut headers = vec![bearer(CATALOG_KEY)];
            if let Some(owner) = hint {
                headers.push(("x-github-owner", owner.to_string()));
            }
            let r = send(&proxy, Method::GET, target, &headers, "").await;
            assert_refusal(&r, StatusCode::FORBIDDEN, "client_policy");
            assert!(message(&r).contains("no owner"), "{}", message(&r));
        }
    }
    // GraphQL names its owner by the header (§5): that is the request's owner.
    let r = send(
        &proxy,
        Method::POST,
        "/graphql",
        &[bearer(CATALOG_KEY), ("x-github-owner", "acme".to_string())],
        r#"{"query":"{viewer{login}}"}"#,
    )
    .await;
    assert_served_by_app(&fake, &r);
    // GraphQL with no owner anywhere falls back to defaultOwner for the credential only.
    let r = send(
        &proxy,
        Method::POST,
        "/graphql",
        &[bearer(CATALOG_KEY)],
        r#"{"query":"{viewer{login}}"}"#,
    )
    .await;
    assert_refusal(&r, StatusCode::FORBIDDEN, "client_policy");
    // `*` clients still get the hinted owner's credential.
    let r = send(
        &proxy,
        Method::GET,
        "/meta",
        &[bearer(OPS_KEY), ("x-github-owner", "acme".to_string())],
        "",
    )
    .await;
    assert_served_by_app(&fake, &r);
}

/// A search whose qualifiers name more than the first one's scope is about all of them: a client
/// allowed one repo (or owner) cannot widen it with a second `repo:`/`org:` qualifier.
#[tokio::test]
async fn search_qualifiers_beyond_the_first_do_not_widen_a_client() {
    let (fake, proxy) = start().await;
    let r = get_as(
        &proxy,
        ONEREPO_KEY,
        "/search/issues?q=repo:acme/widgets+bug",
    )
    .await;
    assert_served_by_app(&fake, &r);
    for q in [
        "repo:acme/widgets+repo:acme/secret",
        "repo:acme/widgets+org:other",
        "repo:acme/widgets+user:acme",
        "repo:acme/widgets+repo:other/x",
    ] {
        let r = get_as(&proxy, ONEREPO_KEY, &format!("/search/issues?q={q}")).await;
        assert_refusal(&r, StatusCode::FORBIDDEN, "client_policy");
    }
    // `acme/*` may search across acme, not beyond.
    let r = get_as(
        &proxy,
        CATALOG_KEY,
        "/search/issues?q=repo:acme/widgets+repo:acme/secret",
    )
    .await;
    assert_served_by_app(&fake, &r);
    let r = get_as(&proxy, CATALOG_KEY, "/search/issues?q=org:acme+org:other").await;
    assert_refusal(&r, StatusCode::FORBIDDEN, "client_policy");
}

/// GitHub's search combines qualifiers with `OR`, `NOT` and parentheses: a client held to some
/// repos cannot use them to reach beyond (`repo:acme/widgets OR org:other`), in any case, nor
/// skip the qualifier check by writing the path in upper case. A client allowed `*` may.
#[tokio::test]
async fn search_operators_and_path_case_do_not_widen_a_client() {
    let (fake, proxy) = start().await;
    for target in [
        "/search/code?q=repo:acme/widgets+OR+(org:other+password)",
        "/search/issues?q=repo:acme/widgets+OR+is:private",
        "/search/issues?q=repo:acme/widgets%20or%20org:other",
        "/search/issues?q=NOT+repo:acme/widgets",
        "/search/issues?q=repo:acme/widgets+(bug)",
        "/SEARCH/issues?q=repo:acme/widgets+org:other",
        "/Search/code?q=repo:acme/widgets+repo:other/x",
    ] {
        let r = get_as(&proxy, ONEREPO_KEY, target).await;
        assert_refusal(&r, StatusCode::FORBIDDEN, "client_policy");
    }
    assert!(fake.requests().is_empty(), "{:?}", fake.requests());
    // A word that merely contains the letters is no operator.
    let r = get_as(
        &proxy,
        ONEREPO_KEY,
        "/search/issues?q=repo:acme/widgets+error+notice",
    )
    .await;
    assert_served_by_app(&fake, &r);
}
