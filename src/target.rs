//! Which owner and repo a request is about, from its raw path (SPEC §5), and the rejection of
//! paths that could mean something other than what was authorised. Pure functions.

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
/// parsed: dot segments (also `%2e`-encoded), encoded `/` or `\`, any `\`, control characters
/// (raw or encoded) and malformed `%` escapes (an ambiguous escape is decoded differently by
/// different servers). Allocation-free: it runs on every request.
pub fn check_path(path: &str) -> Result<(), InvalidPath> {
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
    let repo = match segs.next() {
        None => None,
        Some(r) => {
            let r = repo_segment(Some(r))?;
            let r = if kind == OriginKind::Web {
                r.strip_suffix(".git").unwrap_or(r)
            } else {
                r
            };
            if r.is_empty() {
                return Err(invalid("empty repo name"));
            }
            Some(r.to_owned())
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

/// `/search/...?q=`: the first `repo:o/r`, `org:o` or `user:o` qualifier of `q` (decoded, `+` as
/// space). A malformed first qualifier is refused rather than skipped, so a later one cannot
/// stand in for it.
fn search_target(query: Option<&str>) -> Result<PathTarget, InvalidPath> {
    let Some(raw_q) = query
        .unwrap_or("")
        .split('&')
        .find_map(|pair| pair.strip_prefix("q="))
    else {
        return Ok(NONE);
    };
    let plus_as_space = raw_q.replace('+', " ");
    let q = percent_encoding::percent_decode_str(&plus_as_space).decode_utf8_lossy();
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
            return Ok(PathTarget::About {
                owner: Some(o.to_owned()),
                repo: Some(r.to_owned()),
            });
        }
        if name.eq_ignore_ascii_case("org") || name.eq_ignore_ascii_case("user") {
            if !is_valid_owner(value) {
                return Err(invalid("search qualifier org:/user: is not a GitHub login"));
            }
            return Ok(PathTarget::About {
                owner: Some(value.to_owned()),
                repo: None,
            });
        }
    }
    Ok(NONE)
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
    (1..=39).contains(&owner.len()) && owner.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
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

/// Remembered `/repositories/{id}` → (owner, repo), bounded (§5, learned repository ids).
pub struct RepoIds {
    cache: Mutex<LruCache<u64, (String, String)>>,
}

impl RepoIds {
    pub fn new(capacity: usize) -> Self {
        let capacity = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        RepoIds {
            cache: Mutex::new(LruCache::new(capacity)),
        }
    }

    pub fn get(&self, id: u64) -> Option<(String, String)> {
        // A poisoned lock only means another thread panicked mid-update of a cache: the data is
        // still a valid LRU, so keep using it rather than failing every later request.
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.get(&id).cloned()
    }

    /// Remembers every `/repositories/{id}/` URL in a `Link` header value as belonging to owner/repo.
    pub fn learn_from_link(&self, link: &str, owner: &str, repo: &str) {
        const NEEDLE: &str = "/repositories/";
        let mut rest = link;
        let mut found = Vec::new();
        while let Some((_, after)) = rest.split_once(NEEDLE) {
            let digits = after.bytes().take_while(u8::is_ascii_digit).count();
            let Some((id, tail)) = after.split_at_checked(digits) else {
                break;
            };
            let terminated = matches!(tail.bytes().next(), None | Some(b'/' | b'?' | b'>'));
            if terminated && let Ok(id) = id.parse::<u64>() {
                found.push(id);
            }
            rest = tail;
        }
        if found.is_empty() {
            return;
        }
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        for id in found {
            cache.put(id, (owner.to_owned(), repo.to_owned()));
        }
    }
}

impl std::fmt::Debug for RepoIds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RepoIds").finish_non_exhaustive()
    }
}
