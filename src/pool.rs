//! The forwarding connection pool: keep-alive HTTP/1.1 connections to each upstream origin, reused
//! request after request. Every connection shares the connector's rustls config, so a new TLS
//! connection resumes an earlier session when it can. A request without a body (nearly all) is
//! exchanged by [`crate::h1`] in its own task; one with a body goes through hyper's client
//! connection, which a connection, once handed to it, keeps for the rest of its life.
//!
//! Why not hyper-util's legacy `Client` (which the GitHub App calls still use): per request it
//! hashes the origin key, and for a response with a body it spawns a task and a oneshot just to
//! put the connection back once the body is read. Here the connection goes back from the response
//! body itself when it ends ([`Checkin`]), so the request path spawns nothing; an idle list per
//! origin under one short lock is all the sharing there is. A reaper task closes connections left
//! idle past the idle timeout, so a quiet proxy does not hold sockets to GitHub indefinitely.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, Uri};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::sync::oneshot;
use tower_service::Service;

use crate::h1::{RawBody, RawConn};
use crate::upstream::{BoxError, UpstreamBody};

/// Idle connections kept per origin; more are closed when they come back.
const MAX_IDLE_PER_ORIGIN: usize = 256;
/// An idle connection older than this is closed instead of reused (GitHub's side may have
/// dropped it silently; a fresh one costs less than a failed request), and the reaper closes it
/// even when no request comes to reuse it.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// The reaper looks at the idle lists this many times per idle timeout, so a connection is
/// closed at most a third of the timeout late.
const REAPS_PER_TIMEOUT: u32 = 3;
/// A request that fails on a reused connection before any of it was written (the upstream closed
/// the connection while it sat idle) is tried again on another one, at most this many times.
const STALE_RETRIES: usize = 3;

/// Why a request got no response head.
#[derive(Debug)]
pub enum SendError {
    /// No connection: TCP connect, timeout or TLS handshake (the connector's error chain).
    Connect(BoxError),
    /// The connection failed during the exchange (hyper's error, or [`crate::h1::H1Error`]).
    Request(BoxError),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Connect(err) => write!(f, "connect: {err}"),
            SendError::Request(err) => err.fmt(f),
        }
    }
}

impl std::error::Error for SendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SendError::Connect(err) => Some(err.as_ref()),
            SendError::Request(err) => Some(err.as_ref()),
        }
    }
}

/// An upstream connection: exchanged on directly, or driven by hyper's connection task.
enum Conn {
    Raw(RawConn),
    Hyper(SendRequest<UpstreamBody>),
}

impl Conn {
    /// Whether an idle connection can still carry a request (the upstream has not closed it).
    fn is_usable(&mut self) -> bool {
        match self {
            Conn::Raw(raw) => raw.is_idle_usable(),
            Conn::Hyper(sender) => !sender.is_closed(),
        }
    }

    /// Ready for a request: a raw connection that is usable, a hyper one once its task says so.
    async fn ready(&mut self) -> bool {
        match self {
            Conn::Raw(raw) => raw.is_idle_usable(),
            Conn::Hyper(sender) => std::future::poll_fn(|cx| sender.poll_ready(cx))
                .await
                .is_ok(),
        }
    }
}

struct Idle {
    conn: Conn,
    since: Instant,
}

struct Origin {
    https: bool,
    authority: Box<str>,
    /// Whose requests these connections carry ([`ForwardPool::send_tracked`]).
    partition: u64,
    idle: Vec<Idle>,
    /// Requests waiting for a connection while their own is being opened: a connection coming
    /// back goes to the first of them instead of the idle list, so a burst is served by the
    /// connections that free up first rather than each waiting for its own connect (which can
    /// take seconds when the upstream's accept queue overflows).
    waiters: std::collections::VecDeque<oneshot::Sender<Conn>>,
}

/// Keep-alive connections per upstream origin (scheme and authority) and partition.
pub struct ForwardPool {
    connector: HttpsConnector<HttpConnector>,
    idle_timeout: Duration,
    /// Set when the first origin is added and the reaper task started.
    reaping: std::sync::atomic::AtomicBool,
    /// One entry per origin ever used: bounded by the configured integrations' hosts, so a
    /// linear search beats hashing the authority on every request.
    origins: Mutex<Vec<Origin>>,
}

impl ForwardPool {
    pub fn new(connector: HttpsConnector<HttpConnector>) -> Self {
        Self::with_idle_timeout(connector, IDLE_TIMEOUT)
    }

    fn with_idle_timeout(connector: HttpsConnector<HttpConnector>, idle_timeout: Duration) -> Self {
        ForwardPool {
            connector,
            idle_timeout,
            reaping: std::sync::atomic::AtomicBool::new(false),
            origins: Mutex::new(Vec::new()),
        }
    }

    /// Starts the task that closes idle connections past the idle timeout. Checkouts take the
    /// most recent connection first, so under light steady traffic the oldest would otherwise
    /// stay open (and hold a socket to GitHub) for as long as the process runs. The task holds
    /// only a weak reference: it ends at its next tick after the pool is dropped.
    fn start_reaper(self: &Arc<Self>) {
        use std::sync::atomic::Ordering;
        if self.reaping.swap(true, Ordering::Relaxed) {
            return;
        }
        let pool = Arc::downgrade(self);
        let every = self.idle_timeout / REAPS_PER_TIMEOUT;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(pool) = pool.upgrade() else { return };
                pool.reap();
            }
        });
    }

    /// Drops the idle connections that are closed or past the idle timeout: dropping a raw
    /// connection closes its socket; dropping the last `SendRequest` of a hyper one ends its
    /// task, which closes the socket.
    fn reap(&self) {
        let now = Instant::now();
        let mut origins = self.origins.lock().unwrap_or_else(PoisonError::into_inner);
        for origin in origins.iter_mut() {
            origin.idle.retain_mut(|idle| {
                now.duration_since(idle.since) < self.idle_timeout && idle.conn.is_usable()
            });
            origin.waiters.retain(|w| !w.is_closed());
        }
    }

    /// Sends `request` (origin-form URI, `Host` already set) to `https?://authority`, on an idle
    /// connection when there is one, else on a new one. The response body hands the connection
    /// back when it has been read to the end.
    pub async fn send(
        self: &Arc<Self>,
        https: bool,
        authority: &str,
        request: Request<UpstreamBody>,
    ) -> Result<Response<PooledBody>, SendError> {
        let (request, sent) = track_body(request);
        self.send_tracked(https, authority, 0, request, sent).await
    }

    /// As [`ForwardPool::send`], for a request already passed through [`track_body`] (the
    /// caller also waits on its [`BodySent`]).
    ///
    /// `partition` keeps connections apart: one carries only requests of the same partition
    /// (the proxy's client). HTTP/1 pairs responses with requests by order alone, so an upstream
    /// that sends one response too many after the next request went out hands every later
    /// response on that connection to the wrong request; within one client, that request was
    /// one the client was allowed to make anyway.
    pub async fn send_tracked(
        self: &Arc<Self>,
        https: bool,
        authority: &str,
        partition: u64,
        mut request: Request<UpstreamBody>,
        sent: Option<Arc<BodySent>>,
    ) -> Result<Response<PooledBody>, SendError> {
        let mut stale = 0;
        loop {
            let (slot, reused, conn) = match self.checkout(https, authority, partition).await {
                (slot, Some(conn)) => (slot, true, conn),
                // Boxed: the connect and handshake state is large and rarely needed; unboxed it
                // would be part of (and copied with) every request's future.
                (slot, None) => {
                    let (conn, reused) =
                        Box::pin(self.connect_or_wait(slot, https, authority)).await?;
                    (slot, reused, conn)
                }
            };
            let checkin = Checkin {
                pool: self.clone(),
                slot,
                sent: sent.clone(),
            };
            let mut sender = match conn {
                // No body (`track_body` tracks every request that has one): exchanged here.
                Conn::Raw(raw) if sent.is_none() => {
                    let target = request
                        .uri()
                        .path_and_query()
                        .map_or("/", http::uri::PathAndQuery::as_str);
                    match raw.send(request.method(), target, request.headers()).await {
                        Ok((head, body)) => {
                            return Ok(head.map(|()| PooledBody {
                                inner: Inner::Raw(body),
                                checkin: Some(checkin),
                            }));
                        }
                        // Nothing came back on a reused connection the upstream had closed
                        // meanwhile: safe to send again, on another one.
                        Err(failure) if failure.retry_safe && reused && stale < STALE_RETRIES => {
                            stale += 1;
                            continue;
                        }
                        Err(failure) => return Err(SendError::Request(Box::new(failure.error))),
                    }
                }
                // A body to send: hyper sends it while reading an early answer. The connection
                // stays hyper's from now on.
                Conn::Raw(raw) => Box::pin(handshake(raw)).await?,
                Conn::Hyper(sender) => sender,
            };
            match sender.try_send_request(request).await {
                Ok(response) => {
                    return Ok(response.map(|incoming| PooledBody {
                        inner: Inner::Hyper {
                            incoming,
                            sender: Some(sender),
                        },
                        checkin: Some(checkin),
                    }));
                }
                Err(mut err) => match err.take_message() {
                    // Nothing was written: safe to send again, on another connection.
                    Some(unsent) if reused && stale < STALE_RETRIES => {
                        stale += 1;
                        request = unsent;
                    }
                    _ => return Err(SendError::Request(err.into_error().into())),
                },
            }
        }
    }

    /// The most recently returned idle connection that is still open and ready, and the origin's
    /// slot (created on first use).
    async fn checkout(
        self: &Arc<Self>,
        https: bool,
        authority: &str,
        partition: u64,
    ) -> (usize, Option<Conn>) {
        loop {
            let (slot, candidate) = {
                let mut origins = self.origins.lock().unwrap_or_else(PoisonError::into_inner);
                let slot = match origins.iter().position(|o| {
                    o.https == https && o.partition == partition && &*o.authority == authority
                }) {
                    Some(slot) => slot,
                    None => {
                        self.start_reaper();
                        origins.push(Origin {
                            https,
                            authority: authority.into(),
                            partition,
                            idle: Vec::new(),
                            waiters: std::collections::VecDeque::new(),
                        });
                        origins.len() - 1
                    }
                };
                let mut candidate = None;
                if let Some(origin) = origins.get_mut(slot) {
                    while let Some(idle) = origin.idle.pop() {
                        if idle.since.elapsed() < self.idle_timeout {
                            candidate = Some(idle.conn);
                            break;
                        }
                    }
                }
                (slot, candidate)
            };
            let Some(mut conn) = candidate else {
                return (slot, None);
            };
            // Usually ready: the upstream keeps connections open far longer than the proxy does.
            // If it closed this one (or sent something unasked), try the next.
            if conn.ready().await {
                return (slot, Some(conn));
            }
        }
    }

    /// A new connection, or one another request hands back first, whichever comes first
    /// (`true` when it is a reused one). The connect runs as its own task: when a handed-back
    /// connection wins, the new one still completes and joins the pool (or the next waiter), so
    /// a burst that outruns the upstream's accept queue is not left waiting on SYN retries.
    async fn connect_or_wait(
        self: &Arc<Self>,
        slot: usize,
        https: bool,
        authority: &str,
    ) -> Result<(Conn, bool), SendError> {
        let (tx, mut handed) = oneshot::channel();
        {
            let mut origins = self.origins.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(origin) = origins.get_mut(slot) {
                origin.waiters.retain(|w| !w.is_closed());
                origin.waiters.push_back(tx);
            }
        }
        let (own_tx, mut own) = oneshot::channel();
        let pool = self.clone();
        let target = authority.to_owned();
        tokio::spawn(async move {
            match pool.connect(https, &target).await {
                Ok(conn) => {
                    if let Err(Ok(conn)) = own_tx.send(Ok(conn)) {
                        // The request was served by another connection (or went away).
                        pool.checkin(slot, conn);
                    }
                }
                Err(err) => {
                    let _ = own_tx.send(Err(err));
                }
            }
        });
        loop {
            tokio::select! {
                biased;
                got = &mut handed, if !handed.is_terminated() => {
                    if let Ok(mut conn) = got
                        && conn.ready().await
                    {
                        return Ok((conn, true));
                    }
                    // Closed meanwhile: keep waiting for the new connection.
                }
                connected = &mut own => {
                    handed.close();
                    if let Ok(conn) = handed.try_recv() {
                        self.checkin(slot, conn);
                    }
                    return match connected {
                        Ok(result) => result.map(|conn| (conn, false)),
                        // The connect task died (runtime shutting down).
                        Err(_) => Err(SendError::Connect("the connect task ended".into())),
                    };
                }
            }
        }
    }

    /// A new connection (TCP, and TLS for `https`).
    async fn connect(&self, https: bool, authority: &str) -> Result<Conn, SendError> {
        let scheme = if https { "https" } else { "http" };
        let uri: Uri = format!("{scheme}://{authority}/")
            .parse()
            .map_err(|e: http::uri::InvalidUri| SendError::Connect(Box::new(e)))?;
        let io = self
            .connector
            .clone()
            .call(uri)
            .await
            .map_err(SendError::Connect)?;
        Ok(Conn::Raw(RawConn::new(io)))
    }

    fn checkin(&self, slot: usize, mut conn: Conn) {
        if let Conn::Hyper(sender) = &conn
            && sender.is_closed()
        {
            return;
        }
        let mut origins = self.origins.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(origin) = origins.get_mut(slot) else {
            return;
        };
        // A request still waiting for its own connect takes this one now.
        while let Some(waiter) = origin.waiters.pop_front() {
            match waiter.send(conn) {
                Ok(()) => return,
                Err(back) => conn = back,
            }
        }
        if origin.idle.len() < MAX_IDLE_PER_ORIGIN {
            origin.idle.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }
}

/// Hands a raw connection to hyper's client; its task runs on the current runtime until either
/// side closes the connection.
async fn handshake(raw: RawConn) -> Result<SendRequest<UpstreamBody>, SendError> {
    let (sender, connection) = http1::Builder::new()
        .handshake(raw.into_stream())
        .await
        .map_err(|err| SendError::Request(err.into()))?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!("upstream connection ended: {err}");
        }
    });
    Ok(sender)
}

/// Puts a connection back into the pool, once its response has been read to the end. Dropped
/// earlier, it lets the connection go: a connection whose body was not read is closed.
struct Checkin {
    pool: Arc<ForwardPool>,
    slot: usize,
    /// Set when the request's body has gone out; `None` for a request without one.
    sent: Option<Arc<BodySent>>,
}

impl Checkin {
    fn release(self, conn: Conn) {
        // Still sending the request body: not reusable. Dropped here, the connection closes
        // once hyper has finished (or failed) the request.
        if self.sent.as_ref().is_some_and(|sent| !sent.is_sent()) {
            return;
        }
        self.pool.checkin(self.slot, conn);
    }
}

/// Notes a request body's end. GitHub may answer before an upload has gone out (an early
/// error), and a connection still sending one must not be handed to another request, which would
/// wait behind the rest of the upload; and `responseTimeoutMs` runs from the end of the body, so
/// an upload of any length streams without a deadline (§3.3, §8).
#[derive(Debug, Default)]
pub struct BodySent {
    done: AtomicBool,
    notify: tokio::sync::Notify,
}

impl BodySent {
    pub fn is_sent(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }

    /// Resolves once the body has gone out.
    pub async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            if self.is_sent() {
                return;
            }
            notified.await;
        }
    }

    fn mark(&self) {
        if !self.done.swap(true, Ordering::AcqRel) {
            self.notify.notify_waiters();
        }
    }
}

/// Wraps a request's body so its end is noted; `None` (and no wrapping) for a request without a
/// body, which most are.
pub fn track_body(
    request: Request<UpstreamBody>,
) -> (Request<UpstreamBody>, Option<Arc<BodySent>>) {
    if request.body().is_end_stream() {
        return (request, None);
    }
    let sent = Arc::new(BodySent::default());
    let request = request.map(|inner| {
        UpstreamBody::new(Tracked {
            inner,
            sent: sent.clone(),
        })
    });
    (request, Some(sent))
}

/// A request body that notes when it has ended ([`track_body`]).
struct Tracked {
    inner: UpstreamBody,
    sent: Arc<BodySent>,
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let frame = std::task::ready!(std::pin::Pin::new(&mut self.inner).poll_frame(cx));
        if frame.is_none() {
            self.sent.mark();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        // hyper stops polling once this is true, so the end may be learnt only here.
        let end = self.inner.is_end_stream();
        if end {
            self.sent.mark();
        }
        end
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// An upstream response body that returns its connection to the pool at its end.
pub struct PooledBody {
    inner: Inner,
    checkin: Option<Checkin>,
}

enum Inner {
    Raw(RawBody),
    Hyper {
        incoming: Incoming,
        sender: Option<SendRequest<UpstreamBody>>,
    },
}

impl PooledBody {
    /// The connection is not handed back when this body ends: it answered in a way that
    /// leaves its state in doubt.
    pub fn forbid_reuse(&mut self) {
        self.checkin = None;
    }

    /// Hands the connection back, if it can carry another exchange.
    fn release(&mut self) {
        let Some(checkin) = self.checkin.take() else {
            return;
        };
        let conn = match &mut self.inner {
            Inner::Raw(body) => body.take_reusable().map(Conn::Raw),
            Inner::Hyper { sender, .. } => sender.take().map(Conn::Hyper),
        };
        if let Some(conn) = conn {
            checkin.release(conn);
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let frame = match &mut this.inner {
            Inner::Raw(body) => std::task::ready!(std::pin::Pin::new(body).poll_frame(cx))
                .map(|r| r.map_err(BoxError::from)),
            Inner::Hyper { incoming, .. } => {
                std::task::ready!(std::pin::Pin::new(incoming).poll_frame(cx))
                    .map(|r| r.map_err(BoxError::from))
            }
        };
        match &frame {
            None => this.release(),
            Some(Err(_)) => this.checkin = None,
            Some(Ok(_)) => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Raw(body) => body.is_end_stream(),
            Inner::Hyper { incoming, .. } => incoming.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Raw(body) => body.size_hint(),
            Inner::Hyper { incoming, .. } => incoming.size_hint(),
        }
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // Ended without a final poll (empty body, HEAD, 304, length reached): still reusable.
        if self.checkin.is_some() && self.is_end_stream() {
            self.release();
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Empty};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;

    /// A raw upstream on loopback: answers every request on a connection with a two-byte body
    /// and reports each accepted connection, and each connection the pool closed, on `events`.
    async fn upstream() -> (String, mpsc::UnboundedReceiver<&'static str>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let authority = listener.local_addr().unwrap().to_string();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let tx = tx.clone();
                let _ = tx.send("accepted");
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    loop {
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => {
                                let _ = tx.send("closed");
                                return;
                            }
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                            if stream.write_all(answer).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (authority, rx)
    }

    fn pool(idle_timeout: Duration) -> Arc<ForwardPool> {
        let config = crate::config::UpstreamConfig {
            ca_file: None,
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(5),
        };
        let connector = crate::upstream::connector(&config).unwrap();
        Arc::new(ForwardPool::with_idle_timeout(connector, idle_timeout))
    }

    async fn get(pool: &Arc<ForwardPool>, authority: &str) {
        let request = Request::builder()
            .uri("/x")
            .header(http::header::HOST, authority)
            .body(UpstreamBody::new(Empty::new().map_err(|e| match e {})))
            .unwrap();
        let response = pool.send(false, authority, request).await.unwrap();
        assert_eq!(response.status(), 200);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"ok");
    }

    fn idle_count(pool: &ForwardPool) -> usize {
        let origins = pool.origins.lock().unwrap();
        origins.iter().map(|o| o.idle.len()).sum()
    }

    async fn next(events: &mut mpsc::UnboundedReceiver<&'static str>) -> &'static str {
        tokio::time::timeout(Duration::from_secs(10), events.recv())
            .await
            .expect("no upstream event within 10 s")
            .expect("upstream gone")
    }

    #[tokio::test]
    async fn idle_connections_past_the_timeout_are_closed_without_a_request_to_reuse_them() {
        let (authority, mut events) = upstream().await;
        let pool = pool(Duration::from_millis(300));
        get(&pool, &authority).await;
        assert_eq!(next(&mut events).await, "accepted");
        // Back in the pool once its body was read.
        assert_eq!(idle_count(&pool), 1);
        // No further request: the reaper alone closes it, and the upstream sees the close.
        assert_eq!(next(&mut events).await, "closed");
        assert_eq!(idle_count(&pool), 0);
        // The pool still serves, on a new connection.
        get(&pool, &authority).await;
        assert_eq!(next(&mut events).await, "accepted");
    }

    #[tokio::test]
    async fn connections_within_the_idle_timeout_are_reused_not_reaped() {
        let (authority, mut events) = upstream().await;
        let pool = pool(Duration::from_secs(600));
        for _ in 0..5 {
            get(&pool, &authority).await;
        }
        assert_eq!(next(&mut events).await, "accepted");
        // Five requests, one connection. A reap well within the 600 s timeout keeps it.
        pool.reap();
        assert_eq!(idle_count(&pool), 1);
        assert!(events.try_recv().is_err(), "one connection, never closed");
    }

    /// A connection carries only its partition's (one client's) requests: HTTP/1 pairs
    /// responses with requests by order alone, so an upstream's framing mistake must not be
    /// able to hand one client's response to another.
    #[tokio::test]
    async fn partitions_never_share_a_connection() {
        let (authority, mut events) = upstream().await;
        let pool = pool(Duration::from_secs(600));
        let get_as = |partition: u64| {
            let pool = pool.clone();
            let authority = authority.clone();
            async move {
                let request = Request::builder()
                    .uri("/x")
                    .header(http::header::HOST, &authority)
                    .body(UpstreamBody::new(Empty::new().map_err(|e| match e {})))
                    .unwrap();
                let response = pool
                    .send_tracked(false, &authority, partition, request, None)
                    .await
                    .unwrap();
                response.into_body().collect().await.unwrap();
            }
        };
        for _ in 0..3 {
            get_as(7).await;
            get_as(9).await;
        }
        // Two connections, one per partition, each reused.
        assert_eq!(next(&mut events).await, "accepted");
        assert_eq!(next(&mut events).await, "accepted");
        assert!(events.try_recv().is_err(), "no third connection");
        assert_eq!(idle_count(&pool), 2);
    }

    /// The upstream answers a POST as soon as it has the head (as GitHub may, with an error)
    /// while the client is still uploading: that connection must not serve the next request,
    /// which would wait behind the rest of the upload.
    #[tokio::test]
    async fn a_connection_still_sending_a_request_body_is_not_reused() {
        let (authority, mut events) = upstream().await;
        let pool = pool(Duration::from_secs(600));
        let (upload, chunks) = mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
        upload
            .send(Ok(Frame::data(Bytes::from_static(b"first part"))))
            .await
            .unwrap();
        let body = http_body_util::StreamBody::new(tokio_stream_from(chunks));
        let request = Request::builder()
            .method(http::Method::POST)
            .uri("/upload")
            .header(http::header::HOST, &authority)
            .body(UpstreamBody::new(body))
            .unwrap();
        let response = pool.send(false, &authority, request).await.unwrap();
        assert_eq!(response.status(), 200);
        let answer = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&answer[..], b"ok");
        assert_eq!(next(&mut events).await, "accepted");
        assert_eq!(
            idle_count(&pool),
            0,
            "still uploading: not back in the pool"
        );

        // Served at once, on a new connection, while the upload is still open.
        tokio::time::timeout(Duration::from_secs(5), get(&pool, &authority))
            .await
            .expect("the next request waited behind the upload");
        assert_eq!(next(&mut events).await, "accepted");
        assert_eq!(idle_count(&pool), 1);
        drop(upload);

        // A body that has gone out in full leaves its connection reusable.
        let request = Request::builder()
            .method(http::Method::POST)
            .uri("/upload")
            .header(http::header::HOST, &authority)
            .body(UpstreamBody::new(
                http_body_util::Full::new(Bytes::from_static(b"all of it")).map_err(|e| match e {}),
            ))
            .unwrap();
        let response = pool.send(false, &authority, request).await.unwrap();
        response.into_body().collect().await.unwrap();
        assert_eq!(
            idle_count(&pool),
            1,
            "the complete POST's connection is back"
        );
        // (The first connection closes once its upload is dropped: hyper finishes with it.)
        while let Ok(event) = events.try_recv() {
            assert_ne!(event, "accepted", "no new connection for it");
        }
    }

    /// `mpsc::Receiver` as a `Stream`, for `StreamBody`.
    fn tokio_stream_from<T>(
        mut rx: mpsc::Receiver<T>,
    ) -> impl futures_util::Stream<Item = T> + Send + 'static
    where
        T: Send + 'static,
    {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }

    /// Reads one request head (these tests send no bodies); `false` when the connection ended
    /// first.
    async fn read_head(stream: &mut tokio::net::TcpStream) -> bool {
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        while !buf.ends_with(b"\r\n\r\n") {
            match stream.read(&mut byte).await {
                Ok(1) => buf.push(byte[0]),
                _ => return false,
            }
        }
        true
    }

    /// An upstream that closes each connection after answering one request, without saying so
    /// (no `Connection: close`): the pool keeps the connection, and must find it closed (as it
    /// finds one that sent bytes nobody asked for) instead of failing the next request on it.
    #[tokio::test]
    async fn a_connection_the_upstream_closed_while_idle_is_not_used() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let authority = listener.local_addr().unwrap().to_string();
        let (tx, mut events) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let _ = tx.send("accepted");
                read_head(&mut stream).await;
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
                drop(stream);
                let _ = tx.send("closed");
            }
        });
        let pool = pool(Duration::from_secs(600));
        for _ in 0..3 {
            get(&pool, &authority).await;
            assert_eq!(next(&mut events).await, "accepted");
            assert_eq!(next(&mut events).await, "closed");
            // Let the close reach the proxy's side of the socket.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The last one is still listed; looking at it finds it closed.
        assert_eq!(idle_count(&pool), 1);
        pool.reap();
        assert_eq!(idle_count(&pool), 0, "a closed idle connection is dropped");
    }

    /// The upstream closes a kept-alive connection just as the next request arrives on it (it
    /// reads the head and hangs up without a byte of answer, as a server timing out an idle
    /// connection does): a GET is sent again on a new connection instead of failing.
    #[tokio::test]
    async fn a_get_cut_off_unanswered_on_a_reused_connection_is_sent_again() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let authority = listener.local_addr().unwrap().to_string();
        let (tx, mut events) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let _ = tx.send("accepted");
                let tx = tx.clone();
                tokio::spawn(async move {
                    for answered in 0.. {
                        if !read_head(&mut stream).await {
                            return;
                        }
                        if answered == 1 {
                            // The second request on this connection: hang up unanswered.
                            let _ = tx.send("cut");
                            return;
                        }
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if stream.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        let pool = pool(Duration::from_secs(600));
        get(&pool, &authority).await;
        assert_eq!(next(&mut events).await, "accepted");
        // Reuses the first connection, which is cut; answered on a second one.
        get(&pool, &authority).await;
        assert_eq!(next(&mut events).await, "cut");
        assert_eq!(next(&mut events).await, "accepted");
    }

    #[tokio::test]
    async fn the_reaper_ends_when_the_pool_is_dropped() {
        let (authority, mut events) = upstream().await;
        let pool = pool(Duration::from_millis(60));
        get(&pool, &authority).await;
        assert_eq!(next(&mut events).await, "accepted");
        let weak = Arc::downgrade(&pool);
        drop(pool);
        // Dropping the pool drops its idle connections at once.
        assert_eq!(next(&mut events).await, "closed");
        assert!(
            weak.upgrade().is_none(),
            "the reaper keeps no strong reference"
        );
    }
}
