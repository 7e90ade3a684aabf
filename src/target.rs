//! Which owner and repo a request is about, from its raw path (SPEC §5), and the rejection of
//! paths that could mean something other than what was authorised. Pure functions.

use std::borrow::Cow;
use std::num::NonZeroUsize;
use std::sync::Mutex;

use lru::LruCache;

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

fn invalid(msg: impl Into<String>) -> InvalidPath {
    InvalidPath(msg.into())
}

const NONE: PathTarget = PathTarget::About {
    owner: None,
    repo: None,
};

/// Rejects what could make GitHub (or anything between) act on a different path than the one
/// parsed: dot segments (also `%2e`-encoded), empty segments (`//`), encoded `/` or `\`, any `\`, control characters
/// (raw or encoded) and malformed `%` escapes (an ambiguous escape is decoded differently by
/// different servers). Allocation-free: it runs on every request.
pub fn check_path(path: &str) -> Result<(), InvalidPath> {
    if is_plain_path(path) {
        return Ok(());
    }
    check_path_in_full(path)
}

/// The usual path, accepted in one cheap pass: only printable ASCII other than `%` and `\`, no
/// empty segment after the first `/`, no `.` or `..` segment. Everything this accepts
/// [`check_path_in_full`] accepts too (a property test holds them to it); anything else, valid
/// or not, is left to that.
fn is_plain_path(path: &str) -> bool {
    let bytes = path.as_bytes();
    let dot_segment = |seg: &[u8]| seg == b"." || seg == b"..";
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if !(0x21..=0x7e).contains(&b) || b == b'%' || b == b'\\' {
            return false;
        }
        if b == b'/' {
            let seg = &bytes[start..i];
            if i > 0 && (seg.is_empty() || dot_segment(seg)) {
                return false;
            }
            start = i + 1;
        }
    }
    !dot_segment(&bytes[start..])
}

/// [`check_path`] byte by byte, decoding `%` escapes: the rules in full.
fn check_path_in_full(path: &str) -> Result<(), InvalidPath> {
    let bytes = path.as_bytes();
    let mut i = 0;
    // The current segment is a dot segment when it consists only of 1 or 2 (maybe encoded) dots.
    let mut dots = 0usize;
    let mut other = false;
    while let Some(&b) = bytes.get(i) {
        let (unit, width) = if b == b'%' {
            let decoded = match (
                bytes.get(i + 1).and_then(|h| hex(*h)),
                bytes.get(i + 2).and_then(|h| hex(*h)),
            ) {
                (Some(hi), Some(lo)) => (hi << 4) | lo,
                _ => return Err(invalid("malformed percent-encoding in path")),
            };
            match decoded {
                b'/' => return Err(invalid("encoded '/' (%2F) in path")),
                b'\\' => return Err(invalid("encoded '\\' (%5C) in path")),
                _ => {}
            }
            (decoded, 3)
        } else {
            // Some servers treat a raw `\` as `/`; GitHub names never contain one.
            if b == b'\\' {
                return Err(invalid("'\\' in path"));
            }
            (b, 1)
        };
        if unit < 0x20 || unit == 0x7f {
            return Err(invalid("control character in path"));
        }
        if b == b'/' {
            if !other && (dots == 1 || dots == 2) {
                return Err(invalid("'.' or '..' segment in path"));
            }
            // `//` is an empty segment: servers that collapse it would act on a different path
            // (`//repos/other/x` parses as ownerless here, but is `/repos/other/x` there).
            if i > 0 && bytes.get(i - 1) == Some(&b'/') {
                return Err(invalid("empty segment ('//') in path"));
            }
            dots = 0;
            other = false;
        } else if unit == b'.' {
            dots += 1;
        } else {
            other = true;
        }
        i += width;
    }
    if !other && (dots == 1 || dots == 2) {
        return Err(invalid("'.' or '..' segment in path"));
    }
    Ok(())
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Classifies `path` (raw, percent-encoded, already without the origin's path prefix, no query)
/// on an origin of `kind`; `query` is the raw query string for `/search/...`.
pub fn parse(kind: OriginKind, path: &str, query: Option<&str>) -> Result<PathTarget, InvalidPath> {
    check_path(path)?;
    let rest = path.strip_prefix('/').unwrap_or(path);
    match kind {
        OriginKind::Graphql => Ok(PathTarget::Graphql),
        OriginKind::Api => parse_api(rest, query),
        OriginKind::Raw | OriginKind::Web => parse_owner_repo(kind, rest),
    }
}

fn parse_api(rest: &str, query: Option<&str>) -> Result<PathTarget, InvalidPath> {
    if rest.is_empty() {
        return Ok(NONE);
    }
    let mut segs = rest.split('/');
    let first = segs.next().unwrap_or("");
    // An encoded keyword (`/%72epos/...`, `/%61pp`) may be decoded by GitHub into a route we
    // would have classified differently (an App endpoint, another owner): refuse it.
    if first.contains('%') {
        return Err(invalid("percent-encoding in the first path segment"));
    }
    // Keywords compared case-insensitively so `/APP/...` cannot slip past the App endpoint rule.
    let is = |kw: &str| first.eq_ignore_ascii_case(kw);
    if is("repos") {
        let owner = owner_segment(segs.next())?;
        let repo = repo_segment(segs.next())?;
        Ok(PathTarget::About {
            owner: Some(owner.to_owned()),
            repo: Some(repo.to_owned()),
        })
    } else if is("orgs") || is("users") {
        match segs.next() {
            // `/users` lists every user: no owner.
            None => Ok(NONE),
            Some(o) => Ok(PathTarget::About {
                owner: Some(owner_segment(Some(o))?.to_owned()),
                repo: None,
            }),
        }
    } else if is("repositories") {
        match segs.next() {
            // `/repositories` lists public repositories: no owner.
            None => Ok(NONE),
            Some(id) => {
                if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(invalid("repository id is not a number"));
                }
                id.parse::<u64>()
                    .map(PathTarget::RepositoryId)
                    .map_err(|_| invalid("repository id is out of range"))
            }
        }
    } else if is("search") {
        search_target(query)
    } else if is("app") || is("app-manifests") || is("installation") {
        Ok(PathTarget::AppEndpoint)
    } else {
        Ok(NONE)
    }
}

/// raw: `/{o}/{r}/{ref...}`; web: `/{o}/{r}[.git][/...]`, `/{o}`.
fn parse_owner_repo(kind: OriginKind, rest: &str) -> Result<PathTarget, InvalidPath> {
    if rest.is_empty() {
        return Ok(NONE);
    }
    let mut segs = rest.split('/');
    let owner = owner_segment(segs.next())?;
    // On a web host, `/api/...` and `/raw/...` are GitHub Enterprise's API (`/api/uploads`, ...)
    // and raw endpoints, not an owner named `api` or `raw` (GitHub reserves both names): what
    // GitHub acts on there is another owner's repository.
    if kind == OriginKind::Web
        && (owner.eq_ignore_ascii_case("api") || owner.eq_ignore_ascii_case("raw"))
    {
        return Err(invalid(
            "/api/ and /raw/ on a web host are GitHub's API and raw endpoints, not a repository: \
             send them through the integration's apiBaseUrl or rawBaseUrl",
        ));
    }
    let repo = match segs.next() {
        None => None,
        Some(r) => {
            // git smart HTTP names the repo `r.git`; the name limits apply to `r`.
            let name = if kind == OriginKind::Web {
                r.strip_suffix(".git").unwrap_or(r)
            } else {
                r
            };
            Some(repo_segment(Some(name))?.to_owned())
        }
    };
    Ok(PathTarget::About {
        owner: Some(owner.to_owned()),
        repo,
    })
}

fn owner_segment(seg: Option<&str>) -> Result<&str, InvalidPath> {
    match seg {
        None | Some("") => Err(invalid("empty owner segment")),
        Some(o) if is_valid_owner(o) => Ok(o),
        Some(_) => Err(invalid(
            "owner is not a GitHub login ([A-Za-z0-9-], 1 to 39 characters)",
        )),
    }
}

fn repo_segment(seg: Option<&str>) -> Result<&str, InvalidPath> {
    match seg {
        None | Some("") => Err(invalid("empty repo segment")),
        Some(r) if is_valid_repo(r) => Ok(r),
        Some(_) => Err(invalid(
            "repo is not a repository name ([A-Za-z0-9._-], 1 to 100 characters)",
        )),
    }
}

/// `/search/...?q=`: the owner (and repo) of the FIRST `repo:o/r`, `org:o` or `user:o` qualifier
/// (decoded, `+` as space), as SPEC §5 says. GitHub searches the union of all of them, so the
/// client policy checks every one ([`search_scopes`]); the credential follows the first.
fn search_target(query: Option<&str>) -> Result<PathTarget, InvalidPath> {
    Ok(match search_scopes(query)?.into_iter().next() {
        Some((owner, repo)) => PathTarget::About {
            owner: Some(owner),
            repo,
        },
        None => NONE,
    })
}

/// Every `repo:o/r`, `org:o` and `user:o` qualifier of a search's `q`, in order. A malformed
/// qualifier is refused rather than skipped: GitHub would still search it.
pub fn search_scopes(query: Option<&str>) -> Result<Vec<(String, Option<String>)>, InvalidPath> {
    scopes_in(search_q(query)?.as_deref())
}

/// A search's `q`, decoded (`+` and percent-encoding), or `None` without one.
pub fn search_q(query: Option<&str>) -> Result<Option<String>, InvalidPath> {
    // Query parsers disagree on duplicates (first wins here, last wins in Rails), on `;` as a
    // separator and on encoded keys (`%71=`): anything that could let GitHub see a different
    // `q` than the one authorised is refused.
    let mut found = None;
    for pair in query.unwrap_or("").split(['&', ';']) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let is_q = key == "q"
            || (key.contains('%')
                && percent_encoding::percent_decode_str(key)
                    .decode_utf8_lossy()
                    .trim()
                    .eq_ignore_ascii_case("q"));
        if is_q {
            if found.is_some() {
                return Err(invalid("more than one q parameter in a search query"));
            }
            found = Some(value);
        }
    }
    Ok(found.map(|raw_q| {
        let plus_as_space = if raw_q.contains('+') {
            Cow::Owned(raw_q.replace('+', " "))
        } else {
            Cow::Borrowed(raw_q)
        };
        percent_encoding::percent_decode_str(&plus_as_space)
            .decode_utf8_lossy()
            .into_owned()
    }))
}

/// The scope qualifiers of a decoded `q` ([`search_scopes`]).
pub fn scopes_in(q: Option<&str>) -> Result<Vec<(String, Option<String>)>, InvalidPath> {
    let mut scopes = Vec::new();
    let Some(q) = q else {
        return Ok(scopes);
    };
    for token in q.split_whitespace() {
        let Some((name, value)) = token.split_once(':') else {
            continue;
        };
        let value = value.trim_matches('"');
        if name.eq_ignore_ascii_case("repo") {
            let (o, r) = value
                .split_once('/')
                .ok_or_else(|| invalid("search qualifier repo: is not owner/repo"))?;
            if !is_valid_owner(o) || !is_valid_repo(r) {
                return Err(invalid("search qualifier repo: is not a valid owner/repo"));
            }
            scopes.push((o.to_owned(), Some(r.to_owned())));
        } else if name.eq_ignore_ascii_case("org") || name.eq_ignore_ascii_case("user") {
            if !is_valid_owner(value) {
                return Err(invalid("search qualifier org:/user: is not a GitHub login"));
            }
            scopes.push((value.to_owned(), None));
        }
    }
    Ok(scopes)
}

/// Why a decoded search `q` could reach beyond its `repo:`/`org:`/`user:` qualifiers, if it
/// could. GitHub ANDs qualifiers, so extra ones only narrow a search; but `OR`, `NOT` and
/// parentheses combine them otherwise (`repo:acme/w OR org:other`, `NOT repo:acme/w`), which a
/// client held to some owners or repos must not send. Operators are matched in any case.
pub fn search_widening(q: Option<&str>) -> Option<&'static str> {
    let q = q?;
    if q.contains(['(', ')']) {
        return Some("parentheses");
    }
    q.split_whitespace().find_map(|token| {
        if token.eq_ignore_ascii_case("OR") {
            Some("OR")
        } else if token.eq_ignore_ascii_case("NOT") {
            Some("NOT")
        } else {
            None
        }
    })
}

/// Owner (and repo) of a GraphQL request from its JSON body: `variables.owner` (with
/// `variables.name` or `variables.repo`), else `variables.org` or `variables.login`.
pub fn graphql_target(body: &[u8]) -> Option<(String, Option<String>)> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let vars = value.get("variables")?.as_object()?;
    let str_of = |key: &str| vars.get(key).and_then(|v| v.as_str());
    if let Some(owner) = str_of("owner") {
        if !is_valid_owner(owner) {
            return None;
        }
        let repo = str_of("name")
            .or_else(|| str_of("repo"))
            .filter(|r| is_valid_repo(r))
            .map(str::to_owned);
        return Some((owner.to_owned(), repo));
    }
    let owner = str_of("org").or_else(|| str_of("login"))?;
    is_valid_owner(owner).then(|| (owner.to_owned(), None))
}

/// A GitHub login: `[A-Za-z0-9-]`, 1 to 39 characters.
pub fn is_valid_owner(owner: &str) -> bool {
    (1..=39).contains(&owner.len())
        && owner
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// A repository name: `[A-Za-z0-9._-]`, 1 to 100 characters (and not a dot segment).
pub fn is_valid_repo(repo: &str) -> bool {
    (1..=100).contains(&repo.len())
        && repo != "."
        && repo != ".."
        && repo
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// Remembered `/repositories/{id}` → (owner, repo), bounded (§5, learned repository ids). Keyed
/// by integration too: each GitHub instance numbers its repositories independently, so GHE's 4242
/// is not github.com's 4242.
pub struct RepoIds {
    cache: Mutex<LruCache<(usize, u64), (String, String)>>,
}

impl RepoIds {
    pub fn new(capacity: usize) -> Self {
        let capacity = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        RepoIds {
            cache: Mutex::new(LruCache::new(capacity)),
        }
    }

    pub fn get(&self, integration: usize, id: u64) -> Option<(String, String)> {
        // A poisoned lock only means another thread panicked mid-update of a cache: the data is
        // still a valid LRU, so keep using it rather than failing every later request.
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.get(&(integration, id)).cloned()
    }

    /// Remembers the `/repositories/{id}` link targets of a `Link` header value (RFC 8288:
    /// `<URI-reference>; params, ...`) as belonging to owner/repo. Only the path of a target on
    /// the integration's api origin (`api_authority`, under `api_prefix`) counts: an id in a
    /// query string, on another host or outside `<>` could be put there by whoever shapes the
    /// URL (a reflected parameter) and would then choose the credential for that id.
    pub fn learn_from_link(
        &self,
        integration: usize,
        api_authority: &str,
        api_prefix: &str,
        link: &str,
        owner: &str,
        repo: &str,
    ) {
        let mut found = Vec::new();
        let mut rest = link;
        while let Some((_, after)) = rest.split_once('<') {
            let Some((reference, tail)) = after.split_once('>') else {
                break;
            };
            if let Some(id) = repository_id(api_authority, api_prefix, reference) {
                found.push(id);
            }
            rest = tail;
        }
        if found.is_empty() {
            return;
        }
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        for id in found {
            cache.put((integration, id), (owner.to_owned(), repo.to_owned()));
        }
    }
}

/// The `{id}` of a link target `[scheme://api_authority]api_prefix/repositories/{id}[/...]`.
fn repository_id(api_authority: &str, api_prefix: &str, reference: &str) -> Option<u64> {
    let path = match reference.split_once("://") {
        Some((_, rest)) => {
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            if !authority.eq_ignore_ascii_case(api_authority) {
                return None;
            }
            path
        }
        None if reference.starts_with('/') && !reference.starts_with("//") => reference,
        None => return None,
    };
    let path = path.split(['?', '#']).next()?;
    let after = path
        .strip_prefix(api_prefix)?
        .strip_prefix("/repositories/")?;
    let digits = after.bytes().take_while(u8::is_ascii_digit).count();
    let (id, tail) = after.split_at_checked(digits)?;
    if !(tail.is_empty() || tail.starts_with('/')) {
        return None;
    }
    id.parse().ok()
}

impl std::fmt::Debug for RepoIds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RepoIds").finish_non_exhaustive()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn about(owner: Option<&str>, repo: Option<&str>) -> PathTarget {
        PathTarget::About {
            owner: owner.map(str::to_owned),
            repo: repo.map(str::to_owned),
        }
    }

    fn api(path: &str) -> Result<PathTarget, InvalidPath> {
        parse(OriginKind::Api, path, None)
    }

    fn search(q: &str) -> Result<PathTarget, InvalidPath> {
        parse(OriginKind::Api, "/search/issues", Some(q))
    }

    fn refused(kind: OriginKind, path: &str) -> InvalidPath {
        parse(kind, path, None).expect_err(path)
    }

    // §5 table rows

    #[test]
    fn api_repos_owner_repo() {
        assert_eq!(
            api("/repos/Acme/Widgets"),
            Ok(about(Some("Acme"), Some("Widgets")))
        );
        assert_eq!(
            api("/repos/acme/widgets/pulls/1/files"),
            Ok(about(Some("acme"), Some("widgets")))
        );
        assert_eq!(
            api("/repos/acme/my.repo_x-1"),
            Ok(about(Some("acme"), Some("my.repo_x-1")))
        );
    }

    #[test]
    fn api_orgs_and_users_owner() {
        assert_eq!(api("/orgs/acme"), Ok(about(Some("acme"), None)));
        assert_eq!(api("/orgs/acme/repos"), Ok(about(Some("acme"), None)));
        assert_eq!(
            api("/users/octo-cat/repos"),
            Ok(about(Some("octo-cat"), None))
        );
        assert_eq!(api("/users"), Ok(about(None, None)));
    }

    #[test]
    fn api_repositories_id() {
        assert_eq!(
            api("/repositories/1296269"),
            Ok(PathTarget::RepositoryId(1296269))
        );
        assert_eq!(
            api("/repositories/42/pulls"),
            Ok(PathTarget::RepositoryId(42))
        );
        assert_eq!(api("/repositories"), Ok(about(None, None)));
    }

    #[test]
    fn refuses_non_numeric_or_huge_repository_id() {
        assert!(api("/repositories/12a").is_err());
        assert!(api("/repositories/").is_err());
        assert!(api("/repositories/-1").is_err());
        assert!(api("/repositories/99999999999999999999999").is_err());
    }

    #[test]
    fn api_search_repo_qualifier() {
        assert_eq!(
            search("q=is:open+repo:acme/widgets+-label:x"),
            Ok(about(Some("acme"), Some("widgets")))
        );
        assert_eq!(
            search("per_page=5&q=bug%20repo%3Aacme%2Fwidgets"),
            Ok(about(Some("acme"), Some("widgets")))
        );
    }

    #[test]
    fn api_search_org_and_user_qualifiers() {
        assert_eq!(search("q=org:acme+bug"), Ok(about(Some("acme"), None)));
        assert_eq!(search("q=ORG:acme"), Ok(about(Some("acme"), None)));
    }

    #[test]
    fn api_search_target_is_the_first_qualifier() {
        // SPEC §5: the first repo:/org:/user: qualifier decides the credential.
        assert_eq!(
            search("q=repo:acme/widgets+repo:acme/secret"),
            Ok(about(Some("acme"), Some("widgets")))
        );
        assert_eq!(
            search("q=org:acme+repo:acme/widgets"),
            Ok(about(Some("acme"), None))
        );
        assert_eq!(
            search("q=is:open+user:octocat+repo:acme/w"),
            Ok(about(Some("octocat"), None))
        );
        // A malformed later qualifier is refused too: GitHub would still search it.
        assert!(search("q=repo:acme/widgets+repo:nope").is_err());
    }

    #[test]
    fn api_search_scopes_lists_every_qualifier_for_the_client_policy() {
        assert_eq!(
            search_scopes(Some("q=repo:acme/widgets+is:open+org:other+user:octocat")),
            Ok(vec![
                ("acme".to_owned(), Some("widgets".to_owned())),
                ("other".to_owned(), None),
                ("octocat".to_owned(), None),
            ])
        );
        assert_eq!(search_scopes(Some("q=bug")), Ok(vec![]));
        assert_eq!(search_scopes(None), Ok(vec![]));
    }

    #[test]
    fn api_search_without_qualifier_has_no_owner() {
        assert_eq!(search("q=bug+fix"), Ok(about(None, None)));
        assert_eq!(search("sort=stars"), Ok(about(None, None)));
        assert_eq!(
            parse(OriginKind::Api, "/search/code", None),
            Ok(about(None, None))
        );
        // an excluded repo is not the target
        assert_eq!(search("q=-repo:acme/w"), Ok(about(None, None)));
    }

    #[test]
    fn api_search_refuses_ambiguous_q() {
        assert!(search("q=repo:acme/ok&q=repo:secret/x").is_err());
        assert!(search("q=repo:acme/ok&%71=repo:secret/x").is_err());
        assert!(search("q=repo:acme/ok;q=repo:secret/x").is_err());
        assert_eq!(search("%71=org:acme"), Ok(about(Some("acme"), None)));
    }

    #[test]
    fn api_search_refuses_malformed_first_qualifier() {
        assert!(search("q=repo:acme").is_err());
        assert!(search("q=repo:ac_me/w+org:acme").is_err());
        assert!(search("q=org:%D0%B0cme").is_err());
        assert!(search("q=repo:acme/..").is_err());
    }

    #[test]
    fn api_app_endpoints() {
        for p in [
            "/app",
            "/app/installations",
            "/app/installations/1/access_tokens",
            "/app-manifests/abc/conversions",
            "/installation/repositories",
            "/APP/installations",
        ] {
            assert_eq!(api(p), Ok(PathTarget::AppEndpoint), "{p}");
        }
        // public App metadata is not the App acting as itself
        assert_eq!(api("/apps/my-app"), Ok(about(None, None)));
    }

    #[test]
    fn api_anything_else_has_no_owner() {
        for p in ["/user", "/rate_limit", "/meta", "/", "", "/user/repos"] {
            assert_eq!(api(p), Ok(about(None, None)), "{p}");
        }
    }

    #[test]
    fn refuses_encoded_keyword() {
        assert!(api("/%72epos/acme/w").is_err());
        assert!(api("/%61pp/installations").is_err());
    }

    #[test]
    fn graphql_origin() {
        assert_eq!(
            parse(OriginKind::Graphql, "/graphql", None),
            Ok(PathTarget::Graphql)
        );
    }

    #[test]
    fn raw_owner_repo_ref() {
        assert_eq!(
            parse(OriginKind::Raw, "/acme/widgets/main/docs/a%20b.md", None),
            Ok(about(Some("acme"), Some("widgets")))
        );
        assert_eq!(
            parse(OriginKind::Raw, "/acme/widgets/refs/heads/x%252Fy", None),
            Ok(about(Some("acme"), Some("widgets")))
        );
    }

    #[test]
    fn web_owner_repo_git_and_owner_only() {
        let web = |p| parse(OriginKind::Web, p, None);
        assert_eq!(
            web("/acme/widgets"),
            Ok(about(Some("acme"), Some("widgets")))
        );
        assert_eq!(
            web("/acme/widgets.git/info/refs"),
            Ok(about(Some("acme"), Some("widgets")))
        );
        assert_eq!(
            web("/acme/widgets/archive/refs/heads/main.tar.gz"),
            Ok(about(Some("acme"), Some("widgets")))
        );
        assert_eq!(web("/acme"), Ok(about(Some("acme"), None)));
        assert_eq!(web("/"), Ok(about(None, None)));
        assert!(web("/acme/.git").is_err());
        let r100 = "r".repeat(100);
        assert_eq!(
            web(&format!("/acme/{r100}.git/info/refs")),
            Ok(about(Some("acme"), Some(&r100)))
        );
    }

    // bad forms

    #[test]
    fn refuses_dot_dot_segment() {
        assert!(
            refused(OriginKind::Api, "/repos/o/r/../../orgs/x")
                .0
                .contains("..")
        );
        assert!(api("/..").is_err());
    }

    #[test]
    fn refuses_dot_segment() {
        assert!(api("/repos/o/r/./x").is_err());
        assert!(api("/repos/o/r/.").is_err());
    }

    #[test]
    fn refuses_empty_interior_segment() {
        // Collapsed by some servers into `/repos/other/x`, which this parse never authorised.
        assert!(refused(OriginKind::Api, "//repos/other/x").0.contains("//"));
        assert!(api("/repos/o/r//pulls").is_err());
        assert!(api("/meta//").is_err());
        assert!(parse(OriginKind::Web, "/o//r", None).is_err());
        // A trailing slash is one empty final segment, not a collapse.
        assert!(api("/repos/o/r/").is_ok());
        assert!(api("/").is_ok());
    }

    #[test]
    fn refuses_encoded_dot_dot() {
        assert!(api("/repos/o/r/%2e%2e/x").is_err());
        assert!(api("/repos/o/r/.%2e/x").is_err());
        assert!(api("/repos/o/r/%2e").is_err());
    }

    #[test]
    fn refuses_mixed_case_encoded_dot_dot() {
        assert!(api("/repos/o/r/%2E./x").is_err());
        assert!(api("/repos/o/r/%2E%2e").is_err());
    }

    #[test]
    fn dots_inside_names_are_fine() {
        assert!(api("/repos/o/r/contents/...").is_ok());
        assert!(api("/repos/o/r/contents/.github/x.yml").is_ok());
        assert!(api("/repos/o/r/contents/%2e%2e%2e").is_ok());
    }

    #[test]
    fn refuses_encoded_slash_upper() {
        assert!(
            refused(OriginKind::Api, "/repos/o/r/contents/a%2Fb")
                .0
                .contains("%2F")
        );
    }

    #[test]
    fn refuses_encoded_slash_lower() {
        assert!(api("/repos/o%2fx/r").is_err());
        assert!(api("/user/a%2fb").is_err());
    }

    #[test]
    fn refuses_encoded_backslash_upper() {
        assert!(api("/repos/o/r/a%5Cb").is_err());
    }

    #[test]
    fn refuses_encoded_backslash_lower_and_raw() {
        assert!(api("/repos/o/r/a%5cb").is_err());
        assert!(api("/repos/o/r/a\\b").is_err());
    }

    #[test]
    fn refuses_encoded_nul_and_controls() {
        assert!(api("/repos/o/r%00").is_err());
        assert!(api("/repos/o/r/x%0a").is_err());
        assert!(api("/repos/o/r/x%1F").is_err());
        assert!(api("/repos/o/r/x%7f").is_err());
    }

    #[test]
    fn refuses_raw_control_character() {
        assert!(api("/repos/o/r/\nx").is_err());
        assert!(api("/repos/o/r\u{7f}").is_err());
        assert!(parse(OriginKind::Web, "/o/r\t", None).is_err());
    }

    #[test]
    fn refuses_malformed_percent_escape() {
        assert!(api("/repos/o/r/x%zz").is_err());
        assert!(api("/repos/o/r/x%2").is_err());
    }

    #[test]
    fn refuses_empty_owner() {
        assert!(refused(OriginKind::Api, "/repos//r").0.contains("empty"));
        assert!(api("/orgs/").is_err());
        assert!(parse(OriginKind::Raw, "//r/main/x", None).is_err());
        assert!(parse(OriginKind::Web, "//r", None).is_err());
    }

    #[test]
    fn refuses_empty_repo() {
        assert!(refused(OriginKind::Api, "/repos/o//x").0.contains("empty"));
        assert!(api("/repos/o/").is_err());
        assert!(api("/repos/o").is_err());
        assert!(parse(OriginKind::Raw, "/o//main", None).is_err());
    }

    #[test]
    fn refuses_40_char_owner() {
        let o39 = "a".repeat(39);
        let o40 = "a".repeat(40);
        assert!(api(&format!("/repos/{o39}/r")).is_ok());
        assert!(api(&format!("/repos/{o40}/r")).is_err());
        assert!(api(&format!("/users/{o40}")).is_err());
    }

    #[test]
    fn refuses_owner_with_underscore() {
        assert!(api("/repos/ac_me/r").is_err());
        assert!(api("/orgs/ac_me").is_err());
    }

    #[test]
    fn refuses_owner_with_percent() {
        assert!(api("/repos/ac%6De/r").is_err());
        assert!(api("/orgs/%61cme").is_err());
        assert!(parse(OriginKind::Web, "/ac%20me/r", None).is_err());
    }

    #[test]
    fn refuses_cyrillic_lookalike_owner() {
        // 'а' is U+0430 CYRILLIC SMALL LETTER A
        assert!(api("/repos/\u{430}cme/r").is_err());
        assert!(api("/orgs/%D0%B0cme").is_err());
        assert!(parse(OriginKind::Raw, "/\u{430}cme/r/main", None).is_err());
    }

    #[test]
    fn refuses_101_char_repo() {
        let r100 = "r".repeat(100);
        let r101 = "r".repeat(101);
        assert!(api(&format!("/repos/o/{r100}")).is_ok());
        assert!(api(&format!("/repos/o/{r101}")).is_err());
    }

    #[test]
    fn refuses_double_encoded_slash_in_repo_but_not_in_file_path() {
        assert!(api("/repos/o/r%252Fx").is_err());
        assert!(api("/repos/o%252F/r").is_err());
        assert_eq!(
            api("/repos/o/r/contents/a%252Fb"),
            Ok(about(Some("o"), Some("r")))
        );
    }

    // graphql bodies

    #[test]
    fn graphql_owner_and_name() {
        let b = br#"{"query":"q","variables":{"owner":"acme","name":"widgets"}}"#;
        assert_eq!(
            graphql_target(b),
            Some(("acme".to_owned(), Some("widgets".to_owned())))
        );
    }

    #[test]
    fn graphql_owner_and_repo() {
        let b = br#"{"variables":{"owner":"acme","repo":"w"}}"#;
        assert_eq!(
            graphql_target(b),
            Some(("acme".to_owned(), Some("w".to_owned())))
        );
        let b = br#"{"variables":{"owner":"acme"}}"#;
        assert_eq!(graphql_target(b), Some(("acme".to_owned(), None)));
    }

    #[test]
    fn graphql_org_and_login_carry_no_repo() {
        let b = br#"{"variables":{"org":"acme","name":"w"}}"#;
        assert_eq!(graphql_target(b), Some(("acme".to_owned(), None)));
        let b = br#"{"variables":{"login":"octocat","repo":"w"}}"#;
        assert_eq!(graphql_target(b), Some(("octocat".to_owned(), None)));
        let b = br#"{"variables":{"org":"acme","login":"octocat"}}"#;
        assert_eq!(graphql_target(b), Some(("acme".to_owned(), None)));
    }

    #[test]
    fn graphql_invalid_or_missing_owner_is_none() {
        assert_eq!(graphql_target(br#"{"variables":{"owner":"ac_me"}}"#), None);
        assert_eq!(graphql_target(br#"{"variables":{"owner":"acme/x"}}"#), None);
        assert_eq!(graphql_target(br#"{"variables":{"owner":5}}"#), None);
        assert_eq!(graphql_target(br#"{"query":"{ viewer { login } }"}"#), None);
        assert_eq!(graphql_target(br#"{"variables":null}"#), None);
        assert_eq!(graphql_target(b"not json"), None);
        assert_eq!(graphql_target(b""), None);
    }

    #[test]
    fn graphql_invalid_repo_is_dropped() {
        let b = br#"{"variables":{"owner":"acme","name":"a/../b"}}"#;
        assert_eq!(graphql_target(b), Some(("acme".to_owned(), None)));
    }

    // learned repository ids

    #[test]
    fn api_and_raw_on_a_web_host_are_not_owners() {
        for path in [
            "/api/uploads/repos/victim/secret/releases/1/assets",
            "/API/v3/repos/victim/secret",
            "/raw/victim/secret/main/README.md",
        ] {
            assert!(parse(OriginKind::Web, path, None).is_err(), "{path}");
        }
        // The raw origin's own paths are owner/repo/ref, whatever the owner is called.
        assert!(parse(OriginKind::Raw, "/apiary/x/main/f", None).is_ok());
        assert!(parse(OriginKind::Web, "/apiary/x", None).is_ok());
    }

    #[test]
    fn learns_every_repository_id_in_a_link_header() {
        let ids = RepoIds::new(16);
        ids.learn_from_link(
            0,
            "api.github.com",
            "",
            r#"<https://api.github.com/repositories/123/pulls?page=2>; rel="next", <https://api.github.com/repositories/456?page=9>; rel="last", <https://API.github.com/repositories/789>; rel="first""#,
            "acme",
            "widgets",
        );
        for id in [123, 456, 789] {
            assert_eq!(
                ids.get(0, id),
                Some(("acme".to_owned(), "widgets".to_owned()))
            );
        }
        assert_eq!(ids.get(0, 1), None);
    }

    #[test]
    fn ignores_malformed_repository_ids() {
        let ids = RepoIds::new(16);
        ids.learn_from_link(
            0,
            "x",
            "",
            "<https://x/repositories/12a/pulls>, <https://x/repositories/>, <https://x/repositories/77",
            "o",
            "r",
        );
        assert_eq!(ids.get(0, 12), None);
        assert_eq!(ids.get(0, 77), None, "no closing '>'");
        ids.learn_from_link(
            0,
            "x",
            "",
            "</repositories/99999999999999999999999/x>",
            "o",
            "r",
        );
    }

    /// Ids a reflected parameter, another host or free text could plant are not learnt: they
    /// would choose the credential (and pass the client policy) for another repository.
    #[test]
    fn learns_only_link_targets_on_the_api_origin() {
        let ids = RepoIds::new(16);
        ids.learn_from_link(
            0,
            "api.github.com",
            "",
            concat!(
                "<https://api.github.com/repos/acme/w/issues?x=/repositories/1/&page=2>; rel=\"next\", ",
                "<https://evil.example/repositories/2/issues>; rel=\"last\", ",
                "<https://api.github.com.evil.example/repositories/3>, ",
                "<//api.github.com/repositories/4>, ",
                "<https://api.github.com/x/repositories/5>, ",
                "https://api.github.com/repositories/6; title=\"/repositories/7/\", ",
                "<https://api.github.com/repositories/8#/repositories/9>"
            ),
            "acme",
            "w",
        );
        for id in 1..=7 {
            assert_eq!(ids.get(0, id), None, "{id}");
        }
        assert!(ids.get(0, 8).is_some());
        assert_eq!(ids.get(0, 9), None);
        // A relative target, and a prefixed (GHE) api origin.
        ids.learn_from_link(
            1,
            "ghe",
            "/api/v3",
            "</api/v3/repositories/10/x>, <https://ghe/repositories/11>",
            "g",
            "t",
        );
        assert!(ids.get(1, 10).is_some());
        assert_eq!(ids.get(1, 11), None, "outside the api prefix");
    }

    #[test]
    fn repo_ids_are_per_integration() {
        let ids = RepoIds::new(16);
        ids.learn_from_link(
            1,
            "ghe",
            "/api/v3",
            "<https://ghe/api/v3/repositories/4242/issues?page=2>",
            "g",
            "t",
        );
        assert_eq!(ids.get(1, 4242), Some(("g".to_owned(), "t".to_owned())));
        assert_eq!(ids.get(0, 4242), None);
    }

    #[test]
    fn repo_ids_are_bounded() {
        let learn = |ids: &RepoIds, id: u64, repo: &str| {
            ids.learn_from_link(
                0,
                "a",
                "",
                &format!("<https://a/repositories/{id}/x>"),
                "o",
                repo,
            );
        };
        let ids = RepoIds::new(2);
        learn(&ids, 1, "a");
        learn(&ids, 2, "b");
        assert!(ids.get(0, 1).is_some()); // 1 is now most recent
        learn(&ids, 3, "c");
        assert_eq!(ids.get(0, 2), None);
        assert!(ids.get(0, 1).is_some());
        assert!(ids.get(0, 3).is_some());
        let zero = RepoIds::new(0);
        learn(&zero, 1, "r");
        assert!(zero.get(0, 1).is_some());
    }

    // properties

    fn hostile_path() -> impl Strategy<Value = String> {
        let seg = prop_oneof![
            Just("repos".to_owned()),
            Just("orgs".to_owned()),
            Just("search".to_owned()),
            Just("repositories".to_owned()),
            Just("acme".to_owned()),
            Just("w.git".to_owned()),
            Just("..".to_owned()),
            Just("%2e".to_owned()),
            Just("%2F".to_owned()),
            Just("%".to_owned()),
            Just("".to_owned()),
            "[A-Za-z0-9._%-]{1,8}",
            any::<String>(),
        ];
        prop::collection::vec(seg, 0..6).prop_map(|s| format!("/{}", s.join("/")))
    }

    fn kinds() -> impl Strategy<Value = OriginKind> {
        prop_oneof![
            Just(OriginKind::Api),
            Just(OriginKind::Raw),
            Just(OriginKind::Web),
            Just(OriginKind::Graphql),
        ]
    }

    #[test]
    fn plain_paths_take_the_shortcut_and_the_rest_the_full_check() {
        for plain in [
            "/",
            "",
            "/repos/acme/widget.git",
            "/repos/a/b/contents/x.y?",
            "/.github",
        ] {
            assert!(is_plain_path(plain), "{plain}");
            assert!(check_path(plain).is_ok(), "{plain}");
        }
        // Left to the full check, which accepts the first two and rejects the rest.
        for (other, ok) in [
            ("/repos/a%2Db/x", true),
            ("/search/code q", true),
            ("/repos/../x", false),
            ("/repos/a/..", false),
            ("/repos//x", false),
            ("/repos/a\\b", false),
            ("/repos/%2e%2E/x", false),
            ("/a/\u{7f}", false),
        ] {
            assert!(!is_plain_path(other), "{other}");
            assert_eq!(check_path(other).is_ok(), ok, "{other}");
        }
    }

    proptest! {
        #[test]
        fn parse_never_panics_on_arbitrary_strings(kind in kinds(), p in any::<String>(), q in any::<String>()) {
            let _ = parse(kind, &p, Some(&q));
            let _ = graphql_target(p.as_bytes());
        }

        #[test]
        fn parse_never_panics_on_arbitrary_bytes(kind in kinds(), b in any::<Vec<u8>>()) {
            let s = String::from_utf8_lossy(&b);
            let _ = parse(kind, &s, Some(&s));
            let _ = graphql_target(&b);
            RepoIds::new(4).learn_from_link(0, "a", "", &s, "o", "r");
        }

        #[test]
        fn the_plain_path_shortcut_accepts_only_what_the_full_check_accepts(p in hostile_path()) {
            if is_plain_path(&p) {
                prop_assert!(check_path_in_full(&p).is_ok(), "{:?}", p);
            }
            prop_assert_eq!(check_path(&p).is_ok(), check_path_in_full(&p).is_ok());
        }

        #[test]
        fn accepted_owner_and_repo_are_verbatim_segments(kind in kinds(), p in hostile_path()) {
            if let Ok(PathTarget::About { owner, repo }) = parse(kind, &p, None) {
                let segs: Vec<&str> = p.split('/').collect();
                let at = if kind == OriginKind::Api { 2 } else { 1 };
                if let Some(o) = owner {
                    prop_assert!(is_valid_owner(&o));
                    prop_assert_eq!(segs.get(at).copied(), Some(o.as_str()));
                }
                if let Some(r) = repo {
                    prop_assert!(is_valid_repo(&r));
                    let seg = segs.get(at + 1).copied().unwrap_or("");
                    let with_git = format!("{}.git", r);
                    prop_assert!(seg == r || seg == with_git);
                }
                prop_assert!(check_path(&p).is_ok());
            }
        }
    }
}
