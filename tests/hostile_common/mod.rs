//! Helpers for the hostile-input and client tests: the real server (`TestProxy`) in front of a
//! TLS `FakeGitHub` with an App installed on `acme` and a PAT, and a raw-TCP client that sends
//! exact bytes and reads back one response (or notices the connection closing).
// Each test binary that includes this uses a different part of it.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::server_common::TestProxy;
use crate::support::{APP1_KEY, APP1_PUB, FakeGitHub, TestApp, TestConfig};

/// The integration's PAT (a canary: it must never show up anywhere but upstream).
pub const PAT: &str = "ghp_patcanary0123456789abcdefghijklmnopq";
pub const APP_ID: u64 = 4242;
pub const INSTALLATION_ID: u64 = 77;

/// FakeGitHub knowing App `APP_ID` (installed on `acme`) and `PAT`.
pub async fn fake_github() -> FakeGitHub {
    FakeGitHub::builder()
        .app(APP_ID, APP1_PUB)
        .installation(APP_ID, INSTALLATION_ID, "acme")
        .pat(PAT)
        .start()
        .await
}

/// App + PAT config for `fake`, with `proxy_extra` (lines indented by 2 spaces) under `proxy:`.
pub fn yaml(fake: &FakeGitHub, proxy_extra: &str) -> String {
    let base = TestConfig::new(fake)
        .token(PAT)
        .app(TestApp::new(APP_ID, APP1_KEY))
        .yaml();
    format!("{base}{proxy_extra}")
}

/// The proxy in front of `fake` with `proxy_extra` under `proxy:`.
pub async fn proxy(fake: &FakeGitHub, proxy_extra: &str) -> TestProxy {
    TestProxy::start(&yaml(fake, proxy_extra)).await
}

/// `localhost:PORT`: the api origin's authority (what a forward-proxy client names).
pub fn api_authority(fake: &FakeGitHub) -> String {
    fake.api_url().trim_start_matches("https://").to_string()
}

/// One response read off a raw connection.
#[derive(Debug, Default)]
pub struct RawResponse {
    /// `HTTP/1.1 400 Bad Request`, or empty when the server closed without answering.
    pub status_line: String,
    pub status: Option<u16>,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Everything received, lossily decoded.
    pub text: String,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The `reason` of a GitHub-shaped JSON error body.
    pub fn reason(&self) -> Option<String> {
        let body: serde_json::Value = serde_json::from_slice(&self.body).ok()?;
        body["reason"].as_str().map(str::to_string)
    }
}

/// Sends `bytes` on a fresh connection (write errors ignored: the server may refuse early) and
/// reads one response: the head, then `Content-Length` bytes of body, or until the server closes.
/// Bounded by `limit`.
pub async fn raw_request(addr: SocketAddr, bytes: &[u8], limit: Duration) -> RawResponse {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let _ = stream.write_all(bytes).await;
    read_response(&mut stream, limit).await
}

/// Reads one response from `stream` (see [`raw_request`]).
pub async fn read_response(stream: &mut TcpStream, limit: Duration) -> RawResponse {
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(limit, async {
        let mut chunk = [0u8; 8192];
        loop {
            if let Some(end) = find(&buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_string();
                let length = head
                    .lines()
                    .filter_map(|l| l.split_once(':'))
                    .find(|(n, _)| n.trim().eq_ignore_ascii_case("content-length"))
                    .and_then(|(_, v)| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if buf.len() >= end + 4 + length {
                    return;
                }
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    parse_response(&buf)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn parse_response(buf: &[u8]) -> RawResponse {
    let text = String::from_utf8_lossy(buf).to_string();
    let Some(end) = find(buf, b"\r\n\r\n") else {
        return RawResponse {
            text,
            ..RawResponse::default()
        };
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default().to_string();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok());
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    RawResponse {
        status_line,
        status,
        headers,
        body: buf[end + 4..].to_vec(),
        text,
    }
}
