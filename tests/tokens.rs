//! Installation tokens against FakeGitHub over real TLS: single flight under load, eviction,
//! uninstalled installations, pagination, counters. (Expiry and refresh timing are unit-tested
//! with paused time in `github::tokens`.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use gh_token_proxy::credential::{CredentialKind, Reason};
use http::Method;
use support::{APP1_KEY, APP1_PUB, FakeGitHub, TestApp, TestConfig};

const APP1: u64 = 12345;

/// One task per owner, each resolving `GET {owner}/widgets` on the first integration at once.
fn resolve_concurrently(
    resolver: &Arc<gh_token_proxy::resolve::Resolver>,
    config: &gh_token_proxy::config::Config,
    owners: impl Iterator<Item = &'static str>,
) -> Vec<tokio::task::JoinHandle<gh_token_proxy::resolve::Resolution>> {
    owners
        .map(|owner| {
            let resolver = resolver.clone();
            let integration = config.integrations[0].clone();
            tokio::spawn(async move {
                resolver
                    .resolve(&integration, &Method::GET, Some(owner), Some("widgets"))
                    .await
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_first_requests_mint_once_and_look_up_once() {
    let fake = FakeGitHub::builder()
        .app(APP1, APP1_PUB)
        .installation(APP1, 678, "acme")
        .start()
        .await;
    // A slow mint keeps every request in flight while the first one mints.
    fake.set_mint_delay(Duration::from_millis(200));
    let (config, resolver) = support::resolver(
        TestConfig::new(&fake)
            .app(TestApp::new(APP1, APP1_KEY))
            .build(),
    );
    let resolver = Arc::new(resolver);
    let owners = (0..1000).map(|i| if i % 2 == 0 { "acme" } else { "ACME" });
    let tasks = resolve_concurrently(&resolver, &config, owners);
    let mut hashes = HashSet::new();
    for task in tasks {
        let r = task.await.unwrap();
        assert_eq!(
            (r.credential, r.reason),
            (CredentialKind::App, Reason::Installed)
        );
        hashes.insert(r.token.unwrap().hashed().clone());
    }
    assert_eq!(hashes.len(), 1, "every request got the same token");
    assert_eq!(fake.mint_count(), 1);
    assert_eq!(fake.lookup_count(), 1);
    let stats = resolver.github().token_stats();
    assert_eq!(stats.mints, vec![((APP1, "ok"), 1)]);
    assert_eq!(stats.cache_hit + stats.cache_miss, 1000);
    // One JWT signature served the lookup and the mint.
    assert_eq!(resolver.github().jwt_signatures(0, 0), 1);
}

#[tokio::test]
async fn evict_token_makes_the_next_request_mint_and_reports_its_age() {
    let fake = FakeGitHub::builder()
        .app(APP1, APP1_PUB)
        .installation(APP1, 678, "acme")
        .start()
        .await;
    let (config, resolver) = support::resolver(
        TestConfig::new(&fake)
            .app(TestApp::new(APP1, APP1_KEY))
            .build(),
    );
    let integration = &config.integrations[0];
    let first = resolver
        .resolve(integration, &Method::GET, Some("acme"), Some("w"))
        .await
        .token
        .unwrap();
    let again = resolver
        .resolve(integration, &Method::GET, Some("acme"), Some("w"))
        .await
        .token
        .unwrap();
    assert_eq!(first.hashed(), again.hashed());
    assert_eq!(fake.mint_count(), 1);

    let age = resolver.github().evict_token(0, APP1, 678).unwrap();
    assert!(age < Duration::from_secs(5), "{age:?}");
    assert_eq!(resolver.github().evict_token(0, APP1, 678), None);
    let fresh = resolver
        .resolve(integration, &Method::GET, Some("acme"), Some("w"))
        .await
        .token
        .unwrap();
    assert_ne!(first.hashed(), fresh.hashed());
    assert_eq!(fake.mint_count(), 2);
    assert_eq!(fake.lookup_count(), 1, "eviction keeps the installation");
}

#[tokio::test]
async fn mint_answered_404_drops_the_cached_installation() {
    let fake = FakeGitHub::builder()
        .app(APP1, APP1_PUB)
        .installation(APP1, 678, "acme")
        .start()
        .await;
    let (config, resolver) = support::resolver(
        TestConfig::new(&fake)
            .app(TestApp::new(APP1, APP1_KEY))
            .build(),
    );
    let integration = &config.integrations[0];
    let r = resolver
        .resolve(integration, &Method::GET, Some("acme"), Some("w"))
        .await;
    assert_eq!(r.installation_id, Some(678));

    // The App is uninstalled and reinstalled (a new installation id) on acme.
    fake.remove_installation(678);
    fake.add_installation(APP1, 999, "acme");
    resolver.github().evict_token(0, APP1, 678);
    let r = resolver
        .resolve(integration, &Method::GET, Some("acme"), Some("w"))
        .await;
    // GitHub failed the mint: `app_error` (§7.1), and the installation is forgotten (§7.2).
    assert_eq!(r.credential, CredentialKind::None);
    assert_eq!(r.steps[0].reason, Some(Reason::AppError), "{:#?}", r.steps);
    assert_eq!(fake.calls("POST /app/installations/678/access_tokens"), 2);

    // The next request looks the installation up again and finds the new one.
    let r = resolver
        .resolve(integration, &Method::GET, Some("acme"), Some("w"))
        .await;
    assert_eq!(
        (r.reason, r.installation_id),
        (Reason::Installed, Some(999))
    );
    assert_eq!(fake.lookup_count(), 2);
}

#[tokio::test]
async fn installation_lookup_and_repo_list_follow_link_pagination() {
    let fake = FakeGitHub::builder()
        .app(APP1, APP1_PUB)
        .installation(APP1, 1, "one")
        .installation(APP1, 2, "two")
        .installation(APP1, 3, "acme")
        .selected_repos(3, &["a", "b", "widgets"])
        .page_size(1)
        .start()
        .await;
    let (config, resolver) = support::resolver(
        TestConfig::new(&fake)
            .app(TestApp::new(APP1, APP1_KEY))
            .build(),
    );
    let r = resolver
        .resolve(
            &config.integrations[0],
            &Method::GET,
            Some("acme"),
            Some("widgets"),
        )
        .await;
    assert_eq!((r.reason, r.installation_id), (Reason::Installed, Some(3)));
    assert_eq!(fake.calls("/app/installations"), 3, "three pages");
    assert_eq!(fake.calls("/installation/repositories"), 3, "three pages");
}

#[tokio::test]
async fn pat_is_built_once_and_shared() {
    let fake = FakeGitHub::builder().start().await;
    let (config, resolver) = support::resolver(TestConfig::new(&fake).token("ghp_x").build());
    let integration = &config.integrations[0];
    let a = resolver
        .resolve(integration, &Method::GET, Some("o"), None)
        .await
        .token
        .unwrap();
    let b = resolver
        .resolve(integration, &Method::GET, Some("p"), None)
        .await
        .token
        .unwrap();
    assert!(Arc::ptr_eq(&a, &b));
}

#[tokio::test]
async fn installation_suspended_after_lookup_is_reported_as_suspended() {
    let fake = FakeGitHub::builder()
        .app(APP1, APP1_PUB)
        .installation(APP1, 678, "acme")
        .start()
        .await;
    let (config, resolver) = support::resolver(
        TestConfig::new(&fake)
            .token("ghp_x")
            .app(TestApp::new(APP1, APP1_KEY))
            .build(),
    );
    let integration = &config.integrations[0];
    let r = resolver
        .resolve(integration, &Method::GET, Some("acme"), None)
        .await;
    assert_eq!(r.reason, Reason::Installed);
    // Suspended while the installation list is cached: the mint says so (403).
    fake.set_suspended(678, true);
    resolver.github().evict_token(0, APP1, 678);
    let r = resolver
        .resolve(integration, &Method::GET, Some("acme"), None)
        .await;
    assert_eq!(
        (r.credential, r.reason),
        (CredentialKind::Pat, Reason::Suspended)
    );
}

/// FakeGitHub holds the proxy to GitHub's JWT rules, so a regression in `github::app` fails here.
#[tokio::test]
async fn fake_github_refuses_jwts_github_would_refuse() {
    use std::time::{SystemTime, UNIX_EPOCH};

    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};

    let fake = FakeGitHub::builder().app(APP1, APP1_PUB).start().await;
    let config = TestConfig::new(&fake).build();
    let client = gh_token_proxy::upstream::build(&config.proxy.upstream).unwrap();
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(APP1_KEY.as_bytes()).unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let status_for = |claims: serde_json::Value| {
        let jwt = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
            &claims,
            &key,
        )
        .unwrap();
        let request = http::Request::get(format!("{}/app", fake.api_url()))
            .header("authorization", format!("Bearer {jwt}"))
            .header("user-agent", "test")
            .body(
                Full::new(Bytes::new())
                    .map_err(|never| match never {})
                    .boxed_unsync(),
            )
            .unwrap();
        let client = client.clone();
        async move { client.request(request).await.unwrap().status().as_u16() }
    };
    let good = serde_json::json!({"iat": now - 60, "exp": now + 540, "iss": "12345"});
    assert_eq!(status_for(good).await, 200);
    let numeric_iss = serde_json::json!({"iat": now - 60, "exp": now + 540, "iss": 12345});
    assert_eq!(status_for(numeric_iss).await, 200);
    let not_backdated = serde_json::json!({"iat": now, "exp": now + 540, "iss": "12345"});
    assert_eq!(status_for(not_backdated).await, 401);
    let expired = serde_json::json!({"iat": now - 700, "exp": now - 100, "iss": "12345"});
    assert_eq!(status_for(expired).await, 401);
    let too_long = serde_json::json!({"iat": now - 60, "exp": now + 3600, "iss": "12345"});
    assert_eq!(status_for(too_long).await, 401);
    let other_app = serde_json::json!({"iat": now - 60, "exp": now + 540, "iss": "999"});
    assert_eq!(status_for(other_app).await, 401);
}

/// GitHub's `expires_at` under 60 s away by this host's clock (a clock ahead of GitHub's, or a
/// GHE issuing short tokens): the token is never used (§7.2), the App step fails as `app_error`
/// with a message about the clock, and concurrent requests share the one mint (single flight).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_minted_with_under_a_minute_left_is_never_used_and_minted_once() {
    let fake = FakeGitHub::builder()
        .app(APP1, APP1_PUB)
        .installation(APP1, 678, "acme")
        .token_lifetime(Duration::from_secs(50))
        .start()
        .await;
    fake.set_mint_delay(Duration::from_millis(200));
    let (config, resolver) = support::resolver(
        TestConfig::new(&fake)
            .app(TestApp::new(APP1, APP1_KEY))
            .build(),
    );
    let tasks = resolve_concurrently(
        &Arc::new(resolver),
        &config,
        std::iter::repeat_n("acme", 30),
    );
    for task in tasks {
        let r = task.await.unwrap();
        assert_eq!(r.credential, CredentialKind::None);
        assert!(r.token.is_none());
        assert_eq!(r.steps[0].reason, Some(Reason::AppError), "{:#?}", r.steps);
        let detail = r.steps[0].detail.as_deref().unwrap_or_default();
        assert!(detail.contains("clock"), "{detail}");
    }
    assert_eq!(fake.mint_count(), 1, "the waiters shared the one mint");
}
