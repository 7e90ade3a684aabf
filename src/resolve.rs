//! The decision tree (SPEC §7.1): for one routed request on one integration, which credential
//! serves it and why, with every step recorded so `explain`, the audit record and the response
//! headers all come from the same [`Resolution`].

use std::sync::Arc;

use serde::Serialize;

use crate::config::{AppConfig, Integration};
use crate::credential::{CredentialKind, Reason, Token};
use crate::github::{GitHub, TokenError};

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
#[derive(Debug)]
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
        let mut steps = Vec::new();
        // 1. Apps, in config order.
        let mut app_reasons: Vec<(u64, Reason, Option<String>)> = Vec::new();
        for (app_index, app) in integration.apps.iter().enumerate() {
            let Some(owner) = owner else {
                steps.push(step(
                    "app",
                    Some(app.app_id),
                    SKIPPED,
                    Some(Reason::NoOwner),
                    None,
                ));
                app_reasons.push((app.app_id, Reason::NoOwner, None));
                continue;
            };
            match Box::pin(self.try_app(integration, app_index, app, owner, repo)).await {
                Ok((installation_id, token)) => {
                    steps.push(step(
                        "app",
                        Some(app.app_id),
                        USED,
                        Some(Reason::Installed),
                        Some(format!("installation {installation_id} on '{owner}'")),
                    ));
                    return self.finish(
                        steps,
                        CredentialKind::App,
                        Reason::Installed,
                        Some(app.app_id),
                        Some(installation_id),
                        Some(token),
                    );
                }
                Err((reason, detail)) => {
                    steps.push(step(
                        "app",
                        Some(app.app_id),
                        SKIPPED,
                        Some(reason),
                        detail.clone(),
                    ));
                    app_reasons.push((app.app_id, reason, detail));
                }
            }
        }

        // 2. Public access (GET/HEAD only).
        let public = integration
            .apps
            .iter()
            .enumerate()
            .find(|(_, app)| app.public_access);
        match public {
            None => {}
            // §5: a request with no owner resolves with reason `no_owner` (PAT, anonymous or
            // refusal). An installation token of some unrelated owner cannot serve `/user`
            // ("Resource not accessible by integration"), and on `/rate_limit` it would report
            // the installation's budget instead of the PAT's.
            Some((_, app)) if owner.is_none() => {
                steps.push(step(
                    "public_access",
                    Some(app.app_id),
                    NOT_APPLICABLE,
                    Some(Reason::NoOwner),
                    Some("the request has no owner".to_string()),
                ));
            }
            Some((_, app)) if !(method == http::Method::GET || method == http::Method::HEAD) => {
                steps.push(step(
                    "public_access",
                    Some(app.app_id),
                    NOT_APPLICABLE,
                    None,
                    Some(format!("only GET and HEAD, not {method}")),
                ));
            }
            Some((app_index, app)) => {
                match Box::pin(self.try_public(integration, app_index, app)).await {
                    Ok((installation_id, token)) => {
                        steps.push(step(
                            "public_access",
                            Some(app.app_id),
                            USED,
                            Some(Reason::PublicAccess),
                            Some(format!("installation {installation_id}")),
                        ));
                        return self.finish(
                            steps,
                            CredentialKind::App,
                            Reason::PublicAccess,
                            Some(app.app_id),
                            Some(installation_id),
                            Some(token),
                        );
                    }
                    Err((reason, detail)) => {
                        steps.push(step(
                            "public_access",
                            Some(app.app_id),
                            UNAVAILABLE,
                            Some(reason),
                            detail,
                        ));
                    }
                }
            }
        }

        // Why no app served: the reason of steps 3 to 5.
        let reason = if owner.is_none() {
            Reason::NoOwner
        } else {
            most_specific(app_reasons.iter().map(|(_, r, _)| *r)).unwrap_or(Reason::NoApp)
        };

        // 3. PAT.
        if let Some(pat) = self.github.pat(integration.index) {
            steps.push(step("pat", None, USED, Some(reason), None));
            return self.finish(steps, CredentialKind::Pat, reason, None, None, Some(pat));
        }
        steps.push(step(
            "pat",
            None,
            UNAVAILABLE,
            None,
            Some(format!(
                "integrations.github[{}].token is not set",
                integration.index
            )),
        ));

        // 4. Anonymous.
        if self.allow_anonymous {
            steps.push(step("anonymous", None, USED, Some(reason), None));
            return self.finish(steps, CredentialKind::Anonymous, reason, None, None, None);
        }
        steps.push(step(
            "anonymous",
            None,
            NOT_APPLICABLE,
            None,
            Some("proxy.allowAnonymous is false".to_string()),
        ));

        // 5. Refusal.
        let message = refusal_message(integration, owner, repo, &app_reasons);
        steps.push(step("refuse", None, USED, Some(Reason::NoCredential), None));
        let mut resolution = self.finish(
            steps,
            CredentialKind::None,
            Reason::NoCredential,
            None,
            None,
            None,
        );
        resolution.message = Some(message);
        resolution
    }

    fn finish(
        &self,
        steps: Vec<Step>,
        credential: CredentialKind,
        reason: Reason,
        app_id: Option<u64>,
        installation_id: Option<u64>,
        token: Option<Arc<Token>>,
    ) -> Resolution {
        Resolution {
            credential,
            reason,
            app_id,
            installation_id,
            token,
            steps,
            message: None,
        }
    }

    /// One app of step 1: its token for `owner`/`repo`, or why it cannot serve.
    async fn try_app(
        &self,
        integration: &Integration,
        app_index: usize,
        app: &AppConfig,
        owner: &str,
        repo: Option<&str>,
    ) -> Result<(u64, Arc<Token>), (Reason, Option<String>)> {
        if !app.allows_owner(owner) {
            return Err((Reason::OwnerNotAllowed, None));
        }
        let ii = integration.index;
        let installation = match self.github.installation(ii, app_index, owner).await {
            Ok(Some(installation)) => installation,
            Ok(None) => return Err((Reason::NotInstalled, None)),
            Err(err) => return Err(app_error(app.app_id, &err)),
        };
        let detail = Some(format!(
            "installation {} on '{}'",
            installation.id, installation.account
        ));
        if installation.suspended {
            return Err((Reason::Suspended, detail));
        }
        let token = match self
            .github
            .installation_token(ii, app_index, installation.id)
            .await
        {
            Ok(token) => token,
            // GitHub says 403 "This installation has been suspended" when the installation was
            // suspended after we listed it.
            Err(err) if err.status() == Some(403) && err.to_string().contains("suspended") => {
                return Err((Reason::Suspended, detail));
            }
            // Any failed mint is `app_error` (§7.1), 404/410 included: the installation was
            // forgotten by the mint, and the next request looks it up again (§7.2) and then
            // says `not_installed` or is served by a reinstalled App.
            Err(err) => return Err(app_error(app.app_id, &err)),
        };
        // An org-level request (no repo) on a `selected` installation is served: the token
        // covers the org's endpoints whatever repositories were selected.
        if let (true, Some(repo)) = (installation.selected, repo) {
            match self
                .github
                .repo_selected(ii, app_index, installation.id, &token, repo)
                .await
            {
                Ok(true) => {}
                Ok(false) => return Err((Reason::RepoNotSelected, detail)),
                Err(err) => return Err(app_error(app.app_id, &err)),
            }
        }
        Ok((installation.id, token))
    }

    /// Step 2: a token of the app's first installation its `allowedInstallationOwners` admits.
    async fn try_public(
        &self,
        integration: &Integration,
        app_index: usize,
        app: &AppConfig,
    ) -> Result<(u64, Arc<Token>), (Reason, Option<String>)> {
        let ii = integration.index;
        let installations = self
            .github
            .installations(ii, app_index)
            .await
            .map_err(|err| app_error(app.app_id, &err))?;
        let Some(installation) = installations
            .iter()
            .find(|i| !i.suspended && app.allows_owner(&i.account))
        else {
            return Err((
                Reason::NotInstalled,
                Some("no installation on an allowed owner".to_string()),
            ));
        };
        let token = self
            .github
            .installation_token(ii, app_index, installation.id)
            .await
            .map_err(|err| app_error(app.app_id, &err))?;
        Ok((installation.id, token))
    }
}

const USED: &str = "used";
const SKIPPED: &str = "skipped";
const UNAVAILABLE: &str = "unavailable";
const NOT_APPLICABLE: &str = "not_applicable";

fn step(
    check: &'static str,
    app_id: Option<u64>,
    result: &'static str,
    reason: Option<Reason>,
    detail: Option<String>,
) -> Step {
    Step {
        check,
        app_id,
        result,
        reason,
        detail,
    }
}

fn app_error(app_id: u64, err: &TokenError) -> (Reason, Option<String>) {
    // `GitHub` logs each failed call to GitHub at warn, once per call (single flight bounds
    // them); logging again per request here would flood the log during an outage.
    tracing::debug!(app_id, "GitHub App {app_id} cannot serve: {err}");
    (Reason::AppError, Some(err.to_string()))
}

/// §7.1 step 3: the most specific reason any app gave.
fn most_specific(reasons: impl Iterator<Item = Reason>) -> Option<Reason> {
    const ORDER: [Reason; 5] = [
        Reason::Suspended,
        Reason::RepoNotSelected,
        Reason::AppError,
        Reason::NotInstalled,
        Reason::OwnerNotAllowed,
    ];
    let reasons: Vec<Reason> = reasons.collect();
    ORDER.into_iter().find(|r| reasons.contains(r))
}

/// The §7.1 step 5 message: the target, what each app said, the missing PAT, what to do.
fn refusal_message(
    integration: &Integration,
    owner: Option<&str>,
    repo: Option<&str>,
    app_reasons: &[(u64, Reason, Option<String>)],
) -> String {
    let target = match (owner, repo) {
        (Some(o), Some(r)) => format!("{o}/{r}"),
        (Some(o), None) => o.to_string(),
        (None, _) => "a request with no owner".to_string(),
    };
    let o = owner.unwrap_or("");
    let r = repo.unwrap_or("");
    let mut tried = Vec::new();
    let mut todo: Vec<String> = Vec::new();
    for (app_id, reason, detail) in app_reasons {
        let (said, fix) = match reason {
            Reason::NotInstalled => (
                format!("GitHub App {app_id} is not installed on '{o}'"),
                format!("install the App on '{o}'"),
            ),
            Reason::OwnerNotAllowed => (
                format!(
                    "GitHub App {app_id} does not allow owner '{o}' (allowedInstallationOwners)"
                ),
                format!("add '{o}' to the App's allowedInstallationOwners"),
            ),
            Reason::Suspended => (
                format!("GitHub App {app_id}'s installation on '{o}' is suspended"),
                format!("unsuspend the App's installation on '{o}'"),
            ),
            Reason::RepoNotSelected => (
                format!(
                    "GitHub App {app_id}'s installation on '{o}' does not include repository '{r}'"
                ),
                format!("add '{r}' to the App installation's repositories"),
            ),
            Reason::AppError => (
                format!(
                    "GitHub App {app_id} failed ({})",
                    detail.as_deref().unwrap_or("GitHub error")
                ),
                "fix the App's configuration (see the proxy's warnings)".to_string(),
            ),
            _ => (
                format!("GitHub App {app_id} needs an owner"),
                "name the owner with the X-GitHub-Owner header or set proxy.defaultOwner"
                    .to_string(),
            ),
        };
        tried.push(said);
        if !todo.contains(&fix) {
            todo.push(fix);
        }
    }
    // Without an App, naming an owner changes nothing: only a PAT can serve.
    if app_reasons.is_empty() {
        tried.push("no GitHub App is configured".to_string());
    }
    todo.push(if app_reasons.is_empty() && owner.is_some() {
        "configure a GitHub App or a PAT".to_string()
    } else {
        "configure a PAT".to_string()
    });
    format!(
        "no GitHub credential for {target} on {host}: {tried} and integrations.github[{i}].token is not set; {todo}",
        host = integration.host,
        tried = tried.join(", "),
        i = integration.index,
        todo = todo.join(" or "),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn most_specific_reason_follows_the_spec_order() {
        use Reason::*;
        assert_eq!(
            most_specific([OwnerNotAllowed, NotInstalled, AppError].into_iter()),
            Some(AppError)
        );
        assert_eq!(
            most_specific([RepoNotSelected, Suspended].into_iter()),
            Some(Suspended)
        );
        assert_eq!(
            most_specific([OwnerNotAllowed, NotInstalled].into_iter()),
            Some(NotInstalled)
        );
        assert_eq!(most_specific(std::iter::empty()), None);
    }

    #[test]
    fn refusal_message_names_each_app_and_what_to_do() {
        let config =
            crate::config::Config::from_yaml("integrations:\n  github:\n    - host: github.com\n")
                .unwrap();
        let integration = &config.integrations[0];
        let message = refusal_message(
            integration,
            Some("acme"),
            Some("widgets"),
            &[
                (1, Reason::Suspended, None),
                (2, Reason::RepoNotSelected, None),
            ],
        );
        assert_eq!(
            message,
            "no GitHub credential for acme/widgets on github.com: GitHub App 1's installation on \
             'acme' is suspended, GitHub App 2's installation on 'acme' does not include \
             repository 'widgets' and integrations.github[0].token is not set; unsuspend the \
             App's installation on 'acme' or add 'widgets' to the App installation's \
             repositories or configure a PAT"
        );
        // No App and no owner: naming an owner would not help, only a PAT.
        let message = refusal_message(integration, None, None, &[]);
        assert_eq!(
            message,
            "no GitHub credential for a request with no owner on github.com: no GitHub App is \
             configured and integrations.github[0].token is not set; configure a PAT"
        );
    }
}
