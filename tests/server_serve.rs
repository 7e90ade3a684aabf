//! `gh-token-proxy serve` as a process: bind failures exit 1 with a clear message; SIGTERM
//! drains, flushes the audit log and exits 0.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn write_config(dir: &std::path::Path, listen: &str, admin: &str) -> std::path::PathBuf {
    let path = dir.join("config.yaml");
    let audit = dir.join("audit.log");
    std::fs::write(
        &path,
        format!(
            "integrations:\n  github:\n    - host: github.com\n      apiBaseUrl: http://127.0.0.1:9\n      token: ghp_x\nproxy:\n  listen: {listen}\n  admin:\n    listen: {admin}\n  audit:\n    path: {}\n",
            audit.display()
        ),
    )
    .unwrap();
    path
}

/// Waits for the child, bounded; kills it (by its own pid) if it does not exit.
fn wait_exit(child: &mut std::process::Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("process did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn bind_failure_exits_1_naming_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &addr.to_string(), "127.0.0.1:0");
    let mut child = Command::new(env!("CARGO_BIN_EXE_gh-token-proxy"))
        .args(["serve", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_exit(&mut child);
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on {addr}")),
        "{stderr}"
    );
    drop(taken);
}

#[test]
fn sigterm_drains_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "127.0.0.1:0", "127.0.0.1:0");
    let mut child = Command::new(env!("CARGO_BIN_EXE_gh-token-proxy"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The startup line names the listen address.
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let listen = loop {
        assert!(Instant::now() < deadline, "{seen}");
        let mut line = String::new();
        if stderr.read_line(&mut line).unwrap() == 0 {
            panic!("exited early: {seen}");
        }
        seen.push_str(&line);
        if let Some(rest) = line.split("listen=").nth(1) {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    // One refused request (unknown host) so the audit log has something to flush.
    let mut stream = std::net::TcpStream::connect(&listen).unwrap();
    std::io::Write::write_all(
        &mut stream,
        b"GET http://evil.example/x HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut response = String::new();
    let _ = std::io::Read::read_to_string(&mut stream, &mut response);
    assert!(response.starts_with("HTTP/1.1 403"), "{response}");

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let status = wait_exit(&mut child);
    assert_eq!(status.code(), Some(0));
    let audit = std::fs::read_to_string(dir.path().join("audit.log")).unwrap();
    assert_eq!(audit.lines().count(), 1, "{audit}");
    assert!(audit.contains("\"reason\":\"unknown_host\""));
}
