//! Who may use the proxy (SPEC §6): client keys presented in `Authorization` or
//! `Proxy-Authorization`, compared in constant time, and each client's allow/methods/credentials rules.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use http::HeaderMap;
use http::header::{AUTHORIZATION, PROXY_AUTHORIZATION};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::ClientConfig;
use crate::credential::CredentialKind;

/// Why a request was not admitted as any client (`407 client_unauthenticated`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// No key, or a key that matches no configured client. The message never contains the key.
    #[error(
        "a valid proxy client key is required: send it as 'Authorization: Bearer KEY', \
         'Authorization: token KEY', 'Proxy-Authorization: Bearer KEY' or \
         'Proxy-Authorization: Basic base64(NAME:KEY)'"
    )]
    Unauthenticated,
}

/// The client a request's key belongs to. `Ok(None)` when no clients are configured (the proxy
/// is then open to whoever can reach it, which startup only allows on loopback or explicitly).
pub fn authenticate<'a>(
    clients: &'a [ClientConfig],
    headers: &HeaderMap,
) -> Result<Option<&'a ClientConfig>, ClientError> {
    if clients.is_empty() {
        return Ok(None);
    }
    // Every presented candidate is tried: a tool may send a proxy key in one header and
    // something unrelated in the other.
    for value in headers
        .get_all(PROXY_AUTHORIZATION)
        .iter()
        .chain(headers.get_all(AUTHORIZATION).iter())
    {
        let Ok(value) = value.to_str() else {
            continue;
        };
        let Some(key) = presented_key(value) else {
            continue;
        };
        if let Some(client) = match_key(clients, key.as_bytes()) {
            return Ok(Some(client));
        }
    }
    Err(ClientError::Unauthenticated)
}

/// The key in one `Authorization`/`Proxy-Authorization` value: `Bearer KEY`, `token KEY`, or
/// `Basic base64(NAME:KEY)` (scheme names case-insensitive). The Basic user name is not checked:
/// the key alone identifies the client, and the audit names the client from config.
fn presented_key(value: &str) -> Option<String> {
    let (scheme, rest) = value.trim().split_once(' ')?;
    let rest = rest.trim();
    if rest.is_empty() {
        return None;
    }
    if scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("token") {
        return Some(rest.to_owned());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = BASE64.decode(rest).ok()?;
        let decoded = String::from_utf8(decoded).ok()?;
        let (_, key) = decoded.split_once(':')?;
        return (!key.is_empty()).then(|| key.to_owned());
    }
    None
}

/// Compares the key's SHA-256 with every client's, all of them, in constant time per comparison.
fn match_key<'a>(clients: &'a [ClientConfig], key: &[u8]) -> Option<&'a ClientConfig> {
    let digest: [u8; 32] = Sha256::digest(key).into();
    let mut found = None;
    for client in clients {
        let equal: bool = client.key_sha256.ct_eq(&digest).into();
        if equal && found.is_none() {
            found = Some(client);
        }
    }
    found
}

/// Whether `client` may make this request (§6). The error says which rule refused.
pub fn check_policy(
    client: &ClientConfig,
    method: &http::Method,
    owner: Option<&str>,
    repo: Option<&str>,
    graphql: bool,
) -> Result<(), String> {
    if let Some(methods) = &client.methods
        && !methods.contains(method)
    {
        return Err(format!(
            "client '{}' may not use method {method} (methods: {})",
            client.name,
            methods
                .iter()
                .map(http::Method::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if client
        .allow
        .iter()
        .any(|p| pattern_allows(p, owner, repo, graphql))
    {
        return Ok(());
    }
    let what = match (owner, repo) {
        (None, _) => "requests with no owner (only the pattern '*' allows them)".to_owned(),
        (Some(o), _) if graphql => {
            format!("GraphQL requests about '{o}' (only '*' or '{o}/*' allow them)")
        }
        (Some(o), Some(r)) => format!("'{o}/{r}'"),
        (Some(o), None) => format!("'{o}'"),
    };
    Err(format!(
        "client '{}' is not allowed {what} by its allow list [{}]",
        client.name,
        client.allow.join(", ")
    ))
}

/// One `allow` pattern: `owner-glob` (the whole owner) or `owner-glob/repo-glob`.
fn pattern_allows(pattern: &str, owner: Option<&str>, repo: Option<&str>, graphql: bool) -> bool {
    if pattern == "*" {
        return true;
    }
    let Some(owner) = owner else {
        return false;
    };
    match pattern.split_once('/') {
        // `acme/*` covers everything of acme, including owner-level calls and GraphQL.
        Some((po, "*")) => glob(po, owner),
        // A single-repo pattern never admits GraphQL: its query can reach any repo the token can.
        Some((po, pr)) => !graphql && glob(po, owner) && repo.is_some_and(|r| glob(pr, r)),
        None => !graphql && glob(pattern, owner),
    }
}

/// Case-insensitive glob where `*` matches any run of characters.
fn glob(pattern: &str, text: &str) -> bool {
    let p = pattern.as_bytes();
    let t = text.as_bytes();
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some(b'*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(c) if t.get(ti).is_some_and(|x| x.eq_ignore_ascii_case(c)) => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p.get(pi..).is_some_and(|rest| rest.iter().all(|&c| c == b'*'))
}

/// Whether `client` may be served with a credential of `kind` (`credentials`).
pub fn allows_credential(client: &ClientConfig, kind: CredentialKind) -> bool {
    client.credentials.contains(&kind)
}
