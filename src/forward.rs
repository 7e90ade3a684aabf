//! Forwarding (SPEC §8): the header rules both ways, the upstream call with its response-head
//! deadline and error classification, `Link`/`Location` rewriting, learned repository ids, and
//! the one retry after GitHub rejects an App token with `401`.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::audit::AuditRecord;
use crate::config::Scheme;
use crate::config::{Config, OriginKind};
use crate::credential::{CredentialKind, Token};
use crate::error::ProxyError;
use crate::pool::{ForwardPool, PooledBody, SendError};
use crate::resolve::Resolution;
use crate::route::{Form, Route};
use crate::upstream::{BoxError, UpstreamBody};

/// Sent when the client did not say who it is (GitHub rejects requests without a User-Agent).
pub static DEFAULT_USER_AGENT: &str = concat!("gh-token-proxy/", env!("CARGO_PKG_VERSION"));

static X_GITHUB_OWNER: HeaderName = HeaderName::from_static("x-github-owner");
static X_GITHUB_REQUEST_ID: HeaderName = HeaderName::from_static("x-github-request-id");
static X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
static X_RATELIMIT_RESOURCE: HeaderName = HeaderName::from_static("x-ratelimit-resource");

/// The hop-by-hop headers of RFC 9110 §7.6.1 (and the two legacy ones) removed both ways, besides
/// those `Connection` names.
static HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
];

/// The position of `name` in [`HOP_BY_HOP`]. Matching the text compiles to a length switch and at
/// most a couple of short compares, cheaper than comparing against each of the seven names.
fn hop_by_hop_index(name: &HeaderName) -> Option<usize> {
    Some(match name.as_str() {
        "connection" => 0,
        "te" => 1,
        "trailer" => 2,
        "transfer-encoding" => 3,
        "upgrade" => 4,
        "keep-alive" => 5,
        "proxy-connection" => 6,
        _ => return None,
    })
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1): `Connection` and every header it names, plus the
/// fixed list. Applies both ways. With `Transfer-Encoding`, a `Content-Length` is removed too
/// (RFC 9112 §6.3: the coding overrides it, and a forwarded message must not keep both); the
/// return value says whether that happened, a framing the caller should treat as suspect.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) -> bool {
    // One pass over the names finds which are present, and only those are removed: most
    // requests carry none, and a keep-alive upstream's responses only `Connection: keep-alive`,
    // so hashed removals of all seven on every exchange would be wasted.
    let mut present = [false; HOP_BY_HOP.len()];
    let mut any = false;
    // Whether every `Connection` value is just `keep-alive` (what a keep-alive upstream sends on
    // every response): that token names `Keep-Alive`, which the fixed list removes anyway, so the
    // values need not be split and looked up.
    let mut only_keep_alive = true;
    for (name, value) in headers.iter() {
        if let Some(i) = hop_by_hop_index(name) {
            present[i] = true;
            any = true;
            if i == 0 && !value.as_bytes().eq_ignore_ascii_case(b"keep-alive") {
                only_keep_alive = false;
            }
        }
    }
    if !any {
        return false;
    }
    // `present[3]`: Transfer-Encoding.
    let ambiguous = present[3] && headers.remove(header::CONTENT_LENGTH).is_some();
    if present[0] && !only_keep_alive {
        // Collected first because removing while iterating `Connection` values is not possible.
        // The usual tokens (`keep-alive`, `close`) name no header that is there: nothing to
        // collect, nothing allocated.
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|text| text.split(','))
            .map(str::trim)
            .filter(|token| headers.contains_key(*token))
            .filter_map(|token| HeaderName::from_bytes(token.as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for (name, present) in HOP_BY_HOP.iter().zip(present) {
        if present {
            headers.remove(name);
        }
    }
    ambiguous
}

/// The request header rules of §8 and §6: hop-by-hop gone; the client's `Authorization`,
/// `Proxy-Authorization` and `X-GitHub-Owner` never forwarded (a client never chooses the
/// credential); `Host` is the upstream's; a default `User-Agent`.
pub fn prepare_request_headers(headers: &mut HeaderMap, authority: &str) -> Result<(), ProxyError> {
    strip_hop_by_hop(headers);
    // Usually absent: look before paying for hashed removals.
    if headers.keys().any(|name| {
        name == header::AUTHORIZATION
            || name == header::PROXY_AUTHORIZATION
            || name == X_GITHUB_OWNER
    }) {
        headers.remove(header::AUTHORIZATION);
        headers.remove(header::PROXY_AUTHORIZATION);
        headers.remove(&X_GITHUB_OWNER);
    }
    let host = HeaderValue::from_str(authority)
        .map_err(|_| ProxyError::InvalidRequest("upstream authority is not a valid Host".into()))?;
    headers.insert(header::HOST, host);
    // GitHub refuses a request without a User-Agent; an empty (or blank) one is as good as none.
    if headers
        .get(header::USER_AGENT)
        .is_none_or(|ua| ua.as_bytes().iter().all(u8::is_ascii_whitespace))
    {
        headers.insert(
            header::USER_AGENT,
            HeaderValue::from_static(DEFAULT_USER_AGENT),
        );
    }
    Ok(())
}

/// The credential header for an origin: `Basic x-access-token:…` for git smart HTTP on the web
/// origin, `Bearer` everywhere else; nothing for anonymous.
pub fn set_credential(headers: &mut HeaderMap, origin: OriginKind, token: Option<&Token>) {
    match token {
        Some(token) => {
            let value = match origin {
                OriginKind::Web => token.basic_header(),
                OriginKind::Api | OriginKind::Raw | OriginKind::Graphql => token.bearer_header(),
            };
            // `insert` replaces every value already there: one lookup, not a removal and an insert.
            headers.insert(header::AUTHORIZATION, value.clone());
        }
        None => {
            headers.remove(header::AUTHORIZATION);
        }
    }
}

/// A request body on its way upstream.
pub enum RequestBody {
    /// No body (most GitHub API calls): retryable.
    Empty,
    /// Already read (GraphQL inspection): retryable, cheap to clone.
    Buffered(Bytes),
    /// Streamed through in constant memory: sent once.
    Streaming(Incoming),
}

impl RequestBody {
    fn retryable(&self) -> bool {
        !matches!(self, RequestBody::Streaming(_))
    }

    fn take(&mut self) -> UpstreamBody {
        match std::mem::replace(self, RequestBody::Empty) {
            RequestBody::Empty => http_body_util::Empty::new()
                .map_err(|never: Infallible| match never {})
                .boxed_unsync(),
            RequestBody::Buffered(bytes) => {
                let body = http_body_util::Full::new(bytes.clone())
                    .map_err(|never: Infallible| match never {})
                    .boxed_unsync();
                *self = RequestBody::Buffered(bytes);
                body
            }
            RequestBody::Streaming(incoming) => incoming
                .map_err(|e| Box::new(ClientBodyError(e)) as BoxError)
                .boxed_unsync(),
        }
    }
}

/// The client's request body failed while being forwarded: marks the error as the client's,
/// so it is not blamed on GitHub.
#[derive(Debug)]
pub struct ClientBodyError(pub hyper::Error);

impl std::fmt::Display for ClientBodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the request body from the client failed: {}", self.0)
    }
}

impl std::error::Error for ClientBodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// The error for a client's request body that failed (hyper's error reading it): the client
/// went away before sending all of it, or sent a malformed one.
pub fn client_body_failure(inner: &hyper::Error) -> ProxyError {
    let client_gone = inner.is_incomplete_message()
        || inner.is_closed()
        || inner.is_canceled()
        || connection_lost(inner);
    ProxyError::RequestBody {
        message: if client_gone {
            "the client closed the connection before sending the whole request body".into()
        } else {
            format!("the request body is malformed: {inner}")
        },
        client_gone,
    }
}

/// Whether `err` (hyper's, reading the client's body) says the connection ended under it: the
/// body stopped short (EOF before its length) or the client reset the connection.
fn connection_lost(err: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(err);
    for _ in 0..16 {
        let Some(e) = source else {
            return false;
        };
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
            )
        {
            return true;
        }
        source = e.source();
    }
    false
}

/// The client-side failure somewhere in `err`'s chain, if the call failed because of it.
fn client_body_error<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a ClientBodyError> {
    let mut current = Some(err);
    for _ in 0..16 {
        let e = current?;
        if let Some(found) = e.downcast_ref::<ClientBodyError>() {
            return Some(found);
        }
        current = e.source();
    }
    None
}

/// Maps a failed upstream call to the client-facing error: the client's own body failing is its
/// error (`400`, or `aborted` when it went away), not GitHub's; TLS problems are told apart from
/// plain connection failures (an operator fixes them differently: `upstream.caFile`).
pub fn classify(err: &SendError, authority: &str) -> ProxyError {
    if let Some(ClientBodyError(inner)) = client_body_error(err) {
        return client_body_failure(inner);
    }
    let mut timed_out = false;
    if let Some(tls) = find_tls(err, &mut timed_out, 0) {
        return ProxyError::UpstreamTls(format!("TLS with {authority} failed: {tls}"));
    }
    if timed_out {
        return ProxyError::UpstreamTimeout(format!(
            "connecting to {authority} timed out (proxy.upstream.connectTimeoutMs)"
        ));
    }
    match err {
        SendError::Connect(inner) => ProxyError::UpstreamUnreachable(format!(
            "cannot connect to {authority}: {}",
            chain(inner.as_ref())
        )),
        SendError::Request(inner) => ProxyError::UpstreamUnreachable(format!(
            "{authority} failed: {}",
            chain(inner.as_ref())
        )),
    }
}

/// Looks for a rustls error anywhere in the chain. `io::Error::source()` skips the error it
/// wraps, so wrapped errors are opened explicitly (hyper-rustls nests them in `io::Error`).
fn find_tls(
    err: &(dyn std::error::Error + 'static),
    timed_out: &mut bool,
    depth: usize,
) -> Option<String> {
    if depth > 16 {
        return None;
    }
    if let Some(tls) = err.downcast_ref::<rustls::Error>() {
        return Some(tls.to_string());
    }
    if let Some(io) = err.downcast_ref::<std::io::Error>() {
        if io.kind() == std::io::ErrorKind::TimedOut {
            *timed_out = true;
        }
        if let Some(found) = io
            .get_ref()
            .and_then(|inner| find_tls(inner, timed_out, depth + 1))
        {
            return Some(found);
        }
    }
    err.source()
        .and_then(|source| find_tls(source, timed_out, depth + 1))
}

/// An error with its sources, `a: b: c`. Upstream errors hold no secrets (hyper marks
/// `Authorization` sensitive and never prints headers in errors).
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let s = e.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        source = e.source();
    }
    text
}

/// Sends one request, bounded by `proxy.upstream.responseTimeoutMs` up to the response head
/// (connecting included). For a request with a body the deadline runs from the body's end: an
/// upload (a `git push`) streams for as long as it takes (§3.3: bodies have no deadline).
pub async fn send(
    pool: &Arc<ForwardPool>,
    scheme: Scheme,
    response_timeout: Duration,
    request: Request<UpstreamBody>,
    authority: &str,
    partition: u64,
) -> Result<Response<PooledBody>, ProxyError> {
    let (request, sent) = crate::pool::track_body(request);
    let sending = pool.send_tracked(
        scheme == Scheme::Https,
        authority,
        partition,
        request,
        sent.clone(),
    );
    let answered = match sent {
        None => tokio::time::timeout(response_timeout, sending).await.ok(),
        // Boxed: requests with a body are the rarer kind; unboxed, this state would be part of
        // (and copied with) every request's future.
        Some(sent) => {
            Box::pin(async move {
                let deadline = async {
                    sent.wait().await;
                    tokio::time::sleep(response_timeout).await;
                };
                tokio::select! {
                    result = sending => Some(result),
                    () = deadline => None,
                }
            })
            .await
        }
    };
    match answered {
        Some(Ok(response)) => Ok(response),
        Some(Err(err)) => Err(classify(&err, authority)),
        None => Err(ProxyError::UpstreamTimeout(format!(
            "{authority} did not answer within {} ms (proxy.upstream.responseTimeoutMs)",
            response_timeout.as_millis()
        ))),
    }
}

/// What the exchange needs from the server to forward: shared state, and how to evict and
/// re-resolve for the 401 retry.
pub struct Forwarder<'a> {
    pub shared: &'a crate::server::Shared,
    /// The authenticated client, whose `credentials` rule also binds the retry's credential.
    pub client: Option<&'a crate::config::ClientConfig>,
    pub route: &'a Route,
    pub owner: Option<&'a str>,
    pub repo: Option<&'a str>,
    /// The client's own request target, already validated by the server's parser: forwarded
    /// as it is when it is exactly the upstream target (the usual case: an origin without a path
    /// prefix), instead of formatting and validating the same text again.
    pub client_target: Option<&'a http::uri::PathAndQuery>,
}

impl Forwarder<'_> {
    /// The origin-form target sent upstream ([`Route::upstream_target`]).
    fn upstream_uri(&self) -> Result<Uri, ProxyError> {
        if let Some(target) = self.client_target
            && target.path() == self.route.upstream_path
            && target.query() == self.route.query.as_deref()
        {
            return Ok(Uri::from(target.clone()));
        }
        self.route.upstream_target().parse().map_err(|_| {
            ProxyError::InvalidRequest("the request target cannot be forwarded".into())
        })
    }

    /// Forwards the request with `resolution`'s credential; on a `401` for an App token evicts
    /// it and, when the body allows, retries once with a fresh one (§7.2). `record` gets the
    /// credential actually used.
    pub async fn forward(
        &self,
        method: Method,
        mut headers: HeaderMap,
        mut body: RequestBody,
        resolution: &mut Resolution,
        record: &mut AuditRecord,
    ) -> Result<Response<PooledBody>, ProxyError> {
        let uri = self.upstream_uri()?;
        prepare_request_headers(&mut headers, &self.route.authority)?;
        let timeout = self.shared.config.proxy.upstream.response_timeout;
        let may_retry = resolution.credential == CredentialKind::App && body.retryable();
        // Only an App-token request that could be retried pays for keeping a copy.
        let retry_parts = may_retry.then(|| (uri.clone(), headers.clone()));

        set_credential(&mut headers, self.route.origin, resolution.token.as_deref());
        let request = build(method.clone(), uri, headers, body.take())?;
        let response = send(
            &self.shared.pool,
            self.route.scheme,
            timeout,
            request,
            &self.route.authority,
            self.pool_partition(),
        )
        .await?;
        if response.status() != StatusCode::UNAUTHORIZED
            || resolution.credential != CredentialKind::App
        {
            return Ok(response);
        }

        // GitHub rejected the App token: it must not serve anyone else.
        let age = self.evict(resolution);
        let Some((uri, headers)) = retry_parts else {
            return Ok(response);
        };
        // Boxed: the retry (a sleep, a whole new resolution, a second send) is rare; unboxed, its
        // state would be part of every request's future and copied with it.
        Box::pin(self.retry(
            response, method, uri, headers, body, age, resolution, record,
        ))
        .await
    }

    /// The one retry after a `401` for an App token, with a freshly resolved credential. When
    /// there is none this client may be served with (the mint failed and the fallback is a kind
    /// its `credentials` exclude, or nothing), GitHub's `401` is the answer: it was forwarded
    /// and answered, and the record says so (the rejected token, `upstream_status` 401).
    #[allow(clippy::too_many_arguments)]
    async fn retry(
        &self,
        rejected: Response<PooledBody>,
        method: Method,
        uri: Uri,
        mut headers: HeaderMap,
        mut body: RequestBody,
        age: Option<Duration>,
        resolution: &mut Resolution,
        record: &mut AuditRecord,
    ) -> Result<Response<PooledBody>, ProxyError> {
        let timeout = self.shared.config.proxy.upstream.response_timeout;
        // A token minted moments ago may not have replicated inside GitHub yet.
        if age.is_some_and(|age| age < Duration::from_secs(5)) {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let fresh = self
            .shared
            .resolver
            .resolve(&self.route.integration, &method, self.owner, self.repo)
            .await;
        // The fresh resolution may have fallen back (the mint failed: PAT or anonymous); a client
        // limited to other kinds must not be served with it.
        if fresh.credential == CredentialKind::None
            || crate::server::check_credential_policy(self.client, &fresh).is_err()
        {
            tracing::warn!(
                request_id = %record.request_id,
                "GitHub rejected the App token and no credential this request may use is left \
                 for a retry; answering with GitHub's 401"
            );
            return Ok(rejected);
        }
        drop(rejected);
        *resolution = fresh;
        crate::server::record_resolution(record, resolution);
        set_credential(&mut headers, self.route.origin, resolution.token.as_deref());
        let request = build(method, uri, headers, body.take())?;
        let response = send(
            &self.shared.pool,
            self.route.scheme,
            timeout,
            request,
            &self.route.authority,
            self.pool_partition(),
        )
        .await?;
        // Rejected again: this token must not serve anyone else either. No second retry.
        if response.status() == StatusCode::UNAUTHORIZED
            && resolution.credential == CredentialKind::App
        {
            self.evict(resolution);
        }
        Ok(response)
    }

    /// The forwarding pool's partition for this request: its client's (the first bytes of the
    /// key's SHA-256), so an upstream connection never carries two clients' requests (see
    /// [`ForwardPool::send_tracked`]). Without `clients`, callers are not told apart: one.
    fn pool_partition(&self) -> u64 {
        self.client.map_or(0, |c| {
            let mut first = [0u8; 8];
            first.copy_from_slice(&c.key_sha256[..8]);
            u64::from_le_bytes(first) | 1
        })
    }

    /// Drops `resolution`'s App token from the cache; its age when it was minted here.
    fn evict(&self, resolution: &Resolution) -> Option<Duration> {
        match (
            resolution.app_id,
            resolution.installation_id,
            resolution.token.as_ref(),
        ) {
            (Some(app_id), Some(installation_id), Some(token)) => crate::server::evict_token(
                self.shared,
                self.route.integration.index,
                app_id,
                installation_id,
                token,
            ),
            _ => None,
        }
    }
}

fn build(
    method: Method,
    uri: Uri,
    mut headers: HeaderMap,
    body: UpstreamBody,
) -> Result<Request<UpstreamBody>, ProxyError> {
    // A body of unknown length (the client sent it chunked; `Transfer-Encoding` is hop-by-hop and
    // was removed) goes on chunked. Said explicitly: for GET and HEAD hyper would otherwise send
    // no body at all and drop the client's silently.
    if !body.is_end_stream()
        && body.size_hint().exact().is_none()
        && !headers.contains_key(header::CONTENT_LENGTH)
    {
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
    }
    let mut request = Request::new(body);
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    *request.headers_mut() = headers;
    Ok(request)
}

/// What GitHub said about the exchange, for the audit record and metrics.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct UpstreamMeta {
    pub github_request_id: Option<String>,
    pub rate_limit_remaining: Option<u64>,
    pub rate_limit_resource: Option<String>,
}

impl UpstreamMeta {
    pub fn from_headers(headers: &HeaderMap) -> Self {
        // One pass over the entries (the first value of each name, as `get` gives) instead of
        // three hashed lookups of long custom names: this runs on every response.
        let (mut id, mut remaining, mut resource) = (None, None, None);
        for (name, value) in headers.iter() {
            let slot = if *name == X_GITHUB_REQUEST_ID {
                &mut id
            } else if *name == X_RATELIMIT_REMAINING {
                &mut remaining
            } else if *name == X_RATELIMIT_RESOURCE {
                &mut resource
            } else {
                continue;
            };
            if slot.is_none() {
                *slot = Some(value);
            }
        }
        let text =
            |value: Option<&HeaderValue>| value.and_then(|v| v.to_str().ok()).map(str::to_owned);
        UpstreamMeta {
            github_request_id: text(id),
            rate_limit_remaining: remaining
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse().ok()),
            rate_limit_resource: text(resource),
        }
    }
}

/// The response header rules: hop-by-hop gone, `Link`/`Location` pointed back at the proxy the
/// way the client reached it. `proxy_base` is computed only when a header needs it. Returns
/// whether the framing was ambiguous (see [`strip_hop_by_hop`]).
pub fn rewrite_response_headers(
    headers: &mut HeaderMap,
    config: &Config,
    form: Form,
    proxy_base: impl Fn() -> String,
) -> bool {
    let ambiguous = strip_hop_by_hop(headers);
    // Most responses carry neither: comparing each standard name is cheaper than two hashed
    // entry lookups.
    if !headers
        .keys()
        .any(|name| name == header::LINK || name == header::LOCATION)
    {
        return ambiguous;
    }
    let mut base: Option<String> = None;
    for name in [header::LINK, header::LOCATION] {
        let header::Entry::Occupied(mut entry) = headers.entry(name) else {
            continue;
        };
        let mut values: Vec<HeaderValue> = Vec::new();
        let mut changed = false;
        for value in entry.iter() {
            let rewritten = value.to_str().ok().and_then(|text| {
                let base = base.get_or_insert_with(&proxy_base);
                crate::route::rewrite_url_header(config, form, base, text)
            });
            match rewritten.and_then(|s| HeaderValue::from_str(&s).ok()) {
                Some(new) => {
                    changed = true;
                    values.push(new);
                }
                None => values.push(value.clone()),
            }
        }
        if changed {
            let mut values = values.into_iter();
            if let Some(first) = values.next() {
                entry.insert(first);
                for value in values {
                    entry.append(value);
                }
            }
        }
    }
    ambiguous
}

/// The body sent to the client: GitHub's, streamed, or the proxy's own (errors, admin).
pub enum ResponseBody {
    Upstream(PooledBody),
    Full(Option<Bytes>),
}

impl ResponseBody {
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        ResponseBody::Full(Some(bytes.into()))
    }

    pub fn empty() -> Self {
        ResponseBody::Full(None)
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ResponseBody::Upstream(incoming) => Pin::new(incoming).poll_frame(cx),
            ResponseBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Upstream(incoming) => incoming.is_end_stream(),
            ResponseBody::Full(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Upstream(incoming) => incoming.size_hint(),
            ResponseBody::Full(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            ResponseBody::Full(None) => SizeHint::with_exact(0),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use secrecy::SecretString;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn drops_hop_by_hop_and_headers_named_by_connection() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret-Hop"),
            ("connection", "x-other"),
            ("x-secret-hop", "1"),
            ("x-other", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("trailer", "x-t"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("accept", "application/json"),
        ]);
        strip_hop_by_hop(&mut h);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, vec!["accept"]);
    }

    mod strip_matches_the_plain_rule {
        use super::*;
        use proptest::prelude::*;
        use proptest::sample::select;

        const NAMES: [&str; 9] = [
            "connection",
            "keep-alive",
            "te",
            "upgrade",
            "x-a",
            "x-b",
            "accept",
            "close",
            "trailer",
        ];
        const TOKENS: [&str; 8] = [
            "keep-alive",
            "Keep-Alive",
            "close",
            "X-A",
            "x-b",
            "TE",
            "",
            " upgrade ",
        ];

        /// RFC 9110 §7.6.1 as written: every header a `Connection` token names, and the fixed list.
        fn reference(headers: &HeaderMap) -> Vec<String> {
            let named: Vec<String> = headers
                .get_all(header::CONNECTION)
                .iter()
                .flat_map(|v| v.to_str().unwrap().split(','))
                .map(|t| t.trim().to_ascii_lowercase())
                .collect();
            let mut left: Vec<String> = headers
                .keys()
                .map(|k| k.as_str().to_owned())
                .filter(|k| !named.contains(k) && !HOP_BY_HOP.iter().any(|h| h == k.as_str()))
                .collect();
            left.sort();
            left
        }

        proptest! {
            #[test]
            fn same_headers_left(
                pairs in proptest::collection::vec(
                    (select(NAMES.to_vec()), proptest::collection::vec(select(TOKENS.to_vec()), 1..4)),
                    0..8,
                )
            ) {
                let mut h = HeaderMap::new();
                for (name, tokens) in &pairs {
                    h.append(*name, HeaderValue::from_str(&tokens.join(",")).unwrap());
                }
                let expected = reference(&h);
                strip_hop_by_hop(&mut h);
                let mut left: Vec<String> = h.keys().map(|k| k.as_str().to_owned()).collect();
                left.sort();
                prop_assert_eq!(left, expected);
            }
        }
    }

    #[test]
    fn hop_by_hop_index_names_each_entry_of_the_list() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_index(name), Some(i), "{name}");
        }
        for name in [header::ACCEPT, header::AUTHORIZATION, header::LINK] {
            assert_eq!(hop_by_hop_index(&name), None, "{name}");
        }
        assert_eq!(hop_by_hop_index(&HeaderName::from_static("x-te")), None);
    }

    #[test]
    fn drops_only_the_hop_by_hop_headers_present() {
        // A keep-alive upstream's usual response: only `Connection: keep-alive` goes.
        let mut h = map(&[
            ("connection", "keep-alive"),
            ("content-type", "application/json"),
            ("x-ratelimit-remaining", "4999"),
        ]);
        strip_hop_by_hop(&mut h);
        let mut left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, vec!["content-type", "x-ratelimit-remaining"]);

        // Without `Connection`, a fixed one alone still goes; a token naming an absent header
        // (`close`) removes nothing else.
        let mut h = map(&[("keep-alive", "timeout=5"), ("accept", "*/*")]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["accept"]);
        let mut h = map(&[
            ("connection", "Close, , X-Gone"),
            ("x-gone", "1"),
            ("te", "x"),
        ]);
        strip_hop_by_hop(&mut h);
        assert!(h.is_empty(), "{h:?}");
    }

    #[test]
    fn client_credentials_and_owner_hint_never_forwarded() {
        let mut h = map(&[
            ("authorization", "Bearer client-key"),
            ("proxy-authorization", "Basic abc"),
            ("x-github-owner", "acme"),
            ("host", "proxy:8080"),
            ("user-agent", "curl/8"),
        ]);
        prepare_request_headers(&mut h, "api.github.com").unwrap();
        assert!(h.get("authorization").is_none());
        assert!(h.get("proxy-authorization").is_none());
        assert!(h.get("x-github-owner").is_none());
        assert_eq!(h["host"], "api.github.com");
        assert_eq!(h["user-agent"], "curl/8");
    }

    #[test]
    fn default_user_agent_when_missing() {
        let mut h = HeaderMap::new();
        prepare_request_headers(&mut h, "api.github.com").unwrap();
        assert_eq!(
            h["user-agent"],
            format!("gh-token-proxy/{}", env!("CARGO_PKG_VERSION"))
        );
        // An empty one (`curl -H 'User-Agent;'`) too, and only one is sent.
        let mut h = HeaderMap::new();
        h.append("user-agent", HeaderValue::from_static(""));
        prepare_request_headers(&mut h, "api.github.com").unwrap();
        assert_eq!(h.get_all("user-agent").iter().count(), 1);
        assert_eq!(h["user-agent"], DEFAULT_USER_AGENT);
    }

    #[test]
    fn credential_header_by_origin() {
        let token = Token::new(SecretString::from("ghs_x")).unwrap();
        let mut h = HeaderMap::new();
        set_credential(&mut h, OriginKind::Api, Some(&token));
        assert_eq!(h["authorization"], "Bearer ghs_x");
        assert!(h["authorization"].is_sensitive());
        set_credential(&mut h, OriginKind::Web, Some(&token));
        assert!(h["authorization"].to_str().unwrap().starts_with("Basic "));
        set_credential(&mut h, OriginKind::Graphql, Some(&token));
        assert_eq!(h["authorization"], "Bearer ghs_x");
        set_credential(&mut h, OriginKind::Raw, None);
        assert!(h.get("authorization").is_none());
        // Whatever was there before, exactly one value is sent: the proxy's.
        h.append(header::AUTHORIZATION, HeaderValue::from_static("token a"));
        h.append(header::AUTHORIZATION, HeaderValue::from_static("token b"));
        set_credential(&mut h, OriginKind::Api, Some(&token));
        let values: Vec<_> = h.get_all(header::AUTHORIZATION).iter().collect();
        assert_eq!(values, ["Bearer ghs_x"]);
    }

    #[test]
    fn upstream_meta_reads_github_headers() {
        let h = map(&[
            ("x-github-request-id", "C0DE:1234"),
            ("x-ratelimit-remaining", "4987"),
            ("x-ratelimit-resource", "core"),
        ]);
        let meta = UpstreamMeta::from_headers(&h);
        assert_eq!(meta.github_request_id.as_deref(), Some("C0DE:1234"));
        assert_eq!(meta.rate_limit_remaining, Some(4987));
        assert_eq!(meta.rate_limit_resource.as_deref(), Some("core"));
        assert_eq!(
            UpstreamMeta::from_headers(&HeaderMap::new()),
            UpstreamMeta::default()
        );
        // A repeated header: the first value counts, as `HeaderMap::get` would give it.
        let mut h = map(&[
            ("x-ratelimit-remaining", "12"),
            ("x-github-request-id", "A"),
        ]);
        h.append("x-ratelimit-remaining", HeaderValue::from_static("99"));
        h.append("x-github-request-id", HeaderValue::from_static("B"));
        let meta = UpstreamMeta::from_headers(&h);
        assert_eq!(meta.rate_limit_remaining, Some(12));
        assert_eq!(meta.github_request_id.as_deref(), Some("A"));
        assert_eq!(meta.rate_limit_resource, None);
    }
}
