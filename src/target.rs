//! Which owner and repo a request is about, from its raw path (SPEC §5), and the rejection of
//! paths that could mean something other than what was authorised. Pure functions.

use crate::config::OriginKind;

/// What a path says about its target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathTarget {
    /// Owner and repo as written (case kept; compare case-insensitively). Both may be `None`
    /// (`/user`, `/rate_limit`), or only the repo.
    About {
        owner: Option<String>,
        repo: Option<String>,
    },
    /// `/repositories/{id}[/...]`: owner/repo come from [`RepoIds`].
    RepositoryId(u64),
    /// `/graphql`: owner/repo come from the `X-GitHub-Owner` header or the JSON body ([`graphql_target`]).
    Graphql,
    /// `/app`, `/app/...`, `/app-manifests/...`, `/installation/...`: refused (`app_endpoint`).
    AppEndpoint,
}

/// A path that must not be forwarded (`400 invalid_path`). The message says which rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidPath(pub String);

/// Classifies `path` (raw, percent-encoded, already without the origin's path prefix, no query)
/// on an origin of `kind`; `query` is the raw query string for `/search/...`.
pub fn parse(kind: OriginKind, path: &str, query: Option<&str>) -> Result<PathTarget, InvalidPath> {
    let _ = (kind, path, query);
    unimplemented!("target helper")
}

/// Owner (and repo) of a GraphQL request from its JSON body: `variables.owner` (with
/// `variables.name` or `variables.repo`), else `variables.org` or `variables.login`.
pub fn graphql_target(body: &[u8]) -> Option<(String, Option<String>)> {
    let _ = body;
    unimplemented!("target helper")
}

/// A GitHub login: `[A-Za-z0-9-]`, 1 to 39 characters.
pub fn is_valid_owner(owner: &str) -> bool {
    (1..=39).contains(&owner.len())
        && owner
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Remembered `/repositories/{id}` → (owner, repo), bounded (§5, learned repository ids).
pub struct RepoIds {
    _private: (),
}

impl RepoIds {
    pub fn new(capacity: usize) -> Self {
        let _ = capacity;
        unimplemented!("target helper")
    }

    pub fn get(&self, id: u64) -> Option<(String, String)> {
        let _ = id;
        unimplemented!("target helper")
    }

    /// Remembers every `/repositories/{id}/` URL in a `Link` header value as belonging to owner/repo.
    pub fn learn_from_link(&self, link: &str, owner: &str, repo: &str) {
        let _ = (link, owner, repo);
        unimplemented!("target helper")
    }
}
