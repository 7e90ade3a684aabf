//! Talking to GitHub as the App: JWTs ([`app`]), installation lookups ([`installations`]) and
//! installation tokens ([`tokens`]), all cached, all single-flight. [`GitHub`] ties them to the
//! config and the shared upstream client.

pub mod app;
pub mod installations;
pub mod tokens;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use http::{HeaderValue, Method, StatusCode, header};
use http_body_util::{BodyExt, Full};
use secrecy::SecretString;
use serde::Deserialize;

use crate::config::Config;
use crate::credential::Token;
use crate::upstream::UpstreamClient;

use app::AppJwt;
use installations::{CachePolicy, Installation, Installations};
use tokens::{Minted, TokenCache};

const USER_AGENT: &str = concat!("gh-token-proxy/", env!("CARGO_PKG_VERSION"));
const ACCEPT: &str = "application/vnd.github+json";
/// GitHub answers JSON; an error body bigger than this is not worth reading.
const MAX_BODY: usize = 16 * 1024 * 1024;
/// Bounds pagination (100 per page: 100,000 installations or repositories).
const MAX_PAGES: usize = 1000;

/// A failed call to GitHub as an App. Carries GitHub's `message`, never a token or JWT.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenError {
    #[error("{context}: GitHub answered {status}: {message}")]
    GitHub {
        context: String,
        status: u16,
        message: String,
    },
    #[error("{context}: cannot reach GitHub: {message}")]
    Transport { context: String, message: String },
    #[error("{context}: unexpected answer from GitHub: {message}")]
    BadResponse { context: String, message: String },
    #[error("GitHub App {app_id}: private key unusable: {message}")]
    Key { app_id: u64, message: String },
}

impl TokenError {
    /// GitHub's status, when it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            TokenError::GitHub { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Key of the token cache: (integration index, app id, installation id).
pub type TokenKey = (usize, u64, u64);

/// A snapshot of the token counters for `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenStats {
    /// `gh_token_proxy_token_mints_total{app_id,result}`: ((app id, `ok`|`error`), count).
    pub mints: Vec<((u64, &'static str), u64)>,
    /// `gh_token_proxy_token_cache_lookups_total{result}`.
    pub cache_hit: u64,
    pub cache_miss: u64,
    pub cache_refresh: u64,
}

/// One configured App with its key and caches.
struct AppState {
    app_id: u64,
    api: String,
    /// `None` when the key did not parse (reported as `app_error`, never a panic).
    jwt: Option<AppJwt>,
    key_error: Option<TokenError>,
    installations: Installations,
}

struct Inner {
    config: Arc<Config>,
    client: UpstreamClient,
    /// Per integration, per app (config order).
    apps: Vec<Vec<Arc<AppState>>>,
    pats: Vec<Option<Arc<Token>>>,
    tokens: Arc<TokenCache<TokenKey>>,
    mints: DashMap<(u64, &'static str), AtomicU64>,
}

/// Everything the resolver needs from GitHub, with its caches. One per process; cheap to share.
#[derive(Clone)]
pub struct GitHub {
    inner: Arc<Inner>,
}

impl fmt::Debug for GitHub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GitHub")
            .field(
                "apps",
                &self
                    .inner
                    .apps
                    .iter()
                    .map(|apps| apps.iter().map(|a| a.app_id).collect::<Vec<_>>())
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct InstallationJson {
    id: u64,
    account: Option<AccountJson>,
    suspended_at: Option<serde_json::Value>,
    repository_selection: Option<String>,
}

#[derive(Deserialize)]
struct AccountJson {
    login: Option<String>,
    // Enterprise installations have `slug` instead of `login`.
    slug: Option<String>,
}

#[derive(Deserialize)]
struct AccessTokenJson {
    token: SecretString,
    expires_at: String,
}

#[derive(Deserialize)]
struct RepositoriesJson {
    repositories: Vec<RepositoryJson>,
}

#[derive(Deserialize)]
struct RepositoryJson {
    name: String,
}

impl GitHub {
    /// Parses every App key and builds the PATs once. Keys were validated at config load; one
    /// that still fails makes that App answer `app_error`, never a panic.
    pub fn new(config: Arc<Config>, client: UpstreamClient) -> Self {
        Self::with_policy(config, client, CachePolicy::default())
    }

    /// [`GitHub::new`] with other lookup cache intervals (tests over real TLS, where paused time
    /// cannot be used).
    pub fn with_policy(config: Arc<Config>, client: UpstreamClient, policy: CachePolicy) -> Self {
        let mut apps = Vec::new();
        let mut pats = Vec::new();
        for integration in &config.integrations {
            let api = integration.api.base_url();
            apps.push(
                integration
                    .apps
                    .iter()
                    .map(|app| {
                        let (jwt, key_error) = match AppJwt::new(app.app_id, &app.private_key) {
                            Ok(jwt) => (Some(jwt), None),
                            Err(err) => {
                                tracing::warn!("{err}");
                                (None, Some(err))
                            }
                        };
                        Arc::new(AppState {
                            app_id: app.app_id,
                            api: api.clone(),
                            jwt,
                            key_error,
                            installations: Installations::new(policy),
                        })
                    })
                    .collect(),
            );
            pats.push(integration.token.as_ref().and_then(|secret| {
                match Token::new(secret.clone()) {
                    Ok(token) => Some(Arc::new(token)),
                    Err(err) => {
                        tracing::warn!("integrations.github[{}].token: {err}", integration.index);
                        None
                    }
                }
            }));
        }
        let tokens = Arc::new(TokenCache::new(config.proxy.refresh_before_expiry));
        GitHub {
            inner: Arc::new(Inner {
                config,
                client,
                apps,
                pats,
                tokens,
                mints: DashMap::new(),
            }),
        }
    }

    pub fn config(&self) -> &Arc<Config> {
        &self.inner.config
    }

    /// The PAT of integration `integration_index`, built once.
    pub fn pat(&self, integration_index: usize) -> Option<Arc<Token>> {
        self.inner.pats.get(integration_index).cloned().flatten()
    }

    fn app(&self, integration_index: usize, app_index: usize) -> Result<Arc<AppState>, TokenError> {
        self.app_ref(integration_index, app_index).cloned()
    }

    fn app_ref(
        &self,
        integration_index: usize,
        app_index: usize,
    ) -> Result<&Arc<AppState>, TokenError> {
        let app = self
            .inner
            .apps
            .get(integration_index)
            .and_then(|apps| apps.get(app_index))
            .ok_or_else(|| TokenError::BadResponse {
                context: format!("integrations.github[{integration_index}].apps[{app_index}]"),
                message: "no such app".to_string(),
            })?;
        if let Some(err) = &app.key_error {
            return Err(err.clone());
        }
        Ok(app)
    }

    /// The installation of app `app_index` of integration `integration_index` on `owner`.
    pub async fn installation(
        &self,
        integration_index: usize,
        app_index: usize,
        owner: &str,
    ) -> Result<Option<Installation>, TokenError> {
        let app = self.app(integration_index, app_index)?;
        app.installations
            .lookup(owner, || self.list_installations(&app))
            .await
    }

    /// Every installation of the app, in GitHub's order.
    pub async fn installations(
        &self,
        integration_index: usize,
        app_index: usize,
    ) -> Result<Arc<Vec<Installation>>, TokenError> {
        let app = self.app(integration_index, app_index)?;
        app.installations
            .all(|| self.list_installations(&app))
            .await
    }

    /// An installation token (cached, single-flight, refreshed in the background).
    pub async fn installation_token(
        &self,
        integration_index: usize,
        app_index: usize,
        installation_id: u64,
    ) -> Result<Arc<Token>, TokenError> {
        let app = self.app_ref(integration_index, app_index)?;
        let key = (integration_index, app.app_id, installation_id);
        // The hit path: no Arc clones for a mint closure that would not run.
        if let Some(token) = self.inner.tokens.get_fresh(&key) {
            return Ok(token);
        }
        let app = app.clone();
        let this = self.clone();
        self.inner
            .tokens
            .get(&key, move || async move {
                this.mint(&app, installation_id).await
            })
            .await
    }

    /// Whether `repo` is among the repositories of the `selected` installation (re-fetched at
    /// most once per 60 s before saying no). `token` is that installation's token.
    pub async fn repo_selected(
        &self,
        integration_index: usize,
        app_index: usize,
        installation_id: u64,
        token: &Token,
        repo: &str,
    ) -> Result<bool, TokenError> {
        let app = self.app(integration_index, app_index)?;
        let url = format!("{}/installation/repositories?per_page=100", app.api);
        app.installations
            .repo_selected(installation_id, repo, || async {
                let pages = self
                    .get_all_pages(
                        url,
                        token.bearer_header().clone(),
                        "listing the installation's repositories",
                    )
                    .await
                    .inspect_err(|err| {
                        tracing::warn!(app_id = app.app_id, installation_id, "{err}")
                    })?;
                let mut names = Vec::new();
                for page in pages {
                    let parsed: RepositoriesJson =
                        serde_json::from_slice(&page).map_err(|err| TokenError::BadResponse {
                            context: "listing the installation's repositories".to_string(),
                            message: err.to_string(),
                        })?;
                    names.extend(parsed.repositories.into_iter().map(|r| r.name));
                }
                Ok(names)
            })
            .await
    }

    /// Drops a cached installation token (the server saw a `401` for it). Returns the evicted
    /// token's age, so the server can wait out GitHub's replication lag for a very new token.
    pub fn evict_token(
        &self,
        integration_index: usize,
        app_id: u64,
        installation_id: u64,
    ) -> Option<Duration> {
        self.inner
            .tokens
            .evict(&(integration_index, app_id, installation_id))
    }

    /// Drops the cached installation token only if it is still `token`, the one GitHub answered
    /// `401` for: a late `401` must not evict a token another request has minted since. Returns
    /// its age, or its replacement's when it was already replaced (the retry's token).
    pub fn evict_rejected_token(
        &self,
        integration_index: usize,
        app_id: u64,
        installation_id: u64,
        token: &Arc<Token>,
    ) -> Option<Duration> {
        self.inner
            .tokens
            .evict_if_same(&(integration_index, app_id, installation_id), token)
    }

    /// Counters for `/metrics`.
    pub fn token_stats(&self) -> TokenStats {
        let counters = self.inner.tokens.counters();
        let mut mints: Vec<_> = self
            .inner
            .mints
            .iter()
            .map(|e| (*e.key(), e.value().load(Ordering::Relaxed)))
            .collect();
        mints.sort();
        TokenStats {
            mints,
            cache_hit: counters.hit.load(Ordering::Relaxed),
            cache_miss: counters.miss.load(Ordering::Relaxed),
            cache_refresh: counters.refresh.load(Ordering::Relaxed),
        }
    }

    /// How many JWTs app `app_index` of integration `integration_index` has signed.
    pub fn jwt_signatures(&self, integration_index: usize, app_index: usize) -> u64 {
        self.app(integration_index, app_index)
            .ok()
            .and_then(|a| a.jwt.as_ref().map(AppJwt::signatures))
            .unwrap_or(0)
    }

    fn count_mint(&self, app_id: u64, result: &'static str) {
        self.inner
            .mints
            .entry((app_id, result))
            .or_default()
            .fetch_add(1, Ordering::Relaxed);
    }

    async fn mint(&self, app: &AppState, installation_id: u64) -> Result<Minted, TokenError> {
        let result = self.mint_inner(app, installation_id).await;
        match &result {
            Ok(_) => self.count_mint(app.app_id, "ok"),
            Err(err) => {
                self.count_mint(app.app_id, "error");
                tracing::warn!(app_id = app.app_id, installation_id, "{err}");
                // 404/410: the installation is gone (uninstalled); look it up again next time.
                if matches!(err.status(), Some(404 | 410)) {
                    app.installations.forget(installation_id);
                }
            }
        }
        result
    }

    async fn mint_inner(&self, app: &AppState, installation_id: u64) -> Result<Minted, TokenError> {
        let context = format!(
            "GitHub App {} minting a token for installation {installation_id}",
            app.app_id
        );
        let auth = app_auth(app)?;
        let url = format!(
            "{}/app/installations/{installation_id}/access_tokens",
            app.api
        );
        let (status, _, body) = self.call(Method::POST, &url, auth, &context).await?;
        if !status.is_success() {
            return Err(github_error(&context, status, &body));
        }
        let parsed = parse_access_token(&context, &body)?;
        let expires = time::OffsetDateTime::parse(
            &parsed.expires_at,
            &time::format_description::well_known::Rfc3339,
        )
        .map_err(|err| TokenError::BadResponse {
            context: context.clone(),
            message: format!("expires_at: {err}"),
        })?;
        // Wall-clock expiry → remaining duration now, so the cache runs on tokio's clock.
        let remaining = expires - time::OffsetDateTime::now_utc();
        let lifetime = Duration::try_from(remaining).unwrap_or(Duration::ZERO);
        if lifetime < tokens::MIN_REMAINING {
            // Never sent (§7.2), so not a token at all: a failed mint, counted and logged as
            // one and shared by every request waiting on it. Usually this host's clock is ahead.
            return Err(TokenError::BadResponse {
                context,
                message: format!(
                    "the token expires at {} ({} s from now by this host's clock), under the 60 s                      a token must have left to be used; check this host's clock (NTP)",
                    parsed.expires_at,
                    remaining.whole_seconds()
                ),
            });
        }
        let token = Token::new(parsed.token).map_err(|err| TokenError::BadResponse {
            context,
            message: err.to_string(),
        })?;
        Ok(Minted { token, lifetime })
    }

    async fn list_installations(&self, app: &AppState) -> Result<Vec<Installation>, TokenError> {
        let context = format!("GitHub App {} listing its installations", app.app_id);
        let auth = app_auth(app)?;
        let url = format!("{}/app/installations?per_page=100", app.api);
        let pages = self
            .get_all_pages(url, auth, &context)
            .await
            .inspect_err(|err| tracing::warn!(app_id = app.app_id, "{err}"))?;
        let mut out = Vec::new();
        for page in pages {
            let parsed: Vec<InstallationJson> =
                serde_json::from_slice(&page).map_err(|err| TokenError::BadResponse {
                    context: context.clone(),
                    message: err.to_string(),
                })?;
            out.extend(parsed.into_iter().filter_map(|i| {
                let account = i.account?;
                Some(Installation {
                    id: i.id,
                    account: account.login.or(account.slug)?.into(),
                    suspended: i.suspended_at.is_some_and(|v| !v.is_null()),
                    selected: i.repository_selection.as_deref() == Some("selected"),
                })
            }));
        }
        Ok(out)
    }

    /// GETs `url` and every `Link: rel="next"` page after it; returns the bodies.
    async fn get_all_pages(
        &self,
        mut url: String,
        auth: HeaderValue,
        context: &str,
    ) -> Result<Vec<Bytes>, TokenError> {
        let mut pages = Vec::new();
        for _ in 0..MAX_PAGES {
            let (status, headers, body) =
                self.call(Method::GET, &url, auth.clone(), context).await?;
            if !status.is_success() {
                return Err(github_error(context, status, &body));
            }
            pages.push(body);
            let next = headers
                .get_all(header::LINK)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .find_map(next_link);
            match next {
                Some(next) => url = next,
                None => return Ok(pages),
            }
        }
        Err(TokenError::BadResponse {
            context: context.to_string(),
            message: format!("more than {MAX_PAGES} pages"),
        })
    }

    async fn call(
        &self,
        method: Method,
        url: &str,
        auth: HeaderValue,
        context: &str,
    ) -> Result<(StatusCode, http::HeaderMap, Bytes), TokenError> {
        let transport = |message: String| TokenError::Transport {
            context: context.to_string(),
            message,
        };
        let request = http::Request::builder()
            .method(method)
            .uri(url)
            .header(header::AUTHORIZATION, auth)
            .header(header::ACCEPT, ACCEPT)
            .header(header::USER_AGENT, USER_AGENT)
            .header("X-GitHub-Api-Version", "2022-11-28")
            .body(
                Full::new(Bytes::new())
                    .map_err(|never| match never {})
                    .boxed_unsync(),
            )
            .map_err(|err| transport(err.to_string()))?;
        let timeout = self.inner.config.proxy.upstream.response_timeout;
        let response = tokio::time::timeout(timeout, self.inner.client.request(request))
            .await
            .map_err(|_| transport(format!("no answer within {timeout:?}")))?
            .map_err(|err| transport(error_chain(&err)))?;
        let (parts, body) = response.into_parts();
        let body = tokio::time::timeout(
            timeout,
            http_body_util::Limited::new(body, MAX_BODY).collect(),
        )
        .await
        .map_err(|_| transport(format!("body not read within {timeout:?}")))?
        .map_err(|err| transport(err.to_string()))?
        .to_bytes();
        Ok((parts.status, parts.headers, body))
    }
}

fn app_auth(app: &AppState) -> Result<HeaderValue, TokenError> {
    match &app.jwt {
        Some(jwt) => jwt.authorization(),
        None => Err(app.key_error.clone().unwrap_or(TokenError::Key {
            app_id: app.app_id,
            message: "no key".to_string(),
        })),
    }
}

/// hyper's top-level errors ("client error (Connect)") hide the cause; the chain names it.
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

/// The body of a successful mint. Its error is not serde_json's rendering, which quotes a
/// mistyped string value: this body holds the token.
fn parse_access_token(context: &str, body: &[u8]) -> Result<AccessTokenJson, TokenError> {
    serde_json::from_slice(body).map_err(|err| TokenError::BadResponse {
        context: context.to_string(),
        message: format!(
            "not an access token response ({:?} error at line {} column {})",
            err.classify(),
            err.line(),
            err.column()
        ),
    })
}

/// GitHub's error bodies are `{"message": ..., "documentation_url": ...}`; only `message` is kept,
/// else the status's reason phrase.
pub(crate) fn github_message(status: StatusCode, body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v.get("message")
                .and_then(|m| m.as_str())
                .map(str::to_string)
        })
        .unwrap_or_else(|| {
            status
                .canonical_reason()
                .unwrap_or("no message")
                .to_string()
        })
}

fn github_error(context: &str, status: StatusCode, body: &[u8]) -> TokenError {
    TokenError::GitHub {
        context: context.to_string(),
        status: status.as_u16(),
        message: github_message(status, body),
    }
}

/// The `rel="next"` URL of one `Link` header value (`<url>; rel="next", <url>; rel="last"`).
fn next_link(value: &str) -> Option<String> {
    value.split(',').find_map(|part| {
        let mut pieces = part.split(';');
        let url = pieces.next()?.trim();
        let is_next = pieces.any(|p| {
            let p = p.trim();
            p == "rel=\"next\"" || p == "rel=next"
        });
        if is_next {
            url.strip_prefix('<')?.strip_suffix('>').map(str::to_string)
        } else {
            None
        }
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn next_link_finds_rel_next() {
        let v = r#"<https://api.github.com/app/installations?page=2>; rel="next", <https://api.github.com/app/installations?page=5>; rel="last""#;
        assert_eq!(
            next_link(v).as_deref(),
            Some("https://api.github.com/app/installations?page=2")
        );
        assert_eq!(next_link(r#"<https://x/?page=1>; rel="prev""#), None);
    }

    #[test]
    fn access_token_parse_errors_never_quote_the_body() {
        for body in [
            &br#""ghs_canary_in_body""#[..],
            br#"{"token": ["ghs_canary_in_body"], "expires_at": "x"}"#,
            br#"{"token": "ghs_canary_in_body", "expires_at": 5}"#,
            br#"{"token": "ghs_canary_in_body""#,
            br#"{"token": "ghs_canary_in_body", "expires_at": "2026-01-01T00:00:00Z", "token": 1}"#,
        ] {
            let Err(err) = parse_access_token("minting", body) else {
                panic!("parsed {}", String::from_utf8_lossy(body));
            };
            let shown = format!("{err} {err:?}");
            assert!(!shown.contains("ghs_canary"), "{shown}");
            assert!(shown.contains("minting"), "{shown}");
        }
        assert!(
            parse_access_token(
                "minting",
                br#"{"token":"ghs_x","expires_at":"2026-01-01T00:00:00Z"}"#
            )
            .is_ok()
        );
    }

    #[test]
    fn github_error_keeps_only_the_message() {
        let err = github_error(
            "minting",
            StatusCode::FORBIDDEN,
            br#"{"message":"This installation has been suspended","documentation_url":"x"}"#,
        );
        assert_eq!(
            err.to_string(),
            "minting: GitHub answered 403: This installation has been suspended"
        );
    }
}
