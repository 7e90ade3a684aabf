//! Upstream answers with odd framing (RFC 9112 §6), from a raw-socket upstream that scripts every
//! byte: what the client gets, what the audit record says, and whether the pooled connection is
//! used again. The pool carries the next request, maybe another client's, so a connection whose
//! state is in doubt must not be reused.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod server_common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use server_common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A raw upstream: on every connection, answers each request head with the bytes `script`
/// gives for its path, and counts the connections it accepted. A chunked request body is read
/// (up to its last chunk) and kept, raw.
struct RawUpstream {
    addr: SocketAddr,
    accepted: Arc<Mutex<usize>>,
    bodies: Arc<Mutex<Vec<String>>>,
}

impl RawUpstream {
    async fn start(script: fn(&str) -> &'static [u8]) -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(Mutex::new(0));
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let count = accepted.clone();
        let kept = bodies.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                *count.lock().unwrap() += 1;
                let kept = kept.clone();
                tokio::spawn(async move {
                    // Reading a chunked body: bytes until its last chunk.
                    let mut in_body = false;
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        let Ok(Ok(n)) =
                            tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
                                .await
                        else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        loop {
                            if in_body {
                                let Some(end) = buf.windows(5).position(|w| w == b"0\r\n\r\n")
                                else {
                                    break;
                                };
                                let body: Vec<u8> = buf.drain(..end + 5).collect();
                                kept.lock()
                                    .unwrap()
                                    .push(String::from_utf8_lossy(&body).into_owned());
                                in_body = false;
                            }
                            let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                                break;
                            };
                            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                            buf.drain(..end + 4);
                            in_body = head
                                .to_ascii_lowercase()
                                .contains("transfer-encoding: chunked");
                            let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
                            if stream.write_all(script(&path)).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        RawUpstream {
            addr,
            accepted,
            bodies,
        }
    }

    fn accepted(&self) -> usize {
        *self.accepted.lock().unwrap()
    }

    fn bodies(&self) -> Vec<String> {
        self.bodies.lock().unwrap().clone()
    }
}

fn script(path: &str) -> &'static [u8] {
    match path {
        // Both framings: the chunked body is 19 bytes, the length says 5.
        "/repos/o/both" => {
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n13\r\n{\"marker\": \"A1|c1\"}\r\n0\r\n\r\n"
        }
        "/repos/o/trailers" => {
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n"
        }
        "/repos/o/switch" => {
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        }
        _ => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    }
}

/// One request on its own connection; the whole reply as text.
async fn exchange(proxy: SocketAddr, request: &str) -> String {
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: proxy\r\nConnection: close\r\n\r\n")
}

#[tokio::test]
async fn a_response_with_both_lengths_is_forwarded_chunked_and_its_connection_dropped() {
    let upstream = RawUpstream::start(script).await;
    let proxy = TestProxy::start(&pat_config(upstream.addr, Some("ghp_testpat"), "")).await;
    let text = exchange(proxy.addr, &get("/repos/o/both")).await;
    assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
    let lower = text.to_ascii_lowercase();
    // Transfer-Encoding overrides Content-Length (RFC 9112 §6.3): the length is not passed on.
    assert!(!lower.contains("content-length: 5"), "{text}");
    assert!(text.contains("{\"marker\": \"A1|c1\"}"), "{text}");
    // The next request does not share that connection.
    let text = exchange(proxy.addr, &get("/repos/o/plain")).await;
    assert!(text.ends_with("ok"), "{text}");
    assert_eq!(upstream.accepted(), 2);
    // Two plain requests after it share one connection: the pool still reuses.
    exchange(proxy.addr, &get("/repos/o/plain")).await;
    assert_eq!(upstream.accepted(), 2);
    let records = proxy.stop().await;
    assert_eq!(records[0]["outcome"], "ok", "{}", records[0]);
    assert_eq!(records[0]["bytes_out"], 19, "{}", records[0]);
}

#[tokio::test]
async fn a_chunked_response_with_trailers_is_a_complete_exchange() {
    let upstream = RawUpstream::start(script).await;
    let proxy = TestProxy::start(&pat_config(upstream.addr, Some("ghp_testpat"), "")).await;
    let text = exchange(proxy.addr, &get("/repos/o/trailers")).await;
    assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
    assert!(text.contains("hello"), "{text}");
    let records = proxy.stop().await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["outcome"], "ok", "{}", records[0]);
    assert_eq!(records[0]["bytes_out"], 5, "{}", records[0]);
}

#[tokio::test]
async fn an_unrequested_101_is_an_upstream_error() {
    let upstream = RawUpstream::start(script).await;
    let proxy = TestProxy::start(&pat_config(upstream.addr, Some("ghp_testpat"), "")).await;
    let text = exchange(proxy.addr, &get("/repos/o/switch")).await;
    assert!(text.starts_with("HTTP/1.1 502 "), "{text}");
    assert!(
        text.contains("\"reason\":\"upstream_unreachable\""),
        "{text}"
    );
    exchange(proxy.addr, &get("/repos/o/plain")).await;
    assert_eq!(upstream.accepted(), 2, "that connection is not reused");
    let records = proxy.stop().await;
    assert_eq!(records[0]["status"], 502, "{}", records[0]);
    assert_eq!(records[0]["upstream_status"], 101, "{}", records[0]);
    assert_eq!(records[0]["outcome"], "upstream_error", "{}", records[0]);
}

/// RFC 9112 §6.1: hyper decodes `chunked` only; any other coding would reach GitHub unnamed.
#[tokio::test]
async fn a_request_body_in_another_transfer_coding_is_refused() {
    let upstream = RawUpstream::start(script).await;
    let proxy = TestProxy::start(&pat_config(upstream.addr, Some("ghp_testpat"), "")).await;
    for te in ["gzip, chunked", "identity, chunked"] {
        let text = exchange(
            proxy.addr,
            &format!(
                "POST /repos/o/r/issues HTTP/1.1\r\nHost: proxy\r\nTransfer-Encoding: {te}\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            ),
        )
        .await;
        assert!(text.starts_with("HTTP/1.1 400 "), "{te}: {text}");
        assert!(text.contains("\"reason\":\"invalid_request\""), "{text}");
    }
    // Plain chunked is fine.
    let text = exchange(
        proxy.addr,
        "POST /repos/o/r/issues HTTP/1.1\r\nHost: proxy\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
    assert_eq!(upstream.accepted(), 1);
}

/// A chunked body on a GET is forwarded chunked (hyper sends none for a GET of unknown length
/// unless told), and the connection is reused after it.
#[tokio::test]
async fn a_chunked_body_on_a_get_is_forwarded_not_dropped() {
    let upstream = RawUpstream::start(script).await;
    let proxy = TestProxy::start(&pat_config(upstream.addr, Some("ghp_testpat"), "")).await;
    for _ in 0..2 {
        let text = exchange(
            proxy.addr,
            "GET /repos/o/r HTTP/1.1\r\nHost: proxy\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        )
        .await;
        assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
    }
    assert_eq!(upstream.bodies(), ["5\r\nhello\r\n0\r\n\r\n"; 2]);
    assert_eq!(upstream.accepted(), 1);
}
