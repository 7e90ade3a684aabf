//! End to end (SPEC §4): each addressing form, through the real server, reaches FakeGitHub over
//! TLS with the right credential.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/e2e.rs"]
mod e2e;
mod server_common;
mod support;

use bytes::Bytes;
use e2e::{APP2, INST1, INST2, World, raw, request};
use http::Method;
use serde_json::json;
use support::fake_github::Auth;

/// What FakeGitHub's catch-all says it received.
fn seen(reply: &e2e::Reply) -> (String, String) {
    let body = reply.json();
    (
        body["path"].as_str().unwrap().to_string(),
        body["auth"].as_str().unwrap().to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_form_is_served_by_the_app_installation() {
    let w = World::start().await;
    let reply = w.get("/repos/acme/widgets").await;
    reply.assert_served(200, "app", "installed");
    assert_eq!(
        seen(&reply),
        ("/repos/acme/widgets".into(), format!("app:{INST1}"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_form_with_api_v3_prefix_is_stripped_and_served() {
    let w = World::start().await;
    let reply = w.get("/api/v3/repos/acme/widgets/pulls?state=all").await;
    reply.assert_served(200, "app", "installed");
    assert_eq!(
        seen(&reply),
        ("/repos/acme/widgets/pulls".into(), format!("app:{INST1}"))
    );
    let last = w.fake.requests().pop().unwrap();
    assert_eq!(last.query.as_deref(), Some("state=all"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_form_for_an_owner_without_the_app_uses_the_pat() {
    let w = World::start().await;
    let reply = w.get("/repos/other/thing").await;
    reply.assert_served(200, "pat", "not_installed");
    assert_eq!(seen(&reply), ("/repos/other/thing".into(), "pat".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_prefix_form_reaches_the_ghe_integration_with_its_app() {
    let w = World::start().await;
    let target = format!("/{}/api/v3/repos/ghe-org/tools", w.ghe_authority());
    let reply = w.get(&target).await;
    reply.assert_served(200, "app", "installed");
    // The GHE FakeGitHub stripped its `/api/v3`; its App's installation token authenticated.
    assert_eq!(
        seen(&reply),
        ("/repos/ghe-org/tools".into(), format!("app:{INST2}"))
    );
    assert_eq!(w.ghe.mint_count(), 1);
    assert_eq!(w.fake.mint_count(), 0, "github.com's app was not asked");
    let records = w.audit(1).await;
    let r = &records[0];
    assert_eq!(r["host"], w.ghe_authority());
    assert_eq!(r["path"], "/api/v3/repos/ghe-org/tools");
    assert_eq!(r["app_id"], APP2);
    assert_eq!(r["installation_id"], INST2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_proxy_absolute_form_over_raw_tcp() {
    let w = World::start().await;
    let authority = w.api_authority();
    let bytes = format!(
        "GET http://{authority}/repos/acme/widgets HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    );
    let reply = raw(w.proxy.addr, bytes.as_bytes()).await;
    reply.assert_served(200, "app", "installed");
    assert_eq!(
        seen(&reply),
        ("/repos/acme/widgets".into(), format!("app:{INST1}"))
    );
}

/// A tool whose `HTTP_PROXY` is the proxy and whose base URL is the proxy too sends the absolute
/// form naming the proxy itself: that is read by its path, as the origin form is. Any other
/// host no origin has is still refused (never an open proxy).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_form_naming_the_proxy_itself_is_read_by_its_path() {
    let w = World::start().await;
    let own = w.proxy.addr;
    for authority in [
        own.to_string(),
        format!("localhost:{}", own.port()),
        format!("gh-token-proxy.tools.svc:{}", own.port()),
    ] {
        let bytes = format!(
            "GET http://{authority}/repos/acme/widgets HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
        );
        let reply = raw(own, bytes.as_bytes()).await;
        reply.assert_served(200, "app", "installed");
        assert_eq!(
            seen(&reply),
            ("/repos/acme/widgets".into(), format!("app:{INST1}"))
        );
    }
    let elsewhere = format!("127.0.0.1:{}", w.closed_port);
    let bytes = format!(
        "GET http://{elsewhere}/repos/acme/widgets HTTP/1.1\r\nHost: {elsewhere}\r\nConnection: close\r\n\r\n"
    );
    raw(own, bytes.as_bytes())
        .await
        .assert_error(403, "none", "unknown_host");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphql_owner_from_variables_is_served_by_the_app() {
    let w = World::start().await;
    let body = json!({
        "query": "query($owner:String!,$name:String!){repository(owner:$owner,name:$name){id}}",
        "variables": {"owner": "acme", "name": "widgets"}
    });
    let reply = request(
        w.proxy.addr,
        Method::POST,
        "/graphql",
        &[("content-type", "application/json")],
        Bytes::from(body.to_string()),
    )
    .await;
    reply.assert_served(200, "app", "installed");
    assert_eq!(seen(&reply), ("/graphql".into(), format!("app:{INST1}")));
    let records = w.audit(1).await;
    assert_eq!(records[0]["owner"], "acme");
    assert_eq!(records[0]["repo"], "widgets");

    // An owner without the App: the PAT.
    let body = json!({"query": "{viewer{login}}", "variables": {"owner": "other"}});
    let reply = request(
        w.proxy.addr,
        Method::POST,
        "/graphql",
        &[("content-type", "application/json")],
        Bytes::from(body.to_string()),
    )
    .await;
    reply.assert_served(200, "pat", "not_installed");
    assert_eq!(seen(&reply), ("/graphql".into(), "pat".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_origin_by_host_prefix_and_forward_proxy_form() {
    let w = World::start().await;
    let authority = w.api_authority();
    let reply = w
        .get(&format!("/{authority}/raw/acme/widgets/main/README.md"))
        .await;
    reply.assert_served(200, "app", "installed");
    assert_eq!(
        seen(&reply),
        (
            "/raw/acme/widgets/main/README.md".into(),
            format!("app:{INST1}")
        )
    );
    let reply = request(
        w.proxy.addr,
        Method::GET,
        &format!("http://{authority}/raw/other/thing/main/x.txt"),
        &[("host", &authority)],
        Bytes::new(),
    )
    .await;
    reply.assert_served(200, "pat", "not_installed");
    assert_eq!(
        seen(&reply),
        ("/raw/other/thing/main/x.txt".into(), "pat".into())
    );
    let records = w.audit(2).await;
    for r in &records {
        assert_eq!(r["host"], authority);
    }
    // FakeGitHub's own record of who authenticated, request by request.
    let auths: Vec<Auth> = w
        .fake
        .requests()
        .into_iter()
        .filter(|r| r.path.starts_with("/raw/"))
        .map(|r| r.auth)
        .collect();
    assert_eq!(auths, [Auth::Installation(INST1), Auth::Pat]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_origin_git_smart_http_gets_basic_x_access_token() {
    let w = World::start().await;
    let target = format!(
        "/{}/ghe-org/tools.git/info/refs?service=git-upload-pack",
        w.ghe_authority()
    );
    let reply = w.get(&target).await;
    reply.assert_served(200, "app", "installed");
    // FakeGitHub accepts `Basic base64(x-access-token:TOKEN)` only for a token it issued.
    assert_eq!(
        seen(&reply),
        (
            "/ghe-org/tools.git/info/refs".into(),
            format!("app:{INST2}")
        )
    );
    let authorization = w.ghe.last_authorization().unwrap();
    assert!(authorization.starts_with("Basic "), "{authorization}");
    let r = w.record(&reply).await;
    assert_eq!(r["owner"], "ghe-org");
    assert_eq!(r["repo"], "tools");
    assert_eq!(r["path"], "/ghe-org/tools.git/info/refs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ghe_graphql_goes_to_api_graphql() {
    let w = World::start().await;
    let body = json!({"query": "{x}", "variables": {"login": "ghe-org"}});
    let target = format!("/{}/api/graphql", w.ghe_authority());
    let reply = request(
        w.proxy.addr,
        Method::POST,
        &target,
        &[("content-type", "application/json")],
        Bytes::from(body.to_string()),
    )
    .await;
    reply.assert_served(200, "app", "installed");
    assert_eq!(
        seen(&reply),
        ("/api/graphql".into(), format!("app:{INST2}"))
    );
    assert_eq!(w.ghe.calls("POST /api/graphql"), 1);
    assert_eq!(w.record(&reply).await["app_id"], APP2);
}
