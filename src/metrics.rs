//! Prometheus metrics (SPEC §9). The per-request path is a few relaxed atomic adds into fixed
//! arrays indexed by (credential, reason, status class): no lock, no allocation. The text format
//! is rendered on scrape.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;

use crate::credential::{CredentialKind, Reason};

pub(crate) const CREDENTIALS: [CredentialKind; 4] = [
    CredentialKind::App,
    CredentialKind::Pat,
    CredentialKind::Anonymous,
    CredentialKind::None,
];

/// Every reason, at the index of its discriminant (checked by a test).
pub(crate) const REASONS: [Reason; 22] = [
    Reason::Installed,
    Reason::PublicAccess,
    Reason::OwnerNotAllowed,
    Reason::NotInstalled,
    Reason::Suspended,
    Reason::RepoNotSelected,
    Reason::AppError,
    Reason::NoApp,
    Reason::NoOwner,
    Reason::NoCredential,
    Reason::InvalidPath,
    Reason::InvalidRequest,
    Reason::UnknownHost,
    Reason::AppEndpoint,
    Reason::ClientPolicy,
    Reason::ClientUnauthenticated,
    Reason::ConnectNotSupported,
    Reason::BodyTooLarge,
    Reason::UpstreamUnreachable,
    Reason::UpstreamTls,
    Reason::UpstreamTimeout,
    Reason::Overloaded,
];
/// One more slot for requests that ended before any reason was known (client aborted early).
const REASON_SLOTS: usize = REASONS.len() + 1;
const STATUS_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "none"];

/// Upper bounds (seconds) of the duration histogram.
const BUCKETS: [f64; 14] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// GitHub's rate-limit resources, interned so updating the gauge does not allocate.
const KNOWN_RESOURCES: [&str; 12] = [
    "core",
    "search",
    "graphql",
    "code_search",
    "integration_manifest",
    "source_import",
    "code_scanning_upload",
    "code_scanning_autofix",
    "actions_runner_registration",
    "scim",
    "dependency_snapshots",
    "audit_log",
];

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct RateKey {
    credential: CredentialKind,
    app_id: Option<u64>,
    installation_id: Option<u64>,
    resource: Cow<'static, str>,
}

/// The process's metrics. One per server, shared behind an `Arc`.
pub struct Metrics {
    requests: Vec<AtomicU64>,
    buckets: [AtomicU64; BUCKETS.len() + 1],
    duration_sum_micros: AtomicU64,
    duration_count: AtomicU64,
    rate_limit: DashMap<RateKey, AtomicI64>,
    shed_connections: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        Metrics {
            requests: (0..CREDENTIALS.len() * REASON_SLOTS * STATUS_CLASSES.len())
                .map(|_| AtomicU64::new(0))
                .collect(),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            duration_sum_micros: AtomicU64::new(0),
            duration_count: AtomicU64::new(0),
            rate_limit: DashMap::new(),
            shed_connections: AtomicU64::new(0),
        }
    }

    /// Counts one finished exchange.
    pub fn observe_request(
        &self,
        credential: CredentialKind,
        reason: Option<Reason>,
        status: Option<u16>,
        duration: Duration,
    ) {
        let c = credential as usize;
        let r = match reason {
            Some(reason) if (reason as usize) < REASONS.len() => reason as usize,
            _ => REASONS.len(),
        };
        let s = match status {
            Some(code @ 100..=599) => usize::from(code / 100 - 1),
            _ => STATUS_CLASSES.len() - 1,
        };
        let index = (c * REASON_SLOTS + r) * STATUS_CLASSES.len() + s;
        if let Some(counter) = self.requests.get(index) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        let secs = duration.as_secs_f64();
        let bucket = BUCKETS
            .iter()
            .position(|&le| secs <= le)
            .unwrap_or(BUCKETS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.duration_sum_micros.fetch_add(
            u64::try_from(duration.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        self.duration_count.fetch_add(1, Ordering::Relaxed);
    }

    /// Records GitHub's `X-RateLimit-Remaining` for the credential that got it.
    pub fn observe_rate_limit(
        &self,
        credential: CredentialKind,
        app_id: Option<u64>,
        installation_id: Option<u64>,
        resource: Option<&str>,
        remaining: u64,
    ) {
        let resource = resource.unwrap_or("core");
        let resource = match KNOWN_RESOURCES.iter().find(|r| **r == resource) {
            Some(known) => Cow::Borrowed(*known),
            // An unknown name is kept only if it looks like one (bounded label values).
            None if resource.len() <= 40
                && resource
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_') =>
            {
                Cow::Owned(resource.to_owned())
            }
            None => Cow::Borrowed("other"),
        };
        let key = RateKey {
            credential,
            app_id,
            installation_id,
            resource,
        };
        let value = i64::try_from(remaining).unwrap_or(i64::MAX);
        if let Some(gauge) = self.rate_limit.get(&key) {
            gauge.store(value, Ordering::Relaxed);
            return;
        }
        self.rate_limit.insert(key, AtomicI64::new(value));
    }

    /// A connection refused at `proxy.maxConnections`.
    pub fn observe_shed_connection(&self) {
        self.shed_connections.fetch_add(1, Ordering::Relaxed);
    }

    /// Prometheus text format (0.0.4) of the request-side families. Token families are appended
    /// by the caller, which knows the resolver.
    pub fn render(&self, out: &mut String) {
        out.push_str("# HELP gh_token_proxy_requests_total Requests by credential, reason and status class.\n");
        out.push_str("# TYPE gh_token_proxy_requests_total counter\n");
        for (c, credential) in CREDENTIALS.iter().enumerate() {
            for r in 0..REASON_SLOTS {
                let reason = REASONS.get(r).map_or("none", |r| r.as_str());
                for (s, class) in STATUS_CLASSES.iter().enumerate() {
                    let index = (c * REASON_SLOTS + r) * STATUS_CLASSES.len() + s;
                    let n = self
                        .requests
                        .get(index)
                        .map_or(0, |a| a.load(Ordering::Relaxed));
                    if n > 0 {
                        let _ = writeln!(
                            out,
                            "gh_token_proxy_requests_total{{credential=\"{credential}\",reason=\"{reason}\",status_class=\"{class}\"}} {n}"
                        );
                    }
                }
            }
        }

        out.push_str(
            "# HELP gh_token_proxy_request_duration_seconds Arrival to end of exchange.\n",
        );
        out.push_str("# TYPE gh_token_proxy_request_duration_seconds histogram\n");
        let mut cumulative = 0;
        for (i, le) in BUCKETS.iter().enumerate() {
            cumulative += self.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "gh_token_proxy_request_duration_seconds_bucket{{le=\"{le}\"}} {cumulative}"
            );
        }
        cumulative += self.buckets[BUCKETS.len()].load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "gh_token_proxy_request_duration_seconds_bucket{{le=\"+Inf\"}} {cumulative}"
        );
        let sum = self.duration_sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "gh_token_proxy_request_duration_seconds_sum {sum}");
        let _ = writeln!(
            out,
            "gh_token_proxy_request_duration_seconds_count {}",
            self.duration_count.load(Ordering::Relaxed)
        );

        out.push_str("# HELP gh_token_proxy_rate_limit_remaining GitHub's X-RateLimit-Remaining, last seen per credential.\n");
        out.push_str("# TYPE gh_token_proxy_rate_limit_remaining gauge\n");
        for entry in self.rate_limit.iter() {
            let key = entry.key();
            let _ = writeln!(
                out,
                "gh_token_proxy_rate_limit_remaining{{credential=\"{}\",app_id=\"{}\",installation_id=\"{}\",resource=\"{}\"}} {}",
                key.credential,
                OptNum(key.app_id),
                OptNum(key.installation_id),
                key.resource,
                entry.value().load(Ordering::Relaxed)
            );
        }

        out.push_str("# HELP gh_token_proxy_shed_connections_total Connections refused at proxy.maxConnections.\n");
        out.push_str("# TYPE gh_token_proxy_shed_connections_total counter\n");
        let _ = writeln!(
            out,
            "gh_token_proxy_shed_connections_total {}",
            self.shed_connections.load(Ordering::Relaxed)
        );
    }
}

/// An optional number as a label value (`""` when absent).
pub struct OptNum(pub Option<u64>);

impl std::fmt::Display for OptNum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(n) => write!(f, "{n}"),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn reason_table_matches_discriminants() {
        for (i, reason) in REASONS.iter().enumerate() {
            assert_eq!(*reason as usize, i, "{reason}");
        }
        for (i, c) in CREDENTIALS.iter().enumerate() {
            assert_eq!(*c as usize, i);
        }
    }

    #[test]
    fn renders_counters_histogram_and_gauge() {
        let m = Metrics::new();
        m.observe_request(
            CredentialKind::Pat,
            Some(Reason::NotInstalled),
            Some(200),
            Duration::from_millis(3),
        );
        m.observe_request(
            CredentialKind::Pat,
            Some(Reason::NotInstalled),
            Some(204),
            Duration::from_millis(70),
        );
        m.observe_request(CredentialKind::None, None, None, Duration::from_secs(100));
        m.observe_rate_limit(CredentialKind::App, Some(1), Some(2), Some("core"), 4999);
        m.observe_rate_limit(CredentialKind::App, Some(1), Some(2), Some("core"), 4998);
        let mut out = String::new();
        m.render(&mut out);
        assert!(out.contains("gh_token_proxy_requests_total{credential=\"pat\",reason=\"not_installed\",status_class=\"2xx\"} 2\n"), "{out}");
        assert!(out.contains("gh_token_proxy_requests_total{credential=\"none\",reason=\"none\",status_class=\"none\"} 1\n"), "{out}");
        assert!(
            out.contains("gh_token_proxy_request_duration_seconds_bucket{le=\"0.005\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("gh_token_proxy_request_duration_seconds_bucket{le=\"0.1\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("gh_token_proxy_request_duration_seconds_bucket{le=\"+Inf\"} 3\n"),
            "{out}"
        );
        assert!(
            out.contains("gh_token_proxy_request_duration_seconds_count 3\n"),
            "{out}"
        );
        assert!(out.contains("gh_token_proxy_rate_limit_remaining{credential=\"app\",app_id=\"1\",installation_id=\"2\",resource=\"core\"} 4998\n"), "{out}");
    }
}
