//! gh-token-proxy: an HTTP proxy that puts the right GitHub credential on every GitHub call.
//!
//! Tools send plain, unauthenticated GitHub API calls here. For each one the proxy works out the
//! integration, owner and repo from the request, resolves a credential with Backstage's decision
//! tree (App installation token, else PAT, else a refusal that says what to fix), forwards the call
//! over TLS, and writes one audit record saying which credential served it and why.
//!
//! # Layout
//!
//! - [`cli`]: the subcommands (`serve`, `check`, `explain`, `audit summary`).
//! - [`config`]: `app-config.yaml` → validated, immutable [`config::Config`].
//! - [`route`]: request line → integration, origin and upstream URL (the three addressing forms).
//! - [`target`]: path → owner/repo; bad-path rejection; learned repository ids.
//! - [`resolve`]: the decision tree → [`resolve::Resolution`] (credential, reason, steps).
//! - [`github`]: App JWTs, installation lookups and single-flight installation tokens.
//! - [`credential`]: credential kinds, reasons and the [`credential::Token`] that holds a secret.
//! - [`clients`]: proxy client keys and their allow lists.
//! - [`upstream`]: upstream TLS (rustls) and the client for GitHub App calls.
//! - [`pool`]: keep-alive upstream connections for forwarding.
//! - [`h1`]: the upstream HTTP/1.1 exchange for requests without a body (hyper's client carries
//!   the rest).
//! - [`forward`]: header rules, streaming, `Link`/`Location` rewriting, the 401 retry.
//! - [`server`]: accept loop, request phases, graceful shutdown.
//! - [`audit`]: the audit record and its writer (never drops, flushes on shutdown).
//! - [`admin`]: `/healthz`, `/readyz`, `/metrics`, `/explain`.
//! - [`metrics`]: the Prometheus families.
//! - [`error`]: `ProxyError` → status, reason and GitHub-shaped body.
//! - [`explain`]: the decision for one URL as a tree or JSON.
//! - [`check`]: verifies every credential against GitHub.
//! - [`summary`]: `audit summary`.
//!
//! # A request's life
//!
//! accept → read head (timeout, limits) → route → client check → target → resolve → forward →
//! stream the response back → audit record (exactly once, whatever happened).

pub mod admin;
pub mod audit;
pub mod check;
pub mod cli;
pub mod clients;
pub mod config;
pub mod credential;
pub mod error;
pub mod explain;
pub mod forward;
pub mod github;
pub mod h1;
pub mod metrics;
pub mod pool;
pub mod resolve;
pub mod route;
pub mod server;
pub mod summary;
pub mod target;
pub mod upstream;

pub use server::run;
