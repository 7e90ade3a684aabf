//! `gh-token-proxy serve` as a process: bind failures exit 1 with a clear message; SIGTERM
//! drains, flushes the audit log and exits 0; SIGHUP reopens the audit file.
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
fn sighup_reopens_the_audit_log_and_sigterm_drains_and_exits_0() {
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
    let refused_request = || {
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
    };
    refused_request();

    // Log rotation: move the file away, SIGHUP, and the next record lands in a new file.
    let audit = dir.path().join("audit.log");
    let rotated = dir.path().join("audit.log.1");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::read_to_string(&audit)
        .unwrap_or_default()
        .lines()
        .count()
        < 1
    {
        assert!(Instant::now() < deadline, "first record never written");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::fs::rename(&audit, &rotated).unwrap();
    let status = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    loop {
        assert!(Instant::now() < deadline, "{seen}");
        let mut line = String::new();
        if stderr.read_line(&mut line).unwrap() == 0 {
            panic!("exited early: {seen}");
        }
        seen.push_str(&line);
        if line.contains("audit log reopened") {
            break;
        }
    }
    refused_request();

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let status = wait_exit(&mut child);
    assert_eq!(status.code(), Some(0));
    for file in [&rotated, &audit] {
        let text = std::fs::read_to_string(file).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.contains("\"reason\":\"unknown_host\""));
    }
}
