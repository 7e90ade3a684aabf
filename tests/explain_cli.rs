//! `gh-token-proxy explain` as a user runs it: the real binary against FakeGitHub over TLS. The
//! web URL of a file and the API URL of the same repository get the same decision, and nothing a
//! secret could be read from reaches the output.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::process::{Command, Output};

use support::fake_github::FakeGitHub;
use support::{APP1_KEY, APP1_PUB, TestApp, TestConfig};

const APP1: u64 = 12345;
const PAT: &str = "ghp_explain_cli_canary_pat_0123456789";

fn explain(config: &std::path::Path, args: &[&str]) -> Output {
    let output = Command::new(env!("CARGO_BIN_EXE_gh-token-proxy"))
        .arg("explain")
        .args(args)
        .arg("--config")
        .arg(config)
        .env_remove("GH_TOKEN_PROXY_CONFIG")
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "explain {args:?} exited {:?}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

#[tokio::test(flavor = "multi_thread")]
async fn explain_json_gives_the_same_decision_for_web_and_api_urls_and_no_token() {
    let fake = FakeGitHub::builder()
        .app(APP1, APP1_PUB)
        .installation(APP1, 678, "acme")
        .start()
        .await;
    let yaml = TestConfig::new(&fake)
        .token(PAT)
        .app(TestApp::new(APP1, APP1_KEY))
        .yaml();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("explain.yaml");
    std::fs::write(&config, yaml).unwrap();

    let web_url = "https://github.com/acme/widgets/blob/main/catalog-info.yaml";
    let api_url = format!("{}/repos/acme/widgets", fake.api_url());
    let config_path = config.clone();
    let api = api_url.clone();
    let (web, api, tree) = tokio::task::spawn_blocking(move || {
        (
            explain(&config_path, &["--json", web_url]),
            explain(&config_path, &["--json", &api]),
            explain(&config_path, &[web_url]),
        )
    })
    .await
    .unwrap();

    let web_json: serde_json::Value = serde_json::from_slice(&web.stdout).unwrap();
    let api_json: serde_json::Value = serde_json::from_slice(&api.stdout).unwrap();
    assert_eq!(web_json["origin"], "web", "{web_json}");
    assert_eq!(api_json["origin"], "api", "{api_json}");
    for json in [&web_json, &api_json] {
        assert_eq!(json["integration"], "github.com");
        assert_eq!(json["owner"], "acme");
        assert_eq!(json["repo"], "widgets");
        assert_eq!(json["credential"], "app");
        assert_eq!(json["reason"], "installed");
        assert_eq!(json["app_id"], APP1);
        assert_eq!(json["installation_id"], 678);
        let keys: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys.len(),
            10,
            "exactly the SPEC §9 fields: {keys:?} in {json}"
        );
        assert_eq!(json["steps"][0]["check"], "app");
        assert_eq!(json["steps"][0]["result"], "used");
    }
    assert_eq!(
        (&web_json["credential"], &web_json["reason"]),
        (&api_json["credential"], &api_json["reason"])
    );
    let tree_text = String::from_utf8_lossy(&tree.stdout);
    assert!(tree_text.contains("credential: app"), "{tree_text}");

    // Each run is its own process, so each minted its own token; the hash is there, the token
    // never is (nor the PAT, nor the key).
    let minted = fake.issued_tokens();
    assert_eq!(minted.len(), 3, "one mint per explain run");
    let hashes: Vec<String> = minted
        .iter()
        .map(|t| gh_token_proxy::credential::hash_token(t))
        .collect();
    assert!(hashes.contains(&web_json["hashed_token"].as_str().unwrap().to_owned()));
    assert!(hashes.contains(&api_json["hashed_token"].as_str().unwrap().to_owned()));
    let key_lines: Vec<&str> = APP1_KEY
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() > 20)
        .collect();
    for output in [&web, &api, &tree] {
        for stream in [&output.stdout, &output.stderr] {
            let text = String::from_utf8_lossy(stream);
            for token in &minted {
                assert!(!text.contains(token.as_str()), "a token leaked: {text}");
            }
            assert!(!text.contains(PAT), "the PAT leaked: {text}");
            for line in &key_lines {
                assert!(!text.contains(line), "the private key leaked: {text}");
            }
        }
    }
}

/// `http://proxy:8080/...` names the proxy itself (its listen port or address, or `publicUrl`), so
/// its path is explained as the proxy would see it; `api.github.com` is github.com's api origin
/// wherever `apiBaseUrl` points; any other host no integration has is refused as the running
/// proxy refuses it, so explain says what the audit record would (`unknown_host`).
#[test]
fn explain_refuses_unconfigured_hosts_and_reads_the_proxys_own_address() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("explain.yaml");
    std::fs::write(
        &config,
        format!(
            "integrations:
  github:
    - host: github.com
      token: {PAT}
      apiBaseUrl: http://127.0.0.1:9/api/v3
      rawBaseUrl: http://127.0.0.1:9/raw
proxy:
  listen: 127.0.0.1:8080
  publicUrl: http://gh-proxy.acme.internal/ghproxy
"
        ),
    )
    .unwrap();
    let json = |url: &str| -> serde_json::Value {
        let output = explain(&config, &["--json", url]);
        serde_json::from_slice(&output.stdout).unwrap()
    };
    for url in [
        "https://evil.example/repos/acme/widgets",
        "https://gitlab.com/acme/widgets",
        "http://proxy:9999/repos/acme/widgets",
        "http://10.1.2.3:9999/repos/acme/widgets",
        "https://api.github.com:8443/repos/acme/widgets",
        "http://localhost:9999/repos/acme/widgets",
        // A configured origin's host outside its path: GitHub's, refused as the proxy does.
        "http://127.0.0.1:9/elsewhere/repos/acme/widgets",
    ] {
        let e = json(url);
        assert_eq!(e["credential"], "none", "{url}: {e}");
        assert_eq!(e["reason"], "unknown_host", "{url}: {e}");
        assert_eq!(e["hashed_token"], serde_json::Value::Null, "{url}: {e}");
    }
    for url in [
        "http://proxy:8080/repos/acme/widgets",
        "http://127.0.0.1:8080/api/v3/repos/acme/widgets",
        "http://localhost:8080/repos/acme/widgets",
        "http://gh-proxy.acme.internal/ghproxy/repos/acme/widgets",
        "http://GH-PROXY.acme.internal:80/ghproxy/repos/acme/widgets",
        "http://proxy:8080/github.com/acme/widgets",
        // github.com's well-known hosts stand for its configured api and raw origins.
        "https://api.github.com/repos/acme/widgets",
        "https://raw.githubusercontent.com/acme/widgets/main/README.md",
    ] {
        let e = json(url);
        assert_eq!(e["integration"], "github.com", "{url}: {e}");
        assert_eq!(
            (&e["owner"], &e["repo"]),
            (&"acme".into(), &"widgets".into())
        );
        assert_eq!(e["credential"], "pat", "{url}: {e}");
        assert_eq!(e["reason"], "no_app", "{url}: {e}");
    }
}
