//! Startup safety of the real binary (SPEC §3.3): a non-loopback `proxy.listen` without clients
//! is refused (exit 2, saying why and how to fix) unless `allowUnauthenticatedClients: true`;
//! a non-loopback `admin.listen` starts with a warning.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_gh-token-proxy");
const WAIT: Duration = Duration::from_secs(20);

/// Writes a config (one integration with a PAT, nothing listening upstream) with `proxy_lines`
/// under `proxy:` and returns its path.
fn write_config(dir: &Path, proxy_lines: &str) -> std::path::PathBuf {
    let audit = dir.join("audit.log");
    let yaml = format!(
        "integrations:\n  github:\n    - host: github.com\n      apiBaseUrl: http://127.0.0.1:9\n      token: ghp_startupcanary\nproxy:\n{proxy_lines}  audit:\n    path: {}\n",
        audit.display()
    );
    let path = dir.join("config.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

fn serve(config: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("serve")
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "info")
        .env_remove("LOG_FORMAT")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

/// A loopback port free right now (bound and released).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs `cmd` to completion (bounded), returning its exit code and stderr.
fn run_to_exit(mut cmd: Command) -> (Option<i32>, String) {
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the proxy did not exit within {WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    (status.code(), stderr)
}

/// `GET /healthz` on `admin`, once.
fn healthz(admin: SocketAddr) -> Option<String> {
    let mut stream = TcpStream::connect_timeout(&admin, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut out = String::new();
    stream.read_to_string(&mut out).ok()?;
    Some(out)
}

/// Polls `/healthz` until it answers 200 (bounded), failing early if the child exits.
fn wait_healthy(child: &mut Child, admin: SocketAddr) {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            let _ = child.stderr.take().unwrap().read_to_string(&mut stderr);
            panic!("the proxy exited ({status}) instead of serving:\n{stderr}");
        }
        if healthz(admin).is_some_and(|r| r.starts_with("HTTP/1.1 200")) {
            return;
        }
        assert!(Instant::now() < deadline, "/healthz never answered");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kills the child (it is ours) and returns what it wrote to stderr.
fn kill_and_collect(mut child: Child) -> String {
    child.kill().unwrap();
    child.wait().unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    stderr
}

#[test]
fn non_loopback_listen_without_clients_exits_2_saying_why_and_how_to_fix() {
    for listen in ["0.0.0.0:0", "[::]:0", "192.0.2.10:8080"] {
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(
            dir.path(),
            &format!("  listen: \"{listen}\"\n  admin:\n    listen: null\n"),
        );
        let (code, stderr) = run_to_exit(serve(&config));
        assert_eq!(code, Some(2), "{listen}: {stderr}");
        // Why: anyone who can reach it could use the credentials.
        assert!(stderr.contains("proxy.listen"), "{stderr}");
        assert!(stderr.contains("not a loopback address"), "{stderr}");
        assert!(
            stderr.contains(
                "anyone who can reach the port could use the configured GitHub credentials"
            ),
            "{stderr}"
        );
        // How to fix: clients, loopback, or the explicit opt-out.
        assert!(stderr.contains("add proxy.clients"), "{stderr}");
        assert!(stderr.contains("127.0.0.1"), "{stderr}");
        assert!(
            stderr.contains("proxy.allowUnauthenticatedClients: true"),
            "{stderr}"
        );
        assert!(!stderr.contains("ghp_startupcanary"), "{stderr}");
    }
}

#[test]
fn non_loopback_listen_starts_with_allow_unauthenticated_clients() {
    let dir = tempfile::tempdir().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "  listen: 0.0.0.0:0\n  allowUnauthenticatedClients: true\n  admin:\n    listen: {admin}\n"
        ),
    );
    let mut child = serve(&config).spawn().unwrap();
    wait_healthy(&mut child, admin);
    let stderr = kill_and_collect(child);
    assert!(stderr.contains("serving"), "{stderr}");
    // A loopback admin listener is not warned about.
    assert!(!stderr.contains("proxy.admin.listen"), "{stderr}");
}

#[test]
fn non_loopback_listen_starts_with_clients() {
    let dir = tempfile::tempdir().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "  listen: 0.0.0.0:0\n  clients:\n    - name: ci\n      key: ck-startup-CANARY\n  admin:\n    listen: {admin}\n"
        ),
    );
    let mut child = serve(&config).spawn().unwrap();
    wait_healthy(&mut child, admin);
    let stderr = kill_and_collect(child);
    assert!(!stderr.contains("ck-startup-CANARY"), "{stderr}");
}

#[test]
fn non_loopback_admin_listen_logs_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config(
        dir.path(),
        &format!("  listen: 127.0.0.1:0\n  admin:\n    listen: 0.0.0.0:{port}\n"),
    );
    let mut child = serve(&config).spawn().unwrap();
    // 0.0.0.0 includes loopback: the test only ever connects to 127.0.0.1.
    wait_healthy(&mut child, SocketAddr::from(([127, 0, 0, 1], port)));
    let stderr = kill_and_collect(child);
    let warning = stderr
        .lines()
        .find(|l| l.contains("proxy.admin.listen"))
        .unwrap_or_else(|| panic!("no admin warning in:\n{stderr}"));
    assert!(warning.contains("WARN"), "{warning}");
    assert!(warning.contains("not a loopback address"), "{warning}");
    assert!(warning.contains("127.0.0.1"), "{warning}");
}

/// Settings that are readable YAML but unusable, found when the server starts (`caFile` that does
/// not exist or holds no certificate, an audit file that cannot be opened), are bad config:
/// exit 2, the message names the key.
#[test]
fn unusable_ca_file_or_audit_path_exits_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "not a certificate\n").unwrap();
    let cases = [
        (
            format!(
                "  listen: 127.0.0.1:0\n  admin:\n    listen: null\n  upstream:\n    caFile: {}\n",
                dir.path().join("missing.pem").display()
            ),
            "proxy.upstream.caFile",
        ),
        (
            format!(
                "  listen: 127.0.0.1:0\n  admin:\n    listen: null\n  upstream:\n    caFile: {}\n",
                not_pem.display()
            ),
            "proxy.upstream.caFile",
        ),
    ];
    for (lines, key) in &cases {
        let (code, stderr) = run_to_exit(serve(&write_config(dir.path(), lines)));
        assert_eq!(code, Some(2), "{stderr}");
        assert!(
            stderr.contains("bad config") && stderr.contains(key),
            "{stderr}"
        );
    }
    // The audit file's directory does not exist.
    let yaml = format!(
        "integrations:\n  github:\n    - token: ghp_startupcanary\nproxy:\n  listen: 127.0.0.1:0\n  admin:\n    listen: null\n  audit:\n    path: {}\n",
        dir.path().join("no-such-dir").join("audit.log").display()
    );
    let path = dir.path().join("audit.yaml");
    std::fs::write(&path, yaml).unwrap();
    let (code, stderr) = run_to_exit(serve(&path));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("proxy.audit.path"), "{stderr}");
    assert!(!stderr.contains("ghp_startupcanary"), "{stderr}");
}

/// Under `LOG_FORMAT=json` every diagnostic line is a JSON object, errors that end the process
/// included; a bad config's error names an unset variable that removed the key it is about.
#[test]
fn json_diagnostics_stay_json_and_name_the_unset_variable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(
        &path,
        "integrations:\n  github:\n    - host: ghe.example.com\n      apiBaseUrl: ${GHE_API_URL_NOT_SET_IN_TEST}\n",
    )
    .unwrap();
    let mut cmd = serve(&path);
    cmd.env("LOG_FORMAT", "json")
        .env_remove("GHE_API_URL_NOT_SET_IN_TEST");
    let (code, stderr) = run_to_exit(cmd);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(!stderr.trim().is_empty());
    for line in stderr.lines() {
        let json: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line:?} in {stderr}"));
        assert!(json["fields"]["message"].is_string(), "{line}");
    }
    assert!(stderr.contains("GHE_API_URL_NOT_SET_IN_TEST"), "{stderr}");
    assert!(stderr.contains("apiBaseUrl"), "{stderr}");
}

/// `GH_TOKEN_PROXY_CONFIG` set but empty is the same as unset: the default path is used.
#[test]
fn empty_config_variable_falls_back_to_the_default_path() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("config")).unwrap();
    std::fs::write(
        dir.path().join("config").join("gh-token-proxy.yaml"),
        "proxy:\n  listen: 127.0.0.1:0\n",
    )
    .unwrap();
    let output = Command::new(BIN)
        .args(["check", "--offline"])
        .current_dir(dir.path())
        .env("GH_TOKEN_PROXY_CONFIG", "")
        .env_remove("LOG_FORMAT")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
}
