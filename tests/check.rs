#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! `gh-token-proxy check` (SPEC §9): the real binary against FakeGitHub over real TLS, one test per
//! finding, exit codes per §2, and no secret in any output.

mod support;

use std::sync::Arc;

use gh_token_proxy::check::{Severity, run_check};
use gh_token_proxy::config::Config;
use support::fake_github::PatDetails;
use support::{APP1_KEY, APP1_PUB, FakeGitHub, TestApp, TestConfig, WRONG_KEY};
use time::OffsetDateTime;

const APP1: u64 = 12345;
const PAT: &str = "ghp_check_canary_pat_value";

/// What one run of the binary printed.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }

    /// The stdout lines that start with `prefix` (`"FAIL "`, `"warn "`, `"ok   "`).
    fn lines(&self, prefix: &str) -> Vec<&str> {
        self.stdout
            .lines()
            .filter(|l| l.starts_with(prefix))
            .collect()
    }

    fn assert_code(&self, code: i32) {
        assert_eq!(self.code, code, "{}", self.all());
    }
}

/// Runs `gh-token-proxy check --config <yaml in a temp file> [args]` and checks that no secret
/// reached stdout or stderr: not the PAT, not any line of the private key bodies, no JWT.
async fn check_bin(yaml: &str, args: &[&str]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app-config.yaml");
    std::fs::write(&path, yaml).unwrap();
    // tokio's Command so FakeGitHub (on this runtime) keeps answering while the binary runs.
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_gh-token-proxy"))
        .arg("check")
        .arg("--config")
        .arg(&path)
        .args(args)
        .env_remove("GH_TOKEN_PROXY_CONFIG")
        .env("RUST_LOG", "debug")
        .output()
        .await
        .unwrap();
    let run = Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    assert_no_secrets(&run.all());
    println!("=== exit {}\n{}", run.code, run.stdout);
    run
}

fn assert_no_secrets(output: &str) {
    assert!(!output.contains(PAT), "the PAT leaked:\n{output}");
    for key in [APP1_KEY, WRONG_KEY] {
        for line in key.lines().filter(|l| !l.starts_with("-----")) {
            assert!(!output.contains(line), "a private key leaked:\n{output}");
        }
    }
    // Every JWT starts with the base64 of `{"`.
    assert!(!output.contains("eyJ"), "a JWT leaked:\n{output}");
}

/// `GitHub-Authentication-Token-Expiration` `days` from now, in GitHub's documented form or with
/// the `+0000` offset GitHub also sends.
fn expiration_in(days: i64, numeric_offset: bool) -> String {
    let at = OffsetDateTime::now_utc() + time::Duration::days(days);
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    let zone = if numeric_offset { "+0000" } else { "UTC" };
    format!("{} {zone}", at.format(format).unwrap())
}

fn pat_details(expires_in_days: Option<i64>) -> PatDetails {
    PatDetails {
        scopes: Some("repo, read:org".to_string()),
        expiration: expires_in_days.map(|d| expiration_in(d, true)),
        remaining: Some(4321),
        rate_limiting_disabled: false,
    }
}

/// App1 on acme and globex, both allow-listed; a PAT valid for 90 days.
async fn healthy_fake() -> FakeGitHub {
    FakeGitHub::builder()
        .app(APP1, APP1_PUB)
        .installation(APP1, 678, "acme")
        .installation(APP1, 679, "globex")
        .pat_with(PAT, pat_details(Some(90)))
        .start()
        .await
}

fn healthy_config(fake: &FakeGitHub) -> TestConfig {
    TestConfig::new(fake)
        .token(PAT)
        .app(TestApp::new(APP1, APP1_KEY).allowed_owners(&["acme", "Globex"]))
}

#[tokio::test]
async fn healthy_setup_exits_0_and_reports_every_credential() {
    let fake = healthy_fake().await;
    let run = check_bin(&healthy_config(&fake).yaml(), &[]).await;
    run.assert_code(0);
    assert!(
        run.lines("FAIL ").is_empty() && run.lines("warn ").is_empty(),
        "{}",
        run.all()
    );
    assert_eq!(run.stdout.lines().last(), Some("check: all good"));
    let pat_line = run
        .lines("ok   github.com integrations.github[0].token: valid")
        .join("\n");
    assert!(pat_line.contains("scopes: repo, read:org"), "{pat_line}");
    assert!(pat_line.contains("4321 core requests left"), "{pat_line}");
    assert!(pat_line.contains("(in 90 days)"), "{pat_line}");
    assert!(
        run.stdout
            .contains("App 12345 (app-12345): GitHub accepts its JWT")
    );
    assert!(
        run.stdout.contains(
            "App 12345 installed on 'acme' (installation 678, repository_selection: all)"
        )
    );
    assert!(run.stdout.contains("installed on 'globex'"));
    // Only the calls check is meant to make, each with the right credential.
    assert_eq!(fake.calls("GET /rate_limit"), 1);
    assert_eq!(fake.calls("GET /app"), 1);
    assert_eq!(fake.calls("GET /app/installations"), 1);
    assert_eq!(fake.mint_count(), 0, "check never mints a token");
}

#[tokio::test]
async fn expired_pat_is_a_failure() {
    let fake = FakeGitHub::builder()
        .pat_with(PAT, pat_details(Some(-2)))
        .start()
        .await;
    let run = check_bin(&TestConfig::new(&fake).token(PAT).yaml(), &[]).await;
    run.assert_code(1);
    let fails = run.lines("FAIL ");
    assert_eq!(fails.len(), 1, "{}", run.all());
    assert!(
        fails[0].starts_with("FAIL github.com integrations.github[0].token: the PAT expired on "),
        "{}",
        fails[0]
    );
    assert!(fails[0].contains("create a new one"));
    assert_eq!(run.stdout.lines().last(), Some("check: 1 problem found"));
}

#[tokio::test]
async fn pat_expiring_in_five_days_is_a_warning_and_a_problem() {
    let fake = FakeGitHub::builder()
        .pat_with(
            PAT,
            PatDetails {
                expiration: Some(expiration_in(5, false)),
                ..pat_details(None)
            },
        )
        .start()
        .await;
    let run = check_bin(&TestConfig::new(&fake).token(PAT).yaml(), &[]).await;
    run.assert_code(1);
    let warns = run.lines("warn ");
    assert_eq!(warns.len(), 1, "{}", run.all());
    assert!(
        warns[0].starts_with(
            "warn github.com integrations.github[0].token: WARNING: the PAT expires on "
        ),
        "{}",
        warns[0]
    );
    assert!(warns[0].contains("in 5 day(s)"), "{}", warns[0]);
    assert!(run.lines("FAIL ").is_empty());
}

#[tokio::test]
async fn revoked_pat_is_rejected_with_401() {
    let fake = FakeGitHub::builder()
        .pat_with(PAT, pat_details(Some(90)))
        .start()
        .await;
    fake.revoke_pat(PAT);
    let run = check_bin(&TestConfig::new(&fake).token(PAT).yaml(), &[]).await;
    run.assert_code(1);
    assert_eq!(
        run.lines("FAIL "),
        vec![
            "FAIL github.com integrations.github[0].token: rejected by GitHub (401 Bad credentials): the PAT is revoked or expired; create a new one"
        ],
        "{}",
        run.all()
    );
}

#[tokio::test]
async fn wrong_app_key_is_reported_as_a_rejected_jwt() {
    let fake = healthy_fake().await;
    let yaml = TestConfig::new(&fake)
        .token(PAT)
        .app(TestApp::new(APP1, WRONG_KEY))
        .yaml();
    let run = check_bin(&yaml, &[]).await;
    run.assert_code(1);
    let fails = run.lines("FAIL ");
    assert_eq!(fails.len(), 1, "{}", run.all());
    assert!(
        fails[0].starts_with("FAIL github.com integrations.github[0].apps[0]: App 12345: GitHub rejected the App JWT (401 "),
        "{}",
        fails[0]
    );
    assert!(fails[0].contains("wrong private key or app id"));
    // The PAT is still checked (and fine).
    assert_eq!(
        run.lines("ok   github.com integrations.github[0].token: valid")
            .len(),
        1
    );
    // A rejected JWT is not tried again on the installations endpoint.
    assert_eq!(fake.calls("GET /app/installations"), 0);
}

#[tokio::test]
async fn allow_listed_owner_without_installation_is_flagged() {
    let fake = healthy_fake().await;
    let yaml = TestConfig::new(&fake)
        .token(PAT)
        .app(TestApp::new(APP1, APP1_KEY).allowed_owners(&["acme", "initech"]))
        .yaml();
    let run = check_bin(&yaml, &[]).await;
    run.assert_code(1);
    assert_eq!(
        run.lines("FAIL "),
        vec![
            "FAIL github.com integrations.github[0].apps[0].allowedInstallationOwners: App 12345 is not installed on 'initech', which allowedInstallationOwners lists: install it or remove the entry"
        ],
        "{}",
        run.all()
    );
    // The installation on an owner outside the list is shown, and said to be unused.
    assert!(
        run.stdout
            .contains("installed on 'globex' (installation 679, repository_selection: all; not in allowedInstallationOwners, so unused)"),
        "{}",
        run.stdout
    );
}

#[tokio::test]
async fn suspended_installation_is_flagged() {
    let fake = FakeGitHub::builder()
        .app(APP1, APP1_PUB)
        .installation(APP1, 678, "acme")
        .installation(APP1, 679, "globex")
        .suspended(679)
        .pat_with(PAT, pat_details(Some(90)))
        .start()
        .await;
    let run = check_bin(&healthy_config(&fake).yaml(), &[]).await;
    run.assert_code(1);
    let fails = run.lines("FAIL ");
    assert_eq!(fails.len(), 1, "{}", run.all());
    assert!(
        fails[0].starts_with(
            "FAIL github.com integrations.github[0].apps[0].installations: App 12345's installation 679 on 'globex' is suspended"
        ),
        "{}",
        fails[0]
    );
}

#[tokio::test]
async fn broken_config_exits_2_naming_the_key_path() {
    let yaml = format!("integrations:\n  github:\n    - host: ghe.acme.com\n      token: {PAT}\n");
    let run = check_bin(&yaml, &[]).await;
    run.assert_code(2);
    assert!(
        run.stderr.contains("integrations.github[0].apiBaseUrl"),
        "{}",
        run.all()
    );
}

#[tokio::test]
async fn offline_good_config_exits_0_without_contacting_github() {
    let fake = healthy_fake().await;
    let run = check_bin(&healthy_config(&fake).yaml(), &["--offline"]).await;
    run.assert_code(0);
    assert_eq!(run.stdout.lines().last(), Some("check: all good"));
    assert!(run.stdout.contains("ok   proxy.upstream: TLS client ready"));
    assert!(
        run.stdout
            .contains("ok   github.com integrations.github[0].token: set")
    );
    assert!(run.stdout.contains(
        "ok   github.com integrations.github[0].apps[0].privateKey: App 12345: private key parses"
    ));
    assert_eq!(fake.requests().len(), 0, "offline must not call GitHub");
}

#[tokio::test]
async fn offline_flags_unreadable_ca_file_and_unwritable_audit_dir() {
    let fake = healthy_fake().await;
    let dir = tempfile::tempdir().unwrap();
    let missing_ca = dir.path().join("no-such-ca.pem");
    let audit = dir.path().join("no-such-dir").join("audit.jsonl");
    // The healthy YAML with another caFile and a file audit sink.
    let yaml = healthy_config(&fake)
        .yaml()
        .replace(
            &fake.ca_file().display().to_string(),
            &missing_ca.display().to_string(),
        )
        .replace(
            "proxy:\n",
            &format!("proxy:\n  audit:\n    path: {}\n", audit.display()),
        );
    // Both are files `serve` could not use (it exits 2, bad config): check lists both, exits 2.
    let run = check_bin(&yaml, &["--offline"]).await;
    run.assert_code(2);
    let fails = run.lines("FAIL ");
    assert_eq!(fails.len(), 2, "{}", run.all());
    assert!(
        fails
            .iter()
            .any(|l| l.starts_with("FAIL proxy.audit.path: ") && l.contains("does not exist"))
    );
    assert!(
        fails
            .iter()
            .any(|l| l.starts_with("FAIL proxy.upstream.caFile: cannot read "))
    );
    assert_eq!(fake.requests().len(), 0);

    // A writable directory is fine, and the probe leaves nothing behind.
    let audit_ok = dir.path().join("audit.jsonl");
    let yaml = healthy_config(&fake).yaml().replace(
        "proxy:\n",
        &format!("proxy:\n  audit:\n    path: {}\n", audit_ok.display()),
    );
    let run = check_bin(&yaml, &["--offline"]).await;
    run.assert_code(0);
    assert!(
        run.stdout.contains("ok   proxy.audit.path: "),
        "{}",
        run.stdout
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[tokio::test]
async fn unreachable_host_is_a_finding_and_other_integrations_are_still_checked() {
    let fake = healthy_fake().await;
    // A port nothing listens on: bind, note it, close.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let yaml = healthy_config(&fake).yaml().replace(
        "proxy:\n",
        &format!(
            "    - host: ghe.acme.com\n      apiBaseUrl: https://127.0.0.1:{port}/api/v3\n      token: {PAT}\nproxy:\n"
        ),
    );
    let run = check_bin(&yaml, &[]).await;
    run.assert_code(1);
    let fails = run.lines("FAIL ");
    assert_eq!(fails.len(), 1, "{}", run.all());
    assert!(
        fails[0].starts_with(&format!(
            "FAIL ghe.acme.com integrations.github[1].token: cannot check the PAT: GET https://127.0.0.1:{port}/api/v3/rate_limit failed: "
        )),
        "{}",
        fails[0]
    );
    assert!(
        run.stdout
            .contains("ok   github.com integrations.github[0].token: valid")
    );
}

#[tokio::test]
async fn every_page_of_installations_is_listed() {
    let fake = FakeGitHub::builder()
        .app(APP1, APP1_PUB)
        .installation(APP1, 1, "acme")
        .installation(APP1, 2, "globex")
        .installation(APP1, 3, "initech")
        .selected_repos(3, &["tps"])
        .page_size(1)
        .start()
        .await;
    let config = TestConfig::new(&fake)
        .app(TestApp::new(APP1, APP1_KEY).allowed_owners(&["initech"]))
        .build();
    let report = run_check(Arc::new(config), false).await;
    let shown: Vec<String> = report.findings.iter().map(|f| f.to_string()).collect();
    assert_eq!(report.problems(), 0, "{shown:#?}");
    for owner in ["'acme'", "'globex'"] {
        assert!(
            shown
                .iter()
                .any(|l| l.contains(owner) && l.contains("so unused")),
            "{shown:#?}"
        );
    }
    assert!(
        shown
            .iter()
            .any(|l| l.contains("'initech' (installation 3, repository_selection: selected)")),
        "{shown:#?}"
    );
    assert_eq!(fake.calls("GET /app/installations"), 3);
    assert!(report.findings.iter().all(|f| f.severity == Severity::Ok));
}

#[tokio::test]
async fn fine_grained_pat_without_scopes_or_expiry_is_fine() {
    // FakeGitHub's plain PAT sends no X-OAuth-Scopes and no expiry header.
    let fake = FakeGitHub::builder().pat(PAT).start().await;
    let config = Config::from_yaml(&TestConfig::new(&fake).token(PAT).yaml()).unwrap();
    let report = run_check(Arc::new(config), false).await;
    let pat = report
        .findings
        .iter()
        .find(|f| f.key == "integrations.github[0].token" && f.message.starts_with("valid"))
        .unwrap();
    assert_eq!(pat.severity, Severity::Ok);
    assert!(pat.message.contains("no X-OAuth-Scopes"), "{}", pat.message);
    assert!(pat.message.contains("no expiry"), "{}", pat.message);
    assert!(
        pat.message.contains("4999 core requests left"),
        "{}",
        pat.message
    );
}

#[tokio::test]
async fn ghes_without_rate_limiting_still_validates_the_pat() {
    let fake = FakeGitHub::builder()
        .pat_with(
            PAT,
            PatDetails {
                rate_limiting_disabled: true,
                ..pat_details(Some(90))
            },
        )
        .start()
        .await;
    let run = check_bin(&TestConfig::new(&fake).token(PAT).yaml(), &[]).await;
    run.assert_code(0);
    let ok = run.lines("ok   github.com integrations.github[0].token: valid");
    assert_eq!(ok.len(), 1, "{}", run.all());
    assert!(
        ok[0].contains("rate limiting not enabled on this host"),
        "{}",
        ok[0]
    );
    assert!(ok[0].contains("scopes: repo, read:org"), "{}", ok[0]);
}
