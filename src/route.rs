//! Request line → integration, origin and upstream URL: the three addressing forms of SPEC §4.

use std::sync::Arc;

use crate::config::{Config, Integration, Origin, OriginKind, Scheme};
use crate::credential::Reason;

/// How the client addressed the proxy; decides how `Link`/`Location` are rewritten (§8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// `GET http://api.github.com/repos/o/r` (HTTP_PROXY).
    ForwardProxy,
    /// `/ghe.acme.com/api/v3/repos/o/r`.
    HostPrefix,
    /// `/repos/o/r` to `proxy.defaultHost`.
    Default,
}

/// Where one request goes.
#[derive(Debug, Clone)]
pub struct Route {
    pub integration: Arc<Integration>,
    pub origin: OriginKind,
    pub form: Form,
    pub scheme: Scheme,
    /// Upstream authority (`api.github.com`, `ghe.acme.com:8443`): the audit `host` and the `Host` header.
    pub authority: String,
    /// Upstream path, raw, byte for byte as received after the routing prefix (audit `path`).
    pub upstream_path: String,
    /// Raw query string, if any.
    pub query: Option<String>,
    /// The path relative to the origin's path prefix, for [`crate::target::parse`]. For GraphQL `/graphql`.
    pub target_path: String,
}

impl Route {
    /// `/path?query`: the origin-form request target sent upstream (the connection is the
    /// authority's; `Host` names it).
    pub fn upstream_target(&self) -> String {
        match &self.query {
            Some(q) => {
                let mut target = String::with_capacity(self.upstream_path.len() + 1 + q.len());
                target.push_str(&self.upstream_path);
                target.push('?');
                target.push_str(q);
                target
            }
            None => self.upstream_path.clone(),
        }
    }

    /// `scheme://authority/path?query`: the whole upstream URL (what the routing tests check; the
    /// request itself carries [`Route::upstream_target`] on a connection to the authority).
    pub fn upstream_uri(&self) -> String {
        match &self.query {
            Some(q) => format!(
                "{}://{}{}?{}",
                self.scheme.as_str(),
                self.authority,
                self.upstream_path,
                q
            ),
            None => format!(
                "{}://{}{}",
                self.scheme.as_str(),
                self.authority,
                self.upstream_path
            ),
        }
    }
}

/// A request that cannot be routed: `unknown_host`, `connect_not_supported`, `invalid_request`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RouteError {
    pub reason: Reason,
    pub message: String,
    /// For `invalid_path`: the authority the request would have gone to, for its audit record
    /// (it was addressed to that origin; only its path was refused).
    pub authority: Option<String>,
}

impl RouteError {
    fn new(reason: Reason, message: impl Into<String>) -> Self {
        RouteError {
            reason,
            message: message.into(),
            authority: None,
        }
    }

    fn unknown_host(authority: &str) -> Self {
        RouteError::new(
            Reason::UnknownHost,
            format!(
                "'{authority}' is not a configured GitHub integration origin; this proxy only \
                 forwards to the integrations.github hosts it is configured with"
            ),
        )
    }
}

/// The port `uri` addresses: its own, else its scheme's default (`http` 80, `https` 443).
pub fn effective_port(uri: &http::Uri) -> Option<u16> {
    uri.port_u16().or_else(|| match uri.scheme_str() {
        Some(s) if s.eq_ignore_ascii_case("https") => Some(443),
        Some(s) if s.eq_ignore_ascii_case("http") => Some(80),
        _ => None,
    })
}

/// Whether `uri`'s host and port (as written or by default) are those of a configured origin.
/// Such an authority is GitHub's, never the proxy's own, even on a path outside the origin's
/// prefix (a mirror at `http://10.0.0.5:8080/api/v3` beside a proxy on port 8080).
pub fn is_configured_authority(config: &Config, uri: &http::Uri) -> bool {
    let Some(host) = uri.host() else {
        return false;
    };
    let port = effective_port(uri);
    config.integrations.iter().any(|i| {
        [Some(&i.api), i.raw.as_ref(), Some(&i.web), Some(&i.graphql)]
            .into_iter()
            .flatten()
            .any(|o| {
                format!("{}://{}/", o.scheme.as_str(), o.authority)
                    .parse::<http::Uri>()
                    .is_ok_and(|base| {
                        base.host().is_some_and(|h| h.eq_ignore_ascii_case(host))
                            && effective_port(&base) == port
                    })
            })
    })
}

/// When an absolute-form `uri` addresses `proxy.publicUrl` (its host, and its port as written or
/// by default), the origin-form path and query it asks the proxy for: `publicUrl`'s own path
/// removed (`https://lb.example/ghproxy/repos/o/r` → `/repos/o/r`).
pub fn public_url_path(config: &Config, uri: &http::Uri) -> Option<String> {
    let public = config
        .proxy
        .public_url
        .as_deref()?
        .parse::<http::Uri>()
        .ok()?;
    if !public.host()?.eq_ignore_ascii_case(uri.host()?)
        || effective_port(&public) != effective_port(uri)
    {
        return None;
    }
    let path_and_query = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let rest = path_and_query
        .strip_prefix(public.path().trim_end_matches('/'))
        .unwrap_or(path_and_query);
    Some(if rest.starts_with('/') {
        rest.to_owned()
    } else {
        format!("/{rest}")
    })
}

/// Routes a request by its method and request-target (`uri` as hyper parsed it: absolute form
/// carries scheme and authority, origin form only path and query).
pub fn route(config: &Config, method: &http::Method, uri: &http::Uri) -> Result<Route, RouteError> {
    route_checked(config, method, uri, true).map_err(|mut e| {
        if e.reason == Reason::InvalidPath {
            e.authority = route_checked(config, method, uri, false)
                .ok()
                .map(|r| r.authority);
        }
        e
    })
}

/// [`route`]; `check_path: false` only to learn where a refused path was addressed.
fn route_checked(
    config: &Config,
    method: &http::Method,
    uri: &http::Uri,
    check_path: bool,
) -> Result<Route, RouteError> {
    if method == http::Method::CONNECT {
        return Err(RouteError::new(
            Reason::ConnectNotSupported,
            "CONNECT is not supported: credentials cannot be added inside a TLS tunnel; \
             use an http:// base URL (for example http://api.github.com through HTTP_PROXY) \
             so the proxy can add them",
        ));
    }
    let path = uri.path();
    let query = uri.query();
    if let Some(authority) = uri.authority() {
        let default_port = match uri.scheme_str() {
            Some(s) if s.eq_ignore_ascii_case("http") => "80",
            Some(s) if s.eq_ignore_ascii_case("https") => "443",
            _ => {
                return Err(RouteError::new(
                    Reason::InvalidRequest,
                    "absolute request URLs must use http:// or https://",
                ));
            }
        };
        // `http://api.github.com@evil.example/` names evil.example; refuse rather than risk a
        // reader of the URL disagreeing with us about the host.
        if authority.as_str().contains('@') {
            return Err(RouteError::new(
                Reason::InvalidRequest,
                "request URL must not contain userinfo (user@host)",
            ));
        }
        if check_path {
            check_route_path(path)?;
        }
        let path = if path.is_empty() { "/" } else { path };
        let (host, port) = split_authority(authority.as_str())
            .ok_or_else(|| RouteError::unknown_host(authority.as_str()))?;
        let m = find_origin(config, host, port, Some(default_port), path)
            .ok_or_else(|| RouteError::unknown_host(authority.as_str()))?;
        return Ok(build(m, Form::ForwardProxy, query));
    }
    if uri.scheme().is_some() || !path.starts_with('/') {
        return Err(RouteError::new(
            Reason::InvalidRequest,
            "request target must be an absolute URL or a path starting with '/'",
        ));
    }
    if check_path {
        check_route_path(path)?;
    }
    let rest = path.get(1..).unwrap_or("");
    let (first, after) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if first.contains(['.', ':']) {
        let (host, port) = split_authority(first).ok_or_else(|| RouteError::unknown_host(first))?;
        let m = find_origin(config, host, port, None, after)
            .ok_or_else(|| RouteError::unknown_host(first))?;
        return Ok(build(m, Form::HostPrefix, query));
    }
    // Default form. `get` rather than `Config::default_integration` so a bad index is a refusal,
    // not a panic.
    let integration = config
        .integrations
        .get(config.proxy.default_host)
        .ok_or_else(|| RouteError::unknown_host("(default host)"))?;
    if path == "/graphql" || path == "/api/graphql" {
        let m = Match {
            integration,
            origin: &integration.graphql,
            remainder: "",
        };
        return Ok(build(m, Form::Default, query));
    }
    let remainder = strip_segment_prefix(path, "/api/v3").unwrap_or(path);
    // With the leading `/api/v3` stripped (§4), `/graphql` is the GraphQL endpoint, also on a GHE
    // default host, whose endpoint is `/api/graphql` and not under `/api/v3`.
    if let Some(rest @ ("" | "/")) = remainder.strip_prefix("/graphql") {
        let m = Match {
            integration,
            origin: &integration.graphql,
            remainder: rest,
        };
        return Ok(build(m, Form::Default, query));
    }
    let m = Match {
        integration,
        origin: &integration.api,
        remainder,
    };
    Ok(build(m, Form::Default, query))
}

fn check_route_path(path: &str) -> Result<(), RouteError> {
    crate::target::check_path(path).map_err(|e| RouteError::new(Reason::InvalidPath, e.0))
}

/// One origin a request (or a URL in a response header) matched.
struct Match<'a> {
    integration: &'a Arc<Integration>,
    origin: &'a Origin,
    /// The path after the origin's prefix, as received.
    remainder: &'a str,
}

fn build(m: Match<'_>, form: Form, query: Option<&str>) -> Route {
    let prefix = m.origin.path_prefix.as_str();
    let mut upstream_path = String::with_capacity(prefix.len() + m.remainder.len() + 1);
    upstream_path.push_str(prefix);
    upstream_path.push_str(m.remainder);
    if upstream_path.is_empty() {
        upstream_path.push('/');
    }
    // `/api/v3/graphql` in the default form (or `/graphql/`) lands on the api origin, and GHE's
    // `/api/graphql/` on the web origin of the same host, but it is the GraphQL endpoint:
    // classify it as GraphQL so its body is inspected and its policy applies.
    let kind = if matches!(m.origin.kind, OriginKind::Api | OriginKind::Web)
        && m.integration.graphql.authority == m.origin.authority
        && upstream_path.strip_suffix('/').unwrap_or(&upstream_path)
            == m.integration.graphql.path_prefix
    {
        OriginKind::Graphql
    } else {
        m.origin.kind
    };
    let target_path = if kind == OriginKind::Graphql {
        "/graphql".to_owned()
    } else if m.remainder.is_empty() {
        "/".to_owned()
    } else {
        m.remainder.to_owned()
    };
    Route {
        integration: Arc::clone(m.integration),
        origin: kind,
        form,
        scheme: m.origin.scheme,
        authority: m.origin.authority.clone(),
        upstream_path,
        query: query.map(str::to_owned),
        target_path,
    }
}

/// `path` without `prefix` when `prefix` ends on a segment boundary (`/api/v3` matches
/// `/api/v3` and `/api/v3/...`, never `/api/v3x`).
fn strip_segment_prefix<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = path.strip_prefix(prefix)?;
    (rest.is_empty() || rest.starts_with('/')).then_some(rest)
}

fn origins(integration: &Integration) -> impl Iterator<Item = &Origin> {
    [
        Some(&integration.api),
        Some(&integration.graphql),
        integration.raw.as_ref(),
        Some(&integration.web),
    ]
    .into_iter()
    .flatten()
}

/// Splits `host[:port]` (IPv6 literals in brackets). `None` when it cannot be an authority.
fn split_authority(authority: &str) -> Option<(&str, Option<&str>)> {
    let (host, port) = if authority.starts_with('[') {
        let end = authority.find(']')?;
        let (host, rest) = authority.split_at(end + 1);
        match rest {
            "" => (host, None),
            _ => (host, Some(rest.strip_prefix(':')?)),
        }
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty()
        || port.is_some_and(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return None;
    }
    Some((host, port))
}

fn scheme_default_port(scheme: Scheme) -> &'static str {
    match scheme {
        Scheme::Http => "80",
        Scheme::Https => "443",
    }
}

/// Whether a requested `host[:port]` names `origin`. A missing port, the request scheme's default
/// port (forward-proxy form) and the origin scheme's own default port all mean the origin's
/// default port; any other port must equal the origin's explicit port.
fn authority_matches(
    origin: &Origin,
    host: &str,
    port: Option<&str>,
    request_default_port: Option<&str>,
) -> bool {
    let Some((o_host, o_port)) = split_authority(&origin.authority) else {
        return false;
    };
    if !o_host.eq_ignore_ascii_case(host) {
        return false;
    }
    let o_default = scheme_default_port(origin.scheme);
    let o_port = o_port.filter(|p| *p != o_default);
    match (port, o_port) {
        (None, None) => true,
        (Some(p), None) => Some(p) == request_default_port || p == o_default,
        (None, Some(_)) => false,
        (Some(p), Some(op)) => p == op,
    }
}

/// The origin whose authority matches and whose path prefix is the longest segment-boundary
/// prefix of `path`; a GraphQL origin matches its exact path only.
fn find_origin<'a>(
    config: &'a Config,
    host: &str,
    port: Option<&str>,
    request_default_port: Option<&str>,
    path: &'a str,
) -> Option<Match<'a>> {
    let mut best: Option<Match<'a>> = None;
    for integration in &config.integrations {
        for origin in origins(integration) {
            if !authority_matches(origin, host, port, request_default_port) {
                continue;
            }
            let remainder = if origin.kind == OriginKind::Graphql {
                if path != origin.path_prefix {
                    continue;
                }
                ""
            } else {
                match strip_segment_prefix(path, &origin.path_prefix) {
                    Some(r) => r,
                    None => continue,
                }
            };
            let longer = best
                .as_ref()
                .is_none_or(|b| origin.path_prefix.len() > b.origin.path_prefix.len());
            if longer {
                best = Some(Match {
                    integration,
                    origin,
                    remainder,
                });
            }
        }
    }
    best
}

/// Rewrites one `Link` or `Location` header value so URLs on a configured origin point back at
/// the proxy the way this client reached it (§8). `proxy_base` is `proxy.publicUrl` or
/// `http://{Host}`, without a trailing `/`. Returns `None` when nothing changed.
pub fn rewrite_url_header(
    config: &Config,
    form: Form,
    proxy_base: &str,
    value: &str,
) -> Option<String> {
    if !value.trim_start().starts_with('<') {
        // Location: one bare URL.
        return rewrite_url(config, form, proxy_base, value.trim());
    }
    // Link: `<url>; rel="next", <url>; rel="last"`; only the parts inside `<>` change.
    let mut out = String::with_capacity(value.len() + 64);
    let mut changed = false;
    let mut rest = value;
    while let Some((before, after)) = rest.split_once('<') {
        out.push_str(before);
        out.push('<');
        let Some((url, tail)) = after.split_once('>') else {
            rest = after;
            break;
        };
        match rewrite_url(config, form, proxy_base, url) {
            Some(new) => {
                out.push_str(&new);
                changed = true;
            }
            None => out.push_str(url),
        }
        out.push('>');
        rest = tail;
    }
    out.push_str(rest);
    changed.then_some(out)
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    if head.eq_ignore_ascii_case(prefix) {
        s.get(prefix.len()..)
    } else {
        None
    }
}

fn rewrite_url(config: &Config, form: Form, proxy_base: &str, url: &str) -> Option<String> {
    let (default_port, rest) = if let Some(r) = strip_prefix_ignore_case(url, "https://") {
        ("443", r)
    } else {
        ("80", strip_prefix_ignore_case(url, "http://")?)
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path_and_more) = rest.split_at_checked(authority_end)?;
    if authority.contains('@') {
        return None;
    }
    let path_end = path_and_more
        .find(['?', '#'])
        .unwrap_or(path_and_more.len());
    let (path, suffix) = path_and_more.split_at_checked(path_end)?;
    let (host, port) = split_authority(authority)?;
    let m = find_origin(config, host, port, Some(default_port), path)?;
    let full_path = if path.is_empty() { "/" } else { path };
    let new = match form {
        Form::ForwardProxy => format!("http://{}{full_path}{suffix}", m.origin.authority),
        Form::HostPrefix | Form::Default => {
            let on_default_api = m.origin.kind == OriginKind::Api
                && config
                    .integrations
                    .get(config.proxy.default_host)
                    .is_some_and(|d| Arc::ptr_eq(d, m.integration));
            if on_default_api {
                let remainder = if m.remainder.is_empty() {
                    "/"
                } else {
                    m.remainder
                };
                format!("{proxy_base}{remainder}{suffix}")
            } else {
                format!("{proxy_base}/{}{full_path}{suffix}", m.origin.authority)
            }
        }
    };
    (new != url).then_some(new)
}

/// A `Config` built by hand (the YAML parser lives elsewhere), shared by the unit tests of
/// `route`, `target` and `clients`.
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
pub(crate) mod testing {
    use std::sync::Arc;
    use std::time::Duration;

    use crate::config::{
        AuditSink, ClientConfig, Config, Integration, Origin, OriginKind, ProxyConfig, Scheme,
        UpstreamConfig,
    };

    pub fn origin(kind: OriginKind, url: &str) -> Origin {
        let (scheme, rest) = match url.strip_prefix("https://") {
            Some(r) => (Scheme::Https, r),
            None => (Scheme::Http, url.strip_prefix("http://").unwrap()),
        };
        let (authority, path_prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        Origin {
            kind,
            scheme,
            authority: authority.to_owned(),
            path_prefix: path_prefix.to_owned(),
        }
    }

    fn integration(
        index: usize,
        host: &str,
        api: &str,
        raw: Option<&str>,
        graphql: &str,
    ) -> Arc<Integration> {
        Arc::new(Integration {
            index,
            host: host.to_owned(),
            api: origin(OriginKind::Api, api),
            raw: raw.map(|r| origin(OriginKind::Raw, r)),
            web: origin(OriginKind::Web, &format!("https://{host}")),
            graphql: origin(OriginKind::Graphql, graphql),
            token: None,
            apps: Vec::new(),
        })
    }

    /// github.com (default), ghe.acme.com, and a local http api on 127.0.0.1:4567.
    pub fn config() -> Config {
        config_with(0, Vec::new())
    }

    pub fn config_with(default_host: usize, clients: Vec<ClientConfig>) -> Config {
        Config {
            integrations: vec![
                integration(
                    0,
                    "github.com",
                    "https://api.github.com",
                    Some("https://raw.githubusercontent.com"),
                    "https://api.github.com/graphql",
                ),
                integration(
                    1,
                    "ghe.acme.com",
                    "https://ghe.acme.com/api/v3",
                    None,
                    "https://ghe.acme.com/api/graphql",
                ),
                integration(
                    2,
                    "local.test",
                    "http://127.0.0.1:4567",
                    None,
                    "http://127.0.0.1:4567/graphql",
                ),
            ],
            proxy: ProxyConfig {
                listen: "127.0.0.1:8080".parse().unwrap(),
                public_url: None,
                default_host,
                default_owner: None,
                allow_anonymous: false,
                allow_unauthenticated_clients: false,
                clients,
                admin_listen: None,
                audit: AuditSink::Stdout,
                upstream: UpstreamConfig {
                    ca_file: None,
                    connect_timeout: Duration::from_secs(10),
                    response_timeout: Duration::from_secs(60),
                },
                refresh_before_expiry: Duration::from_secs(600),
                shutdown_grace: Duration::from_secs(30),
                max_connections: 10_000,
                header_read_timeout: Duration::from_secs(10),
            },
            warnings: Vec::new(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::testing::config;
    use super::*;
    use crate::target::{self, PathTarget};
    use http::{Method, Uri};
    use proptest::prelude::*;

    fn get(uri: &str) -> Result<Route, RouteError> {
        route(&config(), &Method::GET, &uri.parse::<Uri>().unwrap())
    }

    fn ok(uri: &str) -> Route {
        get(uri).unwrap_or_else(|e| panic!("{uri}: {e:?}"))
    }

    fn reason(uri: &str) -> Reason {
        get(uri).expect_err(uri).reason
    }

    #[test]
    fn forward_proxy_goes_upstream_over_the_origins_scheme() {
        let r = ok("http://api.github.com/repos/o/r?per_page=5");
        assert_eq!(r.form, Form::ForwardProxy);
        assert_eq!(r.origin, OriginKind::Api);
        assert_eq!(r.scheme, Scheme::Https);
        assert_eq!(r.authority, "api.github.com");
        assert_eq!(r.upstream_path, "/repos/o/r");
        assert_eq!(r.query.as_deref(), Some("per_page=5"));
        assert_eq!(r.target_path, "/repos/o/r");
        assert_eq!(
            r.upstream_uri(),
            "https://api.github.com/repos/o/r?per_page=5"
        );
        assert_eq!(r.upstream_target(), "/repos/o/r?per_page=5");
        assert_eq!(r.integration.index, 0);
    }

    #[test]
    fn forward_proxy_matches_authority_case_insensitively() {
        let r = ok("http://API.GitHub.com/user");
        assert_eq!(r.authority, "api.github.com");
    }

    #[test]
    fn forward_proxy_to_raw_and_web() {
        let r = ok("http://raw.githubusercontent.com/o/r/main/README.md");
        assert_eq!(r.origin, OriginKind::Raw);
        assert_eq!(r.upstream_path, "/o/r/main/README.md");
        let r = ok("http://github.com/o/r.git/info/refs?service=git-upload-pack");
        assert_eq!(r.origin, OriginKind::Web);
        assert_eq!(r.upstream_path, "/o/r.git/info/refs");
    }

    #[test]
    fn forward_proxy_accepts_explicit_default_ports() {
        assert_eq!(
            ok("https://api.github.com:443/user").authority,
            "api.github.com"
        );
        assert_eq!(
            ok("http://api.github.com:80/user").authority,
            "api.github.com"
        );
        // the origin's own port, spelled out over http
        assert_eq!(
            ok("http://api.github.com:443/user").authority,
            "api.github.com"
        );
    }

    #[test]
    fn odd_port_is_an_unknown_host() {
        assert_eq!(
            reason("http://api.github.com:8443/user"),
            Reason::UnknownHost
        );
        assert_eq!(reason("http://127.0.0.1:4568/user"), Reason::UnknownHost);
        assert_eq!(reason("http://127.0.0.1/user"), Reason::UnknownHost);
    }

    #[test]
    fn ip_literal_authority_with_port_routes_to_http_origin() {
        let r = ok("http://127.0.0.1:4567/repos/o/r");
        assert_eq!(r.scheme, Scheme::Http);
        assert_eq!(r.authority, "127.0.0.1:4567");
        assert_eq!(r.upstream_uri(), "http://127.0.0.1:4567/repos/o/r");
        let r = ok("/127.0.0.1:4567/graphql");
        assert_eq!(r.origin, OriginKind::Graphql);
        assert_eq!(r.form, Form::HostPrefix);
    }

    #[test]
    fn ipv6_literal_is_unknown_not_a_panic() {
        assert_eq!(reason("http://[::1]:8080/user"), Reason::UnknownHost);
    }

    #[test]
    fn host_prefix_ghe_api() {
        let r = ok("/ghe.acme.com/api/v3/repos/o/r/pulls?state=open");
        assert_eq!(r.form, Form::HostPrefix);
        assert_eq!(r.origin, OriginKind::Api);
        assert_eq!(r.authority, "ghe.acme.com");
        assert_eq!(r.upstream_path, "/api/v3/repos/o/r/pulls");
        assert_eq!(r.target_path, "/repos/o/r/pulls");
        assert_eq!(r.query.as_deref(), Some("state=open"));
        assert_eq!(r.integration.index, 1);
    }

    #[test]
    fn host_prefix_ghe_web_and_longest_prefix_wins() {
        // `/api/v3x` is not on the api origin's segment boundary: the web origin takes it.
        let r = ok("/ghe.acme.com/api/v3x/foo");
        assert_eq!(r.origin, OriginKind::Web);
        assert_eq!(r.upstream_path, "/api/v3x/foo");
        let r = ok("/ghe.acme.com/o/r.git/info/refs");
        assert_eq!(r.origin, OriginKind::Web);
        assert_eq!(r.target_path, "/o/r.git/info/refs");
        // exact api prefix
        let r = ok("/ghe.acme.com/api/v3");
        assert_eq!(r.origin, OriginKind::Api);
        assert_eq!(r.upstream_path, "/api/v3");
        assert_eq!(r.target_path, "/");
        let r = ok("/ghe.acme.com/api/graphql");
        assert_eq!(r.origin, OriginKind::Graphql);
        assert_eq!(r.upstream_path, "/api/graphql");
        assert_eq!(r.target_path, "/graphql");
        // With a trailing slash it lands on the web origin of the same host: still GraphQL.
        let r = ok("/ghe.acme.com/api/graphql/");
        assert_eq!(r.origin, OriginKind::Graphql);
        assert_eq!(r.upstream_path, "/api/graphql/");
        assert_eq!(r.target_path, "/graphql");
    }

    #[test]
    fn host_prefix_raw_and_uppercase_host() {
        let r = ok("/RAW.githubusercontent.com/o/r/main/a%20b.txt");
        assert_eq!(r.origin, OriginKind::Raw);
        assert_eq!(r.authority, "raw.githubusercontent.com");
        assert_eq!(r.upstream_path, "/o/r/main/a%20b.txt");
    }

    #[test]
    fn host_prefix_unknown_host_is_refused_with_its_name() {
        let e = get("/evil.example/repos/o/r").unwrap_err();
        assert_eq!(e.reason, Reason::UnknownHost);
        assert!(e.message.contains("evil.example"), "{}", e.message);
        assert!(e.message.contains("not a configured"), "{}", e.message);
    }

    #[test]
    fn default_form_goes_to_default_api() {
        let r = ok("/repos/o/r/contents/a%20b");
        assert_eq!(r.form, Form::Default);
        assert_eq!(r.authority, "api.github.com");
        assert_eq!(r.upstream_path, "/repos/o/r/contents/a%20b");
        // an encoded slash is refused even where GitHub would accept it (SPEC §5: anywhere)
        assert_eq!(reason("/repos/o/r/contents/a%2Fb"), Reason::InvalidPath);
    }

    #[test]
    fn default_form_strips_api_v3() {
        let r = ok("/api/v3/repos/o/r");
        assert_eq!(r.upstream_path, "/repos/o/r");
        assert_eq!(r.target_path, "/repos/o/r");
        let r = ok("/api/v3");
        assert_eq!(r.upstream_path, "/");
        let r = ok("/api/v3x/foo");
        assert_eq!(r.upstream_path, "/api/v3x/foo");
    }

    #[test]
    fn default_form_on_ghe_default_keeps_its_prefix() {
        let c = testing::config_with(1, Vec::new());
        let r = route(&c, &Method::GET, &"/api/v3/repos/o/r".parse().unwrap()).unwrap();
        assert_eq!(r.upstream_uri(), "https://ghe.acme.com/api/v3/repos/o/r");
        let r = route(&c, &Method::GET, &"/repos/o/r".parse().unwrap()).unwrap();
        assert_eq!(r.upstream_uri(), "https://ghe.acme.com/api/v3/repos/o/r");
        let r = route(&c, &Method::POST, &"/api/graphql".parse().unwrap()).unwrap();
        assert_eq!(r.upstream_uri(), "https://ghe.acme.com/api/graphql");
        assert_eq!(r.upstream_target(), "/api/graphql");
        // `/api/v3` stripped, `/graphql` is GHE's GraphQL endpoint, not `/api/v3/graphql`
        for (p, upstream) in [
            ("/api/v3/graphql", "https://ghe.acme.com/api/graphql"),
            ("/api/v3/graphql/", "https://ghe.acme.com/api/graphql/"),
            ("/graphql/", "https://ghe.acme.com/api/graphql/"),
        ] {
            let r = route(&c, &Method::POST, &p.parse().unwrap()).unwrap();
            assert_eq!(r.origin, OriginKind::Graphql, "{p}");
            assert_eq!(r.upstream_uri(), upstream, "{p}");
            assert_eq!(r.target_path, "/graphql", "{p}");
        }
    }

    #[test]
    fn default_form_graphql_both_shapes() {
        for p in ["/graphql", "/api/graphql"] {
            let r = ok(p);
            assert_eq!(r.origin, OriginKind::Graphql);
            assert_eq!(r.upstream_uri(), "https://api.github.com/graphql");
            assert_eq!(r.target_path, "/graphql");
        }
        let r = ok("http://api.github.com/graphql");
        assert_eq!(r.origin, OriginKind::Graphql);
        // not the exact endpoint: plain api
        assert_eq!(
            ok("http://api.github.com/graphql/x").origin,
            OriginKind::Api
        );
    }

    #[test]
    fn graphql_reached_through_the_api_origin_is_still_graphql() {
        for p in [
            "/api/v3/graphql",
            "/graphql/",
            "http://api.github.com/graphql/",
        ] {
            let r = ok(p);
            assert_eq!(r.origin, OriginKind::Graphql, "{p}");
            assert_eq!(r.target_path, "/graphql");
        }
        assert_eq!(ok("/api/v3/graphqlx").origin, OriginKind::Api);
    }

    #[test]
    fn absolute_form_without_path() {
        let r = ok("http://api.github.com");
        assert_eq!(r.upstream_path, "/");
        let r = ok("http://api.github.com?x=1");
        assert_eq!(r.query.as_deref(), Some("x=1"));
    }

    #[test]
    fn hand_built_test_config_matches_the_config_parser() {
        let yaml = "integrations:\n  github:\n    - host: github.com\n    - host: ghe.acme.com\n      apiBaseUrl: https://ghe.acme.com/api/v3/\n";
        let parsed = Config::from_yaml(yaml).unwrap();
        let built = config();
        for (p, b) in parsed.integrations.iter().zip(&built.integrations) {
            assert_eq!(p.api, b.api);
            assert_eq!(p.raw, b.raw);
            assert_eq!(p.web, b.web);
            assert_eq!(p.graphql, b.graphql);
        }
        let r = route(
            &parsed,
            &Method::GET,
            &"/ghe.acme.com/api/v3/repos/o/r".parse().unwrap(),
        )
        .unwrap();
        assert_eq!(r.upstream_uri(), "https://ghe.acme.com/api/v3/repos/o/r");
    }

    #[test]
    fn connect_is_refused_with_advice() {
        let e = route(
            &config(),
            &Method::CONNECT,
            &"api.github.com:443".parse().unwrap(),
        )
        .unwrap_err();
        assert_eq!(e.reason, Reason::ConnectNotSupported);
        assert!(e.message.contains("http://"), "{}", e.message);
        assert!(e.message.contains("TLS tunnel"), "{}", e.message);
    }

    #[test]
    fn unknown_forward_proxy_host_is_refused() {
        let e = get("http://example.com/repos/o/r").unwrap_err();
        assert_eq!(e.reason, Reason::UnknownHost);
        assert!(e.message.contains("example.com"));
    }

    #[test]
    fn userinfo_is_an_invalid_request() {
        assert_eq!(
            reason("http://api.github.com@evil.example/repos/o/r"),
            Reason::InvalidRequest
        );
        assert_eq!(
            reason("http://user:pw@api.github.com/repos/o/r"),
            Reason::InvalidRequest
        );
    }

    #[test]
    fn bad_paths_are_refused_before_routing() {
        for p in [
            "/../x",
            "/%2e%2e/x",
            "/repos/o/r/%2E./x",
            "/a/./b",
            "/ghe.acme.com/api/v3/%2F",
            "/x%5cy",
            "/x%00",
            "http://api.github.com/repos/o/r/..",
        ] {
            assert_eq!(reason(p), Reason::InvalidPath, "{p}");
        }
    }

    #[test]
    fn asterisk_form_is_invalid() {
        let e = route(&config(), &Method::OPTIONS, &"*".parse().unwrap()).unwrap_err();
        assert_eq!(e.reason, Reason::InvalidRequest);
    }

    #[test]
    fn path_is_forwarded_byte_for_byte() {
        let r = ok("/repos/O/R/contents/x%252Fy/%7e%20z");
        assert_eq!(r.upstream_path, "/repos/O/R/contents/x%252Fy/%7e%20z");
    }

    // rewriting (§8)

    #[test]
    fn rewrite_link_for_forward_proxy() {
        let v = r#"<https://api.github.com/repositories/1/pulls?page=2>; rel="next", <https://api.github.com/repositories/1/pulls?page=5>; rel="last""#;
        let out =
            rewrite_url_header(&config(), Form::ForwardProxy, "http://proxy:8080", v).unwrap();
        assert_eq!(
            out,
            r#"<http://api.github.com/repositories/1/pulls?page=2>; rel="next", <http://api.github.com/repositories/1/pulls?page=5>; rel="last""#
        );
    }

    #[test]
    fn rewrite_default_api_drops_the_prefix() {
        let out = rewrite_url_header(
            &config(),
            Form::Default,
            "http://proxy:8080",
            "<https://api.github.com/user/repos?page=2>; rel=\"next\"",
        )
        .unwrap();
        assert_eq!(out, "<http://proxy:8080/user/repos?page=2>; rel=\"next\"");
        let c = testing::config_with(1, Vec::new());
        let out = rewrite_url_header(
            &c,
            Form::Default,
            "https://proxy.corp",
            "https://ghe.acme.com/api/v3/repos/o/r?page=3",
        )
        .unwrap();
        assert_eq!(out, "https://proxy.corp/repos/o/r?page=3");
    }

    #[test]
    fn rewrite_other_origin_keeps_full_path_for_host_prefix() {
        let out = rewrite_url_header(
            &config(),
            Form::HostPrefix,
            "http://proxy:8080",
            "https://ghe.acme.com/api/v3/repos/o/r/pulls?page=2",
        )
        .unwrap();
        assert_eq!(
            out,
            "http://proxy:8080/ghe.acme.com/api/v3/repos/o/r/pulls?page=2"
        );
        let out = rewrite_url_header(
            &config(),
            Form::Default,
            "http://proxy:8080",
            "https://codeload.github.com/o/r/zip/main",
        );
        assert_eq!(out, None);
        let out = rewrite_url_header(
            &config(),
            Form::Default,
            "http://proxy:8080",
            "https://raw.githubusercontent.com/o/r/main/x",
        )
        .unwrap();
        assert_eq!(
            out,
            "http://proxy:8080/raw.githubusercontent.com/o/r/main/x"
        );
    }

    #[test]
    fn rewrite_leaves_foreign_urls_and_partial_links() {
        let v =
            r#"<https://example.com/a>; rel="x", <https://api.github.com/b?page=2>; rel="next""#;
        let out = rewrite_url_header(&config(), Form::ForwardProxy, "http://p", v).unwrap();
        assert_eq!(
            out,
            r#"<https://example.com/a>; rel="x", <http://api.github.com/b?page=2>; rel="next""#
        );
        assert_eq!(
            rewrite_url_header(
                &config(),
                Form::Default,
                "http://p",
                "https://example.com/x"
            ),
            None
        );
        assert_eq!(
            rewrite_url_header(
                &config(),
                Form::Default,
                "http://p",
                "<https://api.github.com/x"
            ),
            None
        );
        assert_eq!(
            rewrite_url_header(&config(), Form::Default, "http://p", "/relative"),
            None
        );
        assert_eq!(
            rewrite_url_header(
                &config(),
                Form::Default,
                "http://p",
                "https://api.github.com@evil.example/x"
            ),
            None
        );
    }

    #[test]
    fn rewrite_unchanged_http_origin_is_none() {
        assert_eq!(
            rewrite_url_header(
                &config(),
                Form::ForwardProxy,
                "http://p",
                "http://127.0.0.1:4567/x?page=2"
            ),
            None
        );
    }

    // properties

    /// Path pieces that exercise every rule: keywords, hosts, owners, hostile encodings.
    fn segment() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("repos".to_owned()),
            Just("orgs".to_owned()),
            Just("users".to_owned()),
            Just("search".to_owned()),
            Just("repositories".to_owned()),
            Just("app".to_owned()),
            Just("api".to_owned()),
            Just("v3".to_owned()),
            Just("graphql".to_owned()),
            Just("api.github.com".to_owned()),
            Just("ghe.acme.com".to_owned()),
            Just("github.com".to_owned()),
            Just("raw.githubusercontent.com".to_owned()),
            Just("127.0.0.1:4567".to_owned()),
            Just("acme".to_owned()),
            Just("widgets.git".to_owned()),
            Just("..".to_owned()),
            Just(".".to_owned()),
            Just("%2e%2E".to_owned()),
            Just("%2F".to_owned()),
            Just("%5c".to_owned()),
            Just("%00".to_owned()),
            Just("%252F".to_owned()),
            Just("".to_owned()),
            "[A-Za-z0-9._%~:@!$&'()*+,;=-]{0,12}",
            any::<String>(),
        ]
    }

    fn request_target() -> impl Strategy<Value = String> {
        let prefix = prop_oneof![
            Just(""),
            Just("http://api.github.com"),
            Just("https://API.github.com:443"),
            Just("http://ghe.acme.com"),
            Just("http://github.com"),
            Just("http://raw.githubusercontent.com"),
            Just("http://127.0.0.1:4567"),
            Just("http://evil.example"),
            Just("http://api.github.com@evil.example"),
            Just("http://127.0.0.1:4567@127.0.0.1:9"),
            Just("http://api.github.com:8443"),
            Just("http://api.github.com."),
            Just("http://localhost:4567"),
            Just("http://[::1]:4567"),
            Just("HTTP://RAW.GITHUBUSERCONTENT.COM"),
            Just("ftp://api.github.com"),
            Just("/ghe.acme.com"),
            Just("/127.0.0.1:4567"),
            Just("/evil.example"),
        ];
        let query = prop_oneof![
            Just(String::new()),
            Just("?q=repo:acme/widgets".to_owned()),
            "\\?[ -~]{0,20}",
        ];
        (prefix, prop::collection::vec(segment(), 0..7), query)
            .prop_map(|(p, segs, q)| format!("{p}/{}{q}", segs.join("/")))
    }

    /// What every accepted route must satisfy: a configured origin's authority, the upstream path
    /// is the origin prefix plus the received remainder, and the owner/repo the target parser
    /// would authorise are valid names that sit verbatim in the path.
    fn check_accepted(config: &Config, uri: &Uri, r: &Route) {
        let origin = origins(&r.integration)
            .find(|o| o.kind == r.origin)
            .unwrap();
        assert_eq!(r.authority, origin.authority);
        assert!(
            config
                .integrations
                .iter()
                .any(|i| Arc::ptr_eq(i, &r.integration))
        );
        assert!(crate::target::check_path(&r.upstream_path).is_ok());
        check_named_authority(config, uri, r, origin);
        let received = uri.path();
        if r.origin != OriginKind::Graphql {
            let mut remainder = r
                .upstream_path
                .strip_prefix(origin.path_prefix.as_str())
                .unwrap();
            if remainder == "/" && !received.ends_with('/') {
                // an empty remainder on an empty prefix is sent as `/`
                assert!(origin.path_prefix.is_empty());
                remainder = "";
            }
            assert!(received.ends_with(remainder), "{received} vs {remainder}");
            if r.target_path != "/" {
                assert_eq!(remainder, r.target_path);
            }
        }
        if let Ok(PathTarget::About { owner, repo }) =
            target::parse(r.origin, &r.target_path, r.query.as_deref())
        {
            let segs: Vec<&str> = r.target_path.split('/').collect();
            if let Some(o) = &owner {
                assert!(target::is_valid_owner(o));
                let is_search = segs
                    .get(1)
                    .is_some_and(|s| s.eq_ignore_ascii_case("search"));
                if !is_search {
                    let at = if r.origin == OriginKind::Api { 2 } else { 1 };
                    assert_eq!(segs.get(at), Some(&o.as_str()), "{}", r.target_path);
                    if let Some(rp) = &repo {
                        assert!(target::is_valid_repo(rp));
                        let seg = segs.get(at + 1).unwrap();
                        assert!(seg == rp || *seg == format!("{rp}.git"), "{seg} vs {rp}");
                    }
                }
            }
        }
    }

    /// The origin a route went to is the one the client named: the absolute URL's host (and
    /// port, when given), the host-prefix segment, or the default integration; never userinfo.
    fn check_named_authority(config: &Config, uri: &Uri, r: &Route, origin: &Origin) {
        let (origin_host, origin_port) = split_authority(&origin.authority).unwrap();
        let origin_port = origin_port.unwrap_or(scheme_default_port(origin.scheme));
        let (named_host, named_port, request_default) = match r.form {
            Form::ForwardProxy => {
                let a = uri.authority().unwrap();
                assert!(!a.as_str().contains('@'), "{uri}");
                let default = if uri.scheme_str().unwrap().eq_ignore_ascii_case("https") {
                    "443"
                } else {
                    "80"
                };
                let (h, p) = split_authority(a.as_str()).unwrap();
                (h.to_owned(), p.map(str::to_owned), Some(default))
            }
            Form::HostPrefix => {
                let first = uri.path()[1..].split('/').next().unwrap();
                assert!(!first.contains('@'), "{uri}");
                let (h, p) = split_authority(first).unwrap();
                (h.to_owned(), p.map(str::to_owned), None)
            }
            Form::Default => {
                assert_eq!(r.integration.index, config.proxy.default_host, "{uri}");
                assert!(uri.authority().is_none());
                return;
            }
        };
        assert!(
            named_host.eq_ignore_ascii_case(origin_host),
            "{uri} -> {}",
            r.authority
        );
        if let Some(p) = named_port {
            assert!(
                p == origin_port || Some(p.as_str()) == request_default,
                "{uri} -> {}",
                r.authority
            );
        }
    }

    /// `tests/fuzz_seeds/request_targets.txt`: request targets every run checks as they are and
    /// the long fuzz run mutates.
    fn seeds() -> Vec<String> {
        include_str!("../tests/fuzz_seeds/request_targets.txt")
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
            .map(str::to_owned)
            .collect()
    }

    /// A seed with a hostile piece spliced in at any place (corpus-guided mutation).
    fn mutated_seed() -> impl Strategy<Value = String> {
        (
            prop::sample::select(seeds()),
            any::<prop::sample::Index>(),
            segment(),
            any::<bool>(),
        )
            .prop_map(|(seed, at, piece, with_slash)| {
                let mut cut = at.index(seed.len() + 1);
                while !seed.is_char_boundary(cut) {
                    cut -= 1;
                }
                let slash = if with_slash { "/" } else { "" };
                format!("{}{slash}{piece}{}", &seed[..cut], &seed[cut..])
            })
    }

    fn method() -> impl Strategy<Value = Method> {
        prop_oneof![
            Just(Method::GET),
            Just(Method::POST),
            Just(Method::HEAD),
            Just(Method::PUT),
            Just(Method::DELETE),
            Just(Method::CONNECT),
            Just(Method::from_bytes(b"PROPFIND").unwrap()),
        ]
    }

    /// One request (method + target) as the server handles it: route, then target parsing;
    /// anything accepted is checked by [`check_accepted`].
    fn route_request(config: &Config, m: &Method, s: &str) {
        if let Ok(uri) = s.parse::<Uri>() {
            match route(config, m, &uri) {
                Ok(r) => {
                    assert_ne!(*m, Method::CONNECT, "{s}");
                    check_accepted(config, &uri, &r);
                }
                Err(e) if *m == Method::CONNECT => {
                    assert_eq!(e.reason, Reason::ConnectNotSupported);
                }
                Err(_) => {}
            }
        }
    }

    /// The seed corpus, every run: each seed routes safely, and the hostile ones are refused.
    #[test]
    fn fuzz_seeds_route_safely() {
        let c = config();
        let seeds = seeds();
        assert!(seeds.len() > 50);
        for s in &seeds {
            route_str(&c, s);
            route_request(&c, &Method::CONNECT, s);
            for kind in [OriginKind::Api, OriginKind::Raw, OriginKind::Web] {
                let _ = target::parse(kind, s, Some(s));
            }
        }
        for refused in [
            "/repos/acme/%2e%2e/x",
            "//repos/acme/x",
            "/repos/acme%2Fother/x",
            "http://api.github.com@evil.example/repos/acme/x",
            "http://api.github.com:8443/repos/acme/x",
            "/evil.example/repos/acme/x",
            "/meta%0D%0AX-Evil:%201",
        ] {
            assert!(seeds.iter().any(|s| s == refused), "{refused} is a seed");
            assert!(get(refused).is_err(), "{refused}");
        }
    }

    fn route_str(config: &Config, s: &str) {
        if let Ok(uri) = s.parse::<Uri>() {
            for m in [Method::GET, Method::POST] {
                if let Ok(r) = route(config, &m, &uri) {
                    check_accepted(config, &uri, &r);
                    let _ = r.upstream_uri();
                    let _ = rewrite_url_header(
                        config,
                        r.form,
                        "http://p",
                        &format!("<{}>; rel=\"next\"", r.upstream_uri()),
                    );
                }
            }
        }
    }

    proptest! {
        #[test]
        fn route_never_panics_and_accepts_only_configured_origins(s in request_target()) {
            route_str(&config(), &s);
        }

        #[test]
        fn route_never_panics_on_arbitrary_strings(s in any::<String>()) {
            route_str(&config(), &s);
            let _ = rewrite_url_header(&config(), Form::Default, "http://p", &s);
        }
    }

    /// `PROPTEST_CASES` (else 100 000): the long run's case count.
    fn fuzz_cases() -> u32 {
        std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(100_000)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(fuzz_cases()))]
        #[test]
        #[ignore = "long run: PROPTEST_CASES=N cargo test --release --lib fuzz_route_and_parse -- --ignored"]
        fn fuzz_route_and_parse_100k(
            s in request_target(),
            seed in mutated_seed(),
            raw in any::<String>(),
            m in method(),
        ) {
            let c = config();
            route_str(&c, &s);
            route_str(&c, &seed);
            route_str(&c, &raw);
            route_request(&c, &m, &s);
            route_request(&c, &m, &seed);
            for kind in [OriginKind::Api, OriginKind::Raw, OriginKind::Web] {
                let _ = target::parse(kind, &raw, Some(&raw));
                let _ = target::parse(kind, &seed, Some(&seed));
            }
        }
    }
}
