//! Secret canary (SPEC §3.2, §7.3): a varied session through the real server (App, PAT,
//! refusals, a `401` retry, GraphQL, a failing mint, upstream errors, explain, metrics) with
//! diagnostics captured at debug level; then everything the proxy wrote (audit file,
//! diagnostics, every response head and body, explain and admin output) is searched for every
//! token FakeGitHub issued, every App JWT it accepted, every PAT and every private-key line.
//! None may appear.
//!
//! One test in this binary: it installs the process-wide tracing subscriber.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/e2e.rs"]
mod e2e;
mod server_common;
mod support;

use std::collections::BTreeSet;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use e2e::{DOWN_PAT, PAT, Reply, UNTRUSTED_PAT, World, request};
use http::Method;
use serde_json::json;
use support::fake_github::Scripted;
use support::secrets::{Secrets, hashed_token};
use support::{APP1_KEY, APP2_KEY};
use tracing_subscriber::layer::SubscriberExt as _;

/// Everything the diagnostics wrote.
#[derive(Clone, Default)]
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

/// Installs a debug-level subscriber (text and JSON, as `LOG_FORMAT=json` would) writing to
/// the returned buffer.
fn capture_diagnostics() -> Capture {
    let capture = Capture::default();
    let text = capture.clone();
    let json = capture.clone();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_subscriber::EnvFilter::new(
            "debug,gh_token_proxy=trace",
        ))
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(move || text.clone()),
        )
        .with(
            tracing_subscriber::fmt::layer()
                .json()
                .with_writer(move || json.clone()),
        );
    tracing::subscriber::set_global_default(subscriber).unwrap();
    capture
}

/// A response as bytes: status line, every header, the body.
fn transcript(reply: &Reply) -> Vec<u8> {
    let mut out = format!("{}\n", reply.status).into_bytes();
    for (name, value) in &reply.headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.push(b'\n');
    }
    out.extend_from_slice(&reply.body);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_pat_or_key_appears_in_anything_the_proxy_wrote() {
    let diagnostics = capture_diagnostics();
    let w = World::start().await;
    let mut replies: Vec<Reply> = Vec::new();
    let mut tokens: BTreeSet<String> = BTreeSet::new();
    let mut remember = |w: &World| {
        tokens.extend(w.fake.issued_tokens());
        tokens.extend(w.ghe.issued_tokens());
    };
    let jwts = |w: &World| {
        let mut all = w.fake.jwts();
        all.extend(w.ghe.jwts());
        all
    };
    w.fake.script(
        "GET /repos/acme/slow",
        Scripted::json(json!({})).delay(Duration::from_millis(e2e::RESPONSE_TIMEOUT_MS + 1000)),
    );

    // A failing mint first (GitHub's message is logged at warn; the PAT serves meanwhile).
    w.fake.fail_mints(500, 1);
    replies.push(w.get("/repos/acme/widgets").await);

    // App, PAT, GHE App, raw, forward-proxy form.
    let api = w.api_authority();
    for target in [
        "/repos/acme/widgets".to_string(),
        "/repos/other/thing".to_string(),
        "/user".to_string(),
        format!("/{}/api/v3/repos/ghe-org/tools", w.ghe_authority()),
        format!("/{api}/raw/acme/widgets/main/README.md"),
        format!(
            "/{}/ghe-org/tools.git/info/refs?service=git-upload-pack",
            w.ghe_authority()
        ),
    ] {
        replies.push(w.get(&target).await);
    }
    replies.push(
        request(
            w.proxy.addr,
            Method::GET,
            &format!("http://{api}/repos/acme/widgets/pulls"),
            &[("host", &api)],
            Bytes::new(),
        )
        .await,
    );
    // GraphQL, and a client trying to choose its own credential (stripped, never echoed).
    replies.push(
        request(
            w.proxy.addr,
            Method::POST,
            "/graphql",
            &[
                ("content-type", "application/json"),
                ("authorization", "Bearer client-chosen-token"),
            ],
            Bytes::from(json!({"query": "{x}", "variables": {"owner": "acme"}}).to_string()),
        )
        .await,
    );
    remember(&w);

    // A revoked token: 401, eviction, retry with a fresh one.
    w.fake.set_strict_auth(true);
    for token in w.fake.issued_tokens() {
        w.fake.revoke_token(&token);
    }
    let retried = w.get("/repos/acme/widgets").await;
    retried.assert_served(200, "app", "installed");
    replies.push(retried);
    remember(&w);

    // Refusals and upstream errors.
    for target in [
        "/app/installations".to_string(),
        "/repos/acme/%2e%2e/x".to_string(),
        "/evil.example.com/repos/a/b".to_string(),
        format!("/{}/api/v3/repos/nobody/x", w.ghe_authority()),
        format!("/localhost:{}/repos/acme/widgets", w.closed_port),
        format!(
            "/localhost:{}/repos/acme/widgets",
            w.untrusted.addr().port()
        ),
        "/repos/acme/slow".to_string(),
    ] {
        replies.push(w.get(&target).await);
    }
    remember(&w);

    // Explain (tree and JSON) and the admin endpoints.
    let shared = &w.proxy.shared;
    let mut explained = Vec::new();
    for url in [
        format!("https://{api}/repos/acme/widgets"),
        format!("https://{api}/repos/other/thing"),
    ] {
        let e =
            gh_token_proxy::explain::explain(&shared.config, &shared.resolver, &url, &Method::GET)
                .await
                .unwrap();
        explained.extend_from_slice(gh_token_proxy::explain::render_tree(&e).as_bytes());
        explained.extend_from_slice(&serde_json::to_vec(&e).unwrap());
    }
    let metrics = w.proxy.admin_get("/metrics").await;
    let admin_explain = w
        .proxy
        .admin_get("/explain?url=https%3A%2F%2Fapi.github.com%2Frepos%2Facme%2Fwidgets")
        .await;
    remember(&w);

    let jwts = jwts(&w);
    w.audit(replies.len()).await;
    let audit = std::fs::read(&w.proxy.audit_path).unwrap();
    // Stopping (drain, flush) writes diagnostics too.
    let records = w.proxy.stop().await;
    assert_eq!(records.len(), replies.len());
    let diagnostics = diagnostics.0.lock().unwrap().clone();

    // The session did what it claims (so the search below means something).
    let statuses: Vec<u16> = replies.iter().map(|r| r.status.as_u16()).collect();
    for status in [200, 403, 400, 502, 504] {
        assert!(statuses.contains(&status), "{statuses:?}");
    }
    assert!(
        tokens.len() >= 3,
        "github.com app, its replacement after the 401, GHE app: {tokens:?}"
    );
    let text = String::from_utf8_lossy(&diagnostics);
    assert!(text.contains("DEBUG"), "debug diagnostics were captured");
    // §7.1: a failing GitHub call is logged at warn with GitHub's message.
    assert!(
        text.lines()
            .any(|l| l.contains("WARN") && l.contains("Fake failure 500")),
        "{text}"
    );
    assert_eq!(records[0]["reason"], "app_error");
    assert!(
        records
            .iter()
            .any(|r| r["hashed_token"] == hashed_token(PAT))
    );

    let mut secrets = Secrets::new();
    for (i, token) in tokens.iter().enumerate() {
        secrets.token(&format!("installation token {i}"), token);
    }
    // An App JWT lets its holder act as the App: as secret as the key.
    assert!(!jwts.is_empty());
    for (i, jwt) in jwts.iter().enumerate() {
        secrets.token(&format!("app JWT {i}"), jwt);
        // Its signature alone is enough to recognise it.
        secrets.token(
            &format!("app JWT {i} signature"),
            jwt.rsplit('.').next().unwrap(),
        );
    }
    secrets
        .token("PAT", PAT)
        .token("closed-port PAT", DOWN_PAT)
        .token("untrusted PAT", UNTRUSTED_PAT)
        .token("client-sent token", "client-chosen-token")
        .pem("app 1 key", APP1_KEY)
        .pem("app 2 key", APP2_KEY);
    // The search finds what it looks for.
    assert!(!secrets.find_in("control", PAT.as_bytes()).is_empty());

    let transcripts: Vec<Vec<u8>> = replies.iter().map(transcript).collect();
    let mut places: Vec<(String, &[u8])> = vec![
        ("audit file".into(), &audit),
        ("diagnostics".into(), &diagnostics),
        ("explain".into(), &explained),
        ("/metrics".into(), metrics.body()),
        ("admin /explain".into(), admin_explain.body()),
    ];
    for (i, t) in transcripts.iter().enumerate() {
        places.push((format!("response {i}"), t));
    }
    secrets.assert_absent(places.iter().map(|(name, bytes)| (name.as_str(), *bytes)));
}
