//! The README's quick start works on a fresh clone with no environment: the real binary runs
//! `serve --config config/gh-token-proxy.yaml` from the repository root with only `PATH` set, and
//! `curl -i localhost:8080/repos/octocat/hello-world` gets the `403 no_credential` refusal that
//! says what to configure (and is audited on stdout, the default `audit.path`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use support::process::{PROCESS_WAIT, ProxyProcess, clean_command, port_busy};

const README_CONFIG: &str = "config/gh-token-proxy.yaml";
const README_LISTEN: &str = "listen: 127.0.0.1:8080";
const README_ADMIN: &str = "listen: 127.0.0.1:9090";

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// What `curl -i localhost:8080/repos/octocat/hello-world` sends, over a raw socket.
fn curl(addr: SocketAddr) -> (u16, Vec<(String, String)>, serde_json::Value) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(PROCESS_WAIT)).unwrap();
    write!(
        stream,
        "GET /repos/octocat/hello-world HTTP/1.1\r\nHost: localhost:{}\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        addr.port()
    )
    .unwrap();
    let mut out = Vec::new();
    stream.read_to_end(&mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let body = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    (status, headers, body)
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// The refusal says whose repository, what was tried and what to configure.
fn assert_refusal_with_advice(proxy: &mut ProxyProcess) {
    let (status, headers, body) = curl(proxy.addr);
    eprintln!("403 body: {body}");
    assert_eq!(status, 403, "{body}");
    assert_eq!(header(&headers, "x-credential-type"), Some("none"));
    assert_eq!(
        header(&headers, "x-credential-reason"),
        Some("no_credential")
    );
    assert_eq!(header(&headers, "x-request-id").map(str::len), Some(26));
    assert!(header(&headers, "content-type").is_some_and(|c| c.starts_with("application/json")));
    assert_eq!(body["reason"], "no_credential");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("octocat"), "names the owner: {message}");
    assert!(message.contains("github.com"), "names the host: {message}");
    assert!(
        message.contains("App"),
        "mentions the GitHub App: {message}"
    );
    assert!(
        message.contains("PAT") || message.contains("token"),
        "mentions the PAT: {message}"
    );
    assert!(
        message.contains("integrations.github[0]"),
        "names the config key to set: {message}"
    );
    assert!(message.contains("configure"), "says what to do: {message}");

    // The audit record goes to stdout (the default config's `audit.path: "-"`).
    let deadline = std::time::Instant::now() + PROCESS_WAIT;
    let record = loop {
        if let Some(line) = proxy
            .stdout()
            .lines()
            .find(|l| l.contains("/repos/octocat/hello-world"))
        {
            break serde_json::from_str::<serde_json::Value>(line).unwrap();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no audit record on stdout; stderr:\n{}",
            proxy.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(record["credential"], "none");
    assert_eq!(record["reason"], "no_credential");
    assert_eq!(record["outcome"], "refused");
    assert_eq!(record["status"], 403);
    assert_eq!(record["owner"], "octocat");
    assert_eq!(record["repo"], "hello-world");

    // Startup said why there is no PAT.
    assert!(
        proxy.stderr().contains("GITHUB_TOKEN"),
        "stderr:\n{}",
        proxy.stderr()
    );

    proxy.signal("TERM");
    assert_eq!(proxy.wait_exit(PROCESS_WAIT).code(), Some(0));
}

/// The README's command with its config unchanged, except the two ports (free ones, so this
/// never skips). The copy sits next to the original so relative paths resolve the same.
#[test]
fn readme_config_refuses_with_advice_on_free_ports() {
    let original = std::fs::read_to_string(repo_root().join(README_CONFIG)).unwrap();
    assert!(original.contains(README_LISTEN) && original.contains(README_ADMIN));
    let mut last_error = String::new();
    for _attempt in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], support::process::free_port()));
        let admin = SocketAddr::from(([127, 0, 0, 1], support::process::free_port()));
        if addr == admin {
            continue;
        }
        let config = original
            .replace(README_LISTEN, &format!("listen: {addr}"))
            .replace(README_ADMIN, &format!("listen: {admin}"));
        let config_path = dir.path().join("gh-token-proxy.yaml");
        std::fs::write(&config_path, config).unwrap();
        let mut command = clean_command();
        command
            .current_dir(repo_root())
            .args(["serve", "--config"])
            .arg(&config_path);
        let audit = dir.path().join("unused");
        match ProxyProcess::spawn(command, dir, config_path, audit, addr, admin) {
            Ok(mut proxy) => return assert_refusal_with_advice(&mut proxy),
            Err(err) => last_error = err,
        }
    }
    panic!("the proxy did not start: {last_error}");
}

/// Exactly the README: `serve --config config/gh-token-proxy.yaml` from the repository root,
/// port 8080 (admin 9090). Skips when either port is taken on this machine.
#[test]
fn readme_command_refuses_with_advice_on_port_8080() {
    if port_busy(8080) || port_busy(9090) {
        eprintln!(
            "SKIPPED: 127.0.0.1:8080 or 127.0.0.1:9090 is in use; \
             readme_config_refuses_with_advice_on_free_ports covers the same on free ports"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut command = clean_command();
    command
        .current_dir(repo_root())
        .args(["serve", "--config", README_CONFIG]);
    let audit = dir.path().join("unused");
    let started = ProxyProcess::spawn(
        command,
        dir,
        Path::new(README_CONFIG).to_path_buf(),
        audit,
        SocketAddr::from(([127, 0, 0, 1], 8080)),
        SocketAddr::from(([127, 0, 0, 1], 9090)),
    );
    match started {
        Ok(mut proxy) => assert_refusal_with_advice(&mut proxy),
        // Another process took a port between the check and the bind (tests run in parallel).
        Err(err) if err.contains("cannot listen") => {
            eprintln!("SKIPPED: port 8080 or 9090 was taken meanwhile: {err}");
        }
        Err(err) => panic!("the README command did not start: {err}"),
    }
}
