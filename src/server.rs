//! The proxy server: accept loop (connection limit, TCP_NODELAY, header read timeout), the request
//! phases (request id → route → client → target → owner fallback → policy → resolve → forward →
//! stream back → one audit record), graceful shutdown, and `serve` (signals, binding).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Limited};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use ulid::Ulid;

use crate::audit::{AuditLog, AuditPermit, AuditRecord, AuditSender, Outcome};
use crate::config::{ClientConfig, Config, OriginKind};
use crate::credential::{CredentialKind, Reason, Token};
use crate::error::{Fault, ProxyError};
use crate::forward::{Forwarder, RequestBody, ResponseBody, UpstreamMeta};
use crate::github::GitHub;
use crate::metrics::Metrics;
use crate::resolve::{Resolution, Resolver};
use crate::target::{self, PathTarget, RepoIds};
use crate::upstream::UpstreamClient;

/// GraphQL bodies are read to find the owner only up to this size (§5).
pub const GRAPHQL_BODY_LIMIT: usize = 1024 * 1024;
/// GraphQL bodies read for inspection at once: with [`GRAPHQL_BODY_LIMIT`], at most 64 MiB held
/// for it however many clients send slowly (more wait their turn, holding only their head).
const GRAPHQL_INSPECTIONS: usize = 64;
/// Longest request-target answered normally; longer gets `414`.
pub const MAX_URI_LEN: usize = 8 * 1024;
/// Largest request head (all header lines) answered normally; larger gets `431`.
pub const MAX_HEADERS_LEN: usize = 64 * 1024;
/// hyper's own read buffer: above our limits so ours answer with a proper body first; beyond it
/// hyper answers a bare `431` itself.
const HYPER_MAX_BUF: usize = 256 * 1024;
/// Learned `/repositories/{id}` entries kept.
const REPO_IDS_CAPACITY: usize = 100_000;

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_CREDENTIAL_TYPE: HeaderName = HeaderName::from_static("x-credential-type");
static X_CREDENTIAL_REASON: HeaderName = HeaderName::from_static("x-credential-reason");
static X_GITHUB_OWNER: HeaderName = HeaderName::from_static("x-github-owner");

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    Setup(String),
    /// The audit sink did not take the last records before the process had to stop.
    #[error(
        "the audit log could not be flushed ({0}): records still queued were lost; \
         check what reads audit.path (a full disk, a stalled pipe or log collector)"
    )]
    AuditUnflushed(&'static str),
}

/// Everything request handling shares; one per server, behind an `Arc`, never cloned per request.
pub struct Shared {
    pub config: Arc<Config>,
    pub client: UpstreamClient,
    /// Forwarding's keep-alive connections (the App calls use `client`).
    pub pool: Arc<crate::pool::ForwardPool>,
    pub resolver: Arc<Resolver>,
    pub repo_ids: RepoIds,
    pub audit: AuditSender,
    pub metrics: Arc<Metrics>,
    draining: AtomicBool,
    /// Slots for reading GraphQL bodies ([`GRAPHQL_INSPECTIONS`]).
    inspections: Semaphore,
    /// The address the proxy listens on, once bound: an absolute-form request naming it is a
    /// request to the proxy itself (see [`own_address_path`]).
    bound: std::sync::OnceLock<SocketAddr>,
}

impl Shared {
    /// `false` once shutdown has begun (`/readyz` answers 503).
    pub fn is_ready(&self) -> bool {
        !self.draining.load(Ordering::Relaxed)
    }
}

/// A configured, not yet serving proxy. Tests build one, hand it bound listeners and a shutdown
/// future; `serve` uses the same path.
pub struct Server {
    shared: Arc<Shared>,
    audit: AuditLog,
}

impl Server {
    /// Builds the upstream client, the resolver and the audit writer named by the config.
    pub fn new(config: Arc<Config>) -> Result<Server, ServeError> {
        let audit = AuditLog::from_config(&config.proxy.audit)
            .map_err(|e| ServeError::Setup(e.to_string()))?;
        Self::with_audit(config, audit)
    }

    /// As [`Server::new`] with a given audit writer (tests write to a buffer or temp file).
    pub fn with_audit(config: Arc<Config>, audit: AuditLog) -> Result<Server, ServeError> {
        let client = crate::upstream::build(&config.proxy.upstream)
            .map_err(|e| ServeError::Setup(e.to_string()))?;
        let pool = crate::upstream::build_pool(&config.proxy.upstream)
            .map_err(|e| ServeError::Setup(e.to_string()))?;
        let github = Arc::new(GitHub::new(config.clone(), client.clone()));
        let resolver = Arc::new(Resolver::new(github, config.proxy.allow_anonymous));
        let shared = Arc::new(Shared {
            config,
            client,
            pool: Arc::new(pool),
            resolver,
            repo_ids: RepoIds::new(REPO_IDS_CAPACITY),
            audit: audit.sender(),
            metrics: Arc::new(Metrics::new()),
            draining: AtomicBool::new(false),
            inspections: Semaphore::new(GRAPHQL_INSPECTIONS),
            bound: std::sync::OnceLock::new(),
        });
        Ok(Server { shared, audit })
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Serves `listener` (and the admin endpoints on `admin`, if given) until `shutdown`
    /// resolves; then stops accepting, lets in-flight exchanges finish within
    /// `shutdownGraceSeconds`, and flushes the audit log.
    pub async fn serve(
        self,
        listener: TcpListener,
        admin: Option<TcpListener>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ServeError> {
        self.serve_until(listener, admin, shutdown, std::future::pending())
            .await
    }

    /// As [`Server::serve`]; `cut`, resolving during the drain, ends the grace at once (an
    /// operator's second SIGTERM/SIGINT): the remaining exchanges are cut and recorded
    /// `aborted`, the audit log is still flushed. A sink that does not take the records (a pipe
    /// nobody reads) cannot hold the process forever: `cut` ends that wait too, or, once it has
    /// already ended the drain, `shutdownGraceSeconds` more; the records still queued are then
    /// lost and this returns [`ServeError::AuditUnflushed`].
    pub async fn serve_until(
        self,
        listener: TcpListener,
        admin: Option<TcpListener>,
        shutdown: impl Future<Output = ()>,
        cut: impl Future<Output = ()>,
    ) -> Result<(), ServeError> {
        let Server { shared, audit } = self;
        let config = shared.config.clone();
        if let Ok(addr) = listener.local_addr() {
            let _ = shared.bound.set(addr);
        }

        let (admin_stop, admin_stopped) = tokio::sync::oneshot::channel::<()>();
        let admin_task = admin.map(|listener| {
            tokio::spawn(crate::admin::serve(listener, shared.clone(), async move {
                let _ = admin_stopped.await;
            }))
        });

        let mut http = http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(config.proxy.header_read_timeout)
            .max_buf_size(HYPER_MAX_BUF)
            // One flattened write per response instead of a vectored one: copying a response's
            // frame into the head's buffer costs less than hyper's queue of buffers (measured:
            // ~400 fewer instructions per request, docs/performance.md).
            .writev(false)
            .keep_alive(true);

        let limit = Arc::new(Semaphore::new(config.proxy.max_connections));
        let graceful = GracefulShutdown::new();
        let mut connections = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    // Reap finished connection tasks so the set stays small.
                    while connections.try_join_next().is_some() {}
                    let (stream, peer) = match accepted {
                        Ok(pair) => pair,
                        Err(err) => {
                            // EMFILE and friends: back off instead of spinning.
                            tracing::warn!("accept failed: {err}");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    let Ok(permit) = limit.clone().try_acquire_owned() else {
                        shared.metrics.observe_shed_connection();
                        tokio::spawn(shed(shared.clone(), stream, peer));
                        continue;
                    };
                    let for_service = shared.clone();
                    let service = service_fn(move |req| handle(for_service.clone(), req, peer));
                    let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
                    let shared = shared.clone();
                    connections.spawn(async move {
                        let _permit = permit;
                        if let Err(err) = conn.await {
                            tracing::debug!(%peer, "connection ended: {err}");
                            if let Some(status) = rejected_head_status(&err) {
                                record_rejected_head(&shared, peer, status, &err).await;
                            }
                        }
                    });
                }
                () = &mut shutdown => break,
            }
        }

        drop(listener);
        shared.draining.store(true, Ordering::Relaxed);
        tracing::info!(
            in_flight = graceful.count(),
            grace_seconds = config.proxy.shutdown_grace.as_secs(),
            "shutting down: not accepting; draining in-flight exchanges"
        );
        let mut cut = std::pin::pin!(cut);
        let mut was_cut = false;
        tokio::select! {
            drained = tokio::time::timeout(config.proxy.shutdown_grace, graceful.shutdown()) => {
                if drained.is_err() {
                    tracing::warn!("shutdown grace expired; closing the remaining connections");
                }
            }
            () = &mut cut => {
                was_cut = true;
                tracing::warn!("second stop signal: closing the remaining connections now");
            }
        }
        // Whatever is left is cut; their exchanges are recorded as aborted when dropped.
        connections.abort_all();
        while connections.join_next().await.is_some() {}
        let flushed = if was_cut {
            tokio::time::timeout(config.proxy.shutdown_grace, audit.shutdown())
                .await
                .map_err(|_| ServeError::AuditUnflushed("it did not finish within the grace"))
        } else {
            tokio::select! {
                () = audit.shutdown() => Ok(()),
                () = &mut cut => Err(ServeError::AuditUnflushed("a second stop signal")),
            }
        };
        let _ = admin_stop.send(());
        if let Some(task) = admin_task {
            let _ = task.await;
        }
        flushed?;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Runs the proxy on a bound listener until `shutdown` resolves, then drains.
pub async fn run(
    config: Arc<Config>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    Server::new(config)?.serve(listener, None, shutdown).await
}

/// `gh-token-proxy serve`: binds `proxy.listen` (and `admin.listen`), runs until SIGINT/SIGTERM.
pub async fn serve_main(config: Config) -> ExitCode {
    let config = Arc::new(config);
    let listen = config.proxy.listen;
    let listener = match TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(err) => {
            crate::cli::error(format_args!(
                "cannot listen on {listen} (proxy.listen): {err}"
            ));
            return ExitCode::from(1);
        }
    };
    let admin = match config.proxy.admin_listen {
        Some(addr) => match TcpListener::bind(addr).await {
            Ok(l) => Some(l),
            Err(err) => {
                crate::cli::error(format_args!(
                    "cannot listen on {addr} (proxy.admin.listen): {err}"
                ));
                return ExitCode::from(1);
            }
        },
        None => None,
    };
    if let Some(addr) = config.proxy.admin_listen
        && !addr.ip().is_loopback()
    {
        // The admin endpoints have no authentication: /explain names which credential serves any
        // owner (and may mint to find out), /metrics shows installation ids and rate limits.
        tracing::warn!(
            "proxy.admin.listen {addr} is not a loopback address: the unauthenticated health, \
             metrics and explain endpoints are reachable by anyone who can reach that port; \
             set proxy.admin.listen to 127.0.0.1:PORT (or null to disable it) unless a firewall \
             restricts it"
        );
    }
    let server = match Server::new(config.clone()) {
        Ok(server) => server,
        // Opening `proxy.audit.path` and reading `proxy.upstream.caFile`: the fix is in the
        // config, and the message names the key.
        Err(err) => {
            crate::cli::error(format_args!("bad config: {err}"));
            return ExitCode::from(2);
        }
    };
    // Handlers are installed before announcing readiness, so an early SIGTERM still drains and an
    // early SIGHUP (logrotate right at startup) reopens the log instead of killing the process.
    let (stop, second) = stop_signals();
    #[cfg(unix)]
    let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let proxy_addr = listener.local_addr().map_or(listen, |a| a);
    let admin_addr = admin.as_ref().and_then(|l| l.local_addr().ok());
    tracing::info!(
        listen = %proxy_addr,
        admin = %admin_addr.map_or_else(|| "disabled".to_owned(), |a| a.to_string()),
        workers = tokio::runtime::Handle::current().metrics().num_workers(),
        "gh-token-proxy {} serving",
        env!("CARGO_PKG_VERSION")
    );

    let audit = server.shared().audit.clone();
    let hup = tokio::spawn(async move {
        #[cfg(unix)]
        {
            if let Some(mut hup) = hangup {
                while hup.recv().await.is_some() {
                    tracing::info!("SIGHUP: reopening the audit log");
                    audit.reopen().await;
                }
            }
        }
        #[cfg(not(unix))]
        drop(audit);
    });
    let result = server.serve_until(listener, admin, stop, second).await;
    hup.abort();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err}");
            ExitCode::from(1)
        }
    }
}

/// The first SIGINT or SIGTERM (start the drain), and the second (end it at once). The handlers
/// are installed when this is called, not when first polled.
fn stop_signals() -> (impl Future<Output = ()>, impl Future<Output = ()>) {
    let (first_tx, first_rx) = tokio::sync::oneshot::channel::<()>();
    let (second_tx, second_rx) = tokio::sync::oneshot::channel::<()>();
    #[cfg(unix)]
    let handlers = {
        use tokio::signal::unix::{SignalKind, signal};
        signal(SignalKind::terminate())
            .and_then(|term| signal(SignalKind::interrupt()).map(|int| (term, int)))
            .ok()
    };
    #[cfg(not(unix))]
    let handlers: Option<((), ())> = None;
    tokio::spawn(async move {
        #[cfg(unix)]
        if let Some((mut term, mut int)) = handlers {
            for tx in [first_tx, second_tx] {
                tokio::select! {
                    _ = int.recv() => tracing::info!("SIGINT received"),
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                }
                let _ = tx.send(());
            }
            return;
        }
        let _ = handlers;
        for tx in [first_tx, second_tx] {
            let _ = tokio::signal::ctrl_c().await;
            tracing::info!("SIGINT received");
            let _ = tx.send(());
        }
    });
    // A dropped sender (the runtime shutting down) never stops anything by itself.
    let wait = |rx: tokio::sync::oneshot::Receiver<()>| async move {
        if rx.await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    (wait(first_rx), wait(second_rx))
}

/// Answers a connection beyond `maxConnections` with one `503 overloaded` and closes it, without
/// parsing its request with hyper (that is the work being shed). The request line it drains
/// afterwards is enough for the audit record every request gets (§7.3); a connection that sent
/// nothing made no request and gets none.
async fn shed(shared: Arc<Shared>, mut stream: TcpStream, peer: SocketAddr) {
    let arrived = SystemTime::now();
    let started = Instant::now();
    let request_id = Ulid::new();
    let err = ProxyError::Overloaded;
    let body = err.body();
    let mut id = [0u8; ulid::ULID_LEN];
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\nretry-after: 1\r\nx-request-id: {}\r\nx-credential-type: none\r\nx-credential-reason: overloaded\r\n\r\n",
        body.len(),
        request_id.array_to_str(&mut id)
    );
    // The first bytes the client sent: enough for a request line.
    let mut first = Vec::new();
    let io = async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(&body).await?;
        stream.shutdown().await?;
        // Read (and discard) what the client sent, briefly: closing with unread data would make
        // the kernel send RST, which can destroy the 503 before the client reads it.
        let mut buf = [0u8; 4096];
        let mut total = 0;
        while total < 64 * 1024 {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            if first.len() < SHED_REQUEST_LINE_MAX {
                let take = n.min(SHED_REQUEST_LINE_MAX - first.len());
                first.extend_from_slice(buf.get(..take).unwrap_or_default());
            }
            total += n;
        }
        Ok::<(), std::io::Error>(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), io).await;
    let Some((method, path)) = shed_request_line(&first) else {
        return;
    };
    let mut record = AuditRecord::new(arrived, request_id, peer, method);
    record.path = path;
    record.credential = CredentialKind::None;
    record.reason = Some(Reason::Overloaded);
    record.status = Some(503);
    record.bytes_out = body.len() as u64;
    record.outcome = Outcome::Refused;
    let duration = started.elapsed();
    record.duration_ms = duration.as_secs_f64() * 1000.0;
    shared.metrics.observe_request(
        CredentialKind::None,
        Some(Reason::Overloaded),
        Some(503),
        duration,
    );
    shared.audit.send(record).await;
}

/// The status hyper itself answered a request head with, when it could not parse it (hyper's
/// `on_error`: `414` past its 64 KiB URI limit, `431` past `max_buf_size` or 100 header lines,
/// `400` for a malformed head). The service never saw such a request, so its record is written
/// here. `None` for every other way a connection ends.
fn rejected_head_status(err: &hyper::Error) -> Option<u16> {
    if !err.is_parse() || err.is_parse_status() || err.is_parse_version_h2() {
        return None;
    }
    let text = err.to_string();
    if text.contains("internal error") {
        // hyper sends no response for its own failures.
        return None;
    }
    Some(if err.is_parse_too_large() {
        if text.contains("URI") { 414 } else { 431 }
    } else {
        400
    })
}

/// The audit record (§7.3: every request) of a request hyper refused before it was parsed: its
/// method and path are unknown (`null`); hyper's bare answer carried none of the proxy's headers.
async fn record_rejected_head(shared: &Shared, peer: SocketAddr, status: u16, err: &hyper::Error) {
    let mut record = AuditRecord::unparsed(SystemTime::now(), Ulid::new(), peer);
    record.credential = CredentialKind::None;
    record.reason = Some(Reason::InvalidRequest);
    record.status = Some(status);
    record.outcome = Outcome::Refused;
    shared.metrics.observe_request(
        CredentialKind::None,
        Some(Reason::InvalidRequest),
        Some(status),
        Duration::ZERO,
    );
    tracing::info!(%peer, status, "request head refused before parsing: {err}");
    shared.audit.send(record).await;
}

/// How much of a shed connection's input is kept to find its request line.
const SHED_REQUEST_LINE_MAX: usize = 8 * 1024;

/// Method and path (no query; `None` for an absolute-form target, whose path is not routed) of
/// `METHOD SP target SP HTTP/1.x`, or `None` when the bytes are not a request line.
fn shed_request_line(bytes: &[u8]) -> Option<(Method, Option<String>)> {
    let line_end = bytes.iter().position(|&b| b == b'\r' || b == b'\n')?;
    let line = std::str::from_utf8(bytes.get(..line_end)?).ok()?;
    let mut parts = line.split(' ');
    let method = Method::from_bytes(parts.next()?.as_bytes()).ok()?;
    let target = parts.next()?;
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let path = target
        .starts_with('/')
        .then(|| target.split('?').next().unwrap_or(target).to_owned());
    Some((method, path))
}

/// One request: runs the phases, then hands the record to the body so it is written exactly once
/// when the exchange ends.
async fn handle(
    shared: Arc<Shared>,
    request: Request<Incoming>,
    peer: SocketAddr,
) -> Result<Response<LoggedBody>, Infallible> {
    let record = AuditRecord::new(
        SystemTime::now(),
        Ulid::new(),
        peer,
        request.method().clone(),
    );
    // Boxed: the exchange (and its record) rides with the response body through hyper, which
    // moves the response several times; a pointer moves cheaper than ~400 bytes.
    let mut exchange = Box::new(Exchange {
        shared: shared.clone(),
        started: Instant::now(),
        record,
    });
    let mut reaches_client = true;
    let response = match phases(&shared, request, &mut exchange.record).await {
        Ok(response) => {
            exchange.record.outcome = Outcome::Ok;
            response
        }
        Err(err) => {
            // Gone mid-upload: hyper still needs a response, but nothing reaches the client.
            reaches_client = !matches!(
                err,
                ProxyError::RequestBody {
                    client_gone: true,
                    ..
                }
            );
            error_response(&err, &mut exchange.record)
        }
    };
    Ok(exchange.respond(response, reaches_client))
}

/// The phases up to the response head. Fills `record` as it learns things.
async fn phases(
    shared: &Shared,
    request: Request<Incoming>,
    record: &mut AuditRecord,
) -> Result<Response<ResponseBody>, ProxyError> {
    let config = &*shared.config;
    let (parts, body) = request.into_parts();
    // Until routed, the audit path is the request's own path (bounded: it may be what was too
    // long); set only on refusal so a served request allocates it once. A `CONNECT`'s target
    // has no path at all: `null`, not `""`.
    let refuse = |record: &mut AuditRecord, err: ProxyError| {
        let path = parts.uri.path();
        let mut end = path.len().min(1024);
        while !path.is_char_boundary(end) {
            end -= 1;
        }
        record.path = (end > 0).then(|| path[..end].to_owned());
        Err(err)
    };

    // Limits.
    let uri_len = parts.uri.path_and_query().map_or(0, |pq| pq.as_str().len())
        + parts.uri.authority().map_or(0, |a| a.as_str().len());
    if uri_len > MAX_URI_LEN {
        return refuse(record, ProxyError::UriTooLong { limit: MAX_URI_LEN });
    }
    // One pass over the head: its size, and the framing headers checked below (a comparison of
    // standard names is an integer compare; lookups by name would hash each time).
    let mut head_len = 0;
    let mut hosts = 0;
    let mut host = None;
    let mut transfer_encoding = false;
    for (name, value) in &parts.headers {
        head_len += name.as_str().len() + value.len() + 4;
        if name == header::HOST {
            hosts += 1;
            host = Some(value);
        } else if name == header::TRANSFER_ENCODING {
            transfer_encoding = true;
        }
    }
    if head_len > MAX_HEADERS_LEN {
        return refuse(
            record,
            ProxyError::HeadersTooLarge {
                limit: MAX_HEADERS_LEN,
            },
        );
    }

    // RFC 9112 §3.2: a request with more than one Host, or an invalid one, is refused. The Host
    // is the base `Link`/`Location` URLs are rewritten to when `publicUrl` is not set.
    if hosts > 1 {
        return refuse(
            record,
            ProxyError::InvalidRequest("more than one Host header".into()),
        );
    }
    if host.is_some_and(|h| !valid_host(h.as_bytes())) {
        return refuse(
            record,
            ProxyError::InvalidRequest("the Host header is not a valid host[:port]".into()),
        );
    }
    // RFC 9112 §6.1: hyper decodes `chunked` only; a body in another coding (`gzip, chunked`)
    // would go upstream without its coding named.
    if transfer_encoding && !only_chunked(&parts.headers) {
        return refuse(
            record,
            ProxyError::InvalidRequest(
                "Transfer-Encoding other than chunked is not supported".into(),
            ),
        );
    }

    // Client, before anything about the request's target is answered: with `clients` configured,
    // a caller without a valid key gets `407` (§6) and learns nothing else, not even which hosts
    // are configured or how a path is judged.
    let client = match authenticate(&config.proxy.clients, &parts.headers) {
        Ok(client) => client,
        Err(err) => return refuse(record, err),
    };
    record.client = client.map(|c| c.name.clone());
    // The method the proxy can never serve: after the key, so that with `clients` configured a
    // caller without one gets `407` (§6) and an authenticated one is named in the record.
    if parts.method == Method::CONNECT {
        return refuse(record, ProxyError::ConnectNotSupported);
    }

    // Route.
    let route = match crate::route::route(config, &parts.method, &parts.uri) {
        Ok(route) => route,
        // `GET http://proxy:8080/repos/o/r`: a tool whose HTTP_PROXY is this proxy and whose
        // base URL is this proxy too sends the absolute form naming the proxy itself. That is
        // a request to the proxy, read by its path as the origin form would be (only configured
        // origins can come of it: never an open proxy).
        Err(e) if e.reason == Reason::UnknownHost => {
            match own_address_path(shared, &parts.uri)
                .and_then(|path| path.parse::<http::Uri>().ok())
                .map(|origin_form| crate::route::route(config, &parts.method, &origin_form))
            {
                Some(Ok(route)) => route,
                Some(Err(e)) => {
                    return refuse(record, ProxyError::from_reason(e.reason, e.message));
                }
                None => return refuse(record, ProxyError::from_reason(e.reason, e.message)),
            }
        }
        Err(e) => {
            record.host = e.authority;
            return refuse(record, ProxyError::from_reason(e.reason, e.message));
        }
    };
    record.host = Some(route.authority.clone());
    record.path = Some(route.upstream_path.clone());

    // Target.
    let owner_hint = match parts.headers.get(&X_GITHUB_OWNER) {
        Some(value) => match value.to_str() {
            Ok(owner) if target::is_valid_owner(owner) => Some(owner.to_owned()),
            _ => {
                return Err(ProxyError::InvalidRequest(
                    "X-GitHub-Owner must be a GitHub login ([A-Za-z0-9-], 1 to 39 characters)"
                        .into(),
                ));
            }
        },
        None => None,
    };
    let parsed = target::parse(route.origin, &route.target_path, route.query.as_deref())
        .map_err(|e| ProxyError::InvalidPath(e.0))?;
    let mut graphql = false;
    let (mut owner, mut repo, body) = match parsed {
        PathTarget::About { owner, repo } => (owner, repo, request_body(body)),
        PathTarget::RepositoryId(id) => match shared.repo_ids.get(route.integration.index, id) {
            Some((o, r)) => (Some(o), Some(r), request_body(body)),
            None => (None, None, request_body(body)),
        },
        PathTarget::AppEndpoint => {
            return Err(ProxyError::AppEndpoint(route.upstream_path.clone()));
        }
        PathTarget::Graphql => {
            graphql = true;
            if owner_hint.is_some() {
                // The header names the owner: no need to hold the body.
                (None, None, request_body(body))
            } else {
                let bytes = Box::pin(read_graphql_body(shared, &parts.headers, body)).await?;
                match target::graphql_target(&bytes) {
                    Some((o, r)) if target::is_valid_owner(&o) => {
                        (Some(o), r, RequestBody::Buffered(bytes))
                    }
                    _ => (None, None, RequestBody::Buffered(bytes)),
                }
            }
        }
    };
    // The owner the request is about, for client policy: what GitHub will act on. For GraphQL the
    // header names it (§5); for any other ownerless request, `X-GitHub-Owner` and `defaultOwner`
    // only choose the credential: `/search/code?q=x` with a hint still searches everything the
    // credential can see, so it stays "no owner" (only `*` allows it, §6).
    let about_owner = match &owner {
        Some(o) => Some(o.clone()),
        None if graphql => owner_hint.clone(),
        None => None,
    };
    if owner.is_none() {
        owner = owner_hint.or_else(|| config.proxy.default_owner.clone());
        repo = None;
    }
    record.owner.clone_from(&owner);
    record.repo.clone_from(&repo);

    // Client policy.
    if let Some(client) = client {
        check_policy(
            client,
            &parts.method,
            about_owner.as_deref(),
            repo.as_deref(),
            graphql,
        )?;
        // The credential follows a search's first qualifier (§5), but GitHub searches every one:
        // a client allowed `acme/widgets` must not add `repo:acme/secret` or `org:other`, nor
        // combine qualifiers with `OR`/`NOT`. GitHub routes paths in any case: so does this.
        let is_search = route
            .target_path
            .get(..8)
            .is_some_and(|p| p.eq_ignore_ascii_case("/search/"));
        if route.origin == OriginKind::Api && is_search {
            let q = crate::target::search_q(route.query.as_deref())
                .map_err(|e| ProxyError::InvalidPath(e.0))?;
            if !client.allow.iter().any(|p| p == "*")
                && let Some(operator) = crate::target::search_widening(q.as_deref())
            {
                return Err(ProxyError::ClientPolicy(format!(
                    "client '{}' may not use {operator} in a search query: it can reach beyond the \
                     repo:/org:/user: qualifiers its allow list admits (only the pattern '*' allows it)",
                    client.name
                )));
            }
            let scopes =
                crate::target::scopes_in(q.as_deref()).map_err(|e| ProxyError::InvalidPath(e.0))?;
            for (scope_owner, scope_repo) in scopes.iter().skip(1) {
                check_policy(
                    client,
                    &parts.method,
                    Some(scope_owner),
                    scope_repo.as_deref(),
                    false,
                )?;
            }
        }
    }

    // Resolve.
    let mut resolution = shared
        .resolver
        .resolve(
            &route.integration,
            &parts.method,
            owner.as_deref(),
            repo.as_deref(),
        )
        .await;
    record_resolution(record, &resolution);
    if resolution.credential == CredentialKind::None {
        return Err(ProxyError::NoCredential(
            resolution.message.clone().unwrap_or_else(|| {
                format!(
                    "no GitHub credential for {} on {}",
                    owner.as_deref().unwrap_or("this request"),
                    route.integration.host
                )
            }),
        ));
    }
    check_credential_policy(client, &resolution)?;

    // Forward.
    let host = parts.headers.get(header::HOST).cloned();
    let forwarder = Forwarder {
        shared,
        client,
        route: &route,
        owner: owner.as_deref(),
        repo: repo.as_deref(),
        client_target: parts.uri.path_and_query(),
    };
    let response = forwarder
        .forward(parts.method, parts.headers, body, &mut resolution, record)
        .await?;

    // The response head.
    let (mut head, mut incoming) = response.into_parts();
    record.upstream_status = Some(head.status.as_u16());
    // The proxy never forwards `Upgrade` (§8), so a 101 answers a request nobody made: the
    // connection is in an unknown state and the client cannot use the answer.
    if head.status == http::StatusCode::SWITCHING_PROTOCOLS {
        incoming.forbid_reuse();
        return Err(ProxyError::UpstreamUnreachable(format!(
            "{} answered 101 Switching Protocols to a request that did not ask to upgrade",
            route.authority
        )));
    }
    let meta = UpstreamMeta::from_headers(&head.headers);
    if let Some(remaining) = meta.rate_limit_remaining {
        shared.metrics.observe_rate_limit(
            resolution.credential,
            resolution.app_id,
            resolution.installation_id,
            meta.rate_limit_resource.as_deref(),
            remaining,
        );
    }
    record.github_request_id = meta.github_request_id;
    record.rate_limit_remaining = meta.rate_limit_remaining;
    record.rate_limit_resource = meta.rate_limit_resource;
    // Learnt only from GitHub's successful answers about o/r (its pagination links).
    if let (Some(o), Some(r), true) = (&owner, &repo, head.status.is_success()) {
        let api = &route.integration.api;
        for link in head.headers.get_all(header::LINK) {
            if let Ok(link) = link.to_str() {
                shared.repo_ids.learn_from_link(
                    route.integration.index,
                    &api.authority,
                    &api.path_prefix,
                    link,
                    o,
                    r,
                );
            }
        }
    }
    let ambiguous =
        crate::forward::rewrite_response_headers(&mut head.headers, config, route.form, || {
            match &config.proxy.public_url {
                Some(base) => base.clone(),
                None => match host.as_ref().and_then(|h| h.to_str().ok()) {
                    Some(host) => format!("http://{host}"),
                    None => format!("http://{}", config.proxy.listen),
                },
            }
        });
    // Both `Transfer-Encoding` and `Content-Length`: the length was dropped and the chunked
    // body is forwarded (RFC 9112 §6.3), but such a response "ought to be handled as an error":
    // its connection is not used again.
    if ambiguous {
        incoming.forbid_reuse();
    }
    Ok(Response::from_parts(head, ResponseBody::Upstream(incoming)))
}

/// Whether every `Transfer-Encoding` value is exactly `chunked`, once.
fn only_chunked(headers: &http::HeaderMap) -> bool {
    let mut codings = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii);
    codings
        .next()
        .is_some_and(|c| c.eq_ignore_ascii_case(b"chunked"))
        && codings.next().is_none()
}

/// A `Host` value as RFC 3986 spells `host[:port]`: a reg-name or IPv4 address, or a bracketed
/// IPv6 literal; no userinfo, path or query. Empty is allowed (RFC 9110 §7.2: a target URI
/// without an authority).
fn valid_host(bytes: &[u8]) -> bool {
    /// RFC 3986 `unreserved / pct-encoded / sub-delims`, the bytes of a reg-name.
    const REG_NAME: [bool; 256] = {
        let mut t = [false; 256];
        let mut b = 0;
        while b < 256 {
            let c = b as u8;
            t[b] = c.is_ascii_alphanumeric()
                || matches!(c, b'-' | b'.' | b'_' | b'~' | b'%')
                || matches!(
                    c,
                    b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'='
                );
            b += 1;
        }
        t
    };
    let (name, port) = match bytes.iter().rposition(|&b| b == b':') {
        // `[::1]` has colons inside its brackets: only one after `]` starts a port.
        Some(i) if !bytes.starts_with(b"[") || bytes[..i].ends_with(b"]") => {
            (&bytes[..i], &bytes[i + 1..])
        }
        _ => (bytes, &b""[..]),
    };
    let name_ok = match name {
        [b'[', inner @ .., b']'] => {
            !inner.is_empty()
                && inner
                    .iter()
                    .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        }
        _ => name.iter().all(|&b| REG_NAME[usize::from(b)]),
    };
    name_ok && port.len() <= 5 && port.iter().all(u8::is_ascii_digit)
}

/// The origin-form path of an absolute-form `uri` that names the proxy itself: any name with
/// the port it is bound to (`http://gh-token-proxy:8080/...`: the name clients use for it, a
/// Service or a host name, is not in the config), or `proxy.publicUrl`'s authority (whose path
/// is then removed). Default ports count as written or not. No GitHub host is reached this way
/// that the origin form could not reach: the path alone decides. A configured origin's authority
/// is never the proxy's, even outside that origin's path prefix: such a request was meant for
/// that GitHub, and reading it as the default host's would send it elsewhere, with another
/// credential.
fn own_address_path(shared: &Shared, uri: &http::Uri) -> Option<String> {
    uri.authority()?;
    if crate::route::is_configured_authority(&shared.config, uri) {
        return None;
    }
    let port = crate::route::effective_port(uri);
    if shared
        .bound
        .get()
        .is_some_and(|bound| port == Some(bound.port()))
    {
        return Some(
            uri.path_and_query()
                .map_or("/", |pq| pq.as_str())
                .to_owned(),
        );
    }
    crate::route::public_url_path(&shared.config, uri)
}

fn request_body(body: Incoming) -> RequestBody {
    if body.is_end_stream() {
        RequestBody::Empty
    } else {
        RequestBody::Streaming(body)
    }
}

/// Reads a GraphQL body to find its owner, refusing more than [`GRAPHQL_BODY_LIMIT`] and a body
/// that has not arrived within `proxy.headerReadTimeoutMs` (the body is what must be read before
/// the proxy can decide, like the head): a slow sender cannot hold its buffer for ever.
async fn read_graphql_body(
    shared: &Shared,
    headers: &HeaderMap,
    body: Incoming,
) -> Result<Bytes, ProxyError> {
    let too_large = ProxyError::BodyTooLarge {
        limit: GRAPHQL_BODY_LIMIT,
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > GRAPHQL_BODY_LIMIT as u64) {
        return Err(too_large);
    }
    // Closed only when the server is dropped; then the request is going away anyway.
    let _slot = shared
        .inspections
        .acquire()
        .await
        .map_err(|_| ProxyError::InvalidRequest("the proxy is shutting down".into()))?;
    let deadline = shared.config.proxy.header_read_timeout;
    let read = tokio::time::timeout(deadline, Limited::new(body, GRAPHQL_BODY_LIMIT).collect());
    let Ok(read) = read.await else {
        return Err(ProxyError::BodyTimeout {
            limit_ms: u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX),
        });
    };
    match read {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => Err(too_large),
        // The client's body failed: it went away (`aborted`), or sent a malformed one (`400`).
        Err(err) => Err(match err.downcast::<hyper::Error>() {
            Ok(err) => crate::forward::client_body_failure(&err),
            Err(_) => ProxyError::InvalidRequest("the request body could not be read".into()),
        }),
    }
}

/// Copies what the decision says into the record (credential, reason, app, installation, hash).
pub(crate) fn record_resolution(record: &mut AuditRecord, resolution: &Resolution) {
    record.credential = resolution.credential;
    record.reason = Some(resolution.reason);
    record.app_id = resolution.app_id;
    record.installation_id = resolution.installation_id;
    record.hashed_token = resolution.token.as_ref().map(|t| t.hashed().clone());
}

/// The proxy's own answer. Refusals say credential `none`; upstream failures keep the
/// credential that was tried, with the failure as the reason.
fn error_response(err: &ProxyError, record: &mut AuditRecord) -> Response<ResponseBody> {
    match (err, err.fault()) {
        // The head went upstream with the credential before the client's body failed: the
        // record keeps the credential. A client that went away first is `aborted` with the
        // decision's reason, as a client that leaves mid-download is; a bad body is refused.
        (
            ProxyError::RequestBody {
                client_gone: true, ..
            },
            _,
        ) => {
            record.outcome = Outcome::Aborted;
            // Nobody to send it to: an empty body, so `bytes_out` stays 0.
            return Response::new(ResponseBody::empty());
        }
        (ProxyError::RequestBody { .. }, _) => record.outcome = Outcome::Refused,
        (_, Fault::Upstream) => record.outcome = Outcome::UpstreamError,
        (_, Fault::Downstream | Fault::Credentials | Fault::Internal) => {
            record.outcome = Outcome::Refused;
            record.credential = CredentialKind::None;
            record.app_id = None;
            record.installation_id = None;
            record.hashed_token = None;
        }
    }
    record.reason = Some(err.reason());
    if err.fault() == Fault::Upstream {
        tracing::warn!(request_id = %record.request_id, "{err}");
    }
    let mut response = Response::new(ResponseBody::full(err.body()));
    *response.status_mut() = err.status();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    if let Some((name, value)) = err.extra_header() {
        headers.insert(name, value);
    }
    response
}

/// The exchange's audit record and what is needed to finish it, alive from arrival to the end of
/// the response body. It is written exactly once: by the body at its end, or by `Drop` when the
/// client went away (also when hyper drops the handler mid-phase, e.g. while resolving).
struct Exchange {
    shared: Arc<Shared>,
    started: Instant,
    record: AuditRecord,
}

impl Exchange {
    /// Adds the three headers every response carries and ties the record to the body.
    /// `sent`: whether the response can reach the client at all (not when it went away).
    fn respond(
        mut self: Box<Self>,
        response: Response<ResponseBody>,
        sent: bool,
    ) -> Response<LoggedBody> {
        let (mut head, body) = response.into_parts();
        let mut id = [0u8; ulid::ULID_LEN];
        if let Ok(value) = HeaderValue::from_str(self.record.request_id.array_to_str(&mut id)) {
            head.headers.insert(&X_REQUEST_ID, value);
        }
        head.headers.insert(
            &X_CREDENTIAL_TYPE,
            HeaderValue::from_static(self.record.credential.as_str()),
        );
        head.headers.insert(
            &X_CREDENTIAL_REASON,
            HeaderValue::from_static(self.record.reason.map_or("none", Reason::as_str)),
        );
        self.record.status = sent.then_some(head.status.as_u16());
        Response::from_parts(
            head,
            LoggedBody {
                inner: body,
                exchange: Some(self),
                bytes_out: 0,
                reserving: None,
                held: None,
            },
        )
    }

    /// Completes the record (bytes, duration) and counts it in the metrics: the logging phase.
    fn finish(&mut self, bytes_out: u64) -> AuditRecord {
        let elapsed = self.started.elapsed();
        self.record.bytes_out = bytes_out;
        self.record.duration_ms = elapsed.as_secs_f64() * 1000.0;
        self.shared.metrics.observe_request(
            self.record.credential,
            self.record.reason,
            self.record.status,
            elapsed,
        );
        // The placeholder left behind allocates nothing.
        std::mem::replace(
            &mut self.record,
            AuditRecord::new(
                SystemTime::UNIX_EPOCH,
                Ulid::nil(),
                SocketAddr::from(([0, 0, 0, 0], 0)),
                Method::GET,
            ),
        )
    }

    /// Writes the record now, from a context that cannot wait.
    fn finish_from_drop(mut self: Box<Self>, bytes_out: u64, outcome: Option<Outcome>) {
        if let Some(outcome) = outcome {
            self.record.outcome = outcome;
        }
        let record = self.finish(bytes_out);
        self.shared.audit.send_from_drop(record);
        self.disarm();
    }

    fn disarm(mut self: Box<Self>) {
        self.record.request_id = Ulid::nil();
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        // A nil id marks a record already written.
        if self.record.request_id.is_nil() {
            return;
        }
        // Still armed: the handler was dropped before a response existed (client went away).
        self.record.outcome = Outcome::Aborted;
        let record = self.finish(0);
        self.record.request_id = Ulid::nil();
        self.shared.audit.send_from_drop(record);
    }
}

type Reserving = Pin<Box<dyn Future<Output = Option<AuditPermit>> + Send>>;

/// The response body, counting bytes, with the exchange's record: written when the body ends
/// (after waiting for room in the audit queue, so a slow writer slows responses instead of
/// losing records), when it fails, or when it is dropped unfinished (client gone: `aborted`).
///
/// A body whose length is known ends with its last data frame: hyper stops polling there and
/// drops it. So the record is written when that frame comes out of `inner`, and the frame is
/// held back until the queue has room. Otherwise it would be written from `Drop`, which cannot
/// wait: a stalled audit sink would then hold records in memory without bound instead of
/// making requests wait (§7.3).
pub struct LoggedBody {
    inner: ResponseBody,
    exchange: Option<Box<Exchange>>,
    bytes_out: u64,
    reserving: Option<Reserving>,
    /// The last data frame, sent once its record is queued.
    held: Option<Frame<Bytes>>,
}

impl Body for LoggedBody {
    type Data = Bytes;
    type Error = crate::upstream::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        loop {
            if let Some(reserving) = this.reserving.as_mut() {
                let permit = ready!(reserving.as_mut().poll(cx));
                this.reserving = None;
                if let Some(mut exchange) = this.exchange.take() {
                    let record = exchange.finish(this.bytes_out);
                    match permit {
                        Some(permit) => permit.send(record),
                        None => exchange.shared.audit.send_from_drop(record),
                    }
                    exchange.disarm();
                }
                return Poll::Ready(this.held.take().map(Ok));
            }
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                // Trailers are dropped (`Trailer` is hop-by-hop here, §8): hyper would end the
                // response after them without polling for the end, and the exchange would read
                // as cut short. The upstream body's end comes next.
                Some(Ok(frame)) if frame.is_trailers() => {}
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        this.bytes_out += data.len() as u64;
                    }
                    if this.exchange.is_some() && this.inner.is_end_stream() {
                        // The last frame: the record goes first (see the type's doc).
                        let bytes_out = this.bytes_out;
                        if let Some(mut exchange) = this.exchange.take() {
                            let shared = exchange.shared.clone();
                            if shared.audit.try_send_with(|| exchange.finish(bytes_out)) {
                                exchange.disarm();
                                return Poll::Ready(Some(Ok(frame)));
                            }
                            this.reserving = Some(Box::pin(shared.audit.clone().reserve()));
                            this.exchange = Some(exchange);
                            this.held = Some(frame);
                            continue;
                        }
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Some(Err(err)) => {
                    // GitHub's body broke off mid-stream: the client got a truncated answer.
                    if let Some(exchange) = this.exchange.take() {
                        exchange.finish_from_drop(this.bytes_out, Some(Outcome::UpstreamError));
                    }
                    return Poll::Ready(Some(Err(err)));
                }
                None => match this.exchange.take() {
                    Some(mut exchange) => {
                        // Room in the queue (the usual case): written now, no future to allocate.
                        let bytes_out = this.bytes_out;
                        let shared = exchange.shared.clone();
                        if shared.audit.try_send_with(|| exchange.finish(bytes_out)) {
                            exchange.disarm();
                            return Poll::Ready(None);
                        }
                        this.reserving = Some(Box::pin(shared.audit.clone().reserve()));
                        this.exchange = Some(exchange);
                    }
                    None => return Poll::Ready(None),
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        // Until the record is written, hyper must poll once more so the end is seen here. (When
        // hyper cannot send a body at all, HEAD, 304, it drops the body instead: see Drop.)
        self.exchange.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        if let Some(exchange) = self.exchange.take() {
            // Dropped with nothing left to send is a normal end (HEAD, 304, length reached);
            // anything else means the client stopped reading.
            // So does a last frame still held for room in the audit queue.
            let outcome =
                (self.held.is_some() || !self.inner.is_end_stream()).then_some(Outcome::Aborted);
            exchange.finish_from_drop(self.bytes_out, outcome);
        }
    }
}

fn authenticate<'a>(
    clients: &'a [ClientConfig],
    headers: &HeaderMap,
) -> Result<Option<&'a ClientConfig>, ProxyError> {
    crate::clients::authenticate(clients, headers)
        .map_err(|e| ProxyError::ClientUnauthenticated(e.to_string()))
}

fn check_policy(
    client: &ClientConfig,
    method: &Method,
    owner: Option<&str>,
    repo: Option<&str>,
    graphql: bool,
) -> Result<(), ProxyError> {
    crate::clients::check_policy(client, method, owner, repo, graphql)
        .map_err(ProxyError::ClientPolicy)
}

use crate::clients::allows_credential;

/// Evicts an App token GitHub rejected; returns how old it was.
/// §6 `credentials`: whether `client` may be served with what `resolution` chose. Checked for
/// the first resolution and again for the one after a `401` retry, which may fall back.
pub(crate) fn check_credential_policy(
    client: Option<&ClientConfig>,
    resolution: &Resolution,
) -> Result<(), ProxyError> {
    match client {
        Some(client) if !allows_credential(client, resolution.credential) => {
            Err(ProxyError::ClientPolicy(format!(
                "client '{}' may not be served with a {} credential (proxy.clients[].credentials); this request resolved to {} ({})",
                client.name, resolution.credential, resolution.credential, resolution.reason
            )))
        }
        _ => Ok(()),
    }
}

/// Drops `token` from the cache after GitHub's `401` for it (not a newer one minted since).
pub(crate) fn evict_token(
    shared: &Shared,
    integration_index: usize,
    app_id: u64,
    installation_id: u64,
    token: &Arc<Token>,
) -> Option<Duration> {
    shared
        .resolver
        .github()
        .evict_rejected_token(integration_index, app_id, installation_id, token)
}
