//! Request line → integration, origin and upstream URL: the three addressing forms of SPEC §4.

use std::sync::Arc;

use crate::config::{Config, Integration, OriginKind, Scheme};
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

/// Routes a request by its method and request-target (`uri` as hyper parsed it: absolute form
/// carries scheme and authority, origin form only path and query).
pub fn route(config: &Config, method: &http::Method, uri: &http::Uri) -> Result<Route, RouteError> {
    let _ = (config, method, uri);
    unimplemented!("route helper")
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
    let _ = (config, form, proxy_base, value);
    unimplemented!("route helper")
}
