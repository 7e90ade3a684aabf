//! `ProxyError`: every way the proxy itself answers instead of GitHub (SPEC §7.4), each with its
//! status, its reason and a GitHub-shaped JSON body, and where the fault lies.

use bytes::Bytes;
use http::{HeaderValue, StatusCode};

use crate::credential::Reason;

/// Where a failure came from (pingora's habit): who has to act to fix it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The client sent something the proxy will not forward.
    Downstream,
    /// GitHub (or the network to it) did not answer properly.
    Upstream,
    /// No credential may serve the request (missing App installation / PAT, client policy).
    Credentials,
    /// The proxy itself (capacity).
    Internal,
}

/// A request the proxy answers itself. Messages never contain a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error("{0}")]
    InvalidPath(String),
    #[error("{0}")]
    InvalidRequest(String),
    #[error("request URI is too long (at most {limit} bytes)")]
    UriTooLong { limit: usize },
    #[error("request headers are too large (at most {limit} bytes)")]
    HeadersTooLarge { limit: usize },
    #[error("{0}")]
    UnknownHost(String),
    #[error(
        "{0}: App endpoints are refused because they would act as the GitHub App itself, not as one of its installations"
    )]
    AppEndpoint(String),
    #[error("{0}")]
    ClientPolicy(String),
    #[error("{0}")]
    NoCredential(String),
    #[error(
        "CONNECT is not supported: credentials cannot be added inside a TLS tunnel; use an http:// base URL pointing at the proxy"
    )]
    ConnectNotSupported,
    #[error("{0}")]
    ClientUnauthenticated(String),
    #[error("request body is too large to inspect (GraphQL bodies are limited to {limit} bytes)")]
    BodyTooLarge { limit: usize },
    #[error("{0}")]
    UpstreamUnreachable(String),
    #[error("{0}")]
    UpstreamTls(String),
    #[error("{0}")]
    UpstreamTimeout(String),
    #[error("the proxy is at its connection limit (proxy.maxConnections); retry later")]
    Overloaded,
    /// The client's request body failed while it was being forwarded: the client went away
    /// before sending all of it (`client_gone`), or sent a malformed one.
    #[error("{message}")]
    RequestBody { message: String, client_gone: bool },
    #[error(
        "the request body did not arrive within {limit_ms} ms (proxy.headerReadTimeoutMs); a GraphQL body is read before the proxy can choose a credential"
    )]
    BodyTimeout { limit_ms: u64 },
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::InvalidPath(_)
            | ProxyError::InvalidRequest(_)
            | ProxyError::RequestBody { .. } => StatusCode::BAD_REQUEST,
            ProxyError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ProxyError::UriTooLong { .. } => StatusCode::URI_TOO_LONG,
            ProxyError::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::UnknownHost(_)
            | ProxyError::AppEndpoint(_)
            | ProxyError::ClientPolicy(_)
            | ProxyError::NoCredential(_) => StatusCode::FORBIDDEN,
            ProxyError::ConnectNotSupported => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::ClientUnauthenticated(_) => StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            ProxyError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::UpstreamUnreachable(_) | ProxyError::UpstreamTls(_) => {
                StatusCode::BAD_GATEWAY
            }
            ProxyError::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    pub fn reason(&self) -> Reason {
        match self {
            ProxyError::InvalidPath(_) => Reason::InvalidPath,
            ProxyError::InvalidRequest(_)
            | ProxyError::RequestBody { .. }
            | ProxyError::BodyTimeout { .. }
            | ProxyError::UriTooLong { .. }
            | ProxyError::HeadersTooLarge { .. } => Reason::InvalidRequest,
            ProxyError::UnknownHost(_) => Reason::UnknownHost,
            ProxyError::AppEndpoint(_) => Reason::AppEndpoint,
            ProxyError::ClientPolicy(_) => Reason::ClientPolicy,
            ProxyError::NoCredential(_) => Reason::NoCredential,
            ProxyError::ConnectNotSupported => Reason::ConnectNotSupported,
            ProxyError::ClientUnauthenticated(_) => Reason::ClientUnauthenticated,
            ProxyError::BodyTooLarge { .. } => Reason::BodyTooLarge,
            ProxyError::UpstreamUnreachable(_) => Reason::UpstreamUnreachable,
            ProxyError::UpstreamTls(_) => Reason::UpstreamTls,
            ProxyError::UpstreamTimeout(_) => Reason::UpstreamTimeout,
            ProxyError::Overloaded => Reason::Overloaded,
        }
    }

    pub fn fault(&self) -> Fault {
        match self {
            ProxyError::InvalidPath(_)
            | ProxyError::InvalidRequest(_)
            | ProxyError::UriTooLong { .. }
            | ProxyError::HeadersTooLarge { .. }
            | ProxyError::UnknownHost(_)
            | ProxyError::AppEndpoint(_)
            | ProxyError::ConnectNotSupported
            | ProxyError::ClientUnauthenticated(_)
            | ProxyError::BodyTooLarge { .. }
            | ProxyError::RequestBody { .. }
            | ProxyError::BodyTimeout { .. } => Fault::Downstream,
            ProxyError::ClientPolicy(_) | ProxyError::NoCredential(_) => Fault::Credentials,
            ProxyError::UpstreamUnreachable(_)
            | ProxyError::UpstreamTls(_)
            | ProxyError::UpstreamTimeout(_) => Fault::Upstream,
            ProxyError::Overloaded => Fault::Internal,
        }
    }

    /// Builds a refusal from a reason the routing or target layer gave, with its message.
    pub fn from_reason(reason: Reason, message: String) -> ProxyError {
        match reason {
            Reason::InvalidPath => ProxyError::InvalidPath(message),
            Reason::UnknownHost => ProxyError::UnknownHost(message),
            Reason::AppEndpoint => ProxyError::AppEndpoint(message),
            Reason::ClientPolicy => ProxyError::ClientPolicy(message),
            Reason::NoCredential => ProxyError::NoCredential(message),
            Reason::ConnectNotSupported => ProxyError::ConnectNotSupported,
            Reason::ClientUnauthenticated => ProxyError::ClientUnauthenticated(message),
            Reason::BodyTooLarge => ProxyError::BodyTooLarge {
                limit: crate::server::GRAPHQL_BODY_LIMIT,
            },
            Reason::UpstreamUnreachable => ProxyError::UpstreamUnreachable(message),
            Reason::UpstreamTls => ProxyError::UpstreamTls(message),
            Reason::UpstreamTimeout => ProxyError::UpstreamTimeout(message),
            Reason::Overloaded => ProxyError::Overloaded,
            _ => ProxyError::InvalidRequest(message),
        }
    }

    /// `{"message": "...", "reason": "..."}`, the shape of GitHub's own error bodies.
    pub fn body(&self) -> Bytes {
        #[derive(serde::Serialize)]
        struct Body<'a> {
            message: &'a str,
            reason: Reason,
        }
        let message = self.to_string();
        // Serialising two strings cannot fail; the fallback keeps the proxy alive regardless.
        serde_json::to_vec(&Body {
            message: &message,
            reason: self.reason(),
        })
        .map(Bytes::from)
        .unwrap_or_else(|_| Bytes::from_static(b"{\"message\":\"error\"}"))
    }

    /// Extra headers the status calls for: `Proxy-Authenticate` on 407 (RFC 9110 §15.5.8).
    pub fn extra_header(&self) -> Option<(http::HeaderName, HeaderValue)> {
        match self {
            ProxyError::ClientUnauthenticated(_) => Some((
                http::header::PROXY_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"gh-token-proxy\""),
            )),
            ProxyError::Overloaded => {
                Some((http::header::RETRY_AFTER, HeaderValue::from_static("1")))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn all() -> Vec<ProxyError> {
        vec![
            ProxyError::InvalidPath("bad".into()),
            ProxyError::InvalidRequest("bad".into()),
            ProxyError::UriTooLong { limit: 8192 },
            ProxyError::HeadersTooLarge { limit: 65536 },
            ProxyError::UnknownHost("x".into()),
            ProxyError::AppEndpoint("/app".into()),
            ProxyError::ClientPolicy("x".into()),
            ProxyError::NoCredential("x".into()),
            ProxyError::ConnectNotSupported,
            ProxyError::ClientUnauthenticated("x".into()),
            ProxyError::BodyTooLarge { limit: 1 },
            ProxyError::UpstreamUnreachable("x".into()),
            ProxyError::UpstreamTls("x".into()),
            ProxyError::UpstreamTimeout("x".into()),
            ProxyError::Overloaded,
        ]
    }

    #[test]
    fn statuses_and_reasons_follow_the_spec_table() {
        let got: Vec<(u16, &str)> = all()
            .iter()
            .map(|e| (e.status().as_u16(), e.reason().as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                (400, "invalid_path"),
                (400, "invalid_request"),
                (414, "invalid_request"),
                (431, "invalid_request"),
                (403, "unknown_host"),
                (403, "app_endpoint"),
                (403, "client_policy"),
                (403, "no_credential"),
                (405, "connect_not_supported"),
                (407, "client_unauthenticated"),
                (413, "body_too_large"),
                (502, "upstream_unreachable"),
                (502, "upstream_tls"),
                (504, "upstream_timeout"),
                (503, "overloaded"),
            ]
        );
    }

    #[test]
    fn body_is_github_shaped_json() {
        for err in all() {
            let body: serde_json::Value = serde_json::from_slice(&err.body()).unwrap();
            let obj = body.as_object().unwrap();
            assert_eq!(obj.len(), 2, "{body}");
            assert_eq!(obj["reason"], err.reason().as_str());
            assert!(!obj["message"].as_str().unwrap().is_empty());
        }
    }

    #[test]
    fn proxy_authenticate_only_on_407() {
        for err in all() {
            let header = err.extra_header();
            if err.status() == StatusCode::PROXY_AUTHENTICATION_REQUIRED {
                let (name, value) = header.unwrap();
                assert_eq!(name, http::header::PROXY_AUTHENTICATE);
                assert_eq!(value, "Basic realm=\"gh-token-proxy\"");
            } else {
                assert!(header.is_none_or(|(n, _)| n != http::header::PROXY_AUTHENTICATE));
            }
        }
    }

    #[test]
    fn connect_message_tells_to_use_http_base_url() {
        assert!(
            ProxyError::ConnectNotSupported
                .to_string()
                .contains("http:// base URL")
        );
    }
}
