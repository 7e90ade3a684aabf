//! The vocabulary shared by the resolver, the server, the audit log and `explain`: credential kinds,
//! reasons (their serde names are the SPEC's strings) and the [`Token`] that carries a secret.

use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use http::HeaderValue;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Which kind of credential served (or would serve) a request (§7.3 `credential`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialKind {
    App,
    Pat,
    Anonymous,
    None,
}

impl CredentialKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialKind::App => "app",
            CredentialKind::Pat => "pat",
            CredentialKind::Anonymous => "anonymous",
            CredentialKind::None => "none",
        }
    }
}

impl fmt::Display for CredentialKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a request got its credential, or why it was refused (§7.1 reasons and §7.4 refusal reasons).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    // §7.1: the decision
    Installed,
    PublicAccess,
    OwnerNotAllowed,
    NotInstalled,
    Suspended,
    RepoNotSelected,
    AppError,
    NoApp,
    NoOwner,
    NoCredential,
    // §7.4: refusals and proxy errors
    InvalidPath,
    InvalidRequest,
    UnknownHost,
    AppEndpoint,
    ClientPolicy,
    ClientUnauthenticated,
    ConnectNotSupported,
    BodyTooLarge,
    UpstreamUnreachable,
    UpstreamTls,
    UpstreamTimeout,
    Overloaded,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Installed => "installed",
            Reason::PublicAccess => "public_access",
            Reason::OwnerNotAllowed => "owner_not_allowed",
            Reason::NotInstalled => "not_installed",
            Reason::Suspended => "suspended",
            Reason::RepoNotSelected => "repo_not_selected",
            Reason::AppError => "app_error",
            Reason::NoApp => "no_app",
            Reason::NoOwner => "no_owner",
            Reason::NoCredential => "no_credential",
            Reason::InvalidPath => "invalid_path",
            Reason::InvalidRequest => "invalid_request",
            Reason::UnknownHost => "unknown_host",
            Reason::AppEndpoint => "app_endpoint",
            Reason::ClientPolicy => "client_policy",
            Reason::ClientUnauthenticated => "client_unauthenticated",
            Reason::ConnectNotSupported => "connect_not_supported",
            Reason::BodyTooLarge => "body_too_large",
            Reason::UpstreamUnreachable => "upstream_unreachable",
            Reason::UpstreamTls => "upstream_tls",
            Reason::UpstreamTimeout => "upstream_timeout",
            Reason::Overloaded => "overloaded",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A credential ready to be sent upstream: an installation token or a PAT.
///
/// The secret is held once; the two `Authorization` forms are built when the token is created
/// (not per request) and marked sensitive so hyper never logs them. `Debug` shows only the hash.
pub struct Token {
    secret: SecretString,
    hashed: Arc<str>,
    bearer: HeaderValue,
    basic: HeaderValue,
}

impl Token {
    /// Wraps a secret. Fails only when the secret cannot be an HTTP header value (control
    /// characters), which the caller reports without the value.
    pub fn new(secret: SecretString) -> Result<Self, InvalidTokenCharacters> {
        let raw = secret.expose_secret();
        let mut bearer =
            HeaderValue::from_str(&format!("Bearer {raw}")).map_err(|_| InvalidTokenCharacters)?;
        bearer.set_sensitive(true);
        let basic_raw = BASE64.encode(format!("x-access-token:{raw}"));
        let mut basic = HeaderValue::from_str(&format!("Basic {basic_raw}"))
            .map_err(|_| InvalidTokenCharacters)?;
        basic.set_sensitive(true);
        Ok(Token {
            hashed: hash_token(raw).into(),
            secret,
            bearer,
            basic,
        })
    }

    /// `base64(sha256(token))`, the form of GitHub's audit log `hashed_token`.
    pub fn hashed(&self) -> &Arc<str> {
        &self.hashed
    }

    /// `Bearer <token>`: api, raw and GraphQL origins.
    pub fn bearer_header(&self) -> &HeaderValue {
        &self.bearer
    }

    /// `Basic base64("x-access-token:" + token)`: the web origin (git smart HTTP).
    pub fn basic_header(&self) -> &HeaderValue {
        &self.basic
    }

    /// The secret itself, for the few places that must send it (tests compare it too).
    pub fn expose(&self) -> &str {
        self.secret.expose_secret()
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("hashed", &self.hashed)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("token contains characters that cannot be sent in an HTTP header")]
pub struct InvalidTokenCharacters;

/// `base64(sha256(token))`, as GitHub's audit log shows `hashed_token`.
pub fn hash_token(token: &str) -> String {
    BASE64.encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_secret() {
        let token = Token::new(SecretString::from("ghs_canary_secret_value")).unwrap();
        let shown = format!("{token:?}");
        assert!(!shown.contains("ghs_canary_secret_value"), "{shown}");
        assert!(shown.contains(token.hashed().as_ref()));
    }

    #[test]
    fn hashed_token_is_base64_of_sha256() {
        // printf 'abc' | sha256sum | xxd -r -p | base64
        assert_eq!(
            hash_token("abc"),
            "ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0="
        );
    }

    #[test]
    fn basic_header_carries_x_access_token() {
        let token = Token::new(SecretString::from("t0k")).unwrap();
        let expected = format!("Basic {}", BASE64.encode("x-access-token:t0k"));
        assert_eq!(token.basic_header().to_str().unwrap(), expected);
        assert!(token.basic_header().is_sensitive());
        assert_eq!(token.bearer_header().to_str().unwrap(), "Bearer t0k");
    }
}
