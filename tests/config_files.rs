#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Loads every example in `config/` so the examples cannot drift from what the loader accepts.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use gh_token_proxy::config::{AuditSink, Config};
use secrecy::ExposeSecret;

fn config_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config")
}

/// Fake values for every variable the examples use; the App key is the test fixture.
fn fake_env() -> HashMap<String, String> {
    let key = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/app1.key.pem"),
    )
    .unwrap();
    [
        ("GITHUB_TOKEN", "ghp_fake_token_for_tests"),
        ("GHE_TOKEN", "ghp_fake_ghe_token"),
        ("GITHUB_APP_PRIVATE_KEY", key.as_str()),
        ("GITHUB_APP_CLIENT_SECRET", "fake_client_secret"),
        ("GITHUB_APP_WEBHOOK_SECRET", "fake_webhook_secret"),
        ("CATALOG_PROXY_KEY", "fake_catalog_key"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn load(paths: &[PathBuf], env: &HashMap<String, String>) -> Config {
    Config::load(paths, &|k| env.get(k).cloned())
        .unwrap_or_else(|e| panic!("{paths:?} does not load: {e}"))
}

#[test]
fn every_example_loads_on_its_own() {
    let env = fake_env();
    let mut count = 0;
    for entry in std::fs::read_dir(config_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let config = load(std::slice::from_ref(&path), &env);
            assert!(
                config.warnings.is_empty(),
                "{path:?}: {:?}",
                config.warnings
            );
            count += 1;
        }
    }
    assert!(
        count >= 3,
        "expected the three example configs, found {count}"
    );
}

#[test]
fn default_config_loads_with_an_empty_environment() {
    let config = load(&[config_dir().join("gh-token-proxy.yaml")], &HashMap::new());
    let github = config.default_integration();
    assert_eq!(github.host, "github.com");
    assert!(github.token.is_none());
    assert_eq!(config.proxy.listen, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(
        config.proxy.admin_listen,
        Some("127.0.0.1:9090".parse().unwrap())
    );
    assert_eq!(config.proxy.audit, AuditSink::Stdout);
    assert_eq!(
        config.warnings,
        vec!["GITHUB_TOKEN is not set; integrations.github[0].token is treated as absent"]
    );
}

#[test]
fn default_config_uses_github_token_when_set() {
    let config = load(&[config_dir().join("gh-token-proxy.yaml")], &fake_env());
    let token = config.default_integration().token.as_ref().unwrap();
    assert_eq!(token.expose_secret(), "ghp_fake_token_for_tests");
}

#[test]
fn app_config_example_reads_integrations_and_ignores_the_rest() {
    let config = load(&[config_dir().join("app-config.example.yaml")], &fake_env());
    assert_eq!(config.integrations.len(), 2);
    let github = &config.integrations[0];
    assert_eq!(github.apps.len(), 1);
    assert_eq!(github.apps[0].app_id, 12345);
    assert!(github.apps[0].allows_owner("ACME"));
    assert!(github.token.is_some());
    let ghe = &config.integrations[1];
    assert_eq!(ghe.api.base_url(), "https://ghe.acme.com/api/v3");
    assert_eq!(ghe.graphql.base_url(), "https://ghe.acme.com/api/graphql");
    assert_eq!(config.proxy.clients.len(), 1);
    assert_eq!(config.proxy.clients[0].name, "catalog");
}

#[test]
fn production_overlay_merges_on_the_app_config_example() {
    let config = load(
        &[
            config_dir().join("app-config.example.yaml"),
            config_dir().join("production.example.yaml"),
        ],
        &fake_env(),
    );
    // From the base file.
    assert_eq!(config.integrations.len(), 2);
    assert_eq!(config.proxy.default_owner.as_deref(), Some("acme"));
    // From the overlay.
    assert_eq!(config.proxy.listen, "0.0.0.0:8080".parse().unwrap());
    let names: Vec<&str> = config
        .proxy
        .clients
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(names, ["catalog", "release-ci"]);
    assert_eq!(
        config.proxy.audit,
        AuditSink::File(PathBuf::from("/var/log/gh-token-proxy/audit.jsonl"))
    );
    assert_eq!(
        config.proxy.public_url.as_deref(),
        Some("https://gh-proxy.internal.acme.com")
    );
}

#[test]
fn debug_of_a_loaded_example_shows_no_secret() {
    let env = fake_env();
    let config = load(&[config_dir().join("app-config.example.yaml")], &env);
    let debug = format!("{config:?}");
    for secret in [
        "ghp_fake_token_for_tests",
        "ghp_fake_ghe_token",
        "fake_client_secret",
        "fake_catalog_key",
        "BEGIN RSA PRIVATE KEY",
    ] {
        assert!(!debug.contains(secret), "Debug shows {secret}");
    }
}
