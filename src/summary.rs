//! `gh-token-proxy audit summary [FILE...] [--json]` (SPEC §7.3): reads audit logs (JSON lines, stdin
//! when no file, `-` for stdin among files) in one streaming pass and prints, per integration and
//! owner, requests by credential kind, by reason and the top paths, then the PAT retirement list:
//! owners served by the PAT because the App is not installed on them.
//!
//! # Grouping and ordering
//!
//! Records are grouped by `host` (the upstream authority; `null` is shown as `(unrouted)`) and
//! `owner`, compared case-insensitively as everywhere in the proxy and shown lowercased (`null` is
//! `(no owner)`). Every list is ordered by count, highest first, then by name, so the output of the
//! same input is byte-for-byte the same. Memory is bounded by the number of distinct
//! (host, owner, path) keys: per owner, the first [`MAX_PATHS_PER_OWNER`] distinct paths are
//! counted and every later one is counted as `(other)`. A line that is not a JSON audit record
//! (bad JSON, not UTF-8, no `credential`/`reason` string, longer than [`MAX_LINE_BYTES`]) is skipped
//! and counted; blank lines are ignored. The exit code is 0, or 1 when a named file cannot be read.
//!
//! # `--json` shape (stable; fields are only ever added)
//!
//! ```json
//! {
//!   "records": 1234,
//!   "skipped_malformed_lines": 2,
//!   "integrations": [
//!     {
//!       "host": "api.github.com",
//!       "requests": 1200,
//!       "owners": [
//!         {
//!           "owner": "acme",
//!           "requests": 900,
//!           "credentials": {"anonymous": 0, "app": 800, "none": 0, "pat": 100},
//!           "reasons": [{"reason": "installed", "requests": 800}, {"reason": "not_installed", "requests": 100}],
//!           "top_paths": [{"path": "/repos/acme/widgets", "requests": 700}],
//!           "distinct_paths": 12
//!         }
//!       ]
//!     }
//!   ],
//!   "pat_not_installed": [{"host": "api.github.com", "owner": "acme", "requests": 100}]
//! }
//! ```
//!
//! `host` and `owner` are `null` for unrouted and ownerless records. `credentials` always has the
//! four kinds of §7.3 (plus any other value seen in the logs), keys sorted; `reasons` lists the reasons seen;
//! `top_paths` has at most [`TOP_PATHS`] entries (a `null` path is `(no path)`, overflow paths are
//! `(other)`); `distinct_paths` counts the paths tracked (at most [`MAX_PATHS_PER_OWNER`]).
//! `pat_not_installed` is the PAT retirement list: records with credential `pat` and reason
//! `not_installed`, per host and owner.

use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, BufRead, BufReader, IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use serde::{Deserialize, Serialize};

/// Distinct paths counted per (host, owner); later distinct paths are counted as [`OTHER_PATHS`].
pub const MAX_PATHS_PER_OWNER: usize = 1_000;
/// Paths shown per owner.
pub const TOP_PATHS: usize = 5;
/// Longer lines are skipped as malformed without being held in memory (records are ~0.5 KiB).
pub const MAX_LINE_BYTES: usize = 1 << 20;

const UNROUTED: &str = "(unrouted)";
const NO_OWNER: &str = "(no owner)";
const NO_PATH: &str = "(no path)";
const OTHER_PATHS: &str = "(other)";
const CREDENTIAL_KINDS: [&str; 4] = ["app", "pat", "anonymous", "none"];

/// Entry point of the subcommand. Opens every file first, so a typo fails before a long read.
pub fn summary_main(files: &[PathBuf], json: bool) -> ExitCode {
    let mut inputs: Vec<(String, Box<dyn Read>)> = Vec::new();
    let mut open_failed = false;
    if files.is_empty() {
        if io::stdin().is_terminal() {
            eprintln!("gh-token-proxy: reading audit records from stdin (end with Ctrl-D)");
        }
        inputs.push(("<stdin>".to_owned(), Box::new(io::stdin())));
    }
    for path in files {
        if path.as_os_str() == "-" {
            inputs.push(("<stdin>".to_owned(), Box::new(io::stdin())));
            continue;
        }
        match File::open(path) {
            Ok(file) => inputs.push((path.display().to_string(), Box::new(file))),
            Err(err) => {
                crate::cli::error(format_args!(
                    "cannot open audit log {}: {err}",
                    path.display()
                ));
                open_failed = true;
            }
        }
    }
    if open_failed {
        return ExitCode::from(1);
    }

    let mut summary = Summary::default();
    for (name, input) in inputs {
        let reader = BufReader::with_capacity(256 * 1024, input);
        if let Err(err) = summary.read(reader) {
            // e.g. a directory named as a file: it opens, but cannot be read.
            crate::cli::error(format_args!("cannot read audit log {name}: {err}"));
            return ExitCode::from(1);
        }
    }

    let report = summary.report();
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let written = if json {
        serde_json::to_writer_pretty(&mut out, &report)
            .map_err(io::Error::from)
            .and_then(|()| writeln!(out))
    } else {
        report.write_text(&mut out)
    };
    match written.and_then(|()| out.flush()) {
        Ok(()) => {}
        // `audit summary | head` is fine.
        Err(err) if err.kind() == io::ErrorKind::BrokenPipe => {}
        Err(err) => {
            crate::cli::error(format_args!("cannot write the summary: {err}"));
            return ExitCode::from(1);
        }
    }
    if json && report.skipped_malformed_lines > 0 {
        crate::cli::warning(format_args!(
            "skipped {} malformed line(s)",
            report.skipped_malformed_lines
        ));
    }
    ExitCode::SUCCESS
}

/// The fields of an audit record the summary needs; every other field is skipped unparsed.
#[derive(Deserialize)]
struct RecordFields<'a> {
    #[serde(borrow)]
    host: Option<Text<'a>>,
    #[serde(borrow)]
    owner: Option<Text<'a>>,
    #[serde(borrow)]
    path: Option<Text<'a>>,
    #[serde(borrow)]
    credential: Text<'a>,
    #[serde(borrow)]
    reason: Text<'a>,
}

/// A string borrowed from the line unless it had escapes. A newtype because serde borrows a
/// `Cow<str>` field only when it is not wrapped in an `Option`.
#[derive(Deserialize)]
struct Text<'a>(#[serde(borrow)] Cow<'a, str>);

/// Running counts. Feed it lines with [`Summary::read`] or [`Summary::add_line`], then call
/// [`Summary::report`].
#[derive(Debug, Default)]
pub struct Summary {
    /// host (`None`: unrouted) → owner (lowercased; `None`: no owner) → counts.
    hosts: Keyed<Keyed<OwnerCounts>>,
    records: u64,
    malformed: u64,
}

#[derive(Debug, Default)]
struct OwnerCounts {
    requests: u64,
    credentials: HashMap<String, u64>,
    reasons: HashMap<String, u64>,
    /// At most `MAX_PATHS_PER_OWNER` entries plus `OTHER_PATHS`.
    paths: HashMap<String, u64>,
    pat_not_installed: u64,
}

impl Summary {
    /// Reads JSON lines to the end. Only I/O errors fail; bad lines are counted.
    pub fn read<R: BufRead>(&mut self, mut reader: R) -> io::Result<()> {
        let mut line = Vec::with_capacity(4096);
        loop {
            line.clear();
            // `take` bounds the buffer; a longer line is dropped and the rest of it skipped.
            let n = (&mut reader)
                .take(MAX_LINE_BYTES as u64 + 1)
                .read_until(b'\n', &mut line)?;
            if n == 0 {
                return Ok(());
            }
            if line.len() > MAX_LINE_BYTES && line.last() != Some(&b'\n') {
                reader.skip_until(b'\n')?;
                self.malformed += 1;
                continue;
            }
            self.add_line(&line);
        }
    }

    /// Counts one line (with or without its newline).
    pub fn add_line(&mut self, line: &[u8]) {
        if line.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        let fields = std::str::from_utf8(line)
            .ok()
            .and_then(|text| serde_json::from_str::<RecordFields<'_>>(text).ok());
        match fields {
            Some(record) => self.add(&record),
            None => self.malformed += 1,
        }
    }

    fn add(&mut self, record: &RecordFields<'_>) {
        self.records += 1;
        let host = record.host.as_ref().map(|h| h.0.as_ref());
        let owner = record.owner.as_ref().map(|o| lowercase(&o.0));
        let counts = self.hosts.entry(host).entry(owner.as_deref());
        let credential = record.credential.0.as_ref();
        let reason = record.reason.0.as_ref();
        counts.requests += 1;
        bump(&mut counts.credentials, credential);
        bump(&mut counts.reasons, reason);
        if credential == "pat" && reason == "not_installed" {
            counts.pat_not_installed += 1;
        }
        let path = record.path.as_ref().map_or(NO_PATH, |p| p.0.as_ref());
        if let Some(n) = counts.paths.get_mut(path) {
            *n += 1;
        } else if counts.paths.len() - usize::from(counts.paths.contains_key(OTHER_PATHS))
            < MAX_PATHS_PER_OWNER
        {
            counts.paths.insert(path.to_owned(), 1);
        } else {
            bump(&mut counts.paths, OTHER_PATHS);
        }
    }

    /// The sorted, printable result.
    pub fn report(&self) -> Report {
        let mut integrations: Vec<HostReport> = self
            .hosts
            .iter()
            .map(|(host, owners)| {
                let mut owners: Vec<OwnerReport> = owners
                    .iter()
                    .map(|(owner, counts)| OwnerReport::new(owner.map(str::to_owned), counts))
                    .collect();
                owners.sort_by(|a, b| {
                    (Reverse(a.requests), display(&a.owner, NO_OWNER))
                        .cmp(&(Reverse(b.requests), display(&b.owner, NO_OWNER)))
                });
                HostReport {
                    host: host.map(str::to_owned),
                    requests: owners.iter().map(|o| o.requests).sum(),
                    owners,
                }
            })
            .collect();
        integrations.sort_by(|a, b| {
            (Reverse(a.requests), display(&a.host, UNROUTED))
                .cmp(&(Reverse(b.requests), display(&b.host, UNROUTED)))
        });

        let mut pat_not_installed: Vec<RetirementEntry> = self
            .hosts
            .iter()
            .flat_map(|(host, owners)| {
                owners
                    .iter()
                    .filter(|(_, counts)| counts.pat_not_installed > 0)
                    .map(move |(owner, counts)| RetirementEntry {
                        host: host.map(str::to_owned),
                        owner: owner.map(str::to_owned),
                        requests: counts.pat_not_installed,
                    })
            })
            .collect();
        pat_not_installed.sort_by(|a, b| {
            (
                Reverse(a.requests),
                display(&a.owner, NO_OWNER),
                display(&a.host, UNROUTED),
            )
                .cmp(&(
                    Reverse(b.requests),
                    display(&b.owner, NO_OWNER),
                    display(&b.host, UNROUTED),
                ))
        });

        Report {
            records: self.records,
            skipped_malformed_lines: self.malformed,
            integrations,
            pat_not_installed,
        }
    }
}

/// A map whose key may be absent (`null` host or owner), looked up by `&str` without allocating
/// (a key is copied only the first time it is seen).
#[derive(Debug)]
struct Keyed<V> {
    slots: HashMap<String, usize>,
    none: Option<usize>,
    values: Vec<(Option<String>, V)>,
}

impl<V> Default for Keyed<V> {
    fn default() -> Self {
        Keyed {
            slots: HashMap::new(),
            none: None,
            values: Vec::new(),
        }
    }
}

impl<V: Default> Keyed<V> {
    fn entry(&mut self, key: Option<&str>) -> &mut V {
        let existing = match key {
            None => self.none,
            Some(key) => self.slots.get(key).copied(),
        };
        let slot = match existing {
            Some(slot) => slot,
            None => {
                let slot = self.values.len();
                self.values.push((key.map(str::to_owned), V::default()));
                match key {
                    None => self.none = Some(slot),
                    Some(key) => {
                        self.slots.insert(key.to_owned(), slot);
                    }
                }
                slot
            }
        };
        &mut self.values[slot].1
    }
}

impl<V> Keyed<V> {
    fn iter(&self) -> impl Iterator<Item = (Option<&str>, &V)> {
        self.values.iter().map(|(k, v)| (k.as_deref(), v))
    }
}

fn bump(map: &mut HashMap<String, u64>, key: &str) {
    match map.get_mut(key) {
        Some(n) => *n += 1,
        None => {
            map.insert(key.to_owned(), 1);
        }
    }
}

/// Owners are case-insensitive (SPEC §5); allocate only when there is something to lowercase.
fn lowercase(owner: &str) -> Cow<'_, str> {
    if owner.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(owner.to_ascii_lowercase())
    } else {
        Cow::Borrowed(owner)
    }
}

fn display<'a>(name: &'a Option<String>, none: &'a str) -> &'a str {
    name.as_deref().unwrap_or(none)
}

/// Counts desc, then name.
fn ranked(map: &HashMap<String, u64>) -> Vec<(&str, u64)> {
    let mut list: Vec<(&str, u64)> = map.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    list.sort_by(|a, b| (Reverse(a.1), a.0).cmp(&(Reverse(b.1), b.0)));
    list
}

/// What `audit summary` prints; serialised as-is for `--json` (shape in the module docs).
#[derive(Debug, Serialize)]
pub struct Report {
    pub records: u64,
    pub skipped_malformed_lines: u64,
    pub integrations: Vec<HostReport>,
    /// The PAT retirement list, most requests first.
    pub pat_not_installed: Vec<RetirementEntry>,
}

#[derive(Debug, Serialize)]
pub struct HostReport {
    pub host: Option<String>,
    pub requests: u64,
    pub owners: Vec<OwnerReport>,
}

#[derive(Debug, Serialize)]
pub struct OwnerReport {
    pub owner: Option<String>,
    pub requests: u64,
    /// The four kinds always, plus any other value seen; keys sorted.
    pub credentials: BTreeMap<String, u64>,
    pub reasons: Vec<ReasonCount>,
    pub top_paths: Vec<PathCount>,
    pub distinct_paths: usize,
}

#[derive(Debug, Serialize)]
pub struct ReasonCount {
    pub reason: String,
    pub requests: u64,
}

#[derive(Debug, Serialize)]
pub struct PathCount {
    pub path: String,
    pub requests: u64,
}

#[derive(Debug, Serialize)]
pub struct RetirementEntry {
    pub host: Option<String>,
    pub owner: Option<String>,
    pub requests: u64,
}

impl OwnerReport {
    fn new(owner: Option<String>, counts: &OwnerCounts) -> Self {
        let mut credentials: BTreeMap<String, u64> = CREDENTIAL_KINDS
            .iter()
            .map(|kind| ((*kind).to_owned(), 0))
            .collect();
        for (kind, n) in &counts.credentials {
            credentials.insert(kind.clone(), *n);
        }
        OwnerReport {
            owner,
            requests: counts.requests,
            credentials,
            reasons: ranked(&counts.reasons)
                .into_iter()
                .map(|(reason, requests)| ReasonCount {
                    reason: reason.to_owned(),
                    requests,
                })
                .collect(),
            top_paths: ranked(&counts.paths)
                .into_iter()
                .take(TOP_PATHS)
                .map(|(path, requests)| PathCount {
                    path: path.to_owned(),
                    requests,
                })
                .collect(),
            distinct_paths: counts.paths.len()
                - usize::from(counts.paths.contains_key(OTHER_PATHS)),
        }
    }
}

impl Report {
    /// The human-readable form.
    pub fn write_text(&self, out: &mut dyn Write) -> io::Result<()> {
        writeln!(
            out,
            "audit summary: {} records, {} integrations",
            self.records,
            self.integrations.len()
        )?;
        for host in &self.integrations {
            writeln!(out)?;
            writeln!(
                out,
                "{}: {}",
                display(&host.host, UNROUTED),
                requests(host.requests)
            )?;
            for owner in &host.owners {
                writeln!(
                    out,
                    "  {}: {}",
                    display(&owner.owner, NO_OWNER),
                    requests(owner.requests)
                )?;
                let mut credentials: Vec<(&str, u64)> = owner
                    .credentials
                    .iter()
                    .filter(|(_, n)| **n > 0)
                    .map(|(k, n)| (k.as_str(), *n))
                    .collect();
                credentials.sort_by(|a, b| (Reverse(a.1), a.0).cmp(&(Reverse(b.1), b.0)));
                writeln!(out, "    credential: {}", joined(credentials))?;
                writeln!(
                    out,
                    "    reason:     {}",
                    joined(
                        owner
                            .reasons
                            .iter()
                            .map(|r| (r.reason.as_str(), r.requests))
                    )
                )?;
                writeln!(out, "    top paths:")?;
                for path in &owner.top_paths {
                    writeln!(out, "      {:>8}  {}", path.requests, path.path)?;
                }
            }
        }
        writeln!(out)?;
        writeln!(
            out,
            "served by the PAT because the App is not installed (install the App on these owners to retire the PAT):"
        )?;
        if self.pat_not_installed.is_empty() {
            writeln!(out, "  (none)")?;
        }
        let host_width = self
            .pat_not_installed
            .iter()
            .map(|e| display(&e.host, UNROUTED).len())
            .max()
            .unwrap_or(0);
        for entry in &self.pat_not_installed {
            writeln!(
                out,
                "  {:>8}  {:<host_width$}  {}",
                entry.requests,
                display(&entry.host, UNROUTED),
                display(&entry.owner, NO_OWNER)
            )?;
        }
        writeln!(out)?;
        let lines = if self.skipped_malformed_lines == 1 {
            "line"
        } else {
            "lines"
        };
        writeln!(
            out,
            "skipped {} malformed {lines}",
            self.skipped_malformed_lines
        )
    }
}

fn requests(n: u64) -> String {
    if n == 1 {
        "1 request".to_owned()
    } else {
        format!("{n} requests")
    }
}

/// `app 5, pat 3`.
fn joined<'a>(counts: impl IntoIterator<Item = (&'a str, u64)>) -> String {
    let parts: Vec<String> = counts
        .into_iter()
        .map(|(name, n)| format!("{name} {n}"))
        .collect();
    if parts.is_empty() {
        "-".to_owned()
    } else {
        parts.join(", ")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn record(host: &str, owner: &str, path: &str, credential: &str, reason: &str) -> String {
        serde_json::json!({
            "ts": "2026-11-25T04:21:09.123Z", "request_id": "01J", "client": null,
            "host": host, "owner": owner, "path": path,
            "credential": credential, "reason": reason, "status": 200,
        })
        .to_string()
    }

    #[test]
    fn borrows_unescaped_strings_from_the_line() {
        let line = r#"{"host":"api.github.com","owner":"acme","path":"/a\/b","credential":"app","reason":"installed"}"#;
        let fields: RecordFields<'_> = serde_json::from_str(line).unwrap();
        assert!(matches!(fields.host.unwrap().0, Cow::Borrowed(_)));
        assert!(matches!(fields.owner.unwrap().0, Cow::Borrowed(_)));
        assert!(matches!(fields.path.unwrap().0, Cow::Owned(_)));
    }

    #[test]
    fn groups_owners_case_insensitively() {
        let mut summary = Summary::default();
        summary.add_line(record("h", "Acme", "/p", "app", "installed").as_bytes());
        summary.add_line(record("h", "acme", "/p", "pat", "not_installed").as_bytes());
        let report = summary.report();
        assert_eq!(report.integrations[0].owners.len(), 1);
        assert_eq!(
            report.integrations[0].owners[0].owner.as_deref(),
            Some("acme")
        );
        assert_eq!(report.integrations[0].owners[0].requests, 2);
    }

    #[test]
    fn counts_paths_beyond_the_cap_as_other() {
        let mut summary = Summary::default();
        for i in 0..MAX_PATHS_PER_OWNER + 10 {
            let path = format!("/repos/acme/r{i}");
            summary.add_line(record("h", "acme", &path, "app", "installed").as_bytes());
        }
        summary.add_line(record("h", "acme", "/repos/acme/r0", "app", "installed").as_bytes());
        let owner = &summary.report().integrations[0].owners[0];
        assert_eq!(owner.distinct_paths, MAX_PATHS_PER_OWNER);
        assert_eq!(owner.top_paths[0].path, OTHER_PATHS);
        assert_eq!(owner.top_paths[0].requests, 10);
        assert_eq!(owner.top_paths[1].path, "/repos/acme/r0");
        assert_eq!(owner.top_paths[1].requests, 2);
    }

    #[test]
    fn skips_and_counts_malformed_and_overlong_lines() {
        let mut input = Vec::new();
        input.extend_from_slice(b"not json\n\n   \n{\"credential\":\"app\"}\n");
        input.extend_from_slice(b"\xff\xfe\n");
        input.extend(std::iter::repeat_n(b'x', MAX_LINE_BYTES + 10));
        input.push(b'\n');
        input.extend_from_slice(record("h", "acme", "/p", "app", "installed").as_bytes());
        let mut summary = Summary::default();
        summary.read(&input[..]).unwrap();
        assert_eq!(summary.malformed, 4);
        assert_eq!(summary.records, 1);
    }

    #[test]
    fn orders_by_count_then_name() {
        let mut summary = Summary::default();
        for (owner, n) in [("b", 2), ("a", 2), ("c", 3)] {
            for _ in 0..n {
                summary.add_line(record("h", owner, "/p", "pat", "not_installed").as_bytes());
            }
        }
        let report = summary.report();
        let owners: Vec<_> = report
            .pat_not_installed
            .iter()
            .map(|e| e.owner.as_deref().unwrap())
            .collect();
        assert_eq!(owners, ["c", "a", "b"]);
    }
}
