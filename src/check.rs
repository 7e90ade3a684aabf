//! `gh-token-proxy check` (SPEC §9): validates what the config names (files, TLS client) and, unless
//! `--offline`, asks GitHub whether every PAT and App works. One finding per line, never a secret.

use std::fmt;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use http_body_util::{BodyExt, Full};
use time::OffsetDateTime;

use crate::config::{AppConfig, AuditSink, Config, Integration};
use crate::credential::Token;
use crate::github::GitHub;
use crate::github::app::AppJwt;
use crate::github::{error_chain, github_message};
use crate::upstream::{self, UpstreamClient, UpstreamSetupError};

const USER_AGENT: &str = concat!("gh-token-proxy/", env!("CARGO_PKG_VERSION"), " (check)");
/// `/app` and `/rate_limit` answers are small; anything bigger is not worth reading.
const MAX_BODY: usize = 1024 * 1024;
/// A PAT expiring sooner than this is a warning (SPEC §9).
const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

/// How bad a finding is. `Warn` and `Fail` are both problems (exit 1); `Warn` marks something
/// that still works today but will not for long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Ok,
    Warn,
    Fail,
}

impl Severity {
    fn prefix(self) -> &'static str {
        match self {
            Severity::Ok => "ok   ",
            Severity::Warn => "warn ",
            Severity::Fail => "FAIL ",
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    /// The integration's host, `None` for findings about the `proxy` section.
    pub host: Option<String>,
    /// The config key the finding is about (`integrations.github[0].token`).
    pub key: String,
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.severity.prefix())?;
        if let Some(host) = &self.host {
            write!(f, "{host} ")?;
        }
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Everything `check` found, in the order it was found.
#[derive(Debug, Clone, Default)]
pub struct CheckReport {
    pub findings: Vec<Finding>,
    /// A file the `proxy` section names cannot be used (`caFile`, `audit.path`): `serve` would
    /// refuse to start with exit 2 ("bad config"), so `check` exits 2 too, after listing every
    /// finding.
    pub bad_config: bool,
}

impl CheckReport {
    /// Warnings and failures.
    pub fn problems(&self) -> usize {
        self.findings
            .iter()
            .filter(|f| f.severity != Severity::Ok)
            .count()
    }

    /// The last line: `check: all good` or `check: N problems found`.
    pub fn summary(&self) -> String {
        match self.problems() {
            0 => "check: all good".to_string(),
            1 => "check: 1 problem found".to_string(),
            n => format!("check: {n} problems found"),
        }
    }

    fn push(&mut self, severity: Severity, host: Option<&str>, key: String, message: String) {
        self.findings.push(Finding {
            severity,
            host: host.map(str::to_string),
            key,
            message,
        });
    }
}

/// Prints the report to stdout and picks the exit code (SPEC §2: 0 all good, 1 problems found,
/// 2 bad config, as `serve` would exit for the same config).
pub async fn check_main(config: Config, offline: bool) -> ExitCode {
    let report = run_check(Arc::new(config), offline).await;
    for finding in &report.findings {
        println!("{finding}");
    }
    println!("{}", report.summary());
    if report.bad_config {
        ExitCode::from(2)
    } else if report.problems() == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Runs every check. Offline: the files the config names and the upstream client. Online, in
/// addition, each integration's PAT and Apps against GitHub; a failure of one integration (even
/// an unreachable host) is a finding, never an early return.
pub async fn run_check(config: Arc<Config>, offline: bool) -> CheckReport {
    let mut report = CheckReport::default();
    let apps: usize = config.integrations.iter().map(|i| i.apps.len()).sum();
    report.push(
        Severity::Ok,
        None,
        "config".to_string(),
        format!(
            "valid: {} integration(s), {apps} App(s)",
            config.integrations.len()
        ),
    );
    check_audit(&config, &mut report);
    let client = check_upstream(&config, &mut report);
    let online = match (offline, client) {
        (true, _) => None,
        (false, Some(client)) => Some(Online {
            github: GitHub::new(config.clone(), client.clone()),
            client,
            timeout: config.proxy.upstream.response_timeout,
        }),
        (false, None) => {
            report.push(
                Severity::Fail,
                None,
                "check".to_string(),
                "GitHub was not contacted because the upstream client could not be built"
                    .to_string(),
            );
            None
        }
    };
    // Online, GitHub's verdict on a PAT or key replaces the offline "it is set" line.
    let quiet = !offline;
    for integration in &config.integrations {
        check_offline(integration, quiet, &mut report);
        let Some(online) = &online else {
            continue;
        };
        online.check_pat(integration, &mut report).await;
        for (app_index, app) in integration.apps.iter().enumerate() {
            online
                .check_app(integration, app_index, app, &mut report)
                .await;
        }
    }
    report
}

/// `proxy.audit.path`: the proxy appends to the file, creating it if needed, so the file (when it
/// exists) must open for appending, else its directory must let us create files.
fn check_audit(config: &Config, report: &mut CheckReport) {
    let before = report.problems();
    check_audit_path(config, report);
    report.bad_config |= report.problems() > before;
}

fn check_audit_path(config: &Config, report: &mut CheckReport) {
    let key = "proxy.audit.path".to_string();
    let AuditSink::File(path) = &config.proxy.audit else {
        report.push(Severity::Ok, None, key, "stdout".to_string());
        return;
    };
    let shown = path.display();
    if path.is_dir() {
        report.push(
            Severity::Fail,
            None,
            key,
            format!("{shown} is a directory; name a file"),
        );
        return;
    }
    if path.exists() {
        match std::fs::OpenOptions::new().append(true).open(path) {
            Ok(_) => report.push(
                Severity::Ok,
                None,
                key,
                format!("{shown} exists and is writable"),
            ),
            Err(err) => report.push(
                Severity::Fail,
                None,
                key,
                format!("{shown} cannot be opened for appending: {err}"),
            ),
        }
        return;
    }
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        report.push(
            Severity::Fail,
            None,
            key,
            format!(
                "{shown} cannot be created: directory {} does not exist",
                dir.display()
            ),
        );
        return;
    }
    match probe_writable(dir) {
        Ok(()) => report.push(
            Severity::Ok,
            None,
            key,
            format!("{shown} will be created; {} is writable", dir.display()),
        ),
        Err(err) => report.push(
            Severity::Fail,
            None,
            key,
            format!(
                "{shown} cannot be created: directory {} is not writable: {err}",
                dir.display()
            ),
        ),
    }
}

/// Permission bits do not tell whether *this* user may write (ACLs, read-only mounts), so a
/// probe file is created and removed.
fn probe_writable(dir: &Path) -> std::io::Result<()> {
    let probe = dir.join(format!(".gh-token-proxy-check-{}", std::process::id()));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)?;
    std::fs::remove_file(&probe)
}

/// `proxy.upstream`: builds the real client, which reads `caFile`.
fn check_upstream(config: &Config, report: &mut CheckReport) -> Option<UpstreamClient> {
    let upstream = &config.proxy.upstream;
    match upstream::build(upstream) {
        Ok(client) => {
            let roots = match &upstream.ca_file {
                Some(path) => format!("system roots + {}", path.display()),
                None => "system roots".to_string(),
            };
            report.push(
                Severity::Ok,
                None,
                "proxy.upstream".to_string(),
                format!("TLS client ready ({roots})"),
            );
            Some(client)
        }
        Err(err) => {
            let (key, message) = match &err {
                UpstreamSetupError::CaFileRead { path, source } => (
                    "proxy.upstream.caFile",
                    format!("cannot read {path}: {source}"),
                ),
                UpstreamSetupError::CaFileEmpty { path } => (
                    "proxy.upstream.caFile",
                    format!("{path} holds no usable PEM certificate"),
                ),
                UpstreamSetupError::Tls(_) | UpstreamSetupError::Verifier(_) => {
                    ("proxy.upstream", err.to_string())
                }
            };
            report.push(Severity::Fail, None, key.to_string(), message);
            report.bad_config = true;
            None
        }
    }
}

/// What can be said about an integration without GitHub: the PAT is sendable, the keys parse.
/// `quiet` leaves out the `ok` lines that an online check says better.
fn check_offline(integration: &Integration, quiet: bool, report: &mut CheckReport) {
    let host = Some(integration.host.as_str());
    let i = integration.index;
    match &integration.token {
        None if integration.apps.is_empty() => report.push(
            Severity::Ok,
            host,
            format!("integrations.github[{i}]"),
            "no PAT and no App: requests are refused unless proxy.allowAnonymous is true"
                .to_string(),
        ),
        None => report.push(
            Severity::Ok,
            host,
            format!("integrations.github[{i}].token"),
            "not set: owners no App covers are refused".to_string(),
        ),
        // The value itself is never shown; only whether it can be sent.
        Some(secret) => match Token::new(secret.clone()) {
            Ok(_) if quiet => {}
            Ok(_) => report.push(
                Severity::Ok,
                host,
                format!("integrations.github[{i}].token"),
                "set".to_string(),
            ),
            Err(err) => report.push(
                Severity::Fail,
                host,
                format!("integrations.github[{i}].token"),
                err.to_string(),
            ),
        },
    }
    for (a, app) in integration.apps.iter().enumerate() {
        let key = format!("integrations.github[{i}].apps[{a}].privateKey");
        match AppJwt::new(app.app_id, &app.private_key) {
            Ok(_) if quiet => {}
            Ok(_) => report.push(
                Severity::Ok,
                host,
                key,
                format!("App {}: private key parses", app.app_id),
            ),
            Err(err) => report.push(Severity::Fail, host, key, err.to_string()),
        }
    }
}

struct Online {
    client: UpstreamClient,
    timeout: Duration,
    github: GitHub,
}

/// A GitHub answer, or why there was none (already phrased for a finding).
type Answer = Result<(StatusCode, HeaderMap, Bytes), String>;

impl Online {
    /// One GET with an `Authorization` the caller marked sensitive.
    async fn get(&self, url: &str, auth: HeaderValue) -> Answer {
        let request = http::Request::builder()
            .method(Method::GET)
            .uri(url)
            .header(header::AUTHORIZATION, auth)
            .header(header::ACCEPT, "application/vnd.github+json")
            .header(header::USER_AGENT, USER_AGENT)
            .header("X-GitHub-Api-Version", "2022-11-28")
            .body(
                Full::new(Bytes::new())
                    .map_err(|never| match never {})
                    .boxed_unsync(),
            )
            .map_err(|err| format!("cannot build the request: {err}"))?;
        let timeout = self.timeout;
        let response = tokio::time::timeout(timeout, self.client.request(request))
            .await
            .map_err(|_| format!("no answer within {timeout:?}"))?
            .map_err(|err| error_chain(&err))?;
        let (parts, body) = response.into_parts();
        let body = tokio::time::timeout(
            timeout,
            http_body_util::Limited::new(body, MAX_BODY).collect(),
        )
        .await
        .map_err(|_| format!("body not read within {timeout:?}"))?
        .map_err(|err| format!("cannot read the body: {err}"))?
        .to_bytes();
        Ok((parts.status, parts.headers, body))
    }

    /// `GET /rate_limit` with the PAT: it costs no rate limit and answers the validity, scopes,
    /// expiry and remaining requests in one call.
    async fn check_pat(&self, integration: &Integration, report: &mut CheckReport) {
        let Some(secret) = &integration.token else {
            return;
        };
        let host = Some(integration.host.as_str());
        let key = format!("integrations.github[{}].token", integration.index);
        // An unsendable PAT was already reported offline.
        let Ok(token) = Token::new(secret.clone()) else {
            return;
        };
        let api = integration.api.base_url();
        let url = format!("{api}/rate_limit");
        let (status, headers, body) = match self.get(&url, token.bearer_header().clone()).await {
            Ok(answer) => answer,
            Err(err) => {
                report.push(
                    Severity::Fail,
                    host,
                    key,
                    format!("cannot check the PAT: GET {url} failed: {err}"),
                );
                return;
            }
        };
        if status == StatusCode::UNAUTHORIZED {
            report.push(
                Severity::Fail,
                host,
                key,
                format!(
                    "rejected by GitHub ({} {}): the PAT is revoked or expired; create a new one",
                    status.as_u16(),
                    github_message(status, &body)
                ),
            );
            return;
        }
        // GitHub Enterprise Server with rate limiting turned off answers `/rate_limit` with 404
        // "Rate limiting is not enabled." after authenticating: the PAT is fine.
        let rate_limiting_off = status == StatusCode::NOT_FOUND
            && github_message(status, &body).contains("Rate limiting is not enabled");
        if !status.is_success() && !rate_limiting_off {
            report.push(
                Severity::Fail,
                host,
                key,
                format!(
                    "GET {url} answered {} {}",
                    status.as_u16(),
                    github_message(status, &body)
                ),
            );
            return;
        }
        let mut details = Vec::new();
        // Classic PATs list their scopes; fine-grained PATs send no such header.
        match headers.get("x-oauth-scopes").and_then(|v| v.to_str().ok()) {
            Some(scopes) if !scopes.trim().is_empty() => {
                details.push(format!("scopes: {}", scopes.trim()));
            }
            Some(_) => details.push("scopes: none".to_string()),
            None => details.push("no X-OAuth-Scopes (fine-grained PAT?)".to_string()),
        }
        if rate_limiting_off {
            details.push("rate limiting not enabled on this host".to_string());
        } else if let Some(remaining) = rate_limit_remaining(&headers, &body) {
            details.push(format!("{remaining} core requests left"));
        }
        let expiry = headers
            .get("github-authentication-token-expiration")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let Some(expiry) = expiry else {
            details.push("no expiry".to_string());
            report.push(
                Severity::Ok,
                host,
                key,
                format!("valid; {}", details.join("; ")),
            );
            return;
        };
        let (severity, expiry_text) = expiry_finding(&expiry, OffsetDateTime::now_utc());
        let message = match severity {
            Severity::Ok => {
                details.push(expiry_text);
                format!("valid; {}", details.join("; "))
            }
            _ => format!("{expiry_text} ({})", details.join("; ")),
        };
        report.push(severity, host, key, message);
    }

    /// The App's JWT against `GET /app`, then its installations against `allowedInstallationOwners`.
    async fn check_app(
        &self,
        integration: &Integration,
        app_index: usize,
        app: &AppConfig,
        report: &mut CheckReport,
    ) {
        let host = Some(integration.host.as_str());
        let i = integration.index;
        let key = format!("integrations.github[{i}].apps[{app_index}]");
        let id = app.app_id;
        // A key that does not parse was reported offline; nothing to ask GitHub.
        let Ok(jwt) = AppJwt::new(id, &app.private_key) else {
            return;
        };
        let auth = match jwt.authorization() {
            Ok(auth) => auth,
            Err(err) => {
                report.push(Severity::Fail, host, key, err.to_string());
                return;
            }
        };
        let url = format!("{}/app", integration.api.base_url());
        match self.get(&url, auth).await {
            Err(err) => {
                report.push(
                    Severity::Fail,
                    host,
                    key,
                    format!("App {id}: cannot check the App: GET {url} failed: {err}"),
                );
                return;
            }
            Ok((status, _, body)) if status == StatusCode::UNAUTHORIZED => {
                report.push(
                    Severity::Fail,
                    host,
                    key,
                    format!(
                        "App {id}: GitHub rejected the App JWT (401 {}): wrong private key or app id; check appId and privateKey",
                        github_message(status, &body)
                    ),
                );
                return;
            }
            Ok((status, _, body)) if !status.is_success() => {
                report.push(
                    Severity::Fail,
                    host,
                    key,
                    format!(
                        "App {id}: GET {url} answered {} {}",
                        status.as_u16(),
                        github_message(status, &body)
                    ),
                );
                return;
            }
            Ok((_, _, body)) => {
                let slug = serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v.get("slug").and_then(|s| s.as_str()).map(str::to_string));
                let named = slug.map(|s| format!(" ({s})")).unwrap_or_default();
                report.push(
                    Severity::Ok,
                    host,
                    key.clone(),
                    format!("App {id}{named}: GitHub accepts its JWT"),
                );
            }
        }

        // The same listing (all pages) the proxy resolves with.
        let installations = match self.github.installations(i, app_index).await {
            Ok(list) => list,
            Err(err) => {
                report.push(
                    Severity::Fail,
                    host,
                    format!("{key}.installations"),
                    format!("App {id}: {err}"),
                );
                return;
            }
        };
        if installations.is_empty() {
            report.push(
                Severity::Warn,
                host,
                format!("{key}.installations"),
                format!("App {id} is not installed anywhere: it serves no request; install it"),
            );
        }
        for inst in installations.iter() {
            let selection = if inst.selected { "selected" } else { "all" };
            let admitted = if app.allows_owner(&inst.account) {
                ""
            } else {
                "; not in allowedInstallationOwners, so unused"
            };
            if inst.suspended {
                report.push(
                    Severity::Fail,
                    host,
                    format!("{key}.installations"),
                    format!(
                        "App {id}'s installation {} on '{}' is suspended: its requests fall back to the PAT; unsuspend it in the owner's settings",
                        inst.id, inst.account
                    ),
                );
            } else {
                report.push(
                    Severity::Ok,
                    host,
                    format!("{key}.installations"),
                    format!(
                        "App {id} installed on '{}' (installation {}, repository_selection: {selection}{admitted})",
                        inst.account, inst.id
                    ),
                );
            }
        }
        for owner in app.allowed_installation_owners.iter().flatten() {
            if !installations
                .iter()
                .any(|inst| inst.account.eq_ignore_ascii_case(owner))
            {
                report.push(
                    Severity::Fail,
                    host,
                    format!("{key}.allowedInstallationOwners"),
                    format!(
                        "App {id} is not installed on '{owner}', which allowedInstallationOwners lists: install it or remove the entry"
                    ),
                );
            }
        }
    }
}

/// `resources.core.remaining` from the body, else the `X-RateLimit-Remaining` header.
fn rate_limit_remaining(headers: &HeaderMap, body: &[u8]) -> Option<u64> {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v.pointer("/resources/core/remaining")
                .and_then(|r| r.as_u64())
        })
        .or_else(|| {
            headers
                .get("x-ratelimit-remaining")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse().ok())
        })
}

/// The severity and wording for a `GitHub-Authentication-Token-Expiration` value at `now`.
fn expiry_finding(value: &str, now: OffsetDateTime) -> (Severity, String) {
    let Some(expires) = parse_expiration(value) else {
        return (
            Severity::Warn,
            format!(
                "GitHub-Authentication-Token-Expiration '{value}' is not a date this check understands"
            ),
        );
    };
    let date = expires.date();
    let left = expires - now;
    if left <= time::Duration::ZERO {
        return (
            Severity::Fail,
            format!("the PAT expired on {date}; create a new one"),
        );
    }
    // Rounded, so a PAT made to last 90 days reads "90 days" a few seconds later, not 89.
    let days = (left + time::Duration::hours(12)).whole_days();
    if left < time::Duration::try_from(EXPIRY_WARNING).unwrap_or(time::Duration::ZERO) {
        return (
            Severity::Warn,
            format!(
                "WARNING: the PAT expires on {date}, in {days} day(s); create a new one before then"
            ),
        );
    }
    (Severity::Ok, format!("expires {date} (in {days} days)"))
}

/// `2026-12-01 10:00:00 UTC` (what GitHub documents) or `2026-12-01 10:00:00 +0000` (what it
/// also sends); any `±HHMM` or `±HH:MM` offset.
fn parse_expiration(value: &str) -> Option<OffsetDateTime> {
    let value = value.trim();
    let (datetime, zone) = value.rsplit_once(' ')?;
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    let local = time::PrimitiveDateTime::parse(datetime.trim(), format).ok()?;
    let offset = if zone.eq_ignore_ascii_case("UTC") || zone == "Z" {
        time::UtcOffset::UTC
    } else {
        let (sign, digits) = match zone.as_bytes().first()? {
            b'+' => (1, &zone[1..]),
            b'-' => (-1, &zone[1..]),
            _ => return None,
        };
        let digits: String = digits.chars().filter(|c| *c != ':').collect();
        if digits.len() != 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let hours: i8 = digits[..2].parse().ok()?;
        let minutes: i8 = digits[2..].parse().ok()?;
        time::UtcOffset::from_hms(sign * hours, sign * minutes, 0).ok()?
    };
    Some(local.assume_offset(offset))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn at(s: &str) -> OffsetDateTime {
        parse_expiration(s).unwrap()
    }

    #[test]
    fn parses_utc_and_numeric_offsets() {
        let utc = at("2026-12-01 10:00:00 UTC");
        assert_eq!(utc, at("2026-12-01 10:00:00 +0000"));
        assert_eq!(utc, at("2026-12-01 12:00:00 +0200"));
        assert_eq!(utc, at("2026-12-01 04:30:00 -05:30"));
        assert_eq!(parse_expiration("2026-12-01"), None);
        assert_eq!(parse_expiration("2026-12-01 10:00:00 CEST"), None);
    }

    #[test]
    fn expiry_under_fourteen_days_warns_and_past_fails() {
        let now = at("2026-11-25 00:00:00 UTC");
        let (s, text) = expiry_finding("2027-02-23 00:00:00 UTC", now);
        assert_eq!(s, Severity::Ok, "{text}");
        let (s, text) = expiry_finding("2026-11-30 00:00:00 +0000", now);
        assert_eq!(s, Severity::Warn);
        assert!(
            text.contains("WARNING") && text.contains("in 5 day"),
            "{text}"
        );
        let (s, text) = expiry_finding("2026-11-24 00:00:00 UTC", now);
        assert_eq!(s, Severity::Fail);
        assert!(text.contains("expired on 2026-11-24"), "{text}");
        let (s, _) = expiry_finding("soon", now);
        assert_eq!(s, Severity::Warn);
    }

    #[test]
    fn remaining_comes_from_the_body_else_the_header() {
        let mut headers = HeaderMap::new();
        headers.insert("x-ratelimit-remaining", HeaderValue::from_static("17"));
        let body = br#"{"resources":{"core":{"remaining":4990}}}"#;
        assert_eq!(rate_limit_remaining(&headers, body), Some(4990));
        assert_eq!(rate_limit_remaining(&headers, b"{}"), Some(17));
        assert_eq!(rate_limit_remaining(&HeaderMap::new(), b""), None);
    }

    #[test]
    fn findings_print_with_prefix_host_and_key() {
        let mut report = CheckReport::default();
        report.push(
            Severity::Fail,
            Some("github.com"),
            "integrations.github[0].token".to_string(),
            "x".to_string(),
        );
        assert_eq!(
            report.findings[0].to_string(),
            "FAIL github.com integrations.github[0].token: x"
        );
        assert_eq!(report.summary(), "check: 1 problem found");
        report.findings.clear();
        assert_eq!(report.summary(), "check: all good");
    }
}
