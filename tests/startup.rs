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
