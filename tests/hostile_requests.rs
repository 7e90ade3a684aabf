//! Hostile requests over raw TCP (every byte chosen by the test) against the real server in front
//! of a TLS FakeGitHub with an App and a PAT: each is refused with its status and reason (or
//! rejected by hyper before the proxy sees it), and FakeGitHub receives none of them. Plus the
//! slow-client (slowloris) bound and request smuggling through `Content-Length` +
//! `Transfer-Encoding`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod hostile_common;
mod server_common;
mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use hostile_common::{RawResponse, api_authority, fake_github, proxy, raw_request};
use server_common::{WAIT, full};

/// What a row must get back.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// The proxy's own refusal: status, JSON `reason`, and the three headers.
    Refused(u16, &'static str),
    /// hyper rejects the message before the proxy sees it: a bare status line with this status.
    Hyper(u16),
    /// This status (from hyper or the proxy, whichever limit trips first), or a close (with RST)
    /// before the client could read the answer.
    StatusOrClosed(u16),
}

struct Row {
    name: &'static str,
    bytes: Vec<u8>,
    expect: Expect,
}

/// `line` + `Host` + `extra` header lines (each ending in CRLF) + `Connection: close`.
fn req(line: &str, host: &str, extra: &str) -> Vec<u8> {
    format!("{line}\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n").into_bytes()
}

fn get(path: &str, host: &str) -> Vec<u8> {
    req(&format!("GET {path} HTTP/1.1"), host, "")
}

fn table(api: &str, proxy: &str, other_port: u16) -> Vec<Row> {
    use Expect::*;
    let port = api.rsplit(':').next().unwrap();
    let long_owner = "a".repeat(40);
    let long_repo = "r".repeat(101);
    let bad_path = Refused(400, "invalid_path");
    let bad_request = Refused(400, "invalid_request");
    let unknown_host = Refused(403, "unknown_host");
    let app_endpoint = Refused(403, "app_endpoint");
    let mut rows = vec![
        // Traversal, plain and encoded.
        (
            "dotdot segment",
            get("/repos/acme/../other/x", proxy),
            bad_path,
        ),
        (
            "encoded dotdot",
            get("/repos/acme/%2e%2e/x", proxy),
            bad_path,
        ),
        (
            "encoded dotdot upper",
            get("/repos/acme/%2E%2E/x", proxy),
            bad_path,
        ),
        ("mixed dotdot", get("/repos/acme/.%2e/x", proxy), bad_path),
        (
            "leading encoded dotdot",
            get("/%2e%2e/repos/acme/x", proxy),
            bad_path,
        ),
        ("dot segment", get("/repos/acme/./x", proxy), bad_path),
        (
            "dotdot up to app",
            get("/repos/acme/widgets/%2e%2e/%2e%2e/%2e%2e/app", proxy),
            bad_path,
        ),
        ("api prefix dotdot", get("/api/v3/../app", proxy), bad_path),
        (
            "absolute form dotdot",
            get(&format!("http://{api}/repos/acme/../../app"), api),
            bad_path,
        ),
        // Encoded separators, any case, and double encoding.
        (
            "encoded slash",
            get("/repos/acme%2Fother/x", proxy),
            bad_path,
        ),
        (
            "encoded slash lower",
            get("/repos/acme%2fother/x", proxy),
            bad_path,
        ),
        (
            "encoded backslash",
            get("/repos/acme/x%5C..%5Capp", proxy),
            bad_path,
        ),
        (
            "encoded backslash lower",
            get("/repos/acme/x%5c", proxy),
            bad_path,
        ),
        (
            "raw backslash",
            get("/repos/acme/x\\..\\app", proxy),
            bad_path,
        ),
        (
            "double encoded slash",
            get("/repos/acme%252Fother/x", proxy),
            bad_path,
        ),
        (
            "double encoded dotdot",
            get("/repos/acme/%252e%252e/x", proxy),
            bad_path,
        ),
        (
            "malformed percent",
            get("/repos/acme/x%zz", proxy),
            bad_path,
        ),
        // Empty segments.
        ("empty owner", get("/repos//x", proxy), bad_path),
        ("empty repo", get("/repos/acme//issues", proxy), bad_path),
        ("empty org", get("/orgs//repos", proxy), bad_path),
        (
            "leading double slash",
            get("//repos/acme/x", proxy),
            bad_path,
        ),
        (
            "inner double slash",
            get("/repos/acme/x//pulls", proxy),
            bad_path,
        ),
        // Names GitHub cannot have.
        (
            "owner of 40",
            get(&format!("/repos/{long_owner}/x"), proxy),
            bad_path,
        ),
        (
            "org of 40",
            get(&format!("/orgs/{long_owner}"), proxy),
            bad_path,
        ),
        (
            "repo of 101",
            get(&format!("/repos/acme/{long_repo}"), proxy),
            bad_path,
        ),
        (
            "owner with underscore",
            get("/repos/ac_me/x", proxy),
            bad_path,
        ),
        // Lookalikes: Cyrillic `а` (U+0430) and fullwidth `ａ`, encoded and raw.
        (
            "cyrillic a encoded",
            get("/repos/%D0%B0cme/widgets", proxy),
            bad_path,
        ),
        (
            "fullwidth a encoded",
            get("/orgs/%EF%BD%81cme", proxy),
            bad_path,
        ),
        (
            "cyrillic a raw utf-8",
            get("/repos/\u{430}cme/widgets", proxy),
            bad_path,
        ),
        (
            "raw utf-8 in repo",
            get("/repos/acme/widg\u{e9}ts", proxy),
            bad_path,
        ),
        // Userinfo in the absolute form.
        (
            "userinfo names another host",
            get("http://api.github.com@evil.example/", "api.github.com"),
            bad_request,
        ),
        (
            "userinfo before a loopback ip",
            get(&format!("http://{api}@127.0.0.1:9/"), api),
            bad_request,
        ),
        (
            "userinfo on the configured origin",
            get(&format!("http://user:pw@{api}/repos/acme/x"), api),
            bad_request,
        ),
        // Authorities that are not the configured origin.
        (
            "other port",
            get(
                &format!("http://localhost:{other_port}/repos/acme/x"),
                "localhost",
            ),
            unknown_host,
        ),
        (
            "ipv4 literal for localhost",
            get(&format!("http://127.0.0.1:{port}/repos/acme/x"), api),
            unknown_host,
        ),
        (
            "ipv6 literal for localhost",
            get(&format!("http://[::1]:{port}/repos/acme/x"), api),
            unknown_host,
        ),
        (
            "no port",
            get("http://localhost/repos/acme/x", "localhost"),
            unknown_host,
        ),
        (
            "trailing dot host",
            get(&format!("http://localhost.:{port}/repos/acme/x"), api),
            unknown_host,
        ),
        (
            "unconfigured host",
            get("http://evil.example/repos/acme/x", "evil.example"),
            unknown_host,
        ),
        (
            "https unconfigured host",
            get("https://evil.example/repos/acme/x", "evil.example"),
            unknown_host,
        ),
        (
            "host header names the origin, url does not",
            get("http://evil.example/repos/acme/x", api),
            unknown_host,
        ),
        (
            "host-prefix unconfigured host",
            get("/evil.example/repos/acme/x", proxy),
            unknown_host,
        ),
        (
            "host-prefix ip literal",
            get(&format!("/127.0.0.1:{port}/repos/acme/x"), proxy),
            unknown_host,
        ),
        (
            "host-prefix other port",
            get(&format!("/localhost:{other_port}/repos/acme/x"), proxy),
            unknown_host,
        ),
        // CR/LF and other control characters.
        (
            "raw crlf in request line",
            format!("GET /repos/acme/x\r\nX-Evil: 1 HTTP/1.1\r\nHost: {proxy}\r\n\r\n")
                .into_bytes(),
            Hyper(400),
        ),
        (
            "raw control byte in the target",
            get("/repos/acme/x\x01y", proxy),
            Hyper(400),
        ),
        (
            "encoded crlf in repo",
            get("/repos/acme/x%0d%0aX-Evil:%201", proxy),
            bad_path,
        ),
        (
            "encoded crlf in ownerless path",
            get("/meta%0D%0AX-Evil:%201", proxy),
            bad_path,
        ),
        ("encoded nul", get("/rate_limit%00", proxy), bad_path),
        ("encoded del", get("/repos/acme/x%7f", proxy), bad_path),
        (
            "bare cr in owner header",
            req(
                "GET /rate_limit HTTP/1.1",
                proxy,
                "X-GitHub-Owner: acme\rX-Evil: 1\r\n",
            ),
            Hyper(400),
        ),
        (
            "folded owner header",
            req(
                "GET /rate_limit HTTP/1.1",
                proxy,
                "X-GitHub-Owner: acme\r\n X-Evil: 1\r\n",
            ),
            Hyper(400),
        ),
        (
            "encoded crlf in owner header",
            req(
                "GET /rate_limit HTTP/1.1",
                proxy,
                "X-GitHub-Owner: acme%0d%0aX-Evil:%201\r\n",
            ),
            bad_request,
        ),
        // Framing.
        (
            "two different content-lengths",
            req(
                "POST /repos/acme/x/issues HTTP/1.1",
                proxy,
                "Content-Length: 2\r\nContent-Length: 3\r\n",
            ),
            Hyper(400),
        ),
        (
            "non-numeric content-length",
            req(
                "POST /repos/acme/x/issues HTTP/1.1",
                proxy,
                "Content-Length: -1\r\n",
            ),
            Hyper(400),
        ),
        (
            "transfer-encoding not ending in chunked",
            req(
                "POST /repos/acme/x/issues HTTP/1.1",
                proxy,
                "Transfer-Encoding: chunked, identity\r\n",
            ),
            Hyper(400),
        ),
        (
            "transfer-encoding in http/1.0",
            req(
                "POST /repos/acme/x/issues HTTP/1.0",
                proxy,
                "Transfer-Encoding: chunked\r\n",
            ),
            Hyper(400),
        ),
        // Sizes.
        (
            "headers over 64 KiB",
            req(
                "GET /repos/acme/x HTTP/1.1",
                proxy,
                &(0..40)
                    .map(|i| format!("X-Pad-{i}: {}\r\n", "a".repeat(2000)))
                    .collect::<String>(),
            ),
            Refused(431, "invalid_request"),
        ),
        (
            "one header over 64 KiB",
            req(
                "GET /repos/acme/x HTTP/1.1",
                proxy,
                &format!("X-Pad: {}\r\n", "b".repeat(70 * 1024)),
            ),
            Refused(431, "invalid_request"),
        ),
        (
            "headers over hyper's buffer",
            req(
                "GET /repos/acme/x HTTP/1.1",
                proxy,
                &format!("X-Pad: {}\r\n", "c".repeat(2 * 1024 * 1024)),
            ),
            StatusOrClosed(431),
        ),
        (
            "too many headers",
            req(
                "GET /repos/acme/x HTTP/1.1",
                proxy,
                &(0..150)
                    .map(|i| format!("X-H{i}: v\r\n"))
                    .collect::<String>(),
            ),
            Hyper(431),
        ),
        (
            "uri over 8 KiB",
            get(&format!("/repos/acme/x?q={}", "q".repeat(9 * 1024)), proxy),
            Refused(414, "invalid_request"),
        ),
        (
            "uri over hyper's 64 KiB limit",
            get(&format!("/repos/acme/x?q={}", "q".repeat(70 * 1024)), proxy),
            Hyper(414),
        ),
        (
            "absolute uri over 8 KiB",
            get(
                &format!("http://{api}/repos/acme/x/{}", "p".repeat(9 * 1024)),
                api,
            ),
            Refused(414, "invalid_request"),
        ),
        // Tunnels.
        (
            "connect to the origin",
            req(&format!("CONNECT {api} HTTP/1.1"), api, ""),
            Refused(405, "connect_not_supported"),
        ),
        (
            "connect to github",
            req(
                "CONNECT api.github.com:443 HTTP/1.1",
                "api.github.com:443",
                "",
            ),
            Refused(405, "connect_not_supported"),
        ),
        // Endpoints that act as the App itself.
        ("app", get("/app", proxy), app_endpoint),
        (
            "app installations",
            get("/app/installations", proxy),
            app_endpoint,
        ),
        (
            "app access tokens",
            req(
                "POST /app/installations/77/access_tokens HTTP/1.1",
                proxy,
                "Content-Length: 0\r\n",
            ),
            app_endpoint,
        ),
        (
            "app manifest conversion",
            req(
                "POST /app-manifests/x/conversions HTTP/1.1",
                proxy,
                "Content-Length: 0\r\n",
            ),
            app_endpoint,
        ),
        (
            "installation repositories",
            get("/installation/repositories", proxy),
            app_endpoint,
        ),
        (
            "app behind api prefix",
            get("/api/v3/app/installations", proxy),
            app_endpoint,
        ),
        (
            "app in absolute form",
            get(&format!("http://{api}/app"), api),
            app_endpoint,
        ),
        (
            "app in host-prefix form",
            get(&format!("/{api}/app/installations"), proxy),
            app_endpoint,
        ),
        (
            "app upper case",
            get("/APP/installations", proxy),
            app_endpoint,
        ),
        ("app trailing slash", get("/app/", proxy), app_endpoint),
        (
            "app encoded slash",
            get("/app%2Finstallations", proxy),
            bad_path,
        ),
        // Owner hints that are not logins.
        (
            "owner header with underscore",
            req(
                "GET /rate_limit HTTP/1.1",
                proxy,
                "X-GitHub-Owner: acme_corp\r\n",
            ),
            bad_request,
        ),
        (
            "owner header of 40",
            req(
                "GET /rate_limit HTTP/1.1",
                proxy,
                &format!("X-GitHub-Owner: {long_owner}\r\n"),
            ),
            bad_request,
        ),
        (
            "owner header empty",
            req("GET /rate_limit HTTP/1.1", proxy, "X-GitHub-Owner: \r\n"),
            bad_request,
        ),
        (
            "owner header with slash",
            req(
                "POST /graphql HTTP/1.1",
                proxy,
                "X-GitHub-Owner: acme/x\r\nContent-Length: 2\r\n",
            ),
            bad_request,
        ),
        // GraphQL bodies the proxy will not hold.
        (
            "graphql declared over 1 MiB",
            req(
                "POST /graphql HTTP/1.1",
                proxy,
                "Content-Type: application/json\r\nContent-Length: 1048577\r\n",
            ),
            Refused(413, "body_too_large"),
        ),
    ];
    // A chunked GraphQL body that only turns out too large while being read.
    let mut chunked = req(
        "POST /graphql HTTP/1.1",
        proxy,
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n",
    );
    for _ in 0..17 {
        chunked.extend_from_slice(format!("{:x}\r\n", 64 * 1024).as_bytes());
        chunked.extend(std::iter::repeat_n(b' ', 64 * 1024));
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    rows.push((
        "graphql chunked over 1 MiB",
        chunked,
        Refused(413, "body_too_large"),
    ));
    rows.into_iter()
        .map(|(name, bytes, expect)| Row {
            name,
            bytes,
            expect,
        })
        .collect()
}

fn check(row: &Row, r: &RawResponse) -> Result<(), String> {
    let fail = |what: &str| Err(format!("{}: {what}; got {:?}", row.name, r.status_line));
    match row.expect {
        Expect::Refused(status, reason) => {
            if r.status != Some(status) {
                return fail(&format!("expected {status} {reason}"));
            }
            if r.reason().as_deref() != Some(reason)
                || r.header("x-credential-reason") != Some(reason)
                || r.header("x-credential-type") != Some("none")
                || r.header("x-request-id").is_none_or(|id| id.len() != 26)
            {
                return fail(&format!(
                    "expected reason {reason}: {}",
                    String::from_utf8_lossy(&r.body)
                ));
            }
        }
        Expect::Hyper(status) => {
            if r.status != Some(status) || r.header("x-request-id").is_some() {
                return fail(&format!(
                    "expected hyper's {status}: {}",
                    String::from_utf8_lossy(&r.body)
                ));
            }
        }
        Expect::StatusOrClosed(status) => {
            if r.status.is_some_and(|s| s != status) {
                return fail(&format!("expected {status} or a close"));
            }
        }
    }
    Ok(())
}

#[tokio::test]
async fn hostile_requests_are_refused_and_never_reach_github() {
    let fake = fake_github().await;
    let proxy = proxy(&fake, "").await;
    let api = api_authority(&fake);
    // A port nothing configured listens on (the proxy's own admin port).
    let other_port = proxy.admin_addr.port();
    let rows = table(&api, &proxy.addr.to_string(), other_port);
    assert!(rows.len() >= 40, "{}", rows.len());

    let mut failures = Vec::new();
    let mut answered_by_proxy = 0;
    for row in &rows {
        let r = raw_request(proxy.addr, &row.bytes, WAIT).await;
        if let Err(e) = check(row, &r) {
            failures.push(e);
        }
        if r.header("x-request-id").is_some() {
            answered_by_proxy += 1;
        }
        // Checked per row so a failure names the request that got through.
        if !fake.requests().is_empty() {
            failures.push(format!(
                "{}: reached FakeGitHub: {:?}",
                row.name,
                fake.requests()
            ));
            break;
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(fake.requests().is_empty(), "{:?}", fake.requests());

    // Every one the proxy answered itself has a refused audit record naming no credential, and
    // so has every head hyper refused before the proxy saw a request (method and path unknown).
    let refused_rows = rows
        .iter()
        .filter(|r| matches!(r.expect, Expect::Refused(..)))
        .count();
    let hyper_rows: Vec<u16> = rows
        .iter()
        .filter_map(|r| match r.expect {
            Expect::Hyper(status) | Expect::StatusOrClosed(status) => Some(status),
            Expect::Refused(..) => None,
        })
        .collect();
    assert!(answered_by_proxy >= refused_rows);
    let expected_records = answered_by_proxy + hyper_rows.len();
    let records = proxy.stop().await;
    assert_eq!(
        records.len(),
        expected_records,
        "{}",
        records
            .iter()
            .map(|r| format!(
                "{} {} {} {}",
                r["status"], r["reason"], r["outcome"], r["path"]
            ))
            .collect::<Vec<_>>()
            .join("\n")
    );
    for record in &records {
        assert_eq!(record["outcome"], "refused", "{record}");
        assert_eq!(record["credential"], "none", "{record}");
        assert!(record["hashed_token"].is_null(), "{record}");
        assert!(record["upstream_status"].is_null(), "{record}");
    }
    let mut unparsed: Vec<u16> = records
        .iter()
        .filter(|r| r["method"].is_null())
        .map(|r| {
            assert_eq!(r["reason"], "invalid_request", "{r}");
            assert!(r["path"].is_null() && r["host"].is_null(), "{r}");
            u16::try_from(r["status"].as_u64().unwrap()).unwrap()
        })
        .collect();
    let mut expected_unparsed = hyper_rows;
    unparsed.sort_unstable();
    expected_unparsed.sort_unstable();
    assert_eq!(unparsed, expected_unparsed);
    assert!(fake.requests().is_empty(), "{:?}", fake.requests());
}

/// The same App + PAT setup serves an ordinary request: the table's silence is not because
/// nothing could get through.
#[tokio::test]
async fn control_request_reaches_github() {
    let fake = fake_github().await;
    let proxy = proxy(&fake, "").await;
    let r = raw_request(
        proxy.addr,
        &get("/repos/acme/widgets", &proxy.addr.to_string()),
        WAIT,
    )
    .await;
    assert_eq!(r.status, Some(200), "{}", r.text);
    assert_eq!(r.header("x-credential-type"), Some("app"));
    assert_eq!(fake.calls("GET /repos/acme/widgets"), 1);
}

/// CL.TE smuggling: `Transfer-Encoding: chunked` wins over `Content-Length` (hyper drops the
/// length), the connection is closed after the response, and bytes after the chunked body are
/// never read as a second request.
#[tokio::test]
async fn content_length_with_chunked_cannot_smuggle_a_second_request() {
    let fake = fake_github().await;
    let proxy = proxy(&fake, "").await;
    let host = proxy.addr.to_string();
    for order in [
        "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: chunked\r\nContent-Length: 60\r\n",
    ] {
        let smuggled = format!(
            "POST /repos/acme/widgets/issues HTTP/1.1\r\nHost: {host}\r\n{order}\r\n2\r\n{{}}\r\n0\r\n\r\nGET /app/installations HTTP/1.1\r\nHost: {host}\r\n\r\n"
        );
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        stream.write_all(smuggled.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(WAIT, stream.read_to_end(&mut out))
            .await
            .expect("the proxy closes a CL+TE connection")
            .unwrap();
        let text = String::from_utf8_lossy(&out);
        assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "{text}");
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    }
    assert_eq!(fake.calls("POST /repos/acme/widgets/issues"), 2);
    // The proxy's own installation lookup (with its App JWT) is the only `/app/installations`.
    assert!(
        fake.requests()
            .iter()
            .filter(|r| r.path == "/app/installations")
            .all(|r| r.auth == support::fake_github::Auth::Jwt(hostile_common::APP_ID)),
        "{:?}",
        fake.requests()
    );
    let records = proxy.stop().await;
    assert_eq!(records.len(), 2);
    assert!(records.iter().all(|r| r["path"] != "/app/installations"));
}

/// Absolute form is routed by its URL: a `Host` header naming another host neither reroutes the
/// request nor reaches GitHub (RFC 9112 §3.2.2: the target URI wins).
#[tokio::test]
async fn absolute_form_is_routed_by_url_not_by_host_header() {
    let fake = fake_github().await;
    let proxy = proxy(&fake, "").await;
    let api = api_authority(&fake);
    let r = raw_request(
        proxy.addr,
        &get(&format!("http://{api}/repos/acme/widgets"), "evil.example"),
        WAIT,
    )
    .await;
    assert_eq!(r.status, Some(200), "{}", r.text);
    assert_eq!(fake.calls("GET /repos/acme/widgets"), 1);
    let records = proxy.stop().await;
    assert_eq!(records[0]["host"], api);
}

/// A client that sends its request head one byte per second is cut off within
/// `headerReadTimeoutMs` (plus margin), and other clients are served meanwhile.
#[tokio::test]
async fn slow_client_is_disconnected_while_others_are_served() {
    const HEADER_READ_TIMEOUT: Duration = Duration::from_millis(1000);
    const MARGIN: Duration = Duration::from_millis(2000);
    let fake = fake_github().await;
    let proxy = proxy(&fake, "  headerReadTimeoutMs: 1000\n").await;
    let addr = proxy.addr;
    let ordinary = move || {
        let req = Request::get("/repos/acme/widgets")
            .header("host", addr.to_string())
            .body(full(Bytes::new()))
            .unwrap();
        tokio::spawn(server_common::send_to(addr, req))
    };
    // Warm up (installation lookup, mint) so the requests below are quick.
    let (response, _) = ordinary().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    let slow = tokio::spawn(async move {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let started = Instant::now();
        let head = format!("GET /repos/acme/widgets HTTP/1.1\r\nHost: {addr}\r\n\r\n");
        let mut sent = 0;
        // Bounded: the head is ~50 bytes; the proxy must cut us off long before it is done.
        for byte in head.as_bytes() {
            if stream.write_all(&[*byte]).await.is_err() {
                break;
            }
            sent += 1;
            // One byte per second, unless the proxy closes first.
            let mut probe = [0u8; 1024];
            match tokio::time::timeout(Duration::from_secs(1), stream.read(&mut probe)).await {
                Ok(Ok(0) | Err(_)) => break,
                Ok(Ok(n)) => {
                    // Some servers answer 408 before closing; either is a disconnect.
                    let _ = n;
                    break;
                }
                Err(_) => {}
            }
        }
        (started.elapsed(), sent, head.len())
    });

    // Meanwhile, ordinary requests keep being served, concurrently.
    let mut served = 0;
    let mut served_while_slow_connected = 0;
    let deadline = Instant::now() + HEADER_READ_TIMEOUT + MARGIN;
    while !slow.is_finished() && Instant::now() < deadline {
        let batch: Vec<_> = (0..4).map(|_| ordinary()).collect();
        for task in batch {
            let (response, _) = task.await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            served += 1;
        }
        if !slow.is_finished() {
            served_while_slow_connected += 4;
        }
    }
    let (elapsed, sent, total) = tokio::time::timeout(WAIT, slow).await.unwrap().unwrap();
    eprintln!(
        "slow client cut off after {elapsed:?} ({sent} of {total} bytes); \
         {served_while_slow_connected} requests served meanwhile"
    );
    assert!(
        sent < total,
        "the slow client sent its whole head ({sent} bytes)"
    );
    assert!(
        elapsed <= HEADER_READ_TIMEOUT + MARGIN,
        "slow client held the connection for {elapsed:?}"
    );
    assert!(
        served_while_slow_connected >= 4,
        "only {served_while_slow_connected} requests served while the slow client was connected"
    );
    // The slow request never reached GitHub; the others (and the warm-up) did.
    assert_eq!(fake.calls("GET /repos/acme/widgets"), served + 1);
}

/// A client that connects and sends nothing at all is disconnected too.
#[tokio::test]
async fn silent_client_is_disconnected() {
    let fake = fake_github().await;
    let proxy = proxy(&fake, "  headerReadTimeoutMs: 1000\n").await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let started = Instant::now();
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "still connected after 5 s");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
}
