//! The upstream half of HTTP/1.1 for requests without a body, which are almost every GitHub API
//! call: the request head is written, the response head parsed with `httparse`, and the body
//! (sized, chunked or close-delimited) read straight off the connection, all in the request's own
//! task. Requests with a body still go through hyper's client connection ([`crate::pool`]), which
//! sends a body and reads an early answer at the same time.
//!
//! Why not hyper for these too: its client runs every connection as a task of its own, hands each
//! request and response across a channel between the two tasks, and wakes both on every
//! exchange. Measured with callgrind, that codec, channel and task were ~16,000 of the ~48,800
//! instructions a proxied request cost (docs/performance.md), more than parsing the answer here.
//!
//! The framing rules are hyper's (RFC 9112 §6.3), so an answer reads the same either way: 1xx
//! heads other than 101 are skipped; HEAD, 101, 204 and 304 have no body; `Transfer-Encoding`
//! wins over `Content-Length` (chunked when it ends in `chunked`, else read to the close, and an
//! error in HTTP/1.0); differing or malformed lengths are an error; with neither, the body runs
//! to the close. Limits are hyper's defaults too: 100 headers, a head of at most 417,792 bytes.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode, Version};
use hyper::body::{Body, Frame, SizeHint};
use hyper_rustls::MaybeHttpsStream;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// An upstream connection as the connector makes it: TCP, with TLS for `https` origins.
pub type Stream = MaybeHttpsStream<TokioIo<TcpStream>>;

/// At most this many header lines in a response head (hyper's default).
const MAX_HEADERS: usize = 100;
/// A response head may not be larger (hyper's default read buffer limit).
const MAX_HEAD: usize = 8192 + 4096 * 100;
/// Room made in the read buffer before reading a head.
const HEAD_READ: usize = 8 * 1024;
/// Room made in the read buffer before reading more of a body: large downloads (archives) come
/// in fewer, larger reads.
const BODY_READ: usize = 32 * 1024;
/// A chunk-size line with its extensions, and a chunked body's trailer section, may not be
/// larger (hyper's limits for both are 16 KiB).
const MAX_CHUNK_LINE: usize = 16 * 1024;
const MAX_TRAILERS: usize = 16 * 1024;

/// Why an exchange on an upstream connection failed.
#[derive(Debug, thiserror::Error)]
pub enum H1Error {
    #[error("{0}")]
    Io(#[source] io::Error),
    #[error("the connection closed before the response head was complete")]
    ClosedBeforeHead,
    #[error("invalid response head: {0}")]
    Head(String),
    #[error("the response head is larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("invalid Content-Length in the response")]
    ContentLength,
    #[error("Transfer-Encoding in an HTTP/1.0 response")]
    TransferEncodingInHttp10,
    #[error("the connection closed before the response body was complete")]
    BodyIncomplete,
    #[error("invalid chunked response body: {0}")]
    Chunked(&'static str),
}

/// A failed exchange, and whether the request may be sent again on another connection: nothing
/// of an answer came back, and either nothing was delivered (the write failed) or the method is
/// idempotent (RFC 9110 §9.2.2), so the upstream acted on it at most once that counts.
#[derive(Debug)]
pub struct SendFailure {
    pub error: H1Error,
    pub retry_safe: bool,
}

/// One keep-alive connection to an upstream origin. Boxed: a TLS stream is over a kilobyte, and
/// the connection moves between the pool, the request's future and the response body.
pub struct RawConn(Box<Conn>);

struct Conn {
    io: TokioIo<Stream>,
    /// Bytes read and not yet consumed: empty between exchanges on a healthy connection.
    buf: BytesMut,
    /// The request head being written, kept for the next request's.
    head: Vec<u8>,
}

impl RawConn {
    pub fn new(stream: Stream) -> Self {
        RawConn(Box::new(Conn {
            io: TokioIo::new(stream),
            buf: BytesMut::new(),
            head: Vec::new(),
        }))
    }

    /// The connection, to hand to hyper (for a request with a body). Only for an idle one, whose
    /// read buffer is empty ([`RawConn::is_idle_usable`]).
    pub fn into_stream(self) -> Stream {
        self.0.io.into_inner()
    }

    /// Whether an idle connection can carry a request: the upstream has not closed it, and has
    /// sent nothing unasked (an answer too many would be read as the next request's). Looks
    /// without waiting; hyper's connection task learns the same by reading while idle.
    pub fn is_idle_usable(&mut self) -> bool {
        let conn = &mut *self.0;
        if !conn.buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        let mut byte = [0u8; 1];
        let mut probe = ReadBuf::new(&mut byte);
        // Ready means the end of the stream, a byte nobody asked for, or an error.
        Pin::new(&mut conn.io)
            .poll_read(&mut cx, &mut probe)
            .is_pending()
    }

    /// Sends a request without a body (`target` in origin form, `headers` with `Host`) and reads
    /// the response head. The body is read from the returned [`RawBody`], which owns the
    /// connection until the body ends. `Transfer-Encoding` is not sent: there is no body.
    pub async fn send(
        mut self,
        method: &Method,
        target: &str,
        headers: &HeaderMap,
    ) -> Result<(Response<()>, RawBody), SendFailure> {
        let conn = &mut *self.0;
        conn.head.clear();
        encode_head(&mut conn.head, method, target, headers);
        let written = async {
            conn.io.write_all(&conn.head).await?;
            conn.io.flush().await
        };
        if let Err(err) = written.await {
            return Err(SendFailure {
                error: H1Error::Io(err),
                retry_safe: true,
            });
        }
        let idempotent = matches!(
            *method,
            Method::GET
                | Method::HEAD
                | Method::OPTIONS
                | Method::TRACE
                | Method::PUT
                | Method::DELETE
        );
        let mut read_any = false;
        loop {
            let conn = &mut *self.0;
            if !conn.buf.is_empty() {
                match parse_head(&mut conn.buf, method) {
                    Ok(Some(head)) => {
                        let body = RawBody {
                            state: head.state,
                            keep_alive: head.keep_alive,
                            conn: Some(self),
                        };
                        return Ok((head.response, body));
                    }
                    Ok(None) if conn.buf.len() >= MAX_HEAD => {
                        return Err(SendFailure {
                            error: H1Error::HeadTooLarge,
                            retry_safe: false,
                        });
                    }
                    Ok(None) => {}
                    Err(error) => {
                        return Err(SendFailure {
                            error,
                            retry_safe: false,
                        });
                    }
                }
            }
            // A new buffer only when this one is nearly full: the bytes before it stay shared
            // with the previous response's header values and body for as long as they live.
            if conn.buf.capacity() - conn.buf.len() < 1024 {
                conn.buf.reserve(HEAD_READ);
            }
            let retry_safe = !read_any && idempotent;
            match tokio::io::AsyncReadExt::read_buf(&mut conn.io, &mut conn.buf).await {
                Ok(0) => {
                    return Err(SendFailure {
                        error: H1Error::ClosedBeforeHead,
                        retry_safe,
                    });
                }
                Ok(_) => read_any = true,
                Err(err) => {
                    return Err(SendFailure {
                        error: H1Error::Io(err),
                        retry_safe,
                    });
                }
            }
        }
    }
}

/// The request line and headers, as hyper writes them (lower-case names, in the map's order).
fn encode_head(out: &mut Vec<u8>, method: &Method, target: &str, headers: &HeaderMap) {
    out.reserve(64 + target.len() + headers.len() * 32);
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        if name == header::TRANSFER_ENCODING {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// A parsed final response head, with how its body is framed.
struct Head {
    response: Response<()>,
    state: State,
    keep_alive: bool,
}

/// Parses a response head off the front of `buf`, skipping 1xx heads before it (except 101).
/// `None` when more bytes are needed.
fn parse_head(buf: &mut BytesMut, method: &Method) -> Result<Option<Head>, H1Error> {
    loop {
        if buf.is_empty() {
            return Ok(None);
        }
        let mut raw =
            [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let (len, status, reason, version, spans) = {
            let bytes: &[u8] = buf;
            let base = bytes.as_ptr() as usize;
            let mut parsed = httparse::Response::new(&mut []);
            match httparse::ParserConfig::default().parse_response_with_uninit_headers(
                &mut parsed,
                bytes,
                &mut raw,
            ) {
                Ok(httparse::Status::Complete(len)) => {
                    // (name start, name end, value start, value end) of each header, as offsets
                    // into the head, which is split off the buffer before the map is built.
                    let spans: Vec<_> = parsed
                        .headers
                        .iter()
                        .map(|h| {
                            let name = h.name.as_ptr() as usize - base;
                            let value = h.value.as_ptr() as usize - base;
                            (name, name + h.name.len(), value, value + h.value.len())
                        })
                        .collect();
                    let status = StatusCode::from_u16(parsed.code.unwrap_or(0))
                        .map_err(|e| H1Error::Head(e.to_string()))?;
                    // Kept only when it is not the usual one, as hyper does.
                    let reason = parsed.reason.unwrap_or("");
                    let reason = (status.canonical_reason() != Some(reason))
                        .then(|| Bytes::copy_from_slice(reason.as_bytes()));
                    let version = if parsed.version == Some(1) {
                        Version::HTTP_11
                    } else {
                        Version::HTTP_10
                    };
                    (len, status, reason, version, spans)
                }
                Ok(httparse::Status::Partial) => return Ok(None),
                Err(err) => return Err(H1Error::Head(err.to_string())),
            }
        };
        let head = buf.split_to(len).freeze();
        if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
            // 100 Continue, 103 Early Hints: the final answer follows.
            continue;
        }
        let mut headers = HeaderMap::with_capacity(spans.len());
        let mut keep_alive = version == Version::HTTP_11;
        let mut saw_close = false;
        for &(ns, ne, vs, ve) in &spans {
            let name = HeaderName::from_bytes(&head[ns..ne])
                .map_err(|_| H1Error::Head("invalid header name".into()))?;
            // Checked again, though httparse accepts the same bytes: the crate has no unsafe code.
            let value = HeaderValue::from_maybe_shared(head.slice(vs..ve))
                .map_err(|_| H1Error::Head(format!("invalid value for header {name}")))?;
            if name == header::CONNECTION {
                // Once any `Connection` line asks to close, a later `keep-alive` cannot undo it.
                if saw_close || has_token(&value, b"close") {
                    saw_close = true;
                    keep_alive = false;
                } else if !keep_alive {
                    // HTTP/1.0 closes unless asked to keep the connection.
                    keep_alive = has_token(&value, b"keep-alive");
                }
            }
            headers.append(name, value);
        }
        let state = framing(status, version, method, &headers)?;
        if matches!(state, State::Close) || status == StatusCode::SWITCHING_PROTOCOLS {
            keep_alive = false;
        }
        let mut response = Response::new(());
        *response.status_mut() = status;
        *response.version_mut() = version;
        *response.headers_mut() = headers;
        if let Some(reason) = reason
            && let Ok(reason) = hyper::ext::ReasonPhrase::try_from(reason)
        {
            response.extensions_mut().insert(reason);
        }
        return Ok(Some(Head {
            response,
            state,
            keep_alive,
        }));
    }
}

/// How the body of a response with `status` to `method` is delimited (RFC 9112 §6.3).
fn framing(
    status: StatusCode,
    version: Version,
    method: &Method,
    headers: &HeaderMap,
) -> Result<State, H1Error> {
    if matches!(status.as_u16(), 101 | 204 | 304) || *method == Method::HEAD {
        return Ok(State::Length(0));
    }
    if headers.contains_key(header::TRANSFER_ENCODING) {
        if version == Version::HTTP_10 {
            return Err(H1Error::TransferEncodingInHttp10);
        }
        // Chunked when the last coding is `chunked`; any other last coding runs to the close.
        let last = headers
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .next_back()
            .and_then(|v| v.as_bytes().rsplit(|&b| b == b',').next())
            .map(<[u8]>::trim_ascii);
        return Ok(match last {
            Some(coding) if coding.eq_ignore_ascii_case(b"chunked") => State::Chunked(Chunk::Size),
            _ => State::Close,
        });
    }
    let mut length: Option<u64> = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        for part in value.as_bytes().split(|&b| b == b',') {
            let n = digits(part.trim_ascii()).ok_or(H1Error::ContentLength)?;
            if length.is_some_and(|l| l != n) {
                return Err(H1Error::ContentLength);
            }
            length = Some(n);
        }
    }
    Ok(match length {
        Some(n) => State::Length(n),
        None => State::Close,
    })
}

/// A decimal number of one or more digits that fits in a `u64`.
fn digits(bytes: &[u8]) -> Option<u64> {
    if bytes.is_empty() {
        return None;
    }
    bytes.iter().try_fold(0u64, |n, &b| {
        b.is_ascii_digit()
            .then_some(())
            .and_then(|()| n.checked_mul(10))
            .and_then(|n| n.checked_add(u64::from(b - b'0')))
    })
}

/// Whether a comma-separated header value holds `token` (any case).
fn has_token(value: &HeaderValue, token: &[u8]) -> bool {
    value
        .as_bytes()
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// Where a body is in its framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// This many bytes still to read (0: the body has ended).
    Length(u64),
    /// Chunked, at this point of a chunk.
    Chunked(Chunk),
    /// Read until the upstream closes.
    Close,
    /// Ended (chunked or close-delimited).
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// This many bytes of the current chunk still to read.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one; this many bytes of them so far.
    Trailers(usize),
}

/// A response body read off its connection, which it owns until the body ends.
pub struct RawBody {
    conn: Option<RawConn>,
    state: State,
    keep_alive: bool,
}

impl RawBody {
    /// The connection, when this body has ended cleanly and the connection can carry another
    /// exchange: kept alive, and nothing read past the end of this response.
    pub fn take_reusable(&mut self) -> Option<RawConn> {
        if !self.is_end_stream() || !self.keep_alive {
            return None;
        }
        self.conn.take().filter(|conn| conn.0.buf.is_empty())
    }

    /// Reads more into the buffer; `Ok(0)` at the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<Result<usize, H1Error>> {
        let Some(conn) = self.conn.as_mut() else {
            return Poll::Ready(Err(H1Error::BodyIncomplete));
        };
        let conn = &mut *conn.0;
        if conn.buf.capacity() - conn.buf.len() < 1024 {
            conn.buf.reserve(BODY_READ);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut conn.io), cx, &mut conn.buf)
            .map_err(H1Error::Io)
    }

    fn buffered(&mut self) -> &mut BytesMut {
        match self.conn.as_mut() {
            Some(conn) => &mut conn.0.buf,
            None => unreachable!("a body still being read owns its connection"),
        }
    }

    /// Up to `max` buffered bytes as a data frame.
    fn take_frame(&mut self, max: u64) -> Frame<Bytes> {
        let buf = self.buffered();
        let n = usize::try_from(max).map_or(buf.len(), |max| max.min(buf.len()));
        Frame::data(buf.split_to(n).freeze())
    }

    /// The next piece of a body part of `rest` more bytes (a sized body, or one chunk), reading
    /// when nothing is buffered, and how many bytes of `rest` it holds. The stream ending first is
    /// an error: the body was cut short.
    fn poll_sized(
        &mut self,
        cx: &mut Context<'_>,
        rest: u64,
    ) -> Poll<Result<(Frame<Bytes>, u64), H1Error>> {
        if self.buffered().is_empty() && ready!(self.poll_fill(cx))? == 0 {
            return Poll::Ready(Err(H1Error::BodyIncomplete));
        }
        let frame = self.take_frame(rest);
        let n = frame.data_ref().map_or(0, Bytes::len) as u64;
        Poll::Ready(Ok((frame, n)))
    }

    /// The position of the next `\n` in the buffer, reading more until there is one (an error
    /// when there is none within `limit` bytes, or the stream ends first).
    fn poll_line(&mut self, cx: &mut Context<'_>, limit: usize) -> Poll<Result<usize, H1Error>> {
        loop {
            let buf = self.buffered();
            if let Some(i) = buf.iter().position(|&b| b == b'\n') {
                return Poll::Ready(Ok(i));
            }
            if buf.len() > limit {
                return Poll::Ready(Err(H1Error::Chunked("a line is too long")));
            }
            if ready!(self.poll_fill(cx))? == 0 {
                return Poll::Ready(Err(H1Error::BodyIncomplete));
            }
        }
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, H1Error>>> {
        loop {
            match self.state {
                State::Done | State::Length(0) => return Poll::Ready(None),
                State::Length(rest) => {
                    let (frame, n) = ready!(self.poll_sized(cx, rest))?;
                    self.state = State::Length(rest - n);
                    return Poll::Ready(Some(Ok(frame)));
                }
                State::Close => {
                    if self.buffered().is_empty() && ready!(self.poll_fill(cx))? == 0 {
                        self.state = State::Done;
                        return Poll::Ready(None);
                    }
                    return Poll::Ready(Some(Ok(self.take_frame(u64::MAX))));
                }
                State::Chunked(Chunk::Size) => {
                    let end = ready!(self.poll_line(cx, MAX_CHUNK_LINE))?;
                    let line = self.buffered().split_to(end + 1);
                    let size = chunk_size(&line)?;
                    self.state = State::Chunked(if size == 0 {
                        Chunk::Trailers(0)
                    } else {
                        Chunk::Data(size)
                    });
                }
                State::Chunked(Chunk::Data(rest)) => {
                    let (frame, n) = ready!(self.poll_sized(cx, rest))?;
                    self.state = State::Chunked(if n == rest {
                        Chunk::DataEnd
                    } else {
                        Chunk::Data(rest - n)
                    });
                    return Poll::Ready(Some(Ok(frame)));
                }
                State::Chunked(Chunk::DataEnd) => {
                    while self.buffered().len() < 2 {
                        if ready!(self.poll_fill(cx))? == 0 {
                            return Poll::Ready(Some(Err(H1Error::BodyIncomplete)));
                        }
                    }
                    if &self.buffered()[..2] != b"\r\n" {
                        return Poll::Ready(Some(Err(H1Error::Chunked(
                            "no CRLF after a chunk's data",
                        ))));
                    }
                    self.buffered().advance(2);
                    self.state = State::Chunked(Chunk::Size);
                }
                State::Chunked(Chunk::Trailers(seen)) => {
                    let end = ready!(self.poll_line(cx, MAX_TRAILERS - seen))?;
                    if seen + end + 1 > MAX_TRAILERS {
                        return Poll::Ready(Some(Err(H1Error::Chunked(
                            "the trailers are too large",
                        ))));
                    }
                    let line = self.buffered().split_to(end + 1);
                    if !line.ends_with(b"\r\n") {
                        return Poll::Ready(Some(Err(H1Error::Chunked(
                            "a trailer line without CRLF",
                        ))));
                    }
                    // Trailers are not forwarded (`Trailer` is hop-by-hop here, §8): read past.
                    self.state = if line.len() == 2 {
                        State::Done
                    } else {
                        State::Chunked(Chunk::Trailers(seen + line.len()))
                    };
                }
            }
        }
    }
}

/// The size on a chunk-size line (`hex [ws] [; extensions] CRLF`).
fn chunk_size(line: &[u8]) -> Result<u64, H1Error> {
    let line = line
        .strip_suffix(b"\r\n")
        .ok_or(H1Error::Chunked("a chunk-size line without CRLF"))?;
    let hex_len = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if hex_len == 0 {
        return Err(H1Error::Chunked("no chunk size"));
    }
    let mut size: u64 = 0;
    for &b in &line[..hex_len] {
        let digit = char::from(b).to_digit(16).map(u64::from).unwrap_or(0);
        size = size
            .checked_mul(16)
            .and_then(|s| s.checked_add(digit))
            .ok_or(H1Error::Chunked("the chunk size overflows"))?;
    }
    let rest = line[hex_len..].trim_ascii_start();
    if !rest.is_empty() && rest[0] != b';' {
        return Err(H1Error::Chunked("invalid chunk size"));
    }
    if rest.iter().any(|&b| b == b'\r' || b == b'\n') {
        return Err(H1Error::Chunked("invalid chunk extension"));
    }
    Ok(size)
}

impl Body for RawBody {
    type Data = Bytes;
    type Error = H1Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, H1Error>>> {
        let this = self.get_mut();
        let next = ready!(this.poll_next(cx));
        if let Some(Err(_)) = next {
            // The connection is in an unknown state: it goes with the body.
            this.conn = None;
            this.keep_alive = false;
            this.state = State::Done;
        }
        Poll::Ready(next)
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done | State::Length(0))
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Length(n) => SizeHint::with_exact(n),
            State::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn head(bytes: &[u8], method: &Method) -> Result<Option<Head>, H1Error> {
        parse_head(&mut BytesMut::from(bytes), method)
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let get = Method::GET;
        let state = |bytes: &[u8]| head(bytes, &get).unwrap().unwrap().state;
        assert_eq!(
            state(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"),
            State::Length(5)
        );
        assert_eq!(
            state(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5, 5\r\n\r\n"),
            State::Length(5)
        );
        assert_eq!(
            state(
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\ncontent-length: 5\r\n\r\n"
            ),
            State::Chunked(Chunk::Size)
        );
        assert_eq!(
            state(b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n"),
            State::Close
        );
        assert_eq!(state(b"HTTP/1.1 200 OK\r\n\r\n"), State::Close);
        assert_eq!(
            state(b"HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n"),
            State::Length(0)
        );
        assert_eq!(
            state(b"HTTP/1.1 304 Not Modified\r\n\r\n"),
            State::Length(0)
        );
        let head_request = head(
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n",
            &Method::HEAD,
        );
        assert_eq!(head_request.unwrap().unwrap().state, State::Length(0));
        for bad in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length:\r\n\r\n",
            b"HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
        ] {
            assert!(head(bad, &get).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn keep_alive_follows_the_version_and_connection() {
        let get = Method::GET;
        let alive = |bytes: &[u8]| head(bytes, &get).unwrap().unwrap().keep_alive;
        assert!(alive(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"));
        assert!(!alive(
            b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"
        ));
        assert!(!alive(
            b"HTTP/1.1 200 OK\r\nconnection: Close\r\nconnection: keep-alive\r\ncontent-length: 0\r\n\r\n"
        ));
        assert!(!alive(b"HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n"));
        assert!(alive(
            b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 0\r\n\r\n"
        ));
        // Read to the close: never reusable.
        assert!(!alive(b"HTTP/1.1 200 OK\r\n\r\n"));
        assert!(!alive(
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\n"
        ));
    }

    #[test]
    fn informational_heads_are_skipped_and_partial_heads_wait() {
        let get = Method::GET;
        let parsed = head(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 201 Created\r\nx-a: 1\r\ncontent-length: 0\r\n\r\n",
            &get,
        )
        .unwrap()
        .unwrap();
        assert_eq!(parsed.response.status(), StatusCode::CREATED);
        assert_eq!(parsed.response.headers()["x-a"], "1");
        assert!(parsed.response.headers().get("link").is_none());
        assert!(
            head(b"HTTP/1.1 200 OK\r\ncontent-len", &get)
                .unwrap()
                .is_none()
        );
        assert!(
            head(b"HTTP/1.1 100 Continue\r\n\r\n", &get)
                .unwrap()
                .is_none()
        );
        let reason = head(b"HTTP/1.1 200 Fine\r\ncontent-length: 0\r\n\r\n", &get)
            .unwrap()
            .unwrap();
        let phrase = reason
            .response
            .extensions()
            .get::<hyper::ext::ReasonPhrase>();
        assert_eq!(phrase.map(|p| p.as_bytes()), Some(&b"Fine"[..]));
    }

    #[test]
    fn too_many_headers_are_an_error() {
        let mut bytes = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            bytes.extend_from_slice(format!("x-{i}: v\r\n").as_bytes());
        }
        bytes.extend_from_slice(b"\r\n");
        assert!(head(&bytes, &Method::GET).is_err());
    }

    #[test]
    fn chunk_size_lines() {
        assert_eq!(chunk_size(b"1a\r\n").unwrap(), 26);
        assert_eq!(chunk_size(b"0\r\n").unwrap(), 0);
        assert_eq!(chunk_size(b"A ; name=value\r\n").unwrap(), 10);
        assert_eq!(chunk_size(b"0000000000000000010\r\n").unwrap(), 16);
        for bad in [
            &b"\r\n"[..],
            b"x\r\n",
            b"1a\n",
            b"1 2\r\n",
            b"11111111111111111\r\n",
            b"-1\r\n",
        ] {
            assert!(chunk_size(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    /// One exchange against a raw upstream that answers `answer` to the first request, then
    /// holds the connection open (or closes it when `close`); the body collected, and whether
    /// the connection came back reusable.
    async fn exchange(
        answer: &'static [u8],
        close: bool,
    ) -> (String, Result<Bytes, H1Error>, bool) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (request_tx, request_rx) = tokio::sync::oneshot::channel();
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            let mut chunk = [0u8; 1024];
            while !got.ends_with(b"\r\n\r\n") {
                let n = stream.read(&mut chunk).await.unwrap();
                assert!(n > 0);
                got.extend_from_slice(&chunk[..n]);
            }
            let _ = request_tx.send(String::from_utf8(got).unwrap());
            // Written in small pieces, so the decoder sees every state boundary.
            for piece in answer.chunks(3) {
                stream.write_all(piece).await.unwrap();
                stream.flush().await.unwrap();
                tokio::task::yield_now().await;
            }
            if !close {
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            }
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let conn = RawConn::new(MaybeHttpsStream::Http(TokioIo::new(tcp)));
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("example"));
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        headers.append("x-b", HeaderValue::from_static("1"));
        headers.append("x-b", HeaderValue::from_static("2"));
        let (_, mut body) = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            conn.send(&Method::GET, "/a?b=c", &headers),
        )
        .await
        .unwrap()
        .map_err(|f| f.error)
        .unwrap();
        let mut data = BytesMut::new();
        let result = loop {
            match tokio::time::timeout(std::time::Duration::from_secs(5), body.frame())
                .await
                .unwrap()
            {
                None => break Ok(data.freeze()),
                Some(Ok(frame)) => data.extend_from_slice(frame.data_ref().unwrap()),
                Some(Err(err)) => break Err(err),
            }
        };
        let reusable = body.take_reusable().is_some();
        server.abort();
        (request_rx.await.unwrap(), result, reusable)
    }

    #[tokio::test]
    async fn the_request_head_is_written_as_hyper_writes_it() {
        let (request, body, reusable) =
            exchange(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", true).await;
        assert_eq!(
            request,
            "GET /a?b=c HTTP/1.1\r\nhost: example\r\nx-b: 1\r\nx-b: 2\r\n\r\n"
        );
        assert_eq!(body.unwrap(), "ok");
        assert!(reusable);
    }

    #[tokio::test]
    async fn bodies_are_read_by_their_framing() {
        let (_, body, reusable) = exchange(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nx-trailer: 1\r\n\r\n",
            false,
        )
        .await;
        assert_eq!(body.unwrap(), "hello world");
        assert!(reusable);

        let (_, body, reusable) = exchange(b"HTTP/1.1 200 OK\r\n\r\nuntil the close", true).await;
        assert_eq!(body.unwrap(), "until the close");
        assert!(!reusable);

        // An answer with more bytes than its length: the body stops at its length, and the
        // connection is not used again.
        let (_, body, reusable) = exchange(
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 200",
            false,
        )
        .await;
        assert_eq!(body.unwrap(), "ok");
        assert!(!reusable);
    }

    #[tokio::test]
    async fn truncated_and_malformed_bodies_are_errors() {
        for answer in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort"[..],
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhel",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\n",
        ] {
            let (_, body, reusable) = exchange(answer, true).await;
            assert!(body.is_err(), "{}", String::from_utf8_lossy(answer));
            assert!(!reusable);
        }
    }

    /// Whether `conn` is found unusable within a second (what the upstream did takes a moment
    /// to reach this side of the socket).
    async fn turns_unusable(conn: &mut RawConn) -> bool {
        for _ in 0..100 {
            if !conn.is_idle_usable() {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        false
    }

    #[tokio::test]
    async fn an_idle_connection_is_usable_until_the_upstream_closes_or_speaks() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        let mut conn = RawConn::new(MaybeHttpsStream::Http(TokioIo::new(client)));
        assert!(conn.is_idle_usable());
        server.write_all(b"HTTP/1.1 200 OK\r\n").await.unwrap();
        assert!(
            turns_unusable(&mut conn).await,
            "unasked bytes make the connection unusable"
        );

        let client = TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let mut conn = RawConn::new(MaybeHttpsStream::Http(TokioIo::new(client)));
        drop(server);
        assert!(
            turns_unusable(&mut conn).await,
            "a closed connection is not usable"
        );
    }
}
