//! The decision tree (SPEC §7.1): for one routed request on one integration, which credential
//! serves it and why, with every step recorded so `explain`, the audit record and the response
//! headers all come from the same [`Resolution`].

use std::sync::Arc;

use serde::Serialize;

use crate::config::Integration;
use crate::credential::{CredentialKind, Reason, Token};
use crate::github::GitHub;

/// One check of the decision tree, as `explain` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    /// `app`, `public_access`, `pat`, `anonymous`, `refuse`.
    pub check: &'static str,
    pub app_id: Option<u64>,
    /// `used`, `skipped`, `unavailable`, `not_applicable`.
    pub result: &'static str,
    pub reason: Option<Reason>,
    /// Human detail (GitHub's message for `app_error`, the installation id, ...). Never a secret.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The outcome of the decision.
#[derive(Debug, Clone)]
pub struct Resolution {
    pub credential: CredentialKind,
    pub reason: Reason,
    pub app_id: Option<u64>,
    pub installation_id: Option<u64>,
    /// The token to send (`app` and `pat`); `None` for `anonymous` and `none`.
    pub token: Option<Arc<Token>>,
    pub steps: Vec<Step>,
    /// For a refusal (`no_credential`): what was tried and what to do.
    pub message: Option<String>,
}

/// Runs the decision tree against GitHub (through the caches of [`GitHub`]).
pub struct Resolver {
    github: Arc<GitHub>,
    allow_anonymous: bool,
}

impl Resolver {
    pub fn new(github: Arc<GitHub>, allow_anonymous: bool) -> Self {
        Resolver {
            github,
            allow_anonymous,
        }
    }

    pub fn github(&self) -> &Arc<GitHub> {
        &self.github
    }

    /// Decides the credential for a request with `method` about `owner`/`repo` on `integration`.
    pub async fn resolve(
        &self,
        integration: &Arc<Integration>,
        method: &http::Method,
        owner: Option<&str>,
        repo: Option<&str>,
    ) -> Resolution {
        let _ = (integration, method, owner, repo, self.allow_anonymous);
        unimplemented!("resolver helper")
    }
}
