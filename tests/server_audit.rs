//! Audit records end to end (SPEC §7.3): one per exchange, exactly once, with every field, for
//! served, refused, failed and client-aborted requests; never a secret.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod server_common;

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use server_common::*;
use tokio::io::AsyncWriteExt;

#[tokio::test]
async fn pat_served_request_has_a_complete_record() {
    let upstream = Upstream::ok().await;
    let proxy = TestProxy::start(&pat_config(upstream.addr, Some("ghp_testpat"), "")).await;
    let response = proxy.get("/repos/Acme/Widgets/pulls?per_page=5").await;
    assert_eq!(response.status(), StatusCode::OK);
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let records = proxy.stop().await;
    assert_eq!(records.len(), 1);
    let r = &records[0];
    assert_audit_fields(r);
    let ts = r["ts"].as_str().unwrap();
    assert_eq!(ts.len(), 24, "{ts}");
    assert!(ts.ends_with('Z') && ts.as_bytes()[19] == b'.', "{ts}");
    assert_eq!(r["request_id"], request_id);
    assert!(r["client"].is_null());
    assert!(r["client_addr"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert_eq!(r["method"], "GET");
    assert_eq!(r["host"], upstream.addr.to_string());
    assert_eq!(r["path"], "/repos/Acme/Widgets/pulls");
    assert_eq!(r["owner"], "Acme");
    assert_eq!(r["repo"], "Widgets");
    assert_eq!(r["credential"], "pat");
    assert_eq!(r["reason"], "no_app");
    assert!(r["app_id"].is_null());
    assert!(r["installation_id"].is_null());
    assert_eq!(
        r["hashed_token"],
        gh_token_proxy::credential::hash_token("ghp_testpat")
    );
    assert_eq!(r["status"], 200);
    assert_eq!(r["upstream_status"], 200);
    assert_eq!(r["github_request_id"], "C0DE:1234");
    assert_eq!(r["rate_limit_remaining"], 4987);
    assert_eq!(r["rate_limit_resource"], "core");
    assert_eq!(r["bytes_out"], 11);
    assert!(r["duration_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(r["outcome"], "ok");
    assert!(!r.to_string().contains("ghp_testpat"));
}

#[tokio::test]
async fn refused_request_has_a_record_with_nulls() {
    let upstream = Upstream::ok().await;
    let proxy = TestProxy::start(&pat_config(upstream.addr, Some("ghp_testpat"), "")).await;
    let response = proxy.get("/repos/acme/..%2F/x").await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let records = proxy.stop().await;
    assert_eq!(records.len(), 1);
    let r = &records[0];
    assert_audit_fields(r);
    assert_eq!(r["credential"], "none");
    assert_eq!(r["reason"], "invalid_path");
    // It was addressed to the api origin; only its path was refused.
    assert_eq!(r["host"], upstream.addr.to_string());
    assert_eq!(r["status"], 400);
    assert!(r["upstream_status"].is_null());
    assert!(r["github_request_id"].is_null());
    assert!(r["hashed_token"].is_null());
    assert_eq!(r["outcome"], "refused");
    assert!(r["bytes_out"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn client_that_goes_away_mid_body_is_recorded_as_aborted() {
    // The upstream sends one chunk and then never finishes.
    let upstream = Upstream::start(|_req| async {
        let stream = futures_util::stream::unfold(0u32, |n| async move {
            if n == 0 {
                Some((Ok(Frame::data(Bytes::from(vec![b'z'; 4096]))), 1))
            } else {
                tokio::time::sleep(Duration::from_secs(60)).await;
                None
            }
        });
        let body: TestBody = StreamBody::new(stream).boxed();
        Response::new(body)
    })
    .await;
    let proxy = TestProxy::start(&pat_config(upstream.addr, Some("ghp_testpat"), "")).await;
    let stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let conn_task = tokio::spawn(conn);
    let req = Request::get("/repos/acme/widgets/tarball/main")
        .header("host", proxy.addr.to_string())
        .body(full(Bytes::new()))
        .unwrap();
    let response = tokio::time::timeout(WAIT, sender.send_request(req))
        .await
        .unwrap()
        .unwrap();
    let mut body = response.into_body();
    tokio::time::timeout(WAIT, body.frame()).await.unwrap();
    // Hang up.
    drop(body);
    drop(sender);
    conn_task.abort();

    let path = proxy.audit_path.clone();
    wait_until(|| {
        std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .count()
            == 1
    })
    .await;
    let records = proxy.stop().await;
    assert_eq!(records.len(), 1, "{records:?}");
    let r = &records[0];
    assert_audit_fields(r);
    assert_eq!(r["outcome"], "aborted");
    assert_eq!(r["status"], 200);
    assert_eq!(r["upstream_status"], 200);
    assert_eq!(r["credential"], "pat");
    assert_eq!(r["bytes_out"], 4096);
}

#[tokio::test]
async fn client_that_goes_away_before_the_answer_is_recorded_as_aborted() {
    let upstream = Upstream::start(|_req| async {
        tokio::time::sleep(Duration::from_secs(60)).await;
        Response::new(full("late"))
    })
    .await;
    let proxy = TestProxy::start(&pat_config(upstream.addr, Some("ghp_testpat"), "")).await;
    let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(
            format!(
                "GET /repos/acme/widgets HTTP/1.1\r\nHost: {}\r\n\r\n",
                proxy.addr
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let seen = upstream.seen.clone();
    wait_until(|| !seen.lock().unwrap().is_empty()).await;
    drop(stream);
    let path = proxy.audit_path.clone();
    wait_until(|| {
        std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .count()
            == 1
    })
    .await;
    let records = proxy.stop().await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["outcome"], "aborted");
    assert!(records[0]["status"].is_null());
}

#[tokio::test]
async fn every_request_of_a_burst_is_recorded_once() {
    let upstream = Upstream::ok().await;
    let proxy = TestProxy::start(&pat_config(upstream.addr, Some("ghp_testpat"), "")).await;
    let mut tasks = Vec::new();
    for i in 0..50 {
        let addr = proxy.addr;
        tasks.push(tokio::spawn(async move {
            let path = if i % 5 == 0 {
                "/app".to_owned()
            } else {
                format!("/repos/acme/r{i}")
            };
            send_to(
                addr,
                Request::get(path)
                    .header("host", addr.to_string())
                    .body(full(Bytes::new()))
                    .unwrap(),
            )
            .await
            .0
            .headers()["x-request-id"]
                .to_str()
                .unwrap()
                .to_owned()
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap());
    }
    let records = proxy.stop().await;
    assert_eq!(records.len(), 50);
    let mut logged: Vec<String> = records
        .iter()
        .map(|r| r["request_id"].as_str().unwrap().to_owned())
        .collect();
    logged.sort();
    ids.sort();
    assert_eq!(logged, ids);
}

/// An audit sink that takes nothing while its gate is shut (a stalled pipe or log collector),
/// then everything; it counts the lines it took.
#[derive(Clone, Default)]
struct GatedSink {
    state: std::sync::Arc<(std::sync::Mutex<(bool, usize)>, std::sync::Condvar)>,
}

impl GatedSink {
    fn open(&self) {
        self.state.0.lock().unwrap().0 = true;
        self.state.1.notify_all();
    }

    fn lines(&self) -> usize {
        self.state.0.lock().unwrap().1
    }
}

impl std::io::Write for GatedSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let (lock, opened) = &*self.state;
        let mut state = lock.lock().unwrap();
        // Bounded: a test that never opens the gate still ends.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !state.0 && std::time::Instant::now() < deadline {
            state = opened
                .wait_timeout(state, Duration::from_millis(100))
                .unwrap()
                .0;
        }
        state.1 += buf.iter().filter(|&&b| b == b'\n').count();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// §7.3: "Records are never dropped: when the writer falls behind, requests wait." With the
/// sink stalled, requests stop being answered once the queue is full (rather than records piling
/// up in memory), and all of them complete, each with its record, once it takes them again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_audit_sink_makes_requests_wait_and_loses_nothing() {
    use gh_token_proxy::audit::{AuditLog, Sink};
    const CAPACITY: usize = 16;
    const REQUESTS: usize = 3000;
    let upstream = Upstream::ok().await;
    let yaml = pat_config(upstream.addr, Some("ghp_testpat"), "");
    let config = std::sync::Arc::new(gh_token_proxy::config::Config::from_yaml(&yaml).unwrap());
    let sink = GatedSink::default();
    let audit = AuditLog::start(Sink::Writer(Box::new(sink.clone())), CAPACITY).unwrap();
    let server = gh_token_proxy::server::Server::with_audit(config, audit).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(async move {
        server
            .serve(listener, None, async move {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });

    // One keep-alive connection, requests one after another: refusals (`/app/...`) and
    // forwarded ones alternate.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = done.clone();
    let client = tokio::spawn(async move {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut send, conn) =
            hyper::client::conn::http1::handshake::<_, TestBody>(TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        for i in 0..REQUESTS {
            let path = if i % 2 == 0 { "/app/x" } else { "/repos/o/r" };
            let request = Request::get(path)
                .header("host", "proxy")
                .body(full(Bytes::new()))
                .unwrap();
            let response = send.send_request(request).await.unwrap();
            response.into_body().collect().await.unwrap();
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });

    // Wait (bounded) until the count stops moving for half a second.
    let count = || done.load(std::sync::atomic::Ordering::SeqCst);
    let mut last = usize::MAX;
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = count();
        if now == last || now == REQUESTS {
            break;
        }
        last = now;
    }
    let stalled_at = count();
    // The writer holds one batch (at most 1,024 records) while it is stuck on the sink, the
    // queue CAPACITY more; beyond that, requests wait.
    assert!(
        stalled_at < 1024 + CAPACITY + 8,
        "requests did not wait for the stalled audit sink: {stalled_at} of {REQUESTS} answered"
    );
    assert_eq!(sink.lines(), 0);

    sink.open();
    tokio::time::timeout(WAIT, client).await.unwrap().unwrap();
    assert_eq!(count(), REQUESTS);
    let _ = stop.send(());
    tokio::time::timeout(WAIT, serving).await.unwrap().unwrap();
    assert_eq!(sink.lines(), REQUESTS);
}

/// A sink that never takes the last records cannot hold the process forever: after the drain,
/// a second stop signal ends the wait for the flush, and the server says records were lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_stop_signal_ends_the_wait_for_a_stalled_audit_sink() {
    use gh_token_proxy::audit::{AuditLog, Sink};
    use gh_token_proxy::server::{ServeError, Server};
    let upstream = Upstream::ok().await;
    let yaml = pat_config(upstream.addr, Some("ghp_testpat"), "");
    let config = std::sync::Arc::new(gh_token_proxy::config::Config::from_yaml(&yaml).unwrap());
    let sink = GatedSink::default();
    let audit = AuditLog::start(Sink::Writer(Box::new(sink.clone())), 16).unwrap();
    let server = Server::with_audit(config, audit).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (cut, cut_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve_until(
        listener,
        None,
        async move {
            let _ = stopped.await;
        },
        async move {
            let _ = cut_rx.await;
        },
    ));
    let response = send_to(
        addr,
        Request::get("/repos/o/r")
            .header("host", "proxy")
            .body(full(Bytes::new()))
            .unwrap(),
    )
    .await
    .0;
    assert_eq!(response.status(), StatusCode::OK);
    let _ = stop.send(());
    // The drain is over at once (nothing in flight), the flush is stuck on the sink.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!serving.is_finished(), "the flush cannot have finished");
    let _ = cut.send(());
    let result = tokio::time::timeout(WAIT, serving).await.unwrap().unwrap();
    assert!(
        matches!(result, Err(ServeError::AuditUnflushed(_))),
        "{result:?}"
    );
    assert_eq!(sink.lines(), 0);
    sink.open();
}
