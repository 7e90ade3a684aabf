//! Helpers for the server tests: a plain-HTTP fake upstream that records what it received, a
//! `TestProxy` running the real server in-process on 127.0.0.1:0, and small HTTP clients.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use gh_token_proxy::config::Config;
use gh_token_proxy::server::{Server, Shared};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub type TestBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// Everything a test waits for is bounded by this.
pub const WAIT: Duration = Duration::from_secs(20);

pub fn full(bytes: impl Into<Bytes>) -> TestBody {
    Full::new(bytes.into()).map_err(|e| match e {}).boxed()
}

/// What the upstream saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub uri: String,
    pub headers: HeaderMap,
}

type Handler = Arc<
    dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Response<TestBody>> + Send>>
        + Send
        + Sync,
>;

/// A plain-HTTP stand-in for GitHub.
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// TCP connections accepted (pool reuse shows as fewer connections than requests).
    pub connections: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    /// Answers every request with `handler`.
    pub async fn start<F, Fut>(handler: F) -> Upstream
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<TestBody>> + Send + 'static,
    {
        let handler: Handler = Arc::new(move |req| Box::pin(handler(req)));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let connections2 = connections.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                connections2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let handler = handler.clone();
                let seen = seen2.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        seen.lock().unwrap().push(Seen {
                            method: req.method().clone(),
                            uri: req.uri().to_string(),
                            headers: req.headers().clone(),
                        });
                        let fut = handler(req);
                        async move { Ok::<_, std::convert::Infallible>(fut.await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Upstream {
            addr,
            seen,
            connections,
            task,
        }
    }

    /// Answers `200 {"ok":true}` to everything.
    pub async fn ok() -> Upstream {
        Self::start(|_req| async {
            Response::builder()
                .header("content-type", "application/json")
                .header("x-github-request-id", "C0DE:1234")
                .header("x-ratelimit-remaining", "4987")
                .header("x-ratelimit-resource", "core")
                .body(full("{\"ok\":true}"))
                .unwrap()
        })
        .await
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A config with one github.com integration whose API is `upstream`, plus `extra` YAML lines
/// appended under `proxy:` (indented by the caller with 2 spaces).
pub fn pat_config(upstream: SocketAddr, token: Option<&str>, proxy_extra: &str) -> String {
    let token = token.map_or(String::new(), |t| format!("      token: {t}\n"));
    format!(
        "integrations:\n  github:\n    - host: github.com\n      apiBaseUrl: http://{upstream}\n{token}proxy:\n  listen: 127.0.0.1:0\n{proxy_extra}"
    )
}

/// The real server, in-process, on 127.0.0.1:0, with its audit log in a temp dir.
pub struct TestProxy {
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub shared: Arc<Shared>,
    pub audit_path: std::path::PathBuf,
    _dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestProxy {
    /// Starts the proxy with this YAML config (its `proxy.audit.path` is replaced by a temp file).
    pub async fn start(yaml: &str) -> TestProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::start_on(listener, yaml).await
    }

    /// As [`TestProxy::start`], on a listener the caller bound (so the config can name its port).
    pub async fn start_on(listener: TcpListener, yaml: &str) -> TestProxy {
        let dir = tempfile::tempdir().unwrap();
        let audit_path = dir.path().join("audit.log");
        let yaml = format!("{yaml}\n  audit:\n    path: {}\n", audit_path.display());
        let config = Arc::new(Config::from_yaml(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}")));
        let server = Server::new(config).unwrap();
        let shared = server.shared().clone();
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let admin_addr = admin.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            server
                .serve(listener, Some(admin), async move {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        TestProxy {
            addr,
            admin_addr,
            shared,
            audit_path,
            _dir: dir,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Begins shutdown without waiting for it.
    pub fn begin_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Stops (drain, audit flush) and returns every audit record.
    pub async fn stop(mut self) -> Vec<serde_json::Value> {
        self.begin_stop();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
        }
        self.read_audit()
    }

    pub fn read_audit(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.audit_path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    /// Sends one request on a fresh connection; `target` is sent as the request-target verbatim.
    pub async fn send(&self, req: Request<TestBody>) -> (Response<Bytes>, HeaderMap) {
        send_to(self.addr, req).await
    }

    pub async fn get(&self, target: &str) -> Response<Bytes> {
        let req = Request::get(target)
            .header("host", self.addr.to_string())
            .body(full(Bytes::new()))
            .unwrap();
        self.send(req).await.0
    }

    pub async fn admin_get(&self, path: &str) -> Response<Bytes> {
        let req = Request::get(path)
            .header("host", self.admin_addr.to_string())
            .body(full(Bytes::new()))
            .unwrap();
        send_to(self.admin_addr, req).await.0
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        self.begin_stop();
    }
}

/// One request over a fresh HTTP/1.1 connection, body collected. Returns the trailers-free
/// response and its headers (also in the response).
pub async fn send_to(addr: SocketAddr, req: Request<TestBody>) -> (Response<Bytes>, HeaderMap) {
    tokio::time::timeout(WAIT, async {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let response = sender.send_request(req).await.unwrap();
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        let headers = parts.headers.clone();
        (Response::from_parts(parts, bytes), headers)
    })
    .await
    .expect("request timed out")
}

/// Writes raw bytes and reads until the server closes (or `WAIT`).
pub async fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses a JSON error body and checks status, reason and the three headers.
pub fn assert_refusal(response: &Response<Bytes>, status: StatusCode, reason: &str) {
    assert_eq!(response.status(), status, "{:?}", response.body());
    let body: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
    assert_eq!(body["reason"], reason, "{body}");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert_eq!(response.headers()["x-credential-type"], "none");
    assert_eq!(response.headers()["x-credential-reason"], reason);
    assert_eq!(response.headers()["x-request-id"].len(), 26);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
}

/// Polls `cond` until true, bounded by `WAIT`.
pub async fn wait_until(mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met in time"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Every audit record field, in the order of SPEC §7.3's table.
pub const AUDIT_FIELDS: [&str; 22] = [
    "ts",
    "request_id",
    "client",
    "client_addr",
    "method",
    "host",
    "path",
    "owner",
    "repo",
    "credential",
    "reason",
    "app_id",
    "installation_id",
    "hashed_token",
    "status",
    "upstream_status",
    "github_request_id",
    "rate_limit_remaining",
    "rate_limit_resource",
    "bytes_out",
    "duration_ms",
    "outcome",
];

/// The record has exactly the SPEC's fields, none missing, none extra.
pub fn assert_audit_fields(record: &serde_json::Value) {
    let mut keys: Vec<&str> = record
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    let mut expected = AUDIT_FIELDS.to_vec();
    expected.sort_unstable();
    assert_eq!(keys, expected, "{record}");
}
