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
    p.get(pi..)
        .is_some_and(|rest| rest.iter().all(|&c| c == b'*'))
}

/// Whether `client` may be served with a credential of `kind` (`credentials`).
pub fn allows_credential(client: &ClientConfig, kind: CredentialKind) -> bool {
    client.credentials.contains(&kind)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use http::{HeaderValue, Method};

    fn client(name: &str, key: &str, allow: &[&str]) -> ClientConfig {
        ClientConfig {
            name: name.to_owned(),
            key_sha256: Sha256::digest(key.as_bytes()).into(),
            allow: allow.iter().map(|s| (*s).to_owned()).collect(),
            methods: None,
            credentials: vec![
                CredentialKind::App,
                CredentialKind::Pat,
                CredentialKind::Anonymous,
            ],
        }
    }

    fn clients() -> Vec<ClientConfig> {
        vec![
            client("catalog", "catalog-key", &["acme/*", "acme-oss"]),
            client("ci", "ci-key", &["*"]),
        ]
    }

    fn headers(name: http::HeaderName, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_str(value).unwrap());
        h
    }

    fn who(h: &HeaderMap) -> Result<Option<String>, ClientError> {
        let cs = clients();
        authenticate(&cs, h).map(|c| c.map(|c| c.name.clone()))
    }

    #[test]
    fn no_clients_means_no_authentication() {
        assert!(matches!(authenticate(&[], &HeaderMap::new()), Ok(None)));
    }

    #[test]
    fn authorization_bearer_key() {
        let h = headers(AUTHORIZATION, "Bearer catalog-key");
        assert_eq!(who(&h), Ok(Some("catalog".to_owned())));
        let h = headers(AUTHORIZATION, "bearer ci-key");
        assert_eq!(who(&h), Ok(Some("ci".to_owned())));
    }

    #[test]
    fn authorization_token_key() {
        let h = headers(AUTHORIZATION, "token catalog-key");
        assert_eq!(who(&h), Ok(Some("catalog".to_owned())));
        let h = headers(AUTHORIZATION, "TOKEN ci-key");
        assert_eq!(who(&h), Ok(Some("ci".to_owned())));
    }

    #[test]
    fn proxy_authorization_bearer_key() {
        let h = headers(PROXY_AUTHORIZATION, "Bearer ci-key");
        assert_eq!(who(&h), Ok(Some("ci".to_owned())));
    }

    #[test]
    fn proxy_authorization_basic_name_and_key() {
        let v = format!("Basic {}", BASE64.encode("catalog:catalog-key"));
        assert_eq!(
            who(&headers(PROXY_AUTHORIZATION, &v)),
            Ok(Some("catalog".to_owned()))
        );
        let v = format!("basic {}", BASE64.encode("catalog:ci-key"));
        assert_eq!(
            who(&headers(PROXY_AUTHORIZATION, &v)),
            Ok(Some("ci".to_owned()))
        );
    }

    #[test]
    fn wrong_or_missing_key_is_unauthenticated() {
        assert_eq!(who(&HeaderMap::new()), Err(ClientError::Unauthenticated));
        assert_eq!(
            who(&headers(AUTHORIZATION, "Bearer nope")),
            Err(ClientError::Unauthenticated)
        );
        assert_eq!(
            who(&headers(AUTHORIZATION, "Bearer catalog-key2")),
            Err(ClientError::Unauthenticated)
        );
        assert_eq!(
            who(&headers(AUTHORIZATION, "Bearer ")),
            Err(ClientError::Unauthenticated)
        );
        assert_eq!(
            who(&headers(AUTHORIZATION, "Digest catalog-key")),
            Err(ClientError::Unauthenticated)
        );
        assert_eq!(
            who(&headers(PROXY_AUTHORIZATION, "Basic !!!notbase64")),
            Err(ClientError::Unauthenticated)
        );
        let v = format!("Basic {}", BASE64.encode("catalog-key"));
        assert_eq!(
            who(&headers(PROXY_AUTHORIZATION, &v)),
            Err(ClientError::Unauthenticated)
        );
    }

    #[test]
    fn error_message_never_contains_the_key() {
        let e = who(&headers(AUTHORIZATION, "Bearer s3cr3t-canary")).unwrap_err();
        assert!(!e.to_string().contains("s3cr3t-canary"));
    }

    #[test]
    fn key_sha256_from_config_matches() {
        // the keySha256 form: config stores only the hex-decoded digest
        let mut c = client("hashed", "unused", &["*"]);
        // printf 'abc' | sha256sum
        let hex = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        for (i, byte) in c.key_sha256.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
        }
        let cs = vec![c];
        let h = headers(AUTHORIZATION, "Bearer abc");
        assert_eq!(authenticate(&cs, &h).unwrap().unwrap().name, "hashed");
    }

    #[test]
    fn any_presented_header_may_carry_the_key() {
        let mut h = headers(AUTHORIZATION, "Bearer ci-key");
        h.insert(
            PROXY_AUTHORIZATION,
            HeaderValue::from_static("Bearer wrong"),
        );
        assert_eq!(who(&h), Ok(Some("ci".to_owned())));
    }

    // policy

    fn allowed(c: &ClientConfig, owner: Option<&str>, repo: Option<&str>, graphql: bool) -> bool {
        check_policy(c, &Method::GET, owner, repo, graphql).is_ok()
    }

    #[test]
    fn owner_glob_and_repo_glob() {
        let c = client("catalog", "k", &["acme/*", "acme-oss", "other/web-*"]);
        assert!(allowed(&c, Some("acme"), Some("widgets"), false));
        assert!(allowed(&c, Some("ACME"), Some("Widgets"), false));
        assert!(allowed(&c, Some("acme"), None, false));
        assert!(allowed(&c, Some("acme-oss"), Some("x"), false));
        assert!(allowed(&c, Some("acme-oss"), None, false));
        assert!(allowed(&c, Some("other"), Some("web-ui"), false));
        assert!(!allowed(&c, Some("other"), Some("api"), false));
        assert!(!allowed(&c, Some("other"), None, false));
        assert!(!allowed(&c, Some("acme-evil"), Some("x"), false));
        assert!(!allowed(&c, Some("acm"), Some("x"), false));
        let e = check_policy(&c, &Method::GET, Some("evil"), Some("x"), false).unwrap_err();
        assert!(
            e.contains("catalog") && e.contains("evil/x") && e.contains("allow"),
            "{e}"
        );
    }

    #[test]
    fn owner_wildcard_patterns() {
        let c = client("c", "k", &["acme-*"]);
        assert!(allowed(&c, Some("acme-oss"), Some("x"), false));
        assert!(!allowed(&c, Some("acme"), Some("x"), false));
        let c = client("c", "k", &["*/docs"]);
        assert!(allowed(&c, Some("anyone"), Some("docs"), false));
        assert!(!allowed(&c, Some("anyone"), Some("src"), false));
    }

    #[test]
    fn no_owner_matches_only_star() {
        let c = client("c", "k", &["acme/*", "acme", "*/*"]);
        assert!(!allowed(&c, None, None, false));
        let e = check_policy(&c, &Method::GET, None, None, false).unwrap_err();
        assert!(e.contains("no owner"), "{e}");
        let c = client("c", "k", &["*"]);
        assert!(allowed(&c, None, None, false));
    }

    #[test]
    fn graphql_matches_only_star_or_owner_star() {
        let c = client("c", "k", &["acme/widgets", "acme"]);
        assert!(!allowed(&c, Some("acme"), Some("widgets"), true));
        let e = check_policy(&c, &Method::POST, Some("acme"), Some("widgets"), true).unwrap_err();
        assert!(e.contains("GraphQL"), "{e}");
        let c = client("c", "k", &["acme/*"]);
        assert!(allowed(&c, Some("acme"), Some("widgets"), true));
        assert!(allowed(&c, Some("acme"), None, true));
        assert!(!allowed(&c, Some("other"), None, true));
        assert!(!allowed(&c, None, None, true));
        let c = client("c", "k", &["*"]);
        assert!(allowed(&c, None, None, true));
    }

    #[test]
    fn methods_rule() {
        let mut c = client("reader", "k", &["*"]);
        c.methods = Some(vec![Method::GET, Method::HEAD]);
        assert!(check_policy(&c, &Method::HEAD, Some("o"), None, false).is_ok());
        let e = check_policy(&c, &Method::POST, Some("o"), None, false).unwrap_err();
        assert!(
            e.contains("reader") && e.contains("POST") && e.contains("GET"),
            "{e}"
        );
    }

    #[test]
    fn credentials_rule() {
        let mut c = client("c", "k", &["*"]);
        assert!(allows_credential(&c, CredentialKind::Pat));
        c.credentials = vec![CredentialKind::App];
        assert!(allows_credential(&c, CredentialKind::App));
        assert!(!allows_credential(&c, CredentialKind::Pat));
        assert!(!allows_credential(&c, CredentialKind::Anonymous));
    }

    #[test]
    fn glob_basics() {
        assert!(glob("*", ""));
        assert!(glob("a*c", "abbbc"));
        assert!(glob("A*", "abc"));
        assert!(!glob("a*c", "abcd"));
        assert!(glob("**", "x"));
        assert!(!glob("", "x"));
        assert!(glob("", ""));
    }
}
