//! The audit log (SPEC §7.3): one JSON line per request, fields declared up front and filled in as
//! the request goes, written by a dedicated thread fed through a bounded channel (never drops:
//! when it falls behind, requests wait), batched, reopened on SIGHUP, flushed on shutdown.

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

/// One audit line. Field order is the SPEC's table; every field is always serialised (`null`
/// where not applicable). Holds no secret: the token only as its hash.
#[derive(Debug, Clone, Serialize)]
pub struct AuditRecord {
    #[serde(serialize_with = "ser_ts")]
    pub ts: SystemTime,
    #[serde(serialize_with = "ser_ulid")]
    pub request_id: Ulid,
    pub client: Option<String>,
    #[serde(serialize_with = "ser_display")]
    pub client_addr: SocketAddr,
    #[serde(serialize_with = "ser_method")]
    pub method: http::Method,
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
            method,
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

    /// The JSON line, without the newline.
    pub fn to_json(&self) -> Vec<u8> {
        let mut line = Vec::with_capacity(512);
        // Serialising plain fields into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut line, self);
        line
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

fn ser_method<S: Serializer>(m: &http::Method, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(m.as_str())
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
#[error("cannot open audit log {path}: {source}")]
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
    if serde_json::to_writer(&mut *line, record).is_err() {
        return;
    }
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
