//! `gh-token-proxy explain` and the admin `/explain` endpoint (SPEC §9): the decision for one URL,
//! as a tree in the shape of github-integrations.md's decision tree, or as JSON. Never a token.

use std::fmt::Write as _;
use std::process::ExitCode;
use std::sync::Arc;

use serde::Serialize;

use crate::config::{ClientConfig, Config};
use crate::credential::{CredentialKind, Reason};
use crate::github::GitHub;
use crate::resolve::{Resolver, Step};
use crate::target::{PathTarget, RepoIds};

/// One step as `--json` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExplainStep {
    pub check: &'static str,
    pub app_id: Option<u64>,
    pub result: &'static str,
    pub reason: Option<Reason>,
}

/// What the proxy would do for one request. Serializes to exactly the `explain --json` shape.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    /// The integration's host (`github.com`); `None` when the request was not routed.
    pub integration: Option<String>,
    /// `api`, `raw`, `web`, `graphql`.
    pub origin: Option<String>,
    pub owner: Option<String>,
    pub repo: Option<String>,
    pub steps: Vec<ExplainStep>,
    pub credential: CredentialKind,
    pub reason: Reason,
    pub app_id: Option<u64>,
    pub installation_id: Option<u64>,
    pub hashed_token: Option<String>,
    /// The full steps (with details), for the tree.
    #[serde(skip)]
    pub details: Vec<Step>,
    /// The refusal message, when refused.
    #[serde(skip)]
    pub message: Option<String>,
    /// Whether `owner` came from the URL, not from `proxy.defaultOwner`: a fallback owner only
    /// picks the credential, it does not make the request about that owner (client policy, §6).
    #[serde(skip)]
    pub owner_from_target: bool,
    /// `METHOD URL` as asked.
    #[serde(skip)]
    pub request: String,
}

/// A request the proxy would refuse before resolving a credential (`unknown_host`,
/// `invalid_path`, `app_endpoint`, ...). Its `reason` is what the audit record would say.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ExplainError {
    pub reason: Reason,
    pub message: String,
}

impl Explanation {
    /// What the proxy would do for this request coming from `client` (SPEC §6): a request outside
    /// its `allow`/`methods`, or a credential kind it may not be served with, becomes the
    /// `client_policy` refusal the proxy would give. Refusals decided earlier stay as they are.
    pub fn apply_client_policy(&mut self, client: &ClientConfig, method: &http::Method) {
        if self.integration.is_none() {
            return;
        }
        let about_owner = self.owner.as_deref().filter(|_| self.owner_from_target);
        let policy = crate::clients::check_policy(
            client,
            method,
            about_owner,
            self.repo.as_deref(),
            self.origin.as_deref() == Some("graphql"),
        );
        let refusal = match policy {
            Err(why) => Some(why),
            Ok(())
                if self.credential != CredentialKind::None
                    && !crate::clients::allows_credential(client, self.credential) =>
            {
                Some(format!(
                    "client '{}' may not be served with credential '{}'",
                    client.name, self.credential
                ))
            }
            Ok(()) => None,
        };
        if let Some(why) = refusal {
            self.credential = CredentialKind::None;
            self.reason = Reason::ClientPolicy;
            self.app_id = None;
            self.installation_id = None;
            self.hashed_token = None;
            self.message = Some(why);
        }
    }

    /// The explanation of a refused request: credential `none` with the refusal's reason.
    pub fn refused(request: String, err: &ExplainError) -> Self {
        Explanation {
            integration: None,
            origin: None,
            owner: None,
            repo: None,
            steps: Vec::new(),
            credential: CredentialKind::None,
            reason: err.reason,
            app_id: None,
            installation_id: None,
            hashed_token: None,
            details: Vec::new(),
            message: Some(err.message.clone()),
            owner_from_target: false,
            request,
        }
    }
}

/// Works out the decision for `method url` as the proxy would (it may look up installations and
/// mint, as the proxy would; the token itself is never returned, only its hash).
pub async fn explain(
    config: &Config,
    resolver: &Resolver,
    url: &str,
    method: &http::Method,
) -> Result<Explanation, ExplainError> {
    explain_with_repo_ids(config, resolver, None, url, method).await
}

/// As [`explain`], inside a running proxy: `/repositories/{id}` URLs use the repository ids it
/// has learned, as its requests do (the admin `/explain`).
pub async fn explain_with_repo_ids(
    config: &Config,
    resolver: &Resolver,
    repo_ids: Option<&RepoIds>,
    url: &str,
    method: &http::Method,
) -> Result<Explanation, ExplainError> {
    let uri: http::Uri = url.parse().map_err(|err| ExplainError {
        reason: Reason::InvalidRequest,
        message: format!("not a URL: {url}: {err}"),
    })?;
    let route = match crate::route::route(config, method, &uri) {
        Ok(route) => route,
        // An authority no origin has. `https://api.github.com/...` (and raw.githubusercontent.com)
        // is github.com's even when its `apiBaseUrl` points elsewhere (a mirror, a test
        // double): explain reads it as that integration's. `http://proxy:8080/...` is the
        // proxy's own address: what matters is the path, as the proxy would see it in origin
        // form. Any other host is what the proxy itself refuses (`unknown_host`), and explain
        // must say what the audit record would.
        Err(err) if err.reason == Reason::UnknownHost && uri.authority().is_some() => {
            let path_and_query = uri.path_and_query().map_or("/", |pq| pq.as_str());
            let rerouted = if let Some(base) = github_com_alias(config, &uri) {
                format!("{base}{path_and_query}")
            } else if let Some(path) = proxy_address_path(config, &uri) {
                path
            } else {
                return Err(ExplainError {
                    reason: err.reason,
                    message: err.message,
                });
            };
            let rerouted: http::Uri = rerouted.parse().map_err(|_| ExplainError {
                reason: err.reason,
                message: err.message.clone(),
            })?;
            crate::route::route(config, method, &rerouted).map_err(|e| ExplainError {
                reason: e.reason,
                message: e.message,
            })?
        }
        Err(err) => {
            return Err(ExplainError {
                reason: err.reason,
                message: err.message,
            });
        }
    };
    let target = crate::target::parse(route.origin, &route.target_path, route.query.as_deref())
        .map_err(|err| ExplainError {
            reason: Reason::InvalidPath,
            message: err.0,
        })?;
    let (owner, repo) = match target {
        PathTarget::About { owner, repo } => (owner, repo),
        // Learned ids live in the running proxy; the CLI cannot know them.
        PathTarget::RepositoryId(id) => repo_ids
            .and_then(|ids| ids.get(route.integration.index, id))
            .map_or((None, None), |(o, r)| (Some(o), Some(r))),
        // The owner of a GraphQL call is in its header or body, which explain does not have.
        PathTarget::Graphql => (None, None),
        PathTarget::AppEndpoint => {
            return Err(ExplainError {
                reason: Reason::AppEndpoint,
                message: format!(
                    "{} would act as the GitHub App itself; the proxy refuses it",
                    route.target_path
                ),
            });
        }
    };
    // §5: a request with no owner uses proxy.defaultOwner.
    let owner_from_target = owner.is_some();
    let owner = owner.or_else(|| config.proxy.default_owner.clone());
    let resolution = resolver
        .resolve(
            &route.integration,
            method,
            owner.as_deref(),
            repo.as_deref(),
        )
        .await;
    Ok(Explanation {
        integration: Some(route.integration.host.clone()),
        origin: Some(route.origin.as_str().to_string()),
        owner,
        repo,
        steps: resolution
            .steps
            .iter()
            .map(|s| ExplainStep {
                check: s.check,
                app_id: s.app_id,
                result: s.result,
                reason: s.reason,
            })
            .collect(),
        credential: resolution.credential,
        reason: resolution.reason,
        app_id: resolution.app_id,
        installation_id: resolution.installation_id,
        hashed_token: resolution.token.as_ref().map(|t| t.hashed().to_string()),
        details: resolution.steps.clone(),
        message: resolution.message.clone(),
        owner_from_target,
        request: format!("{method} {url}"),
    })
}

/// The configured base URL that stands for `uri`'s authority when that is one of github.com's
/// well-known hosts (`api.github.com`, `raw.githubusercontent.com`) and the `github.com`
/// integration points its api or raw origin elsewhere.
fn github_com_alias(config: &Config, uri: &http::Uri) -> Option<String> {
    let authority = uri.authority()?;
    if authority.port_u16().is_some_and(|p| p != 443 && p != 80) {
        return None;
    }
    let github = config
        .integrations
        .iter()
        .find(|i| i.host == "github.com")?;
    let host = authority.host();
    if host.eq_ignore_ascii_case("api.github.com") {
        Some(github.api.base_url())
    } else if host.eq_ignore_ascii_case("raw.githubusercontent.com") {
        github.raw.as_ref().map(|raw| raw.base_url())
    } else {
        None
    }
}

/// The origin-form path and query of `uri` when it names the proxy itself rather than a GitHub
/// host, as in `http://proxy:8080/...` (the name a client uses for the proxy is not in the
/// config): its authority is `proxy.publicUrl`'s (whose path prefix is then removed), or its port
/// (explicit or the scheme's) is the one `proxy.listen` binds (any loopback port when that is 0,
/// as in tests). An authority a configured origin has is GitHub's, never the proxy's.
fn proxy_address_path(config: &Config, uri: &http::Uri) -> Option<String> {
    let host = uri.host()?;
    let port = crate::route::effective_port(uri);
    if crate::route::is_configured_authority(config, uri) {
        return None;
    }
    if let Some(path) = crate::route::public_url_path(config, uri) {
        return Some(path);
    }
    let listen = config.proxy.listen;
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    let ours = port == Some(listen.port()) || (listen.port() == 0 && loopback);
    ours.then(|| {
        uri.path_and_query()
            .map_or("/", |pq| pq.as_str())
            .to_owned()
    })
}

fn mark(result: &str) -> &'static str {
    match result {
        "used" => "✔",
        "skipped" | "unavailable" => "✘",
        _ => "·",
    }
}

fn describe(step: &Step) -> String {
    let mut out = step.result.to_string();
    if let Some(reason) = step.reason {
        let _ = write!(out, " ({reason})");
    }
    if let Some(detail) = &step.detail {
        let _ = write!(out, ": {detail}");
    }
    out
}

/// The human tree, in the shape of github-integrations.md's decision tree.
pub fn render_tree(e: &Explanation) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}", e.request);
    let Some(integration) = &e.integration else {
        let _ = writeln!(out, "└─ refused before any credential: {}", e.reason);
        if let Some(message) = &e.message {
            let _ = writeln!(out, "   {message}");
        }
        let _ = writeln!(out, "credential: none   reason: {}", e.reason);
        return out;
    };
    let _ = writeln!(
        out,
        "Integration Resolver: {integration} ({} origin), owner {}, repo {}",
        e.origin.as_deref().unwrap_or("-"),
        e.owner.as_deref().unwrap_or("(none)"),
        e.repo.as_deref().unwrap_or("(none)"),
    );
    let apps: Vec<&Step> = e.details.iter().filter(|s| s.check == "app").collect();
    let app_used = apps.iter().any(|s| s.result == "used");
    let _ = writeln!(
        out,
        "├─ {} GitHub App installed on target org/repo?",
        if app_used { "✔" } else { "✘" }
    );
    if apps.is_empty() {
        let _ = writeln!(out, "│  └─ no GitHub App configured");
    }
    for (i, step) in apps.iter().enumerate() {
        let branch = if i + 1 == apps.len() {
            "└─"
        } else {
            "├─"
        };
        let _ = writeln!(
            out,
            "│  {branch} {} App {}: {}",
            mark(step.result),
            step.app_id.unwrap_or_default(),
            describe(step)
        );
    }
    if app_used {
        let _ = writeln!(out, "│     → Create JWT → Exchange for Installation Token");
    }
    let later: Vec<(&str, &Step)> = e
        .details
        .iter()
        .filter_map(|s| {
            let label = match s.check {
                "public_access" => "Public access (GET/HEAD, publicAccess: true)?",
                "pat" => "PAT configured in integrations.github.token?",
                "anonymous" => "Anonymous allowed (proxy.allowAnonymous)?",
                "refuse" => "Fail: missing credentials / install App or add PAT",
                _ => return None,
            };
            Some((label, s))
        })
        .collect();
    for (label, step) in &later {
        let _ = writeln!(out, "├─ {} {label} {}", mark(step.result), describe(step));
    }
    if let Some(message) = &e.message {
        let _ = writeln!(out, "│     {message}");
    }
    let _ = writeln!(
        out,
        "└─ credential: {}   reason: {}   app: {}   installation: {}   hashed_token: {}",
        e.credential,
        e.reason,
        e.app_id.map_or("-".to_string(), |v| v.to_string()),
        e.installation_id.map_or("-".to_string(), |v| v.to_string()),
        e.hashed_token.as_deref().unwrap_or("-"),
    );
    out
}

/// `gh-token-proxy explain URL [--method M] [--client NAME] [--json]`.
pub async fn explain_main(
    config: Config,
    url: &str,
    method: &str,
    client: Option<String>,
    json: bool,
) -> ExitCode {
    let client = match client {
        None => None,
        Some(name) => match config.proxy.clients.iter().position(|c| c.name == name) {
            Some(index) => Some(index),
            None => {
                crate::cli::error(format_args!(
                    "--client {name}: no client of that name in proxy.clients"
                ));
                return ExitCode::from(2);
            }
        },
    };
    let Ok(method) = http::Method::from_bytes(method.to_ascii_uppercase().as_bytes()) else {
        crate::cli::error(format_args!("--method {method:?} is not an HTTP method"));
        return ExitCode::from(2);
    };
    let config = Arc::new(config);
    let upstream = match crate::upstream::build(&config.proxy.upstream) {
        Ok(upstream) => upstream,
        Err(err) => {
            crate::cli::error(format_args!("{err}"));
            return ExitCode::from(2);
        }
    };
    let github = Arc::new(GitHub::new(config.clone(), upstream));
    let resolver = Resolver::new(github, config.proxy.allow_anonymous);
    let mut explanation = match explain(&config, &resolver, url, &method).await {
        Ok(e) => e,
        Err(err) => Explanation::refused(format!("{method} {url}"), &err),
    };
    if let Some(client) = client.and_then(|i| config.proxy.clients.get(i)) {
        explanation.apply_client_policy(client, &method);
    }
    if json {
        match serde_json::to_string_pretty(&explanation) {
            Ok(text) => println!("{text}"),
            Err(err) => {
                crate::cli::error(format_args!("{err}"));
                return ExitCode::from(1);
            }
        }
    } else {
        print!("{}", render_tree(&explanation));
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn sample() -> Explanation {
        Explanation {
            integration: Some("github.com".into()),
            origin: Some("api".into()),
            owner: Some("acme".into()),
            repo: Some("widgets".into()),
            steps: vec![ExplainStep {
                check: "app",
                app_id: Some(12345),
                result: "skipped",
                reason: Some(Reason::NotInstalled),
            }],
            credential: CredentialKind::Pat,
            reason: Reason::NotInstalled,
            app_id: None,
            installation_id: None,
            hashed_token: Some("abc=".into()),
            details: vec![
                Step {
                    check: "app",
                    app_id: Some(12345),
                    result: "skipped",
                    reason: Some(Reason::NotInstalled),
                    detail: None,
                },
                Step {
                    check: "pat",
                    app_id: None,
                    result: "used",
                    reason: Some(Reason::NotInstalled),
                    detail: None,
                },
            ],
            message: None,
            owner_from_target: true,
            request: "GET https://api.github.com/repos/acme/widgets".into(),
        }
    }

    #[test]
    fn a_default_owner_does_not_satisfy_a_client_allow_list() {
        let client = ClientConfig {
            name: "catalog".into(),
            key_sha256: [0; 32],
            allow: vec!["acme/*".into()],
            methods: None,
            credentials: vec![CredentialKind::App, CredentialKind::Pat],
        };
        let mut from_url = sample();
        from_url.apply_client_policy(&client, &http::Method::GET);
        assert_eq!(from_url.credential, CredentialKind::Pat);
        // The same owner, but only from proxy.defaultOwner: the request is about no owner.
        let mut fallback = sample();
        fallback.repo = None;
        fallback.owner_from_target = false;
        fallback.apply_client_policy(&client, &http::Method::GET);
        assert_eq!(fallback.credential, CredentialKind::None);
        assert_eq!(fallback.reason, Reason::ClientPolicy);
        assert!(fallback.message.unwrap().contains("no owner"));
    }

    #[test]
    fn json_has_exactly_the_spec_keys() {
        let value = serde_json::to_value(sample()).unwrap();
        let mut keys: Vec<_> = value.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "app_id",
                "credential",
                "hashed_token",
                "installation_id",
                "integration",
                "origin",
                "owner",
                "reason",
                "repo",
                "steps"
            ]
        );
        assert_eq!(
            value["steps"][0],
            serde_json::json!({"check": "app", "app_id": 12345, "result": "skipped", "reason": "not_installed"})
        );
        assert_eq!(value["credential"], "pat");
    }

    #[test]
    fn tree_marks_the_path_taken() {
        let tree = render_tree(&sample());
        assert!(
            tree.contains("✘ App 12345: skipped (not_installed)"),
            "{tree}"
        );
        assert!(tree.contains("✔ PAT configured"), "{tree}");
        assert!(
            tree.contains("credential: pat   reason: not_installed"),
            "{tree}"
        );
    }
}
