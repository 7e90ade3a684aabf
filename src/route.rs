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
    /// `scheme://authority/path?query`, for the upstream request.
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
}


impl RouteError {
    fn new(reason: Reason, message: impl Into<String>) -> Self {
        RouteError {
            reason,
            message: message.into(),
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

/// Routes a request by its method and request-target (`uri` as hyper parsed it: absolute form
/// carries scheme and authority, origin form only path and query).
pub fn route(config: &Config, method: &http::Method, uri: &http::Uri) -> Result<Route, RouteError> {
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
        check_route_path(path)?;
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
    check_route_path(path)?;
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
    let target_path = if m.origin.kind == OriginKind::Graphql {
        "/graphql".to_owned()
    } else if m.remainder.is_empty() {
        "/".to_owned()
    } else {
        m.remainder.to_owned()
    };
    Route {
        integration: Arc::clone(m.integration),
        origin: m.origin.kind,
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
    if host.is_empty() || port.is_some_and(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
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
    let path_end = path_and_more.find(['?', '#']).unwrap_or(path_and_more.len());
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
