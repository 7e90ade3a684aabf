//! The decision of SPEC §7.1, one test per reason, against FakeGitHub over real TLS.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use gh_token_proxy::config::Config;
use gh_token_proxy::credential::{CredentialKind, Reason};
use gh_token_proxy::github::GitHub;
use gh_token_proxy::github::installations::CachePolicy;
use gh_token_proxy::resolve::{Resolution, Resolver};
use http::Method;
use support::{APP1_KEY, APP1_PUB, APP2_KEY, APP2_PUB, FakeGitHub, TestApp, TestConfig, WRONG_KEY};

const APP1: u64 = 12345;
const APP2: u64 = 23456;
const PAT: &str = "ghp_test_pat_value";

async fn resolve(
    config: &Config,
    resolver: &Resolver,
    method: Method,
    owner: Option<&str>,
    repo: Option<&str>,
) -> Resolution {
    resolver
        .resolve(&config.integrations[0], &method, owner, repo)
        .await
}

fn assert_decision(r: &Resolution, credential: CredentialKind, reason: Reason) {
    assert_eq!(
        (r.credential, r.reason),
        (credential, reason),
        "steps: {:#?}",
        r.steps
    );
}

#[tokio::test]
async fn installed_app_serves_with_its_installation_token() {
    let fake = FakeGitHub::builder()
        .app(APP1, APP1_PUB)
        .installation(APP1, 678, "acme")
        .start()
        .await;
    let (config, resolver) = support::resolver(
        TestConfig::new(&fake)
            .token(PAT)
            .app(TestApp::new(APP1, APP1_KEY))
            .build(),
    );
    // Owners and repos compare case-insensitively.
    let r = resolve(
        &config,
        &resolver,
        Method::GET,
        Some("ACME"),
        Some("Widgets"),
    )
    .await;
    assert_decision(&r, CredentialKind::App, Reason::Installed);
    assert_eq!((r.app_id, r.installation_id), (Some(APP1), Some(678)));
    let token = r.token.clone().unwrap();
    assert!(fake.issued_tokens().contains(&token.expose().to_string()));
    assert_eq!(r.steps.len(), 1);
    assert_eq!(r.steps[0].result, "used");
    assert_eq!(r.message, None);
    // The App JWT was verified by FakeGitHub: one lookup, one mint, both as the App.
    assert_eq!(fake.lookup_count(), 1);
    assert_eq!(fake.mint_count(), 1);
}

#[tokio::test]
async fn public_access_serves_get_with_first_admitted_installation() {
    let fake = FakeGitHub::builder()
        .app(APP1, APP1_PUB)
        .installation(APP1, 600, "not-admitted")
        .installation(APP1, 678, "acme")
        .start()
        .await;
    let (config, resolver) = support::resolver(
        TestConfig::new(&fake)
            .app(
                TestApp::new(APP1, APP1_KEY)
                    .allowed_owners(&["Acme"])
                    .public_access(),
            )
            .build(),
    );
    let r = resolve(
        &config,
        &resolver,
        Method::GET,
        Some("torvalds"),
        Some("linux"),
    )
    .await;
    assert_decision(&r, CredentialKind::App, Reason::PublicAccess);
    assert_eq!((r.app_id, r.installation_id), (Some(APP1), Some(678)));
    assert_eq!(r.steps[0].reason, Some(Reason::OwnerNotAllowed));
    assert_eq!(r.steps[1].check, "public_access");
    assert_eq!(r.steps[1].result, "used");

    // Not for writes.
    let r = resolve(
        &config,
        &resolver,
        Method::POST,
        Some("torvalds"),
        Some("linux"),
    )
    .await;
    assert_decision(&r, CredentialKind::None, Reason::NoCredential);
    assert_eq!(r.steps[1].result, "not_applicable");

    // Not for a request with no owner (§5: `no_owner`, PAT, anonymous or refusal).
    let r = resolve(&config, &resolver, Method::GET, None, None).await;
    assert_decision(&r, CredentialKind::None, Reason::NoCredential);
    assert_eq!(r.steps[1].check, "public_access");
    assert_eq!(r.steps[1].result, "not_applicable");
    assert_eq!(r.steps[1].reason, Some(Reason::NoOwner));
}

#[tokio::test]
async fn owner_outside_allowed_installation_owners_falls_back_to_pat() {
    let fake = FakeGitHub::builder()
        .app(APP1, APP1_PUB)
        .installation(APP1, 678, "acme")
        .installation(APP1, 679, "globex")
        .start()
        .await;
    let (config, resolver) = support::resolver(
        TestConfig::new(&fake)
            .token(PAT)
            .app(TestApp::new(APP1, APP1_KEY).allowed_owners(&["acme"]))
            .build(),
    );
    let r = resolve(&config, &resolver, Method::GET, Some("globex"), Some("x")).await;
    assert_decision(&r, CredentialKind::Pat, Reason::OwnerNotAllowed);
    assert_eq!(r.token.unwrap().expose(), PAT);
    assert_eq!(
        fake.lookup_count(),
        0,
        "an excluded owner is never looked up"
    );
}

#[tokio::test]
async fn owner_without_installation_falls_back_to_pat() {
    let fake = FakeGitHub::builder()
        .app(APP1, APP1_PUB)
        .installation(APP1, 678, "acme")
        .start()
        .await;
    let (config, resolver) = support::resolver(
        TestConfig::new(&fake)
            .token(PAT)
            .app(TestApp::new(APP1, APP1_KEY))
            .build(),
    );
    let r = resolve(&config, &resolver, Method::GET, Some("globex"), Some("x")).await;
    assert_decision(&r, CredentialKind::Pat, Reason::NotInstalled);
    assert_eq!(r.steps[0].reason, Some(Reason::NotInstalled));
    assert_eq!(r.steps[1].check, "pat");
    assert_eq!(r.steps[1].result, "used");
    // A second miss within 60 s is answered from the cache.
    let r = resolve(&config, &resolver, Method::GET, Some("globex"), Some("y")).await;
    assert_decision(&r, CredentialKind::Pat, Reason::NotInstalled);
    assert_eq!(fake.lookup_count(), 1);
}

#[tokio::test]
async fn suspended_installation_falls_back_to_pat_and_wins_over_not_installed() {
    let fake = FakeGitHub::builder()
        .app(APP1, APP1_PUB)
        .app(APP2, APP2_PUB)
        .installation(APP2, 700, "acme")
        .suspended(700)
        .start()
        .await;
    let (config, resolver) = support::resolver(
        TestConfig::new(&fake)
            .token(PAT)
            .app(TestApp::new(APP1, APP1_KEY))
            .app(TestApp::new(APP2, APP2_KEY))
            .build(),
    );
    let r = resolve(
        &config,
        &resolver,
        Method::GET,
        Some("acme"),
        Some("widgets"),
    )
    .await;
    assert_decision(&r, CredentialKind::Pat, Reason::Suspended);
    assert_eq!(r.steps[0].reason, Some(Reason::NotInstalled));
    assert_eq!(r.steps[1].reason, Some(Reason::Suspended));
    assert_eq!(
        fake.mint_count(),
        0,
        "a suspended installation is not minted for"
    );
}

#[tokio::test]
async fn repo_outside_selection_falls_back_to_pat_and_is_rechecked_after_the_interval() {
    let fake = FakeGitHub::builder()
        .app(APP1, APP1_PUB)
        .installation(APP1, 678, "acme")
        .selected_repos(678, &["widgets"])
        .start()
        .await;
    let config = Arc::new(
        TestConfig::new(&fake)
            .token(PAT)
            .app(TestApp::new(APP1, APP1_KEY))
            .build(),
    );
    // Real TLS cannot run on paused time, so the 60 s re-check interval is shortened here; the
    // 60 s default itself is unit-tested with paused time in github::installations.
    let recheck = Duration::from_millis(300);
    let client = gh_token_proxy::upstream::build(&config.proxy.upstream).unwrap();
    let github = GitHub::with_policy(
        config.clone(),
        client,
        CachePolicy {
            list_ttl: Duration::from_secs(600),
            miss_recheck: recheck,
        },
    );
    let resolver = Resolver::new(Arc::new(github), false);

    let r = resolve(
        &config,
        &resolver,
        Method::GET,
        Some("acme"),
        Some("widgets"),
    )
    .await;
    assert_decision(&r, CredentialKind::App, Reason::Installed);
    let r = resolve(
        &config,
        &resolver,
        Method::GET,
        Some("acme"),
        Some("gadgets"),
    )
    .await;
    assert_decision(&r, CredentialKind::Pat, Reason::RepoNotSelected);
    // Listing the repositories used the installation token (FakeGitHub checks it).
    assert_eq!(fake.calls("/installation/repositories"), 1);

    // The repo is added; within the interval the cached answer stands.
    fake.set_selected_repos(678, &["widgets", "gadgets"]);
    let started = tokio::time::Instant::now();
    let r = resolve(
        &config,
        &resolver,
        Method::GET,
        Some("acme"),
        Some("gadgets"),
    )
    .await;
    if started.elapsed() < recheck {
        assert_decision(&r, CredentialKind::Pat, Reason::RepoNotSelected);
        assert_eq!(fake.calls("/installation/repositories"), 1);
    }
    // Past the interval, one re-fetch finds it. (Sleeping here moves time past the interval;
    // it does not wait for a condition.)
    tokio::time::sleep(recheck).await;
    let r = resolve(
        &config,
        &resolver,
        Method::GET,
        Some("acme"),
        Some("gadgets"),
    )
    .await;
    assert_decision(&r, CredentialKind::App, Reason::Installed);
    assert_eq!(fake.calls("/installation/repositories"), 2);
}

#[tokio::test]
async fn github_failure_is_app_error_with_githubs_message() {
    let fake = FakeGitHub::builder()
        .app(APP1, APP1_PUB)
        .installation(APP1, 678, "acme")
        .start()
        .await;
    // The config's key for APP1 is one FakeGitHub does not know: its JWT is refused.
    let (config, resolver) = support::resolver(
        TestConfig::new(&fake)
            .token(PAT)
            .app(TestApp::new(APP1, WRONG_KEY))
            .build(),
    );
    let r = resolve(
        &config,
        &resolver,
        Method::GET,
        Some("acme"),
        Some("widgets"),
    )
    .await;
    assert_decision(&r, CredentialKind::Pat, Reason::AppError);
    let detail = r.steps[0].detail.clone().unwrap();
    assert!(
        detail.contains("A JSON web token could not be decoded"),
        "{detail}"
    );

    // A failing mint is app_error too.
    let (config, resolver) = support::resolver(
        TestConfig::new(&fake)
            .token(PAT)
            .app(TestApp::new(APP1, APP1_KEY))
            .build(),
    );
    fake.fail_mints(500, 1);
    let r = resolve(
        &config,
        &resolver,
        Method::GET,
        Some("acme"),
        Some("widgets"),
    )
    .await;
    assert_decision(&r, CredentialKind::Pat, Reason::AppError);
    assert!(
        r.steps[0]
            .detail
            .as_deref()
            .unwrap()
            .contains("Fake failure 500")
    );
    let stats = resolver.github().token_stats();
    assert!(stats.mints.contains(&((APP1, "error"), 1)), "{stats:?}");
    // The next request mints again and is served by the App.
    let r = resolve(
        &config,
        &resolver,
        Method::GET,
        Some("acme"),
        Some("widgets"),
    )
    .await;
    assert_decision(&r, CredentialKind::App, Reason::Installed);
}

#[tokio::test]
async fn integration_without_apps_uses_pat_with_no_app() {
    let fake = FakeGitHub::builder().start().await;
    let (config, resolver) = support::resolver(TestConfig::new(&fake).token(PAT).build());
    let r = resolve(
        &config,
        &resolver,
        Method::GET,
        Some("acme"),
        Some("widgets"),
    )
    .await;
    assert_decision(&r, CredentialKind::Pat, Reason::NoApp);
    assert_eq!(r.token.unwrap().expose(), PAT);
}

#[tokio::test]
async fn request_without_owner_uses_pat_with_no_owner() {
    let fake = FakeGitHub::builder()
        .app(APP1, APP1_PUB)
        .installation(APP1, 678, "acme")
        .start()
        .await;
    let (config, resolver) = support::resolver(
        TestConfig::new(&fake)
            .token(PAT)
            .app(TestApp::new(APP1, APP1_KEY))
            .build(),
    );
    let r = resolve(&config, &resolver, Method::GET, None, None).await;
    assert_decision(&r, CredentialKind::Pat, Reason::NoOwner);
    assert_eq!(r.steps[0].reason, Some(Reason::NoOwner));
    assert_eq!(fake.lookup_count(), 0);

    // no_owner takes precedence over no_app.
    let (config, resolver) = support::resolver(TestConfig::new(&fake).token(PAT).build());
    let r = resolve(&config, &resolver, Method::GET, None, None).await;
    assert_decision(&r, CredentialKind::Pat, Reason::NoOwner);
}

#[tokio::test]
async fn allow_anonymous_forwards_without_credential_keeping_the_reason() {
    let fake = FakeGitHub::builder()
        .app(APP1, APP1_PUB)
        .installation(APP1, 678, "acme")
        .start()
        .await;
    let (config, resolver) = support::resolver(
        TestConfig::new(&fake)
            .allow_anonymous()
            .app(TestApp::new(APP1, APP1_KEY))
            .build(),
    );
    let r = resolve(&config, &resolver, Method::GET, Some("globex"), Some("x")).await;
    assert_decision(&r, CredentialKind::Anonymous, Reason::NotInstalled);
    assert!(r.token.is_none());
}

#[tokio::test]
async fn no_credential_is_refused_with_a_message_saying_what_to_do() {
    let fake = FakeGitHub::builder()
        .app(APP1, APP1_PUB)
        .installation(APP1, 678, "globex")
        .start()
        .await;
    let (config, resolver) = support::resolver(
        TestConfig::new(&fake)
            .app(TestApp::new(APP1, APP1_KEY))
            .build(),
    );
    let r = resolve(
        &config,
        &resolver,
        Method::GET,
        Some("acme"),
        Some("widgets"),
    )
    .await;
    assert_decision(&r, CredentialKind::None, Reason::NoCredential);
    assert!(r.token.is_none());
    assert_eq!(
        r.message.as_deref(),
        Some(
            "no GitHub credential for acme/widgets on github.com: GitHub App 12345 is not installed on 'acme' and integrations.github[0].token is not set; install the App on 'acme' or configure a PAT"
        )
    );
    assert_eq!(r.steps.last().unwrap().check, "refuse");

    // Without an owner, the message says so and how to name one.
    let r = resolve(&config, &resolver, Method::GET, None, None).await;
    assert_decision(&r, CredentialKind::None, Reason::NoCredential);
    let message = r.message.unwrap();
    assert!(message.contains("no owner"), "{message}");
    assert!(message.contains("X-GitHub-Owner"), "{message}");
    assert!(message.contains("proxy.defaultOwner"), "{message}");
}

#[tokio::test]
async fn debug_output_never_shows_a_secret() {
    let fake = FakeGitHub::builder()
        .app(APP1, APP1_PUB)
        .installation(APP1, 678, "acme")
        .start()
        .await;
    let (config, resolver) = support::resolver(
        TestConfig::new(&fake)
            .token(PAT)
            .app(TestApp::new(APP1, APP1_KEY))
            .build(),
    );
    let r = resolve(
        &config,
        &resolver,
        Method::GET,
        Some("acme"),
        Some("widgets"),
    )
    .await;
    let token = r.token.clone().unwrap();
    let shown = format!("{r:?} {:?} {resolver:?} {token:?}", resolver.github());
    assert!(!shown.contains(token.expose()), "{shown}");
    assert!(!shown.contains(PAT), "{shown}");
    assert!(!shown.contains("PRIVATE KEY"), "{shown}");
    assert!(!shown.contains("eyJ"), "no JWT: {shown}");
}

#[tokio::test]
async fn test_config_yaml_parses_to_the_hand_built_config() {
    let fake = FakeGitHub::builder().start().await;
    let make = || {
        TestConfig::new(&fake)
            .token(PAT)
            .app(
                TestApp::new(APP1, APP1_KEY)
                    .allowed_owners(&["Acme"])
                    .public_access(),
            )
            .allow_anonymous()
            .default_owner("acme")
    };
    let parsed = make().build();
    let direct = make().build_direct();
    let (p, d) = (&parsed.integrations[0], &direct.integrations[0]);
    assert_eq!((&p.host, &p.api, p.index), (&d.host, &d.api, d.index));
    assert_eq!(p.apps.len(), 1);
    assert_eq!(p.apps[0].app_id, APP1);
    assert_eq!(
        p.apps[0].allowed_installation_owners,
        d.apps[0].allowed_installation_owners
    );
    assert!(p.apps[0].public_access);
    assert!(parsed.proxy.allow_anonymous);
    assert_eq!(parsed.proxy.default_owner.as_deref(), Some("acme"));
    assert_eq!(parsed.proxy.upstream.ca_file, direct.proxy.upstream.ca_file);
    assert_eq!(
        parsed.proxy.refresh_before_expiry,
        direct.proxy.refresh_before_expiry
    );
}

// ---- explain (SPEC §9): the same decision, for a URL in any form ----

async fn explain_fixture() -> (FakeGitHub, Arc<Config>, Resolver) {
    let fake = FakeGitHub::builder()
        .app(APP1, APP1_PUB)
        .installation(APP1, 678, "acme")
        .start()
        .await;
    let (config, resolver) = support::resolver(
        TestConfig::new(&fake)
            .token(PAT)
            .app(TestApp::new(APP1, APP1_KEY))
            .build(),
    );
    (fake, config, resolver)
}

#[tokio::test]
async fn explain_gives_the_resolvers_decision_for_every_url_form() {
    use gh_token_proxy::explain::{explain, render_tree};
    let (fake, config, resolver) = explain_fixture().await;

    // Forward-proxy form on the api origin.
    let url = format!("{}/repos/acme/widgets/pulls", fake.api_url());
    let e = explain(&config, &resolver, &url, &Method::GET)
        .await
        .unwrap();
    assert_eq!(e.integration.as_deref(), Some("github.com"));
    assert_eq!(e.origin.as_deref(), Some("api"));
    assert_eq!(
        (e.owner.as_deref(), e.repo.as_deref()),
        (Some("acme"), Some("widgets"))
    );
    assert_eq!(
        (e.credential, e.reason),
        (CredentialKind::App, Reason::Installed)
    );
    assert_eq!((e.app_id, e.installation_id), (Some(APP1), Some(678)));
    let minted = fake.issued_tokens();
    assert_eq!(minted.len(), 1);
    assert_eq!(
        e.hashed_token.as_deref(),
        Some(gh_token_proxy::credential::hash_token(&minted[0]).as_str())
    );
    let json = serde_json::to_string(&e).unwrap();
    assert!(!json.contains(&minted[0]), "never the token: {json}");
    let tree = render_tree(&e);
    assert!(!tree.contains(&minted[0]), "never the token: {tree}");
    assert!(tree.contains("✔ App 12345: used (installed)"), "{tree}");

    // The proxy's own address: routed as an origin-form request to the default integration.
    let e = explain(
        &config,
        &resolver,
        "http://proxy:8080/repos/globex/x",
        &Method::GET,
    )
    .await
    .unwrap();
    assert_eq!(e.origin.as_deref(), Some("api"));
    assert_eq!(
        (e.credential, e.reason),
        (CredentialKind::Pat, Reason::NotInstalled)
    );
    assert_eq!(e.steps[0].reason, Some(Reason::NotInstalled));

    // The web origin (git, archives, blob pages).
    let e = explain(
        &config,
        &resolver,
        "https://github.com/acme/widgets/blob/main/README.md",
        &Method::GET,
    )
    .await
    .unwrap();
    assert_eq!(e.origin.as_deref(), Some("web"));
    assert_eq!(
        (e.credential, e.reason),
        (CredentialKind::App, Reason::Installed)
    );

    // No owner.
    let e = explain(
        &config,
        &resolver,
        "http://proxy:8080/rate_limit",
        &Method::GET,
    )
    .await
    .unwrap();
    assert_eq!(
        (e.credential, e.reason),
        (CredentialKind::Pat, Reason::NoOwner)
    );
}

#[tokio::test]
async fn explain_reports_refusals_before_resolution() {
    use gh_token_proxy::explain::explain;
    let (_fake, config, resolver) = explain_fixture().await;
    let err = explain(
        &config,
        &resolver,
        "http://proxy:8080/app/installations",
        &Method::GET,
    )
    .await
    .unwrap_err();
    assert_eq!(err.reason, Reason::AppEndpoint);
    let err = explain(
        &config,
        &resolver,
        "http://proxy:8080/repos/a/%2e%2e",
        &Method::GET,
    )
    .await
    .unwrap_err();
    assert_eq!(err.reason, Reason::InvalidPath);
}
