//! Signals on the real binary (SPEC §8, §7.3, §9): SIGTERM drains (in-flight requests finish and
//! are audited, `/readyz` answers 503, new connections get no service, exit 0); SIGHUP reopens
//! the audit file for log rotation.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod server_common;
mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use server_common::{Upstream, WAIT, full, send_to};
use support::process::{PROCESS_WAIT, ProxyProcess};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long the upstream takes to answer the slow request.
const SLOW: Duration = Duration::from_secs(2);

fn config(upstream: SocketAddr) -> impl Fn(SocketAddr, SocketAddr, &Path) -> String {
    config_with(upstream, "")
}

/// As [`config`], with `extra` lines appended under `proxy:` (indented by the caller).
fn config_with(
    upstream: SocketAddr,
    extra: &'static str,
) -> impl Fn(SocketAddr, SocketAddr, &Path) -> String {
    move |listen, admin, audit| {
        format!(
            "integrations:\n  github:\n    - host: github.com\n      apiBaseUrl: http://{upstream}\n      token: ghp_shutdowntest\nproxy:\n  listen: {listen}\n  admin:\n    listen: {admin}\n  audit:\n    path: {}\n{extra}",
            audit.display()
        )
    }
}

/// An upstream that answers `/slow` after `delay` and anything else at once.
async fn slow_upstream(delay: Duration) -> Upstream {
    Upstream::start(move |req: Request<hyper::body::Incoming>| async move {
        if req.uri().path().ends_with("/slow") {
            tokio::time::sleep(delay).await;
        }
        Response::builder()
            .header("content-type", "application/json")
            .body(full("{\"slow\":\"done\"}"))
            .unwrap()
    })
    .await
}

/// Polls until the upstream has received a request for `/slow` (it is then in flight).
async fn wait_in_flight(upstream: &Upstream) {
    let deadline = Instant::now() + WAIT;
    while !upstream.seen().iter().any(|s| s.uri.ends_with("/slow")) {
        assert!(Instant::now() < deadline, "the slow request never arrived");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn get(addr: SocketAddr, path: &str) -> Response<Bytes> {
    let req = Request::get(path)
        .header("host", addr.to_string())
        .body(full(Bytes::new()))
        .unwrap();
    send_to(addr, req).await.0
}

/// `GET /readyz` on a fresh connection; `None` when the admin listener does not answer.
async fn readyz(admin: SocketAddr) -> Option<u16> {
    let attempt = async {
        let mut stream = TcpStream::connect(admin).await.ok()?;
        stream
            .write_all(b"GET /readyz HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut out = Vec::new();
        stream.read_to_end(&mut out).await.ok()?;
        let text = String::from_utf8_lossy(&out);
        text.split_whitespace().nth(1)?.parse().ok()
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .ok()
        .flatten()
}

/// What a client opening a new connection after the drain began experiences.
// The texts are read through `Debug` in assertion messages.
#[allow(dead_code)]
#[derive(Debug)]
enum NewConnection {
    Refused,
    /// Connected, but no HTTP response came back (closed, reset or silent).
    NoService(String),
    Served(String),
}

async fn try_new_connection(addr: SocketAddr) -> NewConnection {
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        return NewConnection::Refused;
    };
    let request = "GET /repos/acme/widgets HTTP/1.1\r\nhost: proxy\r\nconnection: close\r\n\r\n";
    if let Err(err) = stream.write_all(request.as_bytes()).await {
        return NewConnection::NoService(format!("write failed: {err}"));
    }
    let mut out = Vec::new();
    match tokio::time::timeout(Duration::from_secs(1), stream.read_to_end(&mut out)).await {
        Ok(Ok(_)) if out.starts_with(b"HTTP/") => {
            NewConnection::Served(String::from_utf8_lossy(&out).into_owned())
        }
        Ok(Ok(_)) => NewConnection::NoService("closed without a response".into()),
        Ok(Err(err)) => NewConnection::NoService(format!("read failed: {err}")),
        Err(_) => NewConnection::NoService("no answer within 1 s".into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_request_then_exits_zero() {
    let upstream = slow_upstream(SLOW).await;
    let mut proxy = ProxyProcess::start(config(upstream.addr));
    assert_eq!(readyz(proxy.admin_addr).await, Some(200));

    let addr = proxy.addr;
    let slow = tokio::spawn(async move { get(addr, "/repos/acme/widgets/slow").await });
    wait_in_flight(&upstream).await;
    let term_sent = Instant::now();
    proxy.signal("TERM");

    // /readyz turns 503 while the slow request is still running.
    let deadline = Instant::now() + WAIT;
    let mut statuses = Vec::new();
    loop {
        let status = readyz(proxy.admin_addr).await;
        statuses.push(status);
        if status == Some(503) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz never answered 503 after SIGTERM: {statuses:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        !slow.is_finished(),
        "the drain should still be waiting for the slow request"
    );
    // New connections get no service once the drain began.
    let newcomer = try_new_connection(proxy.addr).await;
    assert!(
        !matches!(newcomer, NewConnection::Served(_)),
        "a new connection was served during the drain: {newcomer:?}"
    );
    assert!(
        !slow.is_finished(),
        "checks should have run inside the drain"
    );
    eprintln!(
        "/readyz 503 and new connection {newcomer:?} within {:?} of SIGTERM",
        term_sent.elapsed()
    );

    // The in-flight request completes normally.
    let response = tokio::time::timeout(WAIT, slow).await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.body().as_ref(), b"{\"slow\":\"done\"}");
    assert_eq!(response.headers()["x-credential-type"], "pat");

    let status = proxy.wait_exit(PROCESS_WAIT);
    assert_eq!(status.code(), Some(0), "stderr:\n{}", proxy.stderr());
    eprintln!("exited {status} {:?} after SIGTERM", term_sent.elapsed());

    let records = ProxyProcess::audit_records(&proxy.audit_path);
    let slow_record = records
        .iter()
        .find(|r| r["path"] == "/repos/acme/widgets/slow")
        .unwrap_or_else(|| panic!("no audit record for the slow request: {records:?}"));
    assert_eq!(slow_record["status"], 200, "{slow_record}");
    assert_eq!(slow_record["outcome"], "ok");
    assert_eq!(slow_record["credential"], "pat");
    assert_eq!(
        slow_record["request_id"],
        response.headers()["x-request-id"].to_str().unwrap()
    );
    assert!(slow_record["duration_ms"].as_f64().unwrap() >= SLOW.as_millis() as f64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reopens_the_audit_file() {
    let upstream = Upstream::ok().await;
    let mut proxy = ProxyProcess::start(config(upstream.addr));

    let first = get(proxy.addr, "/repos/acme/before-rotation").await;
    assert_eq!(first.status(), 200);
    proxy.wait_audit(&proxy.audit_path, 1);

    // Rotate: the process keeps writing to the renamed file until told to reopen.
    let rotated = proxy.dir.path().join("audit.log.1");
    std::fs::rename(&proxy.audit_path, &rotated).unwrap();
    proxy.signal("HUP");
    let deadline = Instant::now() + PROCESS_WAIT;
    while !proxy.audit_path.exists() {
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not recreate {}; stderr:\n{}",
            proxy.audit_path.display(),
            proxy.stderr()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let second = get(proxy.addr, "/repos/acme/after-rotation").await;
    assert_eq!(second.status(), 200);
    let records = proxy.wait_audit(&proxy.audit_path, 1);
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["path"], "/repos/acme/after-rotation");
    assert_eq!(
        records[0]["request_id"],
        second.headers()["x-request-id"].to_str().unwrap()
    );
    let old = ProxyProcess::audit_records(&rotated);
    assert_eq!(old.len(), 1, "{old:?}");
    assert_eq!(old[0]["path"], "/repos/acme/before-rotation");

    // Still a clean stop afterwards.
    proxy.signal("TERM");
    assert_eq!(proxy.wait_exit(PROCESS_WAIT).code(), Some(0));
    assert!(proxy.stderr().contains("audit log reopened"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_drains_like_sigterm() {
    let upstream = slow_upstream(Duration::from_millis(500)).await;
    let mut proxy = ProxyProcess::start(config(upstream.addr));
    let addr = proxy.addr;
    let slow = tokio::spawn(async move { get(addr, "/repos/acme/widgets/slow").await });
    wait_in_flight(&upstream).await;
    proxy.signal("INT");
    let response = tokio::time::timeout(WAIT, slow).await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(proxy.wait_exit(PROCESS_WAIT).code(), Some(0));
    let records = ProxyProcess::audit_records(&proxy.audit_path);
    assert!(
        records
            .iter()
            .any(|r| r["path"] == "/repos/acme/widgets/slow" && r["status"] == 200),
        "{records:?}"
    );
}

/// `GET /repos/acme/widgets/slow` through the proxy on its own connection, in a task: the
/// upstream's status, or the error when the proxy cut the exchange.
fn slow_request(
    addr: SocketAddr,
) -> tokio::task::JoinHandle<Result<http::StatusCode, hyper::Error>> {
    tokio::spawn(async move {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        let req = Request::get("/repos/acme/widgets/slow")
            .header("host", addr.to_string())
            .body(full(Bytes::new()))
            .unwrap();
        sender.send_request(req).await.map(|r| r.status())
    })
}

/// A request still running when `shutdownGraceSeconds` runs out is cut, still audited (as
/// aborted), and the process still exits 0 soon after the grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grace_expiry_cuts_the_request_audits_it_and_exits_zero() {
    let upstream = slow_upstream(Duration::from_secs(30)).await;
    let mut proxy = ProxyProcess::start(config_with(upstream.addr, "  shutdownGraceSeconds: 1\n"));
    let slow = slow_request(proxy.addr);
    wait_in_flight(&upstream).await;
    let term_sent = Instant::now();
    proxy.signal("TERM");
    let status = proxy.wait_exit(PROCESS_WAIT);
    let took = term_sent.elapsed();
    assert_eq!(status.code(), Some(0), "stderr:\n{}", proxy.stderr());
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(10),
        "exited {took:?} after SIGTERM with a 1 s grace"
    );
    let outcome = tokio::time::timeout(WAIT, slow).await.unwrap().unwrap();
    assert!(
        outcome.is_err(),
        "the cut request got an answer: {outcome:?}"
    );

    let records = ProxyProcess::audit_records(&proxy.audit_path);
    let record = records
        .iter()
        .find(|r| r["path"] == "/repos/acme/widgets/slow")
        .unwrap_or_else(|| panic!("the cut request was not audited: {records:?}"));
    assert_eq!(record["outcome"], "aborted", "{record}");
    assert_eq!(record["credential"], "pat", "{record}");
    assert!(
        proxy.stderr().contains("grace expired"),
        "{}",
        proxy.stderr()
    );
}

/// Tools keep pooled keep-alive connections open (and may pre-open some that have sent nothing);
/// idle ones must not hold the drain for the whole `shutdownGraceSeconds` (default 30 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_idle_keep_alive_connections_exits_promptly() {
    let upstream = Upstream::ok().await;
    let mut proxy = ProxyProcess::start(config(upstream.addr));
    let mut idle = Vec::new();
    for _ in 0..3 {
        let stream = TcpStream::connect(proxy.addr).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        let conn = tokio::spawn(conn);
        let req = Request::get("/repos/acme/widgets")
            .header("host", proxy.addr.to_string())
            .body(full(Bytes::new()))
            .unwrap();
        let response = sender.send_request(req).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_ne!(
            response.headers().get("connection").map(|v| v.as_bytes()),
            Some(&b"close"[..])
        );
        http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap();
        idle.push((sender, conn));
    }
    // A connection that has sent nothing yet (a client pre-opening its pool), accepted by now.
    let silent = TcpStream::connect(proxy.addr).await.unwrap();
    let _ = get(proxy.addr, "/repos/acme/after-silent").await;
    let term_sent = Instant::now();
    proxy.signal("TERM");
    let status = proxy.wait_exit(PROCESS_WAIT);
    let took = term_sent.elapsed();
    assert_eq!(status.code(), Some(0), "stderr:\n{}", proxy.stderr());
    assert!(
        took < Duration::from_secs(5),
        "idle keep-alive connections held the drain for {took:?}"
    );
    assert!(
        !proxy.stderr().contains("grace expired"),
        "{}",
        proxy.stderr()
    );
    assert_eq!(ProxyProcess::audit_records(&proxy.audit_path).len(), 4);
    drop((idle, silent));
}

/// A second SIGTERM (or SIGINT: an operator pressing Ctrl-C twice) ends the drain at once,
/// however long `shutdownGraceSeconds` is: the in-flight request is cut, still audited, and the
/// process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_ends_the_drain_at_once() {
    let upstream = slow_upstream(Duration::from_secs(30)).await;
    let mut proxy = ProxyProcess::start(config_with(upstream.addr, "  shutdownGraceSeconds: 60\n"));
    let slow = slow_request(proxy.addr);
    wait_in_flight(&upstream).await;
    proxy.signal("TERM");
    // Draining: the first signal alone would wait up to 60 s.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = Instant::now();
    proxy.signal("INT");
    let status = proxy.wait_exit(PROCESS_WAIT);
    assert_eq!(status.code(), Some(0), "stderr:\n{}", proxy.stderr());
    assert!(
        second.elapsed() < Duration::from_secs(10),
        "exited {:?} after the second signal",
        second.elapsed()
    );
    let outcome = tokio::time::timeout(WAIT, slow).await.unwrap().unwrap();
    assert!(
        outcome.is_err(),
        "the cut request got an answer: {outcome:?}"
    );
    let records = ProxyProcess::audit_records(&proxy.audit_path);
    let record = records
        .iter()
        .find(|r| r["path"] == "/repos/acme/widgets/slow")
        .unwrap_or_else(|| panic!("the cut request was not audited: {records:?}"));
    assert_eq!(record["outcome"], "aborted", "{record}");
    assert!(
        proxy.stderr().contains("second stop signal"),
        "{}",
        proxy.stderr()
    );
}
