//! End to end (SPEC §5 learned ids, §8 rewriting): a client following GitHub's `Link` through
//! the proxy gets every page with the App's token, pages 2+ addressed as `/repositories/{id}`;
//! redirects come back pointing at the proxy the way the client reached it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/e2e.rs"]
mod e2e;
mod server_common;
mod support;

use bytes::Bytes;
use e2e::{INST1, Reply, World, request};
use http::Method;
use serde_json::json;
use support::fake_github::{Auth, Scripted};

/// Scripts `GET /repos/acme/widgets/issues` (page 1) and `/repositories/4242/issues?page=2..3`,
/// each with GitHub's `Link` header and each requiring a token.
fn script_issue_pages(w: &World) {
    let base = w.fake.api_url();
    let url = |page: u32| format!("{base}/repositories/4242/issues?page={page}");
    let link = |page: u32| {
        let mut parts = Vec::new();
        if page < 3 {
            parts.push(format!("<{}>; rel=\"next\"", url(page + 1)));
            parts.push(format!("<{}>; rel=\"last\"", url(3)));
        }
        if page > 1 {
            parts.push(format!("<{}>; rel=\"prev\"", url(page - 1)));
            parts.push(format!("<{}>; rel=\"first\"", url(1)));
        }
        parts.join(", ")
    };
    w.fake.script(
        "GET /repos/acme/widgets/issues",
        Scripted::json(json!([{"number": 1}])).header("link", &link(1)),
    );
    for page in 2..=3 {
        w.fake.script(
            &format!("GET /repositories/4242/issues?page={page}"),
            Scripted::json(json!([{"number": page}])).header("link", &link(page)),
        );
    }
}

/// The `rel="next"` URL of a `Link` header.
fn next_link(reply: &Reply) -> Option<String> {
    let link = reply.headers.get("link")?.to_str().unwrap().to_string();
    link.split(',').find_map(|part| {
        let (url, params) = part.trim().split_once(';')?;
        params.contains("rel=\"next\"").then(|| {
            url.trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_string()
        })
    })
}

/// Requests `url` as a client would: through the proxy at `proxy`, in origin form when the URL
/// is the proxy's own, in absolute form (HTTP_PROXY) otherwise.
async fn follow(w: &World, url: &str) -> Reply {
    let uri: http::Uri = url.parse().unwrap();
    let authority = uri.authority().unwrap().to_string();
    if authority == w.proxy.addr.to_string() {
        let target = uri.path_and_query().unwrap().as_str().to_string();
        request(w.proxy.addr, Method::GET, &target, &[], Bytes::new()).await
    } else {
        request(
            w.proxy.addr,
            Method::GET,
            url,
            &[("host", &authority)],
            Bytes::new(),
        )
        .await
    }
}

/// Follows `Link: rel="next"` from `first` to the end; returns each page's reply.
async fn follow_pages(w: &World, first: &str) -> Vec<Reply> {
    let mut pages = vec![follow(w, first).await];
    while let Some(next) = next_link(pages.last().unwrap()) {
        assert!(pages.len() < 10, "pagination does not end");
        pages.push(follow(w, &next).await);
    }
    pages
}

fn assert_every_page_served_by_the_app(w: &World, pages: &[Reply]) {
    assert_eq!(pages.len(), 3);
    for (i, page) in pages.iter().enumerate() {
        page.assert_served(200, "app", "installed");
        assert_eq!(page.json(), json!([{"number": i + 1}]));
    }
    let seen: Vec<(String, Option<String>, Auth)> = w
        .fake
        .requests()
        .into_iter()
        .filter(|r| r.path.contains("/issues"))
        .map(|r| (r.path, r.query, r.auth))
        .collect();
    assert_eq!(
        seen,
        [
            (
                "/repos/acme/widgets/issues".into(),
                None,
                Auth::Installation(INST1)
            ),
            (
                "/repositories/4242/issues".into(),
                Some("page=2".into()),
                Auth::Installation(INST1)
            ),
            (
                "/repositories/4242/issues".into(),
                Some("page=3".into()),
                Auth::Installation(INST1)
            ),
        ]
    );
    assert_eq!(w.fake.mint_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_form_client_follows_link_through_every_page_with_the_app() {
    let w = World::start().await;
    script_issue_pages(&w);
    let first = format!("{}/repos/acme/widgets/issues", w.proxy_base());
    let pages = follow_pages(&w, &first).await;
    assert_eq!(
        next_link(&pages[0]).unwrap(),
        format!("{}/repositories/4242/issues?page=2", w.proxy_base())
    );
    // Every URL in the header was rewritten, not only `next`.
    let link = pages[1].header("link");
    assert!(!link.contains("https://"), "{link}");
    assert_every_page_served_by_the_app(&w, &pages);
    // The records say what GitHub was asked and who the pages are about.
    for page in &pages[1..] {
        let r = w.record(page).await;
        assert_eq!(r["path"], "/repositories/4242/issues");
        assert_eq!(r["owner"], "acme");
        assert_eq!(r["repo"], "widgets");
        assert_eq!(r["installation_id"], INST1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_proxy_client_follows_link_in_absolute_form() {
    let w = World::start().await;
    script_issue_pages(&w);
    let api = w.api_authority();
    let first = format!("http://{api}/repos/acme/widgets/issues");
    let pages = follow_pages(&w, &first).await;
    assert_eq!(
        next_link(&pages[0]).unwrap(),
        format!("http://{api}/repositories/4242/issues?page=2")
    );
    assert_every_page_served_by_the_app(&w, &pages);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unlearned_repository_id_has_no_owner() {
    // Without page 1, the proxy cannot know whose repository 4242 is: the PAT, `no_owner`.
    let w = World::start().await;
    script_issue_pages(&w);
    let reply = w.get("/repositories/4242/issues?page=2").await;
    reply.assert_served(200, "pat", "no_owner");
}

fn script_redirects(w: &World) {
    let base = w.fake.api_url();
    w.fake.script(
        "GET /repos/acme/widgets/tarball",
        Scripted::json(json!({})).status(302).header(
            "location",
            &format!("{base}/repos/acme/widgets/tarball/main"),
        ),
    );
    w.fake.script(
        "GET /repos/acme/widgets/tarball/main",
        Scripted::json(json!({"archive": true})),
    );
    w.fake.script(
        "GET /repos/acme/widgets/readme-raw",
        Scripted::json(json!({})).status(302).header(
            "location",
            &format!("{base}/raw/acme/widgets/main/README.md"),
        ),
    );
    w.fake.script(
        "GET /repos/acme/widgets/html",
        Scripted::json(json!({}))
            .status(301)
            .header("location", "https://github.com/acme/widgets"),
    );
    w.fake.script(
        "GET /repos/acme/widgets/elsewhere",
        Scripted::json(json!({}))
            .status(302)
            .header("location", "https://example.com/acme/widgets"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_rewritten_to_the_default_form_the_client_used() {
    let w = World::start().await;
    script_redirects(&w);
    let base = w.proxy_base();
    let api = w.api_authority();
    let reply = w.get("/repos/acme/widgets/tarball").await;
    reply.assert_served(302, "app", "installed");
    let location = reply.header("location");
    assert_eq!(location, format!("{base}/repos/acme/widgets/tarball/main"));
    let followed = follow(&w, &location).await;
    followed.assert_served(200, "app", "installed");
    assert_eq!(followed.json(), json!({"archive": true}));

    // To the raw origin: host-prefix form; to the web origin: its host; elsewhere: untouched.
    let reply = w.get("/repos/acme/widgets/readme-raw").await;
    let location = reply.header("location");
    assert_eq!(
        location,
        format!("{base}/{api}/raw/acme/widgets/main/README.md")
    );
    let followed = follow(&w, &location).await;
    followed.assert_served(200, "app", "installed");
    assert_eq!(followed.json()["path"], "/raw/acme/widgets/main/README.md");
    let reply = w.get("/repos/acme/widgets/html").await;
    assert_eq!(
        reply.header("location"),
        format!("{base}/github.com/acme/widgets")
    );
    let reply = w.get("/repos/acme/widgets/elsewhere").await;
    assert_eq!(reply.header("location"), "https://example.com/acme/widgets");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_rewritten_to_the_forward_proxy_form_the_client_used() {
    let w = World::start().await;
    script_redirects(&w);
    let api = w.api_authority();
    let reply = follow(&w, &format!("http://{api}/repos/acme/widgets/tarball")).await;
    reply.assert_served(302, "app", "installed");
    let location = reply.header("location");
    assert_eq!(
        location,
        format!("http://{api}/repos/acme/widgets/tarball/main")
    );
    let followed = follow(&w, &location).await;
    followed.assert_served(200, "app", "installed");
    assert_eq!(followed.json(), json!({"archive": true}));

    let reply = follow(&w, &format!("http://{api}/repos/acme/widgets/readme-raw")).await;
    assert_eq!(
        reply.header("location"),
        format!("http://{api}/raw/acme/widgets/main/README.md")
    );
    let reply = follow(&w, &format!("http://{api}/repos/acme/widgets/html")).await;
    assert_eq!(reply.header("location"), "http://github.com/acme/widgets");
}

/// GHE's `ghe-org/tools` has repository id 4242 too: ids are per GitHub instance.
fn script_ghe_pages(w: &World) {
    let base = w.ghe.api_url();
    w.ghe.script(
        "GET /repos/ghe-org/tools/issues",
        Scripted::json(json!([{"number": 1}])).header(
            "link",
            &format!("<{base}/repositories/4242/issues?page=2>; rel=\"next\""),
        ),
    );
    w.ghe.script(
        "GET /repositories/4242/issues?page=2",
        Scripted::json(json!([{"number": 2}])),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_prefix_client_follows_ghe_link_to_the_ghe_app() {
    let w = World::start().await;
    script_ghe_pages(&w);
    let ghe = w.ghe_authority();
    let first = format!("{}/{ghe}/api/v3/repos/ghe-org/tools/issues", w.proxy_base());
    let pages = follow_pages(&w, &first).await;
    assert_eq!(
        next_link(&pages[0]).unwrap(),
        format!(
            "{}/{ghe}/api/v3/repositories/4242/issues?page=2",
            w.proxy_base()
        )
    );
    assert_eq!(pages.len(), 2);
    for page in &pages {
        page.assert_served(200, "app", "installed");
    }
    let auths: Vec<Auth> = w.ghe.requests().into_iter().map(|r| r.auth).collect();
    assert!(auths.ends_with(&[
        Auth::Installation(e2e::INST2),
        Auth::Installation(e2e::INST2)
    ]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repository_id_learned_on_one_instance_is_not_applied_to_another() {
    let w = World::start().await;
    script_ghe_pages(&w);
    script_issue_pages(&w);
    let ghe = w.ghe_authority();
    // Learn GHE's 4242 = ghe-org/tools.
    w.get(&format!("/{ghe}/api/v3/repos/ghe-org/tools/issues"))
        .await
        .assert_served(200, "app", "installed");
    // github.com's repository 4242 is someone else's: the proxy does not know whose.
    let reply = w.get("/repositories/4242/issues?page=2").await;
    reply.assert_served(200, "pat", "no_owner");
    let r = w.record(&reply).await;
    assert_eq!(r["owner"], serde_json::Value::Null, "{r}");
    assert_eq!(r["repo"], serde_json::Value::Null, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_url_is_the_base_of_rewritten_links_and_locations() {
    let w = World::start_with("  publicUrl: http://gh-proxy.internal:8080\n").await;
    script_issue_pages(&w);
    script_redirects(&w);
    let reply = w.get("/repos/acme/widgets/issues").await;
    assert_eq!(
        next_link(&reply).unwrap(),
        "http://gh-proxy.internal:8080/repositories/4242/issues?page=2"
    );
    let reply = w.get("/repos/acme/widgets/tarball").await;
    assert_eq!(
        reply.header("location"),
        "http://gh-proxy.internal:8080/repos/acme/widgets/tarball/main"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_explain_of_a_learned_repository_id_agrees_with_the_audit_record() {
    let w = World::start().await;
    script_issue_pages(&w);
    w.get("/repos/acme/widgets/issues").await;
    let reply = w.get("/repositories/4242/issues?page=2").await;
    reply.assert_served(200, "app", "installed");
    let url = format!("{}/repositories/4242/issues?page=2", w.proxy_base());
    let encoded =
        percent_encoding::utf8_percent_encode(&url, percent_encoding::NON_ALPHANUMERIC).to_string();
    let response = w.proxy.admin_get(&format!("/explain?url={encoded}")).await;
    assert_eq!(response.status(), 200);
    let e: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
    let r = w.record(&reply).await;
    assert_eq!(e["credential"], r["credential"], "{e}");
    assert_eq!(e["reason"], r["reason"], "{e}");
    assert_eq!(e["owner"], r["owner"], "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_prefix_client_of_the_default_integration_gets_default_form_links() {
    let w = World::start().await;
    script_issue_pages(&w);
    let first = format!(
        "{}/{}/repos/acme/widgets/issues",
        w.proxy_base(),
        w.api_authority()
    );
    let pages = follow_pages(&w, &first).await;
    assert_eq!(
        next_link(&pages[0]).unwrap(),
        format!("{}/repositories/4242/issues?page=2", w.proxy_base())
    );
    assert_every_page_served_by_the_app(&w, &pages);
}
