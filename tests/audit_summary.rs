//! `gh-token-proxy audit summary` end to end: the real binary reads a generated audit log (from files
//! and from stdin) mixing App, PAT, anonymous and refused records with malformed lines, and its text
//! and `--json` output give the right counts and the PAT retirement list in the right order.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_gh-token-proxy");

/// One audit record with every §7.3 field.
fn record(
    host: Option<&str>,
    owner: Option<&str>,
    path: Option<&str>,
    credential: &str,
    reason: &str,
) -> String {
    let forwarded = credential != "none";
    json!({
        "ts": "2026-11-25T04:21:09.123Z",
        "request_id": "01JDQ0000000000000000000000",
        "client": "catalog",
        "client_addr": "127.0.0.1:53122",
        "method": "GET",
        "host": host,
        "path": path,
        "owner": owner,
        "repo": null,
        "credential": credential,
        "reason": reason,
        "app_id": if credential == "app" { json!(12345) } else { Value::Null },
        "installation_id": if credential == "app" { json!(678) } else { Value::Null },
        "hashed_token": if credential == "app" || credential == "pat" { json!("nD8rAAAA=") } else { Value::Null },
        "status": if forwarded { 200 } else { 403 },
        "upstream_status": if forwarded { json!(200) } else { Value::Null },
        "github_request_id": if forwarded { json!("C0DE:1234") } else { Value::Null },
        "rate_limit_remaining": if forwarded { json!(4987) } else { Value::Null },
        "rate_limit_resource": if forwarded { json!("core") } else { Value::Null },
        "bytes_out": 5123,
        "duration_ms": 85.2,
        "outcome": if forwarded { "ok" } else { "refused" },
    })
    .to_string()
}

const API: Option<&str> = Some("api.github.com");
const GHE: Option<&str> = Some("ghe.acme.com");

/// The fixture: 30 records and 4 malformed lines (plus blank lines, which are not counted).
///
/// - api.github.com (19): acme 7 (app/installed 5, pat/suspended 1, none/client_policy 1);
///   platform is not here; beta 5 (pat/not_installed, one spelled `Beta`, one with escaped
///   slashes); gamma 4 (pat/owner_not_allowed 2, anonymous/not_installed 1, none/no_credential 1);
///   no owner 3 (pat/no_owner 2, anonymous/no_owner 1).
/// - ghe.acme.com (9): platform 9 (pat/not_installed 6, app/installed 2, pat/repo_not_selected 1).
/// - unrouted (2): none/unknown_host 2.
fn fixture_lines() -> Vec<String> {
    let mut lines = Vec::new();
    let mut add = |n: usize, line: String| lines.extend(std::iter::repeat_n(line, n));
    add(
        3,
        record(
            API,
            Some("acme"),
            Some("/repos/acme/widgets"),
            "app",
            "installed",
        ),
    );
    add(
        2,
        record(API, Some("acme"), Some("/orgs/acme"), "app", "installed"),
    );
    add(
        1,
        record(
            API,
            Some("acme"),
            Some("/repos/acme/legacy"),
            "pat",
            "suspended",
        ),
    );
    add(
        1,
        record(
            API,
            Some("acme"),
            Some("/repos/acme/secret"),
            "none",
            "client_policy",
        ),
    );
    add(
        3,
        record(
            API,
            Some("beta"),
            Some("/repos/beta/api"),
            "pat",
            "not_installed",
        ),
    );
    add(
        1,
        record(
            API,
            Some("Beta"),
            Some("/repos/beta/api"),
            "pat",
            "not_installed",
        ),
    );
    add(
        1,
        r#"{"ts":"2026-11-25T04:21:10.000Z","host":"api.github.com","owner":"beta","path":"\/repos\/beta\/api","credential":"pat","reason":"not_installed","status":200}"#.to_owned(),
    );
    add(
        2,
        record(
            API,
            Some("gamma"),
            Some("/orgs/gamma"),
            "pat",
            "owner_not_allowed",
        ),
    );
    add(
        1,
        record(
            API,
            Some("gamma"),
            Some("/orgs/gamma"),
            "anonymous",
            "not_installed",
        ),
    );
    add(
        1,
        record(
            API,
            Some("gamma"),
            Some("/orgs/gamma/repos"),
            "none",
            "no_credential",
        ),
    );
    add(2, record(API, None, Some("/user"), "pat", "no_owner"));
    add(
        1,
        record(API, None, Some("/rate_limit"), "anonymous", "no_owner"),
    );
    add(
        6,
        record(
            GHE,
            Some("platform"),
            Some("/repos/platform/infra"),
            "pat",
            "not_installed",
        ),
    );
    add(
        2,
        record(
            GHE,
            Some("platform"),
            Some("/repos/platform/infra"),
            "app",
            "installed",
        ),
    );
    add(
        1,
        record(
            GHE,
            Some("platform"),
            Some("/repos/platform/private"),
            "pat",
            "repo_not_selected",
        ),
    );
    add(2, record(None, None, None, "none", "unknown_host"));

    // Interleave the malformed and blank lines with the records.
    let truncated = record(API, Some("beta"), Some("/x"), "pat", "not_installed");
    let malformed = [
        "this is not json".to_owned(),
        "{\"host\": \"api.github.com\"}".to_owned(), // no credential or reason
        truncated[..truncated.len() / 2].to_owned(),
        "[1, 2, 3]".to_owned(),
    ];
    for (i, bad) in malformed.into_iter().enumerate() {
        lines.insert(i * 7 + 1, bad);
    }
    lines.insert(10, String::new());
    lines.insert(20, "   ".to_owned());
    lines
}

fn write_lines(path: &Path, lines: &[String]) {
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(path, text).unwrap();
}

fn fixture_file(dir: &Path) -> PathBuf {
    let path = dir.join("audit.jsonl");
    write_lines(&path, &fixture_lines());
    path
}

fn run(args: &[&str], stdin: Option<Vec<u8>>) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        std::thread::spawn(move || pipe.write_all(&input).unwrap());
    }
    child.wait_with_output().unwrap()
}

fn run_ok(args: &[&str], stdin: Option<Vec<u8>>) -> String {
    let out = run(args, stdin);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn owner(report: &Value, host: Value, owner: Value) -> &Value {
    let integration = report["integrations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["host"] == host)
        .unwrap_or_else(|| panic!("no integration {host}"));
    integration["owners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["owner"] == owner)
        .unwrap_or_else(|| panic!("no owner {owner} on {host}"))
}

/// The lines of the text section that starts with `heading`, up to the next blank line.
fn section<'a>(text: &'a str, heading: &str) -> Vec<&'a str> {
    text.lines()
        .skip_while(|l| !l.starts_with(heading))
        .skip(1)
        .take_while(|l| !l.is_empty())
        .collect()
}

#[test]
fn json_summary_counts_credentials_reasons_and_paths_per_owner() {
    let dir = tempfile::tempdir().unwrap();
    let file = fixture_file(dir.path());
    let report: Value = serde_json::from_str(&run_ok(
        &["audit", "summary", file.to_str().unwrap(), "--json"],
        None,
    ))
    .unwrap();

    assert_eq!(report["records"], 30);
    assert_eq!(report["skipped_malformed_lines"], 4);
    let hosts: Vec<(&Value, &Value)> = report["integrations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (&i["host"], &i["requests"]))
        .collect();
    assert_eq!(
        hosts,
        [
            (&json!("api.github.com"), &json!(19)),
            (&json!("ghe.acme.com"), &json!(9)),
            (&Value::Null, &json!(2)),
        ]
    );

    let owners: Vec<&Value> = report["integrations"][0]["owners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| &o["owner"])
        .collect();
    assert_eq!(
        owners,
        [
            &json!("acme"),
            &json!("beta"),
            &json!("gamma"),
            &Value::Null
        ]
    );

    let acme = owner(&report, json!("api.github.com"), json!("acme"));
    assert_eq!(acme["requests"], 7);
    assert_eq!(
        acme["credentials"],
        json!({"app": 5, "pat": 1, "anonymous": 0, "none": 1})
    );
    assert_eq!(
        acme["reasons"],
        json!([
            {"reason": "installed", "requests": 5},
            {"reason": "client_policy", "requests": 1},
            {"reason": "suspended", "requests": 1},
        ])
    );
    assert_eq!(
        acme["top_paths"],
        json!([
            {"path": "/repos/acme/widgets", "requests": 3},
            {"path": "/orgs/acme", "requests": 2},
            {"path": "/repos/acme/legacy", "requests": 1},
            {"path": "/repos/acme/secret", "requests": 1},
        ])
    );

    // `Beta` and the escaped-slash record are the same owner and path.
    let beta = owner(&report, json!("api.github.com"), json!("beta"));
    assert_eq!(beta["requests"], 5);
    assert_eq!(
        beta["reasons"],
        json!([{"reason": "not_installed", "requests": 5}])
    );
    assert_eq!(
        beta["top_paths"],
        json!([{"path": "/repos/beta/api", "requests": 5}])
    );

    let gamma = owner(&report, json!("api.github.com"), json!("gamma"));
    assert_eq!(
        gamma["credentials"],
        json!({"app": 0, "pat": 2, "anonymous": 1, "none": 1})
    );

    let no_owner = owner(&report, json!("api.github.com"), Value::Null);
    assert_eq!(
        no_owner["credentials"],
        json!({"app": 0, "pat": 2, "anonymous": 1, "none": 0})
    );
    assert_eq!(
        no_owner["reasons"],
        json!([{"reason": "no_owner", "requests": 3}])
    );

    let platform = owner(&report, json!("ghe.acme.com"), json!("platform"));
    assert_eq!(
        platform["credentials"],
        json!({"app": 2, "pat": 7, "anonymous": 0, "none": 0})
    );
    assert_eq!(
        platform["reasons"],
        json!([
            {"reason": "not_installed", "requests": 6},
            {"reason": "installed", "requests": 2},
            {"reason": "repo_not_selected", "requests": 1},
        ])
    );

    let unrouted = owner(&report, Value::Null, Value::Null);
    assert_eq!(
        unrouted["reasons"],
        json!([{"reason": "unknown_host", "requests": 2}])
    );
    assert_eq!(
        unrouted["top_paths"],
        json!([{"path": "(no path)", "requests": 2}])
    );
}

#[test]
fn json_retirement_list_has_pat_not_installed_owners_most_first() {
    let dir = tempfile::tempdir().unwrap();
    let file = fixture_file(dir.path());
    let report: Value = serde_json::from_str(&run_ok(
        &["audit", "summary", "--json", file.to_str().unwrap()],
        None,
    ))
    .unwrap();
    // gamma's anonymous/not_installed record is not PAT-served, so gamma is not listed.
    assert_eq!(
        report["pat_not_installed"],
        json!([
            {"host": "ghe.acme.com", "owner": "platform", "requests": 6},
            {"host": "api.github.com", "owner": "beta", "requests": 5},
        ])
    );
}

#[test]
fn text_summary_shows_counts_retirement_list_and_skipped_lines() {
    let dir = tempfile::tempdir().unwrap();
    let file = fixture_file(dir.path());
    let text = run_ok(&["audit", "summary", file.to_str().unwrap()], None);

    assert!(
        text.starts_with("audit summary: 30 records, 3 integrations\n"),
        "{text}"
    );
    let api = section(&text, "api.github.com: 19 requests");
    assert_eq!(api[0], "  acme: 7 requests", "{text}");
    assert_eq!(api[1], "    credential: app 5, none 1, pat 1", "{text}");
    assert_eq!(
        api[2], "    reason:     installed 5, client_policy 1, suspended 1",
        "{text}"
    );
    assert_eq!(api[3], "    top paths:");
    assert_eq!(
        api[4].split_whitespace().collect::<Vec<_>>(),
        ["3", "/repos/acme/widgets"]
    );
    assert!(api.contains(&"  beta: 5 requests"), "{text}");
    assert!(api.contains(&"  (no owner): 3 requests"), "{text}");
    assert!(
        api.contains(&"    credential: pat 2, anonymous 1, none 1"),
        "{text}"
    );

    let ghe = section(&text, "ghe.acme.com: 9 requests");
    assert_eq!(ghe[0], "  platform: 9 requests");
    assert_eq!(
        ghe[2],
        "    reason:     not_installed 6, installed 2, repo_not_selected 1"
    );
    let unrouted = section(&text, "(unrouted): 2 requests");
    assert_eq!(unrouted[0], "  (no owner): 2 requests");

    let retire = section(&text, "served by the PAT because the App is not installed");
    let retire: Vec<Vec<&str>> = retire
        .iter()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        retire,
        [
            vec!["6", "ghe.acme.com", "platform"],
            vec!["5", "api.github.com", "beta"]
        ]
    );
    assert!(text.ends_with("\nskipped 4 malformed lines\n"), "{text}");
}

#[test]
fn reads_stdin_when_no_file_is_given() {
    let dir = tempfile::tempdir().unwrap();
    let file = fixture_file(dir.path());
    let input = std::fs::read(&file).unwrap();
    let from_file = run_ok(&["audit", "summary", file.to_str().unwrap()], None);
    let from_stdin = run_ok(&["audit", "summary"], Some(input.clone()));
    assert_eq!(from_stdin, from_file);

    let json_from_file = run_ok(
        &["audit", "summary", "--json", file.to_str().unwrap()],
        None,
    );
    let json_from_stdin = run_ok(&["audit", "summary", "--json"], Some(input));
    assert_eq!(json_from_stdin, json_from_file);
}

#[test]
fn merges_logs_of_several_replicas() {
    let dir = tempfile::tempdir().unwrap();
    let whole = fixture_file(dir.path());
    let lines = fixture_lines();
    let (a, b, c) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("c"),
    );
    write_lines(&a, &lines[..10]);
    write_lines(&b, &lines[10..25]);
    write_lines(&c, &lines[25..]);
    let merged = run_ok(
        &[
            "audit",
            "summary",
            "--json",
            a.to_str().unwrap(),
            b.to_str().unwrap(),
            c.to_str().unwrap(),
        ],
        None,
    );
    let single = run_ok(
        &["audit", "summary", "--json", whole.to_str().unwrap()],
        None,
    );
    assert_eq!(merged, single);
}

#[test]
fn empty_input_gives_an_empty_summary() {
    let report: Value =
        serde_json::from_str(&run_ok(&["audit", "summary", "--json"], Some(Vec::new()))).unwrap();
    assert_eq!(
        report,
        json!({"records": 0, "skipped_malformed_lines": 0, "integrations": [], "pat_not_installed": []})
    );
    let text = run_ok(&["audit", "summary"], Some(Vec::new()));
    assert!(text.contains("served by the PAT because the App is not installed"));
    assert!(text.contains("  (none)"), "{text}");
}

#[test]
fn missing_file_exits_1_and_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = fixture_file(dir.path());
    let missing = dir.path().join("no-such-audit.jsonl");
    let out = run(
        &[
            "audit",
            "summary",
            file.to_str().unwrap(),
            missing.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no-such-audit.jsonl"), "{stderr}");
    assert!(
        out.stdout.is_empty(),
        "nothing is summarised when a file is missing"
    );
}

/// Not a correctness test: writes a large realistic audit log and times the binary on it.
/// `AUDIT_SUMMARY_LARGE_BYTES` (default 1 GiB) and `AUDIT_SUMMARY_LARGE_FILE` (default in the
/// temp dir; kept, so a release binary can be timed on it too):
/// `cargo test --test audit_summary -- --ignored --nocapture`, then
/// `time target/release/gh-token-proxy audit summary FILE > /dev/null`.
#[test]
#[ignore = "writes ~1 GiB; run by hand for the timing"]
fn large_audit_log_timing() {
    let bytes: u64 = std::env::var("AUDIT_SUMMARY_LARGE_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1 << 30);
    let path = std::env::var_os("AUDIT_SUMMARY_LARGE_FILE")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("gh-token-proxy-audit-large.jsonl"));

    let started = Instant::now();
    let mut out = BufWriter::with_capacity(1 << 20, std::fs::File::create(&path).unwrap());
    let (mut written, mut records, mut seed) = (0u64, 0u64, 0x2545_f491_4f6c_dd1d_u64);
    let hosts = ["api.github.com", "ghe.acme.com", "ghe.eu.acme.com"];
    let outcomes = [
        ("app", "installed"),
        ("app", "installed"),
        ("app", "installed"),
        ("app", "public_access"),
        ("pat", "not_installed"),
        ("pat", "no_owner"),
        ("pat", "suspended"),
        ("anonymous", "not_installed"),
        ("none", "client_policy"),
        ("none", "no_credential"),
    ];
    while written < bytes {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let host = hosts[(seed % 3) as usize];
        let owner = format!("org-{}", (seed >> 8) % 2_000);
        let (credential, reason) = outcomes[((seed >> 24) % 10) as usize];
        let line = format!(
            r#"{{"ts":"2026-11-25T04:21:09.123Z","request_id":"01JDQ{records:021}","client":"catalog","client_addr":"10.0.3.7:53122","method":"GET","host":"{host}","path":"/repos/{owner}/repo-{repo}/pulls/{pull}","owner":"{owner}","repo":"repo-{repo}","credential":"{credential}","reason":"{reason}","app_id":12345,"installation_id":678,"hashed_token":"nD8rWq0Xl5b7c7FQ2D2b0Tq3c4m1aJ0m0hX1k2lT0pQ=","status":200,"upstream_status":200,"github_request_id":"C0DE:1234:5678:9ABC:{records:x}","rate_limit_remaining":4987,"rate_limit_resource":"core","bytes_out":5123,"duration_ms":85.2,"outcome":"ok"}}"#,
            repo = (seed >> 32) % 50,
            pull = (seed >> 40) % 40,
        );
        out.write_all(line.as_bytes()).unwrap();
        out.write_all(b"\n").unwrap();
        written += line.len() as u64 + 1;
        records += 1;
    }
    out.flush().unwrap();
    drop(out);
    eprintln!(
        "wrote {records} records, {} MB, to {} in {:.1?}",
        written / 1_000_000,
        path.display(),
        started.elapsed()
    );

    let started = Instant::now();
    let report: Value = serde_json::from_str(&run_ok(
        &["audit", "summary", "--json", path.to_str().unwrap()],
        None,
    ))
    .unwrap();
    let elapsed = started.elapsed();
    assert_eq!(report["records"], records);
    eprintln!(
        "{BIN}: {} MB in {elapsed:.2?} ({:.0} MB/s)",
        written / 1_000_000,
        written as f64 / 1e6 / elapsed.as_secs_f64()
    );
}
