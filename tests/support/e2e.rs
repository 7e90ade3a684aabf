//! The end-to-end world: the real server on 127.0.0.1:0 in front of FakeGitHubs over real TLS,
//! with four integrations (github.com with an App, a PAT and a raw origin; a GHE with an App
//! under `/api/v3`, its web origin on the same server, and no PAT; one whose port is closed; one whose CA is not trusted), and the
//! HTTP clients the tests need (hyper with the local address, raw TCP). Included by the
//! `e2e_*` test binaries with `#[path = "support/e2e.rs"] mod e2e;` next to `mod support;` and
//! `mod server_common;`.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::server_common::{TestProxy, WAIT, full};
use crate::support::{APP1_KEY, APP1_PUB, APP2_KEY, APP2_PUB, FakeGitHub};

pub const APP1: u64 = 101;
pub const INST1: u64 = 1001;
pub const APP2: u64 = 202;
pub const INST2: u64 = 2002;
pub const PAT: &str = "ghp_e2eDefaultIntegrationPat0123456789";
pub const DOWN_PAT: &str = "ghp_e2eClosedPortPat0123456789abcdef";
pub const UNTRUSTED_PAT: &str = "ghp_e2eUntrustedPat0123456789abcdefg";
/// Upstream response deadline of the world's proxy (a scripted delay beyond it gives `504`).
pub const RESPONSE_TIMEOUT_MS: u64 = 1000;

pub struct World {
    /// github.com's API (and raw origin under `/raw`): App 101 on `acme`, the PAT.
    pub fake: FakeGitHub,
    /// A GHE under `/api/v3` (its web origin, `host: localhost:PORT`, is the same server): App
    /// 202 on `ghe-org`, no PAT.
    pub ghe: FakeGitHub,
    /// Serves TLS with a CA the proxy does not trust.
    pub untrusted: FakeGitHub,
    pub closed_port: u16,
    pub proxy: TestProxy,
    _dir: tempfile::TempDir,
}

impl World {
    pub async fn start() -> World {
        Self::start_with("").await
    }

    /// As [`World::start`], with extra lines under `proxy:` (2-space indented).
    pub async fn start_with(proxy_extra: &str) -> World {
        let fake = FakeGitHub::builder()
            .app(APP1, APP1_PUB)
            .installation(APP1, INST1, "acme")
            .pat(PAT)
            .start()
            .await;
        let ghe = FakeGitHub::builder()
            .api_prefix("/api/v3")
            .app(APP2, APP2_PUB)
            .installation(APP2, INST2, "ghe-org")
            .start()
            .await;
        let untrusted = FakeGitHub::builder().pat(UNTRUSTED_PAT).start().await;
        let closed_port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("ca-bundle.pem");
        let mut pem = std::fs::read_to_string(fake.ca_file()).unwrap();
        pem.push_str(&std::fs::read_to_string(ghe.ca_file()).unwrap());
        std::fs::write(&bundle, pem).unwrap();
        let key = |k: &str| serde_json::to_string(k).unwrap();
        let yaml = format!(
            "integrations:
  github:
    - host: github.com
      apiBaseUrl: {api}
      rawBaseUrl: {api}/raw
      token: {PAT}
      apps:
        - appId: {APP1}
          privateKey: {key1}
    - host: localhost:{ghe_port}
      apiBaseUrl: {ghe}
      apps:
        - appId: {APP2}
          privateKey: {key2}
    - host: down.acme.test
      apiBaseUrl: https://localhost:{closed_port}
      token: {DOWN_PAT}
    - host: untrusted.acme.test
      apiBaseUrl: {untrusted}
      token: {UNTRUSTED_PAT}
proxy:
  listen: 127.0.0.1:0
  upstream:
    caFile: {bundle}
    responseTimeoutMs: {RESPONSE_TIMEOUT_MS}
{proxy_extra}",
            api = fake.api_url(),
            ghe = ghe.api_url(),
            ghe_port = ghe.addr().port(),
            untrusted = untrusted.api_url(),
            key1 = key(APP1_KEY),
            key2 = key(APP2_KEY),
            bundle = bundle.display(),
        );
        let proxy = TestProxy::start(&yaml).await;
        World {
            fake,
            ghe,
            untrusted,
            closed_port,
            proxy,
            _dir: dir,
        }
    }

    /// `localhost:PORT` of github.com's FakeGitHub.
    pub fn api_authority(&self) -> String {
        format!("localhost:{}", self.fake.addr().port())
    }

    pub fn ghe_authority(&self) -> String {
        format!("localhost:{}", self.ghe.addr().port())
    }

    /// `http://127.0.0.1:PORT`: the proxy base a default-form client uses.
    pub fn proxy_base(&self) -> String {
        format!("http://{}", self.proxy.addr)
    }

    /// `GET target` through the proxy.
    pub async fn get(&self, target: &str) -> Reply {
        request(self.proxy.addr, Method::GET, target, &[], Bytes::new()).await
    }

    /// Waits for the audit record of `reply` (records are written when the exchange ends, which
    /// may be just after the client has the whole body).
    pub async fn record(&self, reply: &Reply) -> Value {
        let id = reply.header("x-request-id");
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(r) = self
                .proxy
                .read_audit()
                .into_iter()
                .find(|r| r["request_id"] == id)
            {
                return r;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no audit record {id}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until the audit file has at least `n` records; returns them all.
    pub async fn audit(&self, n: usize) -> Vec<Value> {
        wait_audit(&self.proxy, n).await
    }
}

/// Polls the audit file until it holds `n` records (bounded by `WAIT`).
pub async fn wait_audit(proxy: &TestProxy, n: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let records = proxy.read_audit();
        if records.len() >= n {
            return records;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "audit has {} records, waited for {n}",
            records.len()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The audit record with this request id.
pub fn record_of<'a>(records: &'a [Value], reply: &Reply) -> &'a Value {
    let id = reply.header("x-request-id");
    records
        .iter()
        .find(|r| r["request_id"] == id)
        .unwrap_or_else(|| panic!("no audit record {id}: {records:?}"))
}

/// A response as the client saw it, with the client's own address.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub local: SocketAddr,
}

impl Reply {
    pub fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header: {:?}", self.headers))
            .to_str()
            .unwrap()
            .to_string()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }

    /// Asserts status, the credential headers, and a 26-character `X-Request-Id`.
    pub fn assert_served(&self, status: u16, credential: &str, reason: &str) {
        assert_eq!(
            self.status.as_u16(),
            status,
            "{}",
            String::from_utf8_lossy(&self.body)
        );
        assert_eq!(self.header("x-credential-type"), credential, "{self:?}");
        assert_eq!(self.header("x-credential-reason"), reason, "{self:?}");
        assert_eq!(self.header("x-request-id").len(), 26);
    }

    /// Asserts a proxy error: status, headers, and the `{"message","reason"}` body. Returns the
    /// message.
    pub fn assert_error(&self, status: u16, credential: &str, reason: &str) -> String {
        self.assert_served(status, credential, reason);
        assert!(
            self.header("content-type").starts_with("application/json"),
            "{self:?}"
        );
        let body = self.json();
        let object = body.as_object().unwrap();
        assert_eq!(
            object.keys().collect::<Vec<_>>(),
            ["message", "reason"],
            "{body}"
        );
        assert_eq!(body["reason"], reason, "{body}");
        let message = body["message"].as_str().unwrap().to_string();
        assert!(!message.is_empty());
        message
    }
}

/// One request on a fresh connection; `target` is the request-target verbatim (origin or
/// absolute form). `Host` is the proxy's address unless given.
pub async fn request(
    addr: SocketAddr,
    method: Method,
    target: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Reply {
    tokio::time::timeout(WAIT, async {
        let stream = TcpStream::connect(addr).await.unwrap();
        let local = stream.local_addr().unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut builder = Request::builder().method(method).uri(target);
        if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
            builder = builder.header("host", addr.to_string());
        }
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let response = sender
            .send_request(builder.body(full(body)).unwrap())
            .await
            .unwrap();
        let (parts, body) = response.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body,
            local,
        }
    })
    .await
    .expect("request timed out")
}

/// Sends `bytes` on a fresh connection and reads one response until the server closes (send
/// `Connection: close`), chunked bodies decoded.
pub async fn raw(addr: SocketAddr, bytes: &[u8]) -> Reply {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let local = stream.local_addr().unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut out))
        .await
        .expect("server did not close")
        .unwrap();
    parse_raw(&out, local)
}

pub fn parse_raw(out: &[u8], local: SocketAddr) -> Reply {
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no head: {}", String::from_utf8_lossy(out)));
    let head = std::str::from_utf8(&out[..split]).unwrap();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status: u16 = status_line.split(' ').nth(1).unwrap().parse().unwrap();
    let mut headers = HeaderMap::new();
    for line in lines {
        let (name, value) = line.split_once(':').unwrap();
        headers.append(
            http::HeaderName::from_bytes(name.trim().as_bytes()).unwrap(),
            value.trim().parse().unwrap(),
        );
    }
    let mut body = out[split + 4..].to_vec();
    if headers
        .get("transfer-encoding")
        .is_some_and(|v| v.to_str().unwrap().contains("chunked"))
    {
        body = dechunk(&body);
    }
    Reply {
        status: StatusCode::from_u16(status).unwrap(),
        headers,
        body: Bytes::from(body),
        local,
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n").unwrap();
        let size_text = std::str::from_utf8(&data[..line_end]).unwrap();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).unwrap();
        data = &data[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// `ts` is RFC 3339 UTC with milliseconds (`2026-11-25T04:21:09.123Z`) and within `window`.
pub fn assert_ts(ts: &Value, window: (std::time::SystemTime, std::time::SystemTime)) {
    let text = ts.as_str().unwrap();
    assert_eq!(text.len(), 24, "{text}");
    assert!(text.ends_with('Z') && text.as_bytes()[19] == b'.', "{text}");
    let parsed =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).unwrap();
    let at = std::time::SystemTime::from(parsed);
    // Millisecond truncation: allow 1 ms before the window.
    assert!(
        at + Duration::from_millis(1) >= window.0 && at <= window.1,
        "{text} outside the test's window"
    );
}
