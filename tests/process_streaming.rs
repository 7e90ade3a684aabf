//! Bodies stream through the real binary in constant memory (SPEC §8): a 100 MiB download and a
//! 100 MiB upload pass through the proxy process while its peak RSS grows by under 32 MiB, byte
//! counts and SHA-256 match end to end, and the audit record counts the bytes sent.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod server_common;
mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use server_common::{TestBody, Upstream, full};
use sha2::{Digest, Sha256};
use support::process::{Memory, ProxyProcess, mib};
use tokio::net::TcpStream;

const CHUNK: usize = 1024 * 1024;
const CHUNKS: usize = 100;
const TOTAL: u64 = (CHUNK * CHUNKS) as u64;
/// Distinct chunk contents, cycled, so a reordered or repeated chunk changes the checksum.
const PATTERNS: usize = 7;
const MEMORY_BUDGET: u64 = 32 * 1024 * 1024;
const TRANSFER_WAIT: Duration = Duration::from_secs(120);

fn patterns() -> Vec<Bytes> {
    (0..PATTERNS)
        .map(|k| {
            let bytes: Vec<u8> = (0..CHUNK).map(|j| ((j * 7 + k * 13) % 251) as u8).collect();
            Bytes::from(bytes)
        })
        .collect()
}

/// The 100 MiB body as a stream of 1 MiB chunks (never held whole).
fn chunked_body(patterns: &[Bytes]) -> TestBody {
    let chunks: Vec<Bytes> = (0..CHUNKS)
        .map(|i| patterns[i % PATTERNS].clone())
        .collect();
    let stream = futures_util::stream::iter(
        chunks
            .into_iter()
            .map(|c| Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(c))),
    );
    StreamBody::new(stream).boxed()
}

fn expected_sha(patterns: &[Bytes]) -> String {
    let mut sha = Sha256::new();
    for i in 0..CHUNKS {
        sha.update(&patterns[i % PATTERNS]);
    }
    hex(&sha.finalize())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads a body frame by frame: (byte count, SHA-256 hex).
async fn consume(mut body: Incoming) -> (u64, String) {
    let mut sha = Sha256::new();
    let mut count = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            count += data.len() as u64;
            sha.update(&data);
        }
    }
    (count, hex(&sha.finalize()))
}

/// An upstream that answers `GET` with the 100 MiB stream and `POST` by consuming the body and
/// reporting its length and checksum.
async fn streaming_upstream(patterns: Vec<Bytes>) -> Upstream {
    Upstream::start(move |req: Request<Incoming>| {
        let patterns = patterns.clone();
        async move {
            if req.method() == http::Method::POST {
                let (count, sha) = consume(req.into_body()).await;
                Response::builder()
                    .header("content-type", "application/json")
                    .body(full(
                        serde_json::json!({"bytes": count, "sha256": sha}).to_string(),
                    ))
                    .unwrap()
            } else if req.uri().path().ends_with("/tarball/main") {
                Response::builder()
                    .header("content-type", "application/octet-stream")
                    .header("content-length", TOTAL.to_string())
                    .body(chunked_body(&patterns))
                    .unwrap()
            } else {
                Response::builder()
                    .header("content-type", "application/json")
                    .body(full("{\"ok\":true}"))
                    .unwrap()
            }
        }
    })
    .await
}

fn config(upstream: SocketAddr) -> impl Fn(SocketAddr, SocketAddr, &std::path::Path) -> String {
    move |listen, admin, audit| {
        format!(
            "integrations:\n  github:\n    - host: github.com\n      apiBaseUrl: http://{upstream}\n      token: ghp_streamingtest\nproxy:\n  listen: {listen}\n  admin:\n    listen: {admin}\n  audit:\n    path: {}\n",
            audit.display()
        )
    }
}

/// One request on a fresh connection; the response body is left to the caller.
async fn send(addr: SocketAddr, req: Request<TestBody>) -> Response<Incoming> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender.send_request(req).await.unwrap()
}

/// Forgets the peak so far (`echo 5 > /proc/PID/clear_refs`), so `VmHWM` afterwards is the peak
/// of what follows. Falls back to the start-up peak when the kernel refuses.
fn reset_peak(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_100_mib_down_and_up_in_constant_memory() {
    let patterns = patterns();
    let expected = expected_sha(&patterns);
    let upstream = streaming_upstream(patterns.clone()).await;
    let proxy = ProxyProcess::start(config(upstream.addr));
    let host = proxy.addr.to_string();

    // Warm up: pools, the audit writer, the allocator's first arenas.
    for _ in 0..3 {
        let req = Request::get("/repos/acme/widgets")
            .header("host", &host)
            .body(full(Bytes::new()))
            .unwrap();
        let response = send(proxy.addr, req).await;
        assert_eq!(response.status(), 200);
        consume(response.into_body()).await;
    }
    let reset = reset_peak(proxy.pid());
    let before = proxy.memory();

    // Download.
    let req = Request::get("/repos/acme/widgets/tarball/main")
        .header("host", &host)
        .body(full(Bytes::new()))
        .unwrap();
    let (count, sha) = tokio::time::timeout(TRANSFER_WAIT, async {
        let response = send(proxy.addr, req).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["x-credential-type"], "pat");
        consume(response.into_body()).await
    })
    .await
    .expect("download timed out");
    assert_eq!(count, TOTAL);
    assert_eq!(sha, expected);
    let after_download = proxy.memory();

    // Upload.
    let req = Request::post("/repos/acme/widgets/releases/1/assets")
        .header("host", &host)
        .header("content-type", "application/octet-stream")
        .header("content-length", TOTAL.to_string())
        .body(chunked_body(&patterns))
        .unwrap();
    let answer: serde_json::Value = tokio::time::timeout(TRANSFER_WAIT, async {
        let response = send(proxy.addr, req).await;
        assert_eq!(response.status(), 200);
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    })
    .await
    .expect("upload timed out");
    assert_eq!(answer["bytes"], TOTAL);
    assert_eq!(answer["sha256"], expected);
    let after_upload = proxy.memory();

    let report = |label: &str, m: Memory| {
        eprintln!(
            "{label}: VmRSS {} VmHWM {} (peak growth over the pre-transfer RSS: {})",
            mib(m.rss),
            mib(m.hwm),
            mib(m.hwm.saturating_sub(before.rss))
        );
    };
    eprintln!("peak reset via clear_refs: {reset}");
    report("before", before);
    report("after the download", after_download);
    report("after the upload", after_upload);
    // The peak after both transfers against the resident size before them: the strictest reading
    // (any start-up peak above the resident size only makes this harder to meet).
    let growth = after_upload.hwm.saturating_sub(before.rss);
    assert!(
        growth < MEMORY_BUDGET,
        "peak RSS grew by {} streaming 2 x {} (budget {})",
        mib(growth),
        mib(TOTAL),
        mib(MEMORY_BUDGET)
    );

    let records = proxy.wait_audit(&proxy.audit_path, 5);
    let download = records
        .iter()
        .find(|r| r["path"] == "/repos/acme/widgets/tarball/main")
        .unwrap();
    assert_eq!(download["bytes_out"], TOTAL, "{download}");
    assert_eq!(download["status"], 200);
    assert_eq!(download["outcome"], "ok");
    assert_eq!(download["credential"], "pat");
    let upload = records.iter().find(|r| r["method"] == "POST").unwrap();
    assert_eq!(upload["status"], 200, "{upload}");
    assert_eq!(upload["outcome"], "ok");
    assert_eq!(upload["credential"], "pat");
}
