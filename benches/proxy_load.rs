//! How much throughput and latency does the proxy cost compared with calling the upstream
//! directly, end to end, with the audit log on, and does every proxied request get its audit
//! record?
//!
//! In one process on 127.0.0.1: a plain-HTTP hyper upstream answering a static GitHub-like JSON
//! body (as `shared/bench/vs-nginx.sh` does), the real server (`gh_token_proxy::run`) with one PAT
//! integration whose `apiBaseUrl` is that upstream and `audit.path` a temp file, and N keep-alive
//! client connections sending `GET /repos/octocat/Hello-World` back to back for a fixed time,
//! first directly, then through the proxy. Prints requests/s and p50/p99/p999 latency for both
//! and their ratio, then shuts the proxy down (which flushes the audit log) and asserts that the
//! audit file holds exactly one record per request the proxy completed.
//!
//! `cargo bench --bench proxy_load`; env `PROXY_LOAD_CONNS` (default 16), `PROXY_LOAD_SECS`
//! (default 5, per target), `PROXY_LOAD_PROXY_THREADS` (default 2). About 15 s with defaults.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use gh_token_proxy::config::Config;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

/// The body `vs-nginx.sh` serves: a trimmed `GET /repos/octocat/Hello-World`.
const BODY: &str = r#"{"id":1296269,"node_id":"MDEwOlJlcG9zaXRvcnkxMjk2MjY5","name":"Hello-World","full_name":"octocat/Hello-World","private":false,"owner":{"login":"octocat","id":1,"type":"User"},"default_branch":"main","stargazers_count":80,"watchers_count":80,"forks_count":9,"open_issues_count":0,"visibility":"public","pushed_at":"2011-01-26T19:06:43Z","created_at":"2011-01-26T19:01:12Z","updated_at":"2011-01-26T19:14:43Z"}
"#;
const PATH: &str = "/repos/octocat/Hello-World";
const WARM_UP: Duration = Duration::from_secs(1);

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The plain-HTTP upstream: every request gets the static body with GitHub's rate-limit headers.
async fn upstream(listener: TcpListener) {
    let body = Bytes::from_static(BODY.as_bytes());
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let body = body.clone();
        tokio::spawn(async move {
            let service = service_fn(move |_req: Request<Incoming>| {
                let body = body.clone();
                async move {
                    Ok::<_, Infallible>(
                        Response::builder()
                            .header("content-type", "application/json")
                            .header("x-ratelimit-remaining", "4999")
                            .header("x-ratelimit-resource", "core")
                            .body(Full::new(body))
                            .unwrap(),
                    )
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// What the connections of one target measured.
#[derive(Default)]
struct Run {
    /// Latencies (ns) of the requests completed inside the measured window.
    latencies: Vec<u64>,
    /// Every request completed, warm-up included (each one is an audit record on the proxy).
    completed: u64,
    window: Duration,
}

/// One keep-alive connection sending requests back to back until `end`; requests completed after
/// `measure_from` are timed.
async fn connection(addr: SocketAddr, measure_from: Instant, end: Instant) -> (Vec<u64>, u64) {
    let stream = TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut latencies = Vec::with_capacity(64 * 1024);
    let mut completed = 0;
    let authority = addr.to_string();
    while Instant::now() < end {
        let req = Request::get(PATH)
            .header("host", &authority)
            .header("user-agent", "proxy-load-bench")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let start = Instant::now();
        let resp = sender.send_request(req).await.unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let done = Instant::now();
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
        assert_eq!(body.len(), BODY.len());
        completed += 1;
        if start >= measure_from {
            latencies.push((done - start).as_nanos() as u64);
        }
    }
    (latencies, completed)
}

/// `conns` connections against `addr`: a warm-up, then `secs` measured.
async fn load(addr: SocketAddr, conns: u64, secs: u64) -> Run {
    let measure_from = Instant::now() + WARM_UP;
    let end = measure_from + Duration::from_secs(secs);
    let tasks: Vec<_> = (0..conns)
        .map(|_| tokio::spawn(connection(addr, measure_from, end)))
        .collect();
    let mut run = Run::default();
    for task in tasks {
        let (latencies, completed) = tokio::time::timeout(
            Duration::from_secs(secs) + WARM_UP + Duration::from_secs(30),
            task,
        )
        .await
        .expect("a connection hung")
        .unwrap();
        run.latencies.extend(latencies);
        run.completed += completed;
    }
    run.window = Duration::from_secs(secs);
    run.latencies.sort_unstable();
    run
}

fn percentile_ms(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i] as f64 / 1e6
}

struct Summary {
    rps: f64,
    p50: f64,
    p99: f64,
    p999: f64,
}

fn summarise(name: &str, run: &Run) -> Summary {
    let s = Summary {
        rps: run.latencies.len() as f64 / run.window.as_secs_f64(),
        p50: percentile_ms(&run.latencies, 0.50),
        p99: percentile_ms(&run.latencies, 0.99),
        p999: percentile_ms(&run.latencies, 0.999),
    };
    println!(
        "{name:8} {:>9} {:>10.0} {:>8.3} {:>8.3} {:>8.3}",
        run.latencies.len(),
        s.rps,
        s.p50,
        s.p99,
        s.p999
    );
    s
}

fn proxy_config(upstream: SocketAddr, audit: &std::path::Path) -> Config {
    let yaml = format!(
        "integrations:
  github:
    - host: bench.local
      apiBaseUrl: http://{upstream}
      token: ghp_bench_static_token
proxy:
  listen: 127.0.0.1:0
  admin:
    listen: null
  defaultHost: bench.local
  audit:
    path: {}
",
        audit.display()
    );
    Config::from_yaml(&yaml).unwrap()
}

fn main() {
    // `cargo bench` passes `--bench`; this bench takes no arguments.
    let conns = env_or("PROXY_LOAD_CONNS", 16).max(1);
    let secs = env_or("PROXY_LOAD_SECS", 5).max(1);
    let proxy_threads = env_or("PROXY_LOAD_PROXY_THREADS", 2).max(1) as usize;

    // Three runtimes, so the load generator, the upstream and the proxy do not share workers
    // (as wrk, nginx and the proxy are separate processes in vs-nginx.sh).
    let upstream_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let proxy_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(proxy_threads)
        .enable_all()
        .build()
        .unwrap();
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();

    let up_listener = upstream_rt
        .block_on(TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let up_addr = up_listener.local_addr().unwrap();
    upstream_rt.spawn(upstream(up_listener));

    let dir = tempfile::tempdir().unwrap();
    let audit_path = dir.path().join("audit.jsonl");
    let config = Arc::new(proxy_config(up_addr, &audit_path));
    let px_listener = proxy_rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
    let px_addr = px_listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let proxy = proxy_rt.spawn(gh_token_proxy::run(config, px_listener, async move {
        let _ = stopped.await;
    }));

    println!(
        "proxy_load: {conns} keep-alive connections, {secs} s measured per target after {} s warm-up, proxy on {proxy_threads} worker threads",
        WARM_UP.as_secs()
    );
    let direct = client_rt.block_on(load(up_addr, conns, secs));
    let through = client_rt.block_on(load(px_addr, conns, secs));

    println!("target    requests        rps   p50_ms   p99_ms  p999_ms");
    let d = summarise("direct", &direct);
    let p = summarise("proxy", &through);
    println!(
        "ratio proxy/direct: throughput {:.3}  p50 {:.3}  p99 {:.3}  p999 {:.3}",
        p.rps / d.rps,
        p.p50 / d.p50,
        p.p99 / d.p99,
        p.p999 / d.p999
    );

    // Shutting down flushes the audit log; then every completed proxied request has its line.
    let _ = stop.send(());
    proxy_rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(60), proxy).await })
        .expect("proxy did not shut down within 60 s")
        .unwrap()
        .unwrap();
    let audit = std::fs::read_to_string(&audit_path).unwrap();
    let records = audit.lines().filter(|l| !l.trim().is_empty()).count() as u64;
    println!(
        "audit records: {records}, requests completed through the proxy: {}",
        through.completed
    );
    assert_eq!(
        records, through.completed,
        "every proxied request has exactly one audit record"
    );
}
