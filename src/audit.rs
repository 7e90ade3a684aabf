//! The audit log (SPEC §7.3): one JSON line per request, fields declared up front and filled in as
//! the request goes, written by a dedicated thread fed through a bounded channel (never drops:
//! when it falls behind, requests wait), batched, reopened on SIGHUP, flushed on shutdown.
//!
//! Lines are written by hand ([`AuditRecord::write_json`]), not through serde: the writer thread's
//! CPU is the proxy's CPU. The output is byte for byte what serde_json makes of the `Serialize`
//! derive, which stays as the reference the tests compare against.

use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use serde::{Serialize, Serializer};
use tokio::sync::{mpsc, oneshot};
use ulid::Ulid;

use crate::config::AuditSink;
use crate::credential::{CredentialKind, Reason};

/// How an exchange ended (§7.3 `outcome`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// GitHub answered, whatever its status.
    Ok,
    /// The proxy answered without forwarding.
    Refused,
    /// No (complete) answer from GitHub: connect, TLS, timeout, or its body failed mid-stream.
    UpstreamError,
    /// The client went away first.
    Aborted,
}

impl Outcome {
    /// The serde name.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Refused => "refused",
            Outcome::UpstreamError => "upstream_error",
            Outcome::Aborted => "aborted",
        }
    }
}

/// One audit line. Field order is the SPEC's table; every field is always serialised (`null`
/// where not applicable). Holds no secret: the token only as its hash.
///
/// Lines are written by [`AuditRecord::write_json`]; the `Serialize` derive defines the format it
/// must match (tested byte for byte).
#[derive(Debug, Clone, Serialize)]
pub struct AuditRecord {
    #[serde(serialize_with = "ser_ts")]
    pub ts: SystemTime,
    #[serde(serialize_with = "ser_ulid")]
    pub request_id: Ulid,
    pub client: Option<String>,
    #[serde(serialize_with = "ser_display")]
    pub client_addr: SocketAddr,
    /// `None` only for a request whose head could not be parsed (its method is unknown).
    #[serde(serialize_with = "ser_opt_method")]
    pub method: Option<http::Method>,
    pub host: Option<String>,
    pub path: Option<String>,
    pub owner: Option<String>,
    pub repo: Option<String>,
    pub credential: CredentialKind,
    pub reason: Option<Reason>,
    pub app_id: Option<u64>,
    pub installation_id: Option<u64>,
    #[serde(serialize_with = "ser_opt_arc_str")]
    pub hashed_token: Option<Arc<str>>,
    pub status: Option<u16>,
    pub upstream_status: Option<u16>,
    pub github_request_id: Option<String>,
    pub rate_limit_remaining: Option<u64>,
    pub rate_limit_resource: Option<String>,
    pub bytes_out: u64,
    pub duration_ms: f64,
    pub outcome: Outcome,
}

impl AuditRecord {
    /// A record for a request that just arrived: nothing known yet but who and what.
    pub fn new(
        ts: SystemTime,
        request_id: Ulid,
        client_addr: SocketAddr,
        method: http::Method,
    ) -> Self {
        AuditRecord {
            ts,
            request_id,
            client: None,
            client_addr,
            method: Some(method),
            host: None,
            path: None,
            owner: None,
            repo: None,
            credential: CredentialKind::None,
            reason: None,
            app_id: None,
            installation_id: None,
            hashed_token: None,
            status: None,
            upstream_status: None,
            github_request_id: None,
            rate_limit_remaining: None,
            rate_limit_resource: None,
            bytes_out: 0,
            duration_ms: 0.0,
            outcome: Outcome::Aborted,
        }
    }

    /// A record for a request whose head could not be parsed: no method is known.
    pub fn unparsed(ts: SystemTime, request_id: Ulid, client_addr: SocketAddr) -> Self {
        AuditRecord {
            method: None,
            ..AuditRecord::new(ts, request_id, client_addr, http::Method::GET)
        }
    }

    /// The JSON line, without the newline.
    pub fn to_json(&self) -> Vec<u8> {
        let mut line = Vec::with_capacity(512);
        self.write_json(&mut line);
        line
    }

    /// Appends the JSON line, without the newline: the same bytes as `serde_json::to_writer(self)`
    /// (field order, `null`s, escaping, number formats), without serde's generic path or any
    /// allocation beyond `out` growing.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        let mut int = itoa::Buffer::new();
        out.extend_from_slice(b"{\"ts\":");
        push_ts(out, self.ts);
        out.extend_from_slice(b",\"request_id\":\"");
        let mut ulid = [0u8; ulid::ULID_LEN];
        out.extend_from_slice(self.request_id.array_to_str(&mut ulid).as_bytes());
        out.extend_from_slice(b"\",\"client\":");
        push_opt_str(out, self.client.as_deref());
        out.extend_from_slice(b",\"client_addr\":");
        push_addr(out, &mut int, &self.client_addr);
        out.extend_from_slice(b",\"method\":");
        push_opt_str(out, self.method.as_ref().map(http::Method::as_str));
        out.extend_from_slice(b",\"host\":");
        push_opt_str(out, self.host.as_deref());
        out.extend_from_slice(b",\"path\":");
        push_opt_str(out, self.path.as_deref());
        out.extend_from_slice(b",\"owner\":");
        push_opt_str(out, self.owner.as_deref());
        out.extend_from_slice(b",\"repo\":");
        push_opt_str(out, self.repo.as_deref());
        out.extend_from_slice(b",\"credential\":");
        push_str(out, self.credential.as_str());
        out.extend_from_slice(b",\"reason\":");
        push_opt_str(out, self.reason.map(Reason::as_str));
        out.extend_from_slice(b",\"app_id\":");
        push_opt_int(out, &mut int, self.app_id);
        out.extend_from_slice(b",\"installation_id\":");
        push_opt_int(out, &mut int, self.installation_id);
        out.extend_from_slice(b",\"hashed_token\":");
        push_opt_str(out, self.hashed_token.as_deref());
        out.extend_from_slice(b",\"status\":");
        push_opt_int(out, &mut int, self.status);
        out.extend_from_slice(b",\"upstream_status\":");
        push_opt_int(out, &mut int, self.upstream_status);
        out.extend_from_slice(b",\"github_request_id\":");
        push_opt_str(out, self.github_request_id.as_deref());
        out.extend_from_slice(b",\"rate_limit_remaining\":");
        push_opt_int(out, &mut int, self.rate_limit_remaining);
        out.extend_from_slice(b",\"rate_limit_resource\":");
        push_opt_str(out, self.rate_limit_resource.as_deref());
        out.extend_from_slice(b",\"bytes_out\":");
        out.extend_from_slice(int.format(self.bytes_out).as_bytes());
        out.extend_from_slice(b",\"duration_ms\":");
        if self.duration_ms.is_finite() {
            // The formatter serde_json uses (same crate, same version): same digits.
            out.extend_from_slice(
                zmij::Buffer::new()
                    .format_finite(self.duration_ms)
                    .as_bytes(),
            );
        } else {
            // serde_json writes NaN and infinities as null.
            out.extend_from_slice(b"null");
        }
        out.extend_from_slice(b",\"outcome\":");
        push_str(out, self.outcome.as_str());
        out.push(b'}');
    }
}

/// serde_json's escape table: `b'u'` for `\u00XX`, another letter for its short form (`\n`), 0 for
/// verbatim. Escaped: `"`, `\` and bytes below 0x20; DEL and non-ASCII pass through.
static ESCAPE: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = b'u';
        b += 1;
    }
    table[0x08] = b'b';
    table[0x09] = b't';
    table[0x0a] = b'n';
    table[0x0c] = b'f';
    table[0x0d] = b'r';
    table[b'"' as usize] = b'"';
    table[b'\\' as usize] = b'\\';
    table
};

/// Whether any of the eight bytes of `word` needs an escape: below 0x20, `"` or `\`. The usual
/// has-zero-byte / has-less-than bit tricks; exact for "any", which is all that is asked.
fn word_needs_escape(word: u64) -> bool {
    const ONES: u64 = u64::from_le_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_le_bytes([0x80; 8]);
    let below_space = word.wrapping_sub(ONES * 0x20) & !word;
    let quote = word ^ (ONES * u64::from(b'"'));
    let backslash = word ^ (ONES * u64::from(b'\\'));
    let has_zero = |x: u64| x.wrapping_sub(ONES) & !x;
    (below_space | has_zero(quote) | has_zero(backslash)) & HIGH != 0
}

/// A JSON string, quoted and escaped as serde_json does. Audit strings rarely need an escape, so
/// they are scanned eight bytes at a time and copied in runs.
fn push_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    out.push(b'"');
    let mut run = 0;
    let mut i = 0;
    while i < bytes.len() {
        if let Some(chunk) = bytes.get(i..i + 8) {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            if !word_needs_escape(u64::from_le_bytes(word)) {
                i += 8;
                continue;
            }
        }
        let byte = bytes[i];
        let escape = ESCAPE[usize::from(byte)];
        if escape != 0 {
            out.extend_from_slice(&bytes[run..i]);
            if escape == b'u' {
                out.extend_from_slice(&[
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    HEX[usize::from(byte >> 4)],
                    HEX[usize::from(byte & 0xf)],
                ]);
            } else {
                out.extend_from_slice(&[b'\\', escape]);
            }
            run = i + 1;
        }
        i += 1;
    }
    out.extend_from_slice(&bytes[run..]);
    out.push(b'"');
}

fn push_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => push_str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

fn push_opt_int<I: itoa::Integer>(out: &mut Vec<u8>, int: &mut itoa::Buffer, n: Option<I>) {
    match n {
        Some(n) => out.extend_from_slice(int.format(n).as_bytes()),
        None => out.extend_from_slice(b"null"),
    }
}

/// The `Display` form, quoted (it never needs escaping). IPv4, the common case, by hand; IPv6
/// through `Display` (its zero-compression rules are not worth repeating).
fn push_addr(out: &mut Vec<u8>, int: &mut itoa::Buffer, addr: &SocketAddr) {
    out.push(b'"');
    match addr {
        SocketAddr::V4(v4) => {
            let [a, b, c, d] = v4.ip().octets();
            out.extend_from_slice(int.format(a).as_bytes());
            out.push(b'.');
            out.extend_from_slice(int.format(b).as_bytes());
            out.push(b'.');
            out.extend_from_slice(int.format(c).as_bytes());
            out.push(b'.');
            out.extend_from_slice(int.format(d).as_bytes());
            out.push(b':');
            out.extend_from_slice(int.format(v4.port()).as_bytes());
        }
        // Writing into a Vec cannot fail.
        SocketAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
    out.push(b'"');
}

/// [`format_ts`], quoted, digit by digit into a stack buffer. Years outside 0..=9999 (which
/// `format_ts` writes with a sign) take the allocating path.
fn push_ts(out: &mut Vec<u8>, ts: SystemTime) {
    let dt = time::OffsetDateTime::from(ts);
    let Ok(year @ 0..=9999) = u16::try_from(dt.year()) else {
        push_str(out, &format_ts(ts));
        return;
    };
    let mut line = *b"\"0000-00-00T00:00:00.000Z\"";
    put_digits(&mut line[1..5], year);
    put_digits(&mut line[6..8], u8::from(dt.month()).into());
    put_digits(&mut line[9..11], dt.day().into());
    put_digits(&mut line[12..14], dt.hour().into());
    put_digits(&mut line[15..17], dt.minute().into());
    put_digits(&mut line[18..20], dt.second().into());
    put_digits(&mut line[21..24], dt.millisecond());
    out.extend_from_slice(&line);
}

/// `n`'s last `to.len()` decimal digits, zero-padded.
fn put_digits(to: &mut [u8], mut n: u16) {
    for digit in to.iter_mut().rev() {
        *digit = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

/// `2026-11-25T04:21:09.123Z`: UTC, RFC 3339, milliseconds.
pub fn format_ts(ts: SystemTime) -> String {
    let dt = time::OffsetDateTime::from(ts);
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    dt.format(&format)
        .unwrap_or_else(|_| String::from("1970-01-01T00:00:00.000Z"))
}

fn ser_ts<S: Serializer>(ts: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_ts(*ts))
}

fn ser_ulid<S: Serializer>(id: &Ulid, s: S) -> Result<S::Ok, S::Error> {
    let mut buf = [0u8; ulid::ULID_LEN];
    s.serialize_str(id.array_to_str(&mut buf))
}

fn ser_opt_arc_str<S: Serializer>(v: &Option<Arc<str>>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.serialize_str(v),
        None => s.serialize_none(),
    }
}

fn ser_display<S: Serializer, T: std::fmt::Display>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

fn ser_opt_method<S: Serializer>(m: &Option<http::Method>, s: S) -> Result<S::Ok, S::Error> {
    match m {
        Some(m) => s.serialize_str(m.as_str()),
        None => s.serialize_none(),
    }
}

/// Where records go.
pub enum Sink {
    Stdout,
    /// Appended to, created if missing; reopened on [`AuditLog::reopen`].
    File(PathBuf),
    /// Any writer (tests); reopen is a no-op.
    Writer(Box<dyn Write + Send>),
}

impl From<&AuditSink> for Sink {
    fn from(sink: &AuditSink) -> Self {
        match sink {
            AuditSink::Stdout => Sink::Stdout,
            AuditSink::File(path) => Sink::File(path.clone()),
        }
    }
}

enum Msg {
    Record(Box<AuditRecord>),
    Reopen,
    Shutdown(oneshot::Sender<()>),
}

/// Cheap to clone; what request handling holds to submit records.
#[derive(Clone)]
pub struct AuditSender {
    tx: mpsc::Sender<Msg>,
}

impl AuditSender {
    /// Queues a record, waiting while the writer is behind (records are never dropped).
    pub async fn send(&self, record: AuditRecord) {
        if self.tx.send(Msg::Record(Box::new(record))).await.is_err() {
            tracing::error!("audit writer is gone; a record was lost");
        }
    }

    /// For places that cannot wait (a `Drop`): queues now if there is room, else hands the record
    /// to a task that waits for room, so it is still never dropped.
    pub fn send_from_drop(&self, record: AuditRecord) {
        match self.tx.try_send(Msg::Record(Box::new(record))) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(msg)) => {
                let tx = self.tx.clone();
                match tokio::runtime::Handle::try_current() {
                    Ok(handle) => {
                        handle.spawn(async move {
                            let _ = tx.send(msg).await;
                        });
                    }
                    Err(_) => {
                        // Outside a runtime (never in the server): block this thread instead.
                        let _ = tx.blocking_send(msg);
                    }
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::error!("audit writer is gone; a record was lost");
            }
        }
    }

    /// Queues the record `make` builds if the queue has room now, without a future; `false` (and
    /// `make` not called) when it is full, for the caller to wait with [`AuditSender::reserve`].
    pub fn try_send_with(&self, make: impl FnOnce() -> AuditRecord) -> bool {
        match self.tx.try_reserve() {
            Ok(permit) => {
                permit.send(Msg::Record(Box::new(make())));
                true
            }
            Err(mpsc::error::TrySendError::Full(())) => false,
            Err(mpsc::error::TrySendError::Closed(())) => {
                drop(make());
                tracing::error!("audit writer is gone; a record was lost");
                true
            }
        }
    }

    /// Asks the writer to reopen its file (SIGHUP, log rotation).
    pub async fn reopen(&self) {
        let _ = self.tx.send(Msg::Reopen).await;
    }

    /// Reserves room for one record; resolves when the writer can take it. Used at the end of a
    /// response body so a slow writer slows responses down instead of losing records.
    pub async fn reserve(self) -> Option<AuditPermit> {
        self.tx.reserve_owned().await.ok().map(AuditPermit)
    }
}

/// Room for one record in the writer's queue.
pub struct AuditPermit(mpsc::OwnedPermit<Msg>);

impl AuditPermit {
    pub fn send(self, record: AuditRecord) {
        self.0.send(Msg::Record(Box::new(record)));
    }
}

/// The writer and its handle: [`AuditLog::sender`] for requests, [`AuditLog::reopen`] on SIGHUP,
/// [`AuditLog::shutdown`] to flush and close.
pub struct AuditLog {
    sender: AuditSender,
}

/// The writer could not open its sink.
#[derive(Debug, thiserror::Error)]
#[error("proxy.audit.path: cannot open {path}: {source}")]
pub struct AuditOpenError {
    pub path: String,
    pub source: io::Error,
}

/// Records per writer batch; also the default channel capacity.
const BATCH: usize = 1024;
/// How long the writer waits after catching up before it parks on the channel again.
const LINGER: std::time::Duration = std::time::Duration::from_millis(1);

impl AuditLog {
    /// Starts the writer thread with a channel of `capacity` records.
    pub fn start(sink: Sink, capacity: usize) -> Result<AuditLog, AuditOpenError> {
        let out = open(&sink)?;
        let (tx, rx) = mpsc::channel(capacity.max(1));
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || write_loop(sink, out, rx))
            .map_err(|source| AuditOpenError {
                path: "(writer thread)".into(),
                source,
            })?;
        Ok(AuditLog {
            sender: AuditSender { tx },
        })
    }

    /// The writer for a configured sink, with the default capacity.
    pub fn from_config(sink: &AuditSink) -> Result<AuditLog, AuditOpenError> {
        Self::start(Sink::from(sink), 4 * BATCH)
    }

    pub fn sender(&self) -> AuditSender {
        self.sender.clone()
    }

    /// Reopens the file (log rotation). Records queued before are written to the old file.
    pub async fn reopen(&self) {
        self.sender.reopen().await;
    }

    /// Writes every record queued so far (and any still being queued by in-flight drops), flushes,
    /// closes, and resolves when the last one is on disk.
    pub async fn shutdown(self) {
        let (done_tx, done_rx) = oneshot::channel();
        if self.sender.tx.send(Msg::Shutdown(done_tx)).await.is_ok() {
            let _ = done_rx.await;
        }
    }
}

fn open(sink: &Sink) -> Result<Box<dyn Write + Send>, AuditOpenError> {
    match sink {
        Sink::Stdout => Ok(Box::new(io::stdout())),
        Sink::File(path) => OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map(|f| Box::new(f) as Box<dyn Write + Send>)
            .map_err(|source| AuditOpenError {
                path: path.display().to_string(),
                source,
            }),
        // The writer itself is moved in by `write_loop`; this placeholder is replaced there.
        Sink::Writer(_) => Ok(Box::new(io::sink())),
    }
}

fn write_loop(mut sink: Sink, first: Box<dyn Write + Send>, mut rx: mpsc::Receiver<Msg>) {
    let first = match std::mem::replace(&mut sink, Sink::Stdout) {
        Sink::Writer(w) => w,
        other => {
            sink = other;
            first
        }
    };
    let mut out = BufWriter::with_capacity(64 * 1024, first);
    let mut batch = Vec::with_capacity(BATCH);
    let mut line = Vec::with_capacity(1024);
    let mut write_failed = false;
    loop {
        if rx.blocking_recv_many(&mut batch, BATCH) == 0 {
            // Every sender is gone: nothing more can arrive.
            flush(&mut out, &mut write_failed);
            return;
        }
        let mut closing = None;
        for msg in batch.drain(..) {
            match msg {
                Msg::Record(record) => {
                    write_record(&mut out, &mut line, &record, &mut write_failed)
                }
                Msg::Reopen => {
                    flush(&mut out, &mut write_failed);
                    if let Sink::File(path) = &sink {
                        match open(&sink) {
                            Ok(w) => {
                                out = BufWriter::with_capacity(64 * 1024, w);
                                write_failed = false;
                                tracing::info!(path = %path.display(), "audit log reopened");
                            }
                            Err(err) => tracing::error!("{err}; still writing to the old file"),
                        }
                    }
                }
                Msg::Shutdown(done) => closing = Some(done),
            }
        }
        if let Some(done) = closing {
            // Take what is still queued (and what permits already reserved), then stop.
            rx.close();
            while let Some(msg) = rx.blocking_recv() {
                if let Msg::Record(record) = msg {
                    write_record(&mut out, &mut line, &record, &mut write_failed);
                }
            }
            flush(&mut out, &mut write_failed);
            let _ = done.send(());
            return;
        }
        // Flush only when caught up: one write syscall per burst, not per record. Then linger
        // before parking again: under load the next records gather meanwhile and arrive as one
        // batch (one write, no futex wake per request); an idle proxy still writes at once.
        if rx.is_empty() {
            flush(&mut out, &mut write_failed);
            std::thread::sleep(LINGER);
        }
    }
}

fn write_record(
    out: &mut BufWriter<Box<dyn Write + Send>>,
    line: &mut Vec<u8>,
    record: &AuditRecord,
    write_failed: &mut bool,
) {
    line.clear();
    record.write_json(line);
    line.push(b'\n');
    if let Err(err) = out.write_all(line) {
        report_write_error(err, write_failed);
    }
}

fn flush(out: &mut BufWriter<Box<dyn Write + Send>>, write_failed: &mut bool) {
    if let Err(err) = out.flush() {
        report_write_error(err, write_failed);
    }
}

fn report_write_error(err: io::Error, write_failed: &mut bool) {
    // Once per failure streak: a full disk must not turn into a log flood.
    if !*write_failed {
        tracing::error!("cannot write the audit log: {err}");
        *write_failed = true;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::{Duration, UNIX_EPOCH};

    fn record(n: u64) -> AuditRecord {
        let mut r = AuditRecord::new(
            UNIX_EPOCH + Duration::from_millis(1_795_000_000_123),
            Ulid::from_parts(n, 0),
            "127.0.0.1:5000".parse().unwrap(),
            http::Method::GET,
        );
        r.bytes_out = n;
        r
    }

    #[test]
    fn every_field_is_present_in_order_with_nulls() {
        let line = String::from_utf8(record(1).to_json()).unwrap();
        let fields = [
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
        let mut at = 0;
        for field in fields {
            let key = format!("\"{field}\":");
            let pos = line[at..]
                .find(&key)
                .unwrap_or_else(|| panic!("{field} missing or out of order in {line}"));
            at += pos + key.len();
        }
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v.as_object().unwrap().len(), fields.len());
        assert!(v["client"].is_null());
        assert!(v["host"].is_null());
        assert!(v["hashed_token"].is_null());
        assert!(v["rate_limit_remaining"].is_null());
        assert_eq!(v["credential"], "none");
        assert_eq!(v["method"], "GET");
        assert_eq!(v["client_addr"], "127.0.0.1:5000");
        assert_eq!(v["outcome"], "aborted");
        assert!(v["duration_ms"].is_f64());
    }

    #[test]
    fn ts_is_utc_rfc3339_with_milliseconds() {
        let v: serde_json::Value = serde_json::from_slice(&record(1).to_json()).unwrap();
        assert_eq!(v["ts"], "2026-11-18T11:06:40.123Z");
        assert_eq!(format_ts(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn filled_record_serialises_numbers_and_hash() {
        let mut r = record(7);
        r.credential = CredentialKind::App;
        r.reason = Some(Reason::Installed);
        r.app_id = Some(12345);
        r.installation_id = Some(678);
        r.hashed_token = Some(crate::credential::hash_token("abc").into());
        r.status = Some(200);
        r.upstream_status = Some(200);
        r.rate_limit_remaining = Some(4987);
        r.rate_limit_resource = Some("core".into());
        r.duration_ms = 85.25;
        r.outcome = Outcome::Ok;
        let v: serde_json::Value = serde_json::from_slice(&r.to_json()).unwrap();
        assert_eq!(v["request_id"], Ulid::from_parts(7, 0).to_string());
        assert_eq!(v["credential"], "app");
        assert_eq!(v["reason"], "installed");
        assert_eq!(v["app_id"], 12345);
        assert_eq!(
            v["hashed_token"],
            "ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0="
        );
        assert_eq!(v["rate_limit_remaining"], 4987);
        assert_eq!(v["duration_ms"], 85.25);
        assert_eq!(v["outcome"], "ok");
    }

    #[test]
    fn write_json_fixed_record() {
        let mut r = AuditRecord::new(
            UNIX_EPOCH + Duration::new(1_795_000_000, 123_999_999),
            Ulid::from_parts(7, 0),
            "[2001:db8::1]:443".parse().unwrap(),
            http::Method::POST,
        );
        r.client = Some("ci \"bot\"\\\n\u{1}\u{7f}é😀".into());
        r.host = Some("api.github.com".into());
        r.path = Some("/repos/o/r/issues".into());
        r.owner = Some("o".into());
        r.credential = CredentialKind::Pat;
        r.reason = Some(Reason::NoApp);
        r.hashed_token = Some("ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0=".into());
        r.status = Some(201);
        r.upstream_status = Some(201);
        r.github_request_id = Some("C0DE:1234".into());
        r.rate_limit_remaining = Some(0);
        r.bytes_out = 18_446_744_073_709_551_615;
        r.duration_ms = 1.5e-7;
        r.outcome = Outcome::UpstreamError;
        let expected = concat!(
            r#"{"ts":"2026-11-18T11:06:40.123Z","request_id":"00000000070000000000000000","#,
            // DEL and non-ASCII verbatim.
            "\"client\":\"ci \\\"bot\\\"\\\\\\n\\u0001\u{7f}é😀\",",
            r#""client_addr":"[2001:db8::1]:443","#,
            r#""method":"POST","host":"api.github.com","path":"/repos/o/r/issues","owner":"o","#,
            r#""repo":null,"credential":"pat","reason":"no_app","app_id":null,"#,
            r#""installation_id":null,"hashed_token":"ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0=","#,
            r#""status":201,"upstream_status":201,"github_request_id":"C0DE:1234","#,
            r#""rate_limit_remaining":0,"rate_limit_resource":null,"#,
            r#""bytes_out":18446744073709551615,"duration_ms":1.5e-7,"outcome":"upstream_error"}"#,
        );
        let line = String::from_utf8(r.to_json()).unwrap();
        assert_eq!(line, expected);
        assert_eq!(line.as_bytes(), serde_json::to_vec(&r).unwrap());
    }

    // Every credential kind and reason: the metrics' tables (in discriminant order, tested there).
    use crate::metrics::{CREDENTIALS as KINDS, REASONS};
    const OUTCOMES: [Outcome; 4] = [
        Outcome::Ok,
        Outcome::Refused,
        Outcome::UpstreamError,
        Outcome::Aborted,
    ];

    /// Fails to compile when a variant is added: add it to these lists (and the metrics' tables).
    #[allow(dead_code)]
    fn lists_are_exhaustive(k: CredentialKind, r: Reason, o: Outcome) {
        use Reason::*;
        match k {
            CredentialKind::App
            | CredentialKind::Pat
            | CredentialKind::Anonymous
            | CredentialKind::None => {}
        }
        match r {
            Installed
            | PublicAccess
            | OwnerNotAllowed
            | NotInstalled
            | Suspended
            | RepoNotSelected
            | AppError
            | NoApp
            | NoOwner
            | NoCredential
            | InvalidPath
            | InvalidRequest
            | UnknownHost
            | AppEndpoint
            | ClientPolicy
            | ClientUnauthenticated
            | ConnectNotSupported
            | BodyTooLarge
            | UpstreamUnreachable
            | UpstreamTls
            | UpstreamTimeout
            | Overloaded => {}
        }
        match o {
            Outcome::Ok | Outcome::Refused | Outcome::UpstreamError | Outcome::Aborted => {}
        }
    }

    #[test]
    fn as_str_is_the_serde_name() {
        for k in KINDS {
            assert_eq!(serde_json::to_value(k).unwrap(), k.as_str());
        }
        for r in REASONS {
            assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
        }
        for o in OUTCOMES {
            assert_eq!(serde_json::to_value(o).unwrap(), o.as_str());
        }
    }

    #[test]
    fn word_check_flags_exactly_the_bytes_that_need_an_escape() {
        // Every byte value at every position, among fillers that need none (ASCII, and bytes with
        // the high bit set, which the bit tricks must not mistake for small ones).
        for filler in [b'a', 0xff, 0x80, b'!'] {
            for byte in 0..=255u8 {
                for at in 0..8 {
                    let mut word = [filler; 8];
                    word[at] = byte;
                    assert_eq!(
                        word_needs_escape(u64::from_le_bytes(word)),
                        ESCAPE[usize::from(byte)] != 0,
                        "byte {byte:#04x} at {at} among {filler:#04x}"
                    );
                }
            }
        }
    }

    #[test]
    fn long_strings_escape_as_serde_json_at_every_offset() {
        for at in 0..40 {
            for special in ["\"", "\\", "\n", "\u{1}", "\u{1f}", "é", "\u{7f}"] {
                let mut text = "x".repeat(at);
                text.push_str(special);
                text.push_str(&"y".repeat(40 - at));
                let mut out = Vec::new();
                push_str(&mut out, &text);
                assert_eq!(out, serde_json::to_vec(&text).unwrap(), "{text:?}");
            }
        }
    }

    mod equivalence {
        use super::*;
        use proptest::prelude::*;
        use proptest::sample::select;

        /// Anything, weighted towards what needs escaping.
        fn text() -> impl Strategy<Value = String> {
            let special = select(vec![
                '"', '\\', '\n', '\r', '\t', '\u{8}', '\u{c}', '\0', '\u{1f}', '\u{7f}', '/', 'é',
                '\u{2028}', '\u{fffd}', '😀',
            ]);
            let control = (0u8..0x20).prop_map(char::from);
            proptest::collection::vec(prop_oneof![any::<char>(), special, control], 0..24)
                .prop_map(String::from_iter)
        }

        fn opt_text() -> impl Strategy<Value = Option<String>> {
            proptest::option::of(text())
        }

        fn duration() -> impl Strategy<Value = f64> {
            prop_oneof![
                any::<f64>(),
                0.0..100_000.0,
                select(vec![
                    0.0,
                    -0.0,
                    5e-324,
                    f64::MIN_POSITIVE,
                    1e-7,
                    0.1,
                    1e16,
                    1e21,
                    f64::MAX,
                    f64::MIN,
                    f64::NAN,
                    f64::INFINITY,
                    f64::NEG_INFINITY,
                ]),
            ]
        }

        fn method() -> impl Strategy<Value = http::Method> {
            select(vec![
                http::Method::GET,
                http::Method::HEAD,
                http::Method::POST,
                http::Method::PUT,
                http::Method::PATCH,
                http::Method::DELETE,
                http::Method::OPTIONS,
                http::Method::CONNECT,
                http::Method::TRACE,
                http::Method::from_bytes(b"PURGE").unwrap(),
                http::Method::from_bytes(b"M-SEARCH").unwrap(),
            ])
        }

        fn record() -> impl Strategy<Value = AuditRecord> {
            // 1970-01-01 to 9999-12-31.
            let ts = (0u64..253_402_300_800, 0u32..1_000_000_000)
                .prop_map(|(s, n)| UNIX_EPOCH + Duration::new(s, n));
            let who = (
                ts,
                any::<u128>().prop_map(Ulid),
                opt_text(),
                any::<SocketAddr>(),
                proptest::option::of(method()),
            );
            let what = (opt_text(), opt_text(), opt_text(), opt_text());
            let how = (
                select(KINDS.to_vec()),
                proptest::option::of(select(REASONS.to_vec())),
                proptest::option::of(any::<u64>()),
                proptest::option::of(any::<u64>()),
                opt_text().prop_map(|t| t.map(Arc::from)),
            );
            let answer = (
                proptest::option::of(any::<u16>()),
                proptest::option::of(any::<u16>()),
                opt_text(),
                proptest::option::of(any::<u64>()),
                opt_text(),
                any::<u64>(),
                duration(),
                select(OUTCOMES.to_vec()),
            );
            (who, what, how, answer).prop_map(
                |(
                    (ts, request_id, client, client_addr, method),
                    (host, path, owner, repo),
                    (credential, reason, app_id, installation_id, hashed_token),
                    (
                        status,
                        upstream_status,
                        github_request_id,
                        rate_limit_remaining,
                        rate_limit_resource,
                        bytes_out,
                        duration_ms,
                        outcome,
                    ),
                )| AuditRecord {
                    ts,
                    request_id,
                    client,
                    client_addr,
                    method,
                    host,
                    path,
                    owner,
                    repo,
                    credential,
                    reason,
                    app_id,
                    installation_id,
                    hashed_token,
                    status,
                    upstream_status,
                    github_request_id,
                    rate_limit_remaining,
                    rate_limit_resource,
                    bytes_out,
                    duration_ms,
                    outcome,
                },
            )
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2048))]

            #[test]
            fn write_json_is_serde_json(r in record()) {
                // Appends: what is already in the buffer stays.
                let mut line = b"prefix".to_vec();
                r.write_json(&mut line);
                let expected = serde_json::to_vec(&r).unwrap();
                prop_assert_eq!(&line[..6], b"prefix");
                prop_assert!(
                    line[6..] == expected[..],
                    "\n  ours: {}\n serde: {}",
                    String::from_utf8_lossy(&line[6..]),
                    String::from_utf8_lossy(&expected)
                );
            }
        }
    }

    /// A writer that is slow and shared with the test.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>, Arc<std::sync::atomic::AtomicUsize>);
    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn never_drops_under_backpressure_and_keeps_order() {
        let shared = Shared::default();
        let log = AuditLog::start(Sink::Writer(Box::new(shared.clone())), 2).unwrap();
        let sender = log.sender();
        let producer = tokio::spawn(async move {
            for n in 0..10_000u64 {
                sender.send(record(n)).await;
            }
        });
        tokio::time::timeout(Duration::from_secs(60), producer)
            .await
            .unwrap()
            .unwrap();
        tokio::time::timeout(Duration::from_secs(60), log.shutdown())
            .await
            .unwrap();
        let bytes = shared.0.lock().unwrap().clone();
        let text = String::from_utf8(bytes).unwrap();
        let outs: Vec<u64> = text
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["bytes_out"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(outs, (0..10_000).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn shutdown_flushes_and_drop_path_records_too() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::start(Sink::File(path.clone()), 1).unwrap();
        let sender = log.sender();
        for n in 0..50 {
            // More than the channel holds: the overflow goes through spawned senders.
            sender.send_from_drop(record(n));
        }
        sender.send(record(50)).await;
        // Let the spawned senders queue theirs before asking for shutdown.
        tokio::task::yield_now().await;
        log.shutdown().await;
        let text = std::fs::read_to_string(&path).unwrap();
        let mut outs: Vec<u64> = text
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["bytes_out"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        outs.sort_unstable();
        assert_eq!(outs, (0..=50).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn batches_writes() {
        let shared = Shared::default();
        let log = AuditLog::start(Sink::Writer(Box::new(shared.clone())), 4096).unwrap();
        let sender = log.sender();
        for n in 0..2000 {
            sender.send(record(n)).await;
        }
        log.shutdown().await;
        let writes = shared.1.load(std::sync::atomic::Ordering::Relaxed);
        let lines = String::from_utf8(shared.0.lock().unwrap().clone())
            .unwrap()
            .lines()
            .count();
        assert_eq!(lines, 2000);
        // A 64 KiB buffer holds ~150 records: far fewer writes than records.
        assert!(writes < 200, "{writes} writes for 2000 records");
    }

    #[tokio::test]
    async fn reopen_moves_to_a_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let rotated = dir.path().join("audit.log.1");
        let log = AuditLog::start(Sink::File(path.clone()), 16).unwrap();
        log.sender().send(record(1)).await;
        // Wait for the first record to land before rotating.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .count()
            < 1
        {
            assert!(std::time::Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        std::fs::rename(&path, &rotated).unwrap();
        log.reopen().await;
        log.sender().send(record(2)).await;
        log.shutdown().await;
        assert_eq!(
            std::fs::read_to_string(&rotated).unwrap().lines().count(),
            1
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 1);
    }
}
