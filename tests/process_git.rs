//! `git clone` through the real binary (SPEC §4 host-prefix form, §5 web origin, §7.2): the web
//! origin is a TLS git smart-HTTP server (`git http-backend`) that, like GitHub for a private
//! repository, answers 401 without credentials; the proxy adds `Basic x-access-token:<token>` with
//! a freshly minted installation token, and the audit records say `app`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use sha2::{Digest, Sha256};
use support::git_backend::{GitWebOrigin, create_repo, git, git_available, run_git};
use support::process::ProxyProcess;
use support::{APP1_KEY, APP1_PUB, FakeGitHub};

const APP_ID: u64 = 4242;
const INSTALLATION_ID: u64 = 77;
const CLONE_WAIT: Duration = Duration::from_secs(60);

/// The installation token inside `Basic base64("x-access-token:" + token)`, if that is the form.
fn basic_token(authorization: &str) -> Option<String> {
    let b64 = authorization.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    String::from_utf8(decoded)
        .ok()?
        .strip_prefix("x-access-token:")
        .map(str::to_string)
}

async fn run(mut command: std::process::Command) -> std::process::Output {
    let mut command = tokio::process::Command::from(std::mem::replace(
        &mut command,
        std::process::Command::new("true"),
    ));
    command.kill_on_drop(true);
    tokio::time::timeout(CLONE_WAIT, command.output())
        .await
        .expect("git timed out")
        .unwrap()
}

/// FakeGitHub (the App API), the git web origin serving `acme/widgets`, and the proxy binary
/// configured with that origin's host as its integration.
struct Setup {
    fake: Arc<FakeGitHub>,
    origin: GitWebOrigin,
    proxy: ProxyProcess,
    dir: tempfile::TempDir,
    home: PathBuf,
    repos: PathBuf,
    ca_file: PathBuf,
}

impl Setup {
    /// `None` (after saying so) when `git` is not installed.
    async fn start() -> Option<Setup> {
        if !git_available() {
            eprintln!("SKIPPED: `git` is not installed; this test needs git and git http-backend");
            return None;
        }
        let fake = Arc::new(
            FakeGitHub::builder()
                .app(APP_ID, APP1_PUB)
                .installation(APP_ID, INSTALLATION_ID, "acme")
                .start()
                .await,
        );

        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        let repos = dir.path().join("repos");
        std::fs::create_dir_all(&home).unwrap();
        std::fs::create_dir_all(&repos).unwrap();
        create_repo(
            &repos,
            &home,
            "acme",
            "widgets",
            &[
                ("README.md", "# widgets\nhello through the proxy\n"),
                ("src/lib.rs", "pub fn widget() {}\n"),
            ],
        );

        // Only tokens FakeGitHub minted, in git's Basic form, may read.
        let minted = fake.clone();
        let origin = GitWebOrigin::start(
            repos.clone(),
            Arc::new(move |authorization: Option<&str>| {
                authorization
                    .and_then(basic_token)
                    .is_some_and(|token| minted.issued_tokens().contains(&token))
            }),
        )
        .await;
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(
            &ca_file,
            format!(
                "{}\n{}",
                std::fs::read_to_string(fake.ca_file()).unwrap(),
                origin.ca_pem()
            ),
        )
        .unwrap();

        let host = origin.host();
        let api = fake.api_url().to_string();
        let key = serde_json::to_string(APP1_KEY).unwrap();
        let ca = ca_file.clone();
        let proxy = ProxyProcess::start(move |listen, admin, audit| {
            format!(
                "integrations:\n  github:\n    - host: {host}\n      apiBaseUrl: {api}\n      apps:\n        - appId: {APP_ID}\n          privateKey: {key}\n          allowedInstallationOwners: [acme]\nproxy:\n  listen: {listen}\n  admin:\n    listen: {admin}\n  audit:\n    path: {}\n  upstream:\n    caFile: {}\n",
                audit.display(),
                ca.display()
            )
        });
        Some(Setup {
            fake,
            origin,
            proxy,
            dir,
            home,
            repos,
            ca_file,
        })
    }

    /// The repository through the proxy, host-prefix form.
    fn proxy_url(&self) -> String {
        format!(
            "http://127.0.0.1:{}/{}/acme/widgets.git",
            self.proxy.addr.port(),
            self.origin.host()
        )
    }

    /// `git clone` through the proxy into `{dir}/{name}`.
    async fn clone(&self, name: &str) -> PathBuf {
        let url = self.proxy_url();
        let dest = self.dir.path().join(name);
        let mut clone = git(&self.home);
        clone
            .args(["clone", &url, dest.to_str().unwrap()])
            .current_dir(self.dir.path());
        let output = run(clone).await;
        assert!(
            output.status.success(),
            "git clone {url} failed:\n{}\norigin saw: {:?}\nproxy stderr:\n{}",
            String::from_utf8_lossy(&output.stderr),
            self.origin.requests(),
            self.proxy.stderr()
        );
        dest
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_clone_through_the_proxy_uses_the_installation_token() {
    let Some(setup) = Setup::start().await else {
        return;
    };
    let Setup {
        fake,
        origin,
        proxy,
        dir,
        home,
        ca_file,
        ..
    } = &setup;

    // Without the proxy, the private repository is not readable.
    let direct = format!("https://{}/acme/widgets.git", origin.host());
    let mut ls_remote = git(home);
    ls_remote
        .args(["ls-remote", &direct])
        .env("GIT_SSL_CAINFO", ca_file);
    let output = run(ls_remote).await;
    assert!(
        !output.status.success(),
        "the web origin served an unauthenticated request"
    );
    assert!(
        origin.requests().iter().any(|r| r.status == 401),
        "{:?}",
        origin.requests()
    );
    let direct_requests = origin.requests().len();

    let dest = setup.clone("clone").await;
    assert_eq!(
        std::fs::read_to_string(dest.join("README.md")).unwrap(),
        "# widgets\nhello through the proxy\n"
    );
    assert_eq!(
        std::fs::read_to_string(dest.join("src/lib.rs")).unwrap(),
        "pub fn widget() {}\n"
    );
    let log = git(home)
        .args(["log", "--format=%s"])
        .current_dir(&dest)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&log.stdout).trim(), "initial");

    // Every request of the clone reached the backend with the installation token in git's form.
    let issued = fake.issued_tokens();
    assert_eq!(issued.len(), 1, "one mint serves the whole clone");
    let token = &issued[0];
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{token}"))
    );
    let through_proxy = &origin.requests()[direct_requests..];
    assert!(
        through_proxy.len() >= 2,
        "a smart-HTTP clone makes at least info/refs and upload-pack: {through_proxy:?}"
    );
    for request in through_proxy {
        eprintln!(
            "origin got {} {}?{} -> {}",
            request.method,
            request.path,
            request.query.as_deref().unwrap_or(""),
            request.status
        );
        assert_eq!(
            request.authorization.as_deref(),
            Some(expected.as_str()),
            "{request:?}"
        );
        assert_eq!(request.status, 200, "{request:?}");
    }
    assert!(
        through_proxy
            .iter()
            .any(|r| r.path == "/acme/widgets.git/info/refs"
                && r.query.as_deref() == Some("service=git-upload-pack"))
    );
    assert!(
        through_proxy
            .iter()
            .any(|r| r.method == "POST" && r.path == "/acme/widgets.git/git-upload-pack")
    );

    // One audit record per request, each saying the App served it.
    let records = proxy.wait_audit(&proxy.audit_path, through_proxy.len());
    assert_eq!(records.len(), through_proxy.len(), "{records:?}");
    let hashed = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(token));
    for record in &records {
        assert_eq!(record["credential"], "app", "{record}");
        assert_eq!(record["reason"], "installed", "{record}");
        assert_eq!(record["app_id"], APP_ID, "{record}");
        assert_eq!(record["installation_id"], INSTALLATION_ID, "{record}");
        assert_eq!(record["host"], origin.host(), "{record}");
        assert_eq!(record["owner"], "acme", "{record}");
        assert_eq!(record["repo"], "widgets", "{record}");
        assert_eq!(record["status"], 200, "{record}");
        assert_eq!(record["outcome"], "ok", "{record}");
        assert_eq!(record["hashed_token"], hashed.as_str(), "{record}");
    }
    assert_dir_has_no_token(dir.path(), token);
}

/// The token never lands in the clone's config (the proxy, not git, holds the credential).
fn assert_dir_has_no_token(dir: &Path, token: &str) {
    let config = std::fs::read_to_string(dir.join("clone/.git/config")).unwrap();
    assert!(!config.contains(token));
}

/// Incompressible bytes (xorshift), so the pack is as large as the file.
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.extend_from_slice(&seed.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A push larger than git's `http.postBuffer` (1 MiB) goes up as a chunked POST of unknown
/// length: the proxy streams it to the web origin with the installation token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_push_of_a_large_pack_streams_through_the_proxy() {
    let Some(setup) = Setup::start().await else {
        return;
    };
    let work = setup.clone("work").await;
    let blob = noise(3 * 1024 * 1024, 0x9e37_79b9_7f4a_7c15);
    std::fs::write(work.join("blob.bin"), &blob).unwrap();
    run_git(&setup.home, &["add", "blob.bin"], &work);
    run_git(
        &setup.home,
        &[
            "-c",
            "user.name=Test",
            "-c",
            "user.email=test@example.com",
            "commit",
            "-q",
            "-m",
            "add blob",
        ],
        &work,
    );
    let before_push = setup.origin.requests().len();
    let mut push = git(&setup.home);
    push.args(["push", "origin", "main"]).current_dir(&work);
    let output = run(push).await;
    assert!(
        output.status.success(),
        "git push failed:\n{}\norigin saw: {:?}\nproxy stderr:\n{}",
        String::from_utf8_lossy(&output.stderr),
        setup.origin.requests(),
        setup.proxy.stderr()
    );

    // The bare repository on the origin has the commit and the exact blob.
    let bare = setup.repos.join("acme/widgets.git");
    let subject = run_git(&setup.home, &["log", "-1", "--format=%s", "main"], &bare);
    assert_eq!(subject.trim(), "add blob");
    let stored = git(&setup.home)
        .args(["cat-file", "blob", "main:blob.bin"])
        .current_dir(&bare)
        .output()
        .unwrap();
    assert!(stored.status.success());
    assert_eq!(stored.stdout.len(), blob.len());
    assert!(stored.stdout == blob, "the pushed blob differs");

    let pushes: Vec<_> = setup.origin.requests()[before_push..]
        .iter()
        .filter(|r| r.method == "POST" && r.path == "/acme/widgets.git/git-receive-pack")
        .cloned()
        .collect();
    assert!(
        pushes.iter().any(|r| r.content_length.is_none()),
        "the pack should have gone up chunked (unknown length): {pushes:?}"
    );
    let token = &setup.fake.issued_tokens()[0];
    for request in &pushes {
        assert_eq!(request.status, 200, "{request:?}");
        assert_eq!(
            request
                .authorization
                .as_deref()
                .and_then(basic_token)
                .as_deref(),
            Some(token.as_str())
        );
    }
    let records = setup
        .proxy
        .wait_audit(&setup.proxy.audit_path, setup.origin.requests().len());
    let receive: Vec<_> = records
        .iter()
        .filter(|r| r["path"] == "/acme/widgets.git/git-receive-pack")
        .collect();
    assert_eq!(receive.len(), pushes.len(), "{records:?}");
    for record in receive {
        assert_eq!(record["method"], "POST");
        assert_eq!(record["credential"], "app", "{record}");
        assert_eq!(record["reason"], "installed", "{record}");
        assert_eq!(record["status"], 200, "{record}");
        assert_eq!(record["outcome"], "ok", "{record}");
    }
}
