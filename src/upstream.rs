//! The upstream side's TLS and connections: one way to build the connector (system roots plus
//! `upstream.caFile`, rustls' session cache, TCP_NODELAY, connect timeout) for two users: the
//! forwarding pool ([`crate::pool`], the hot path) and a hyper-util client for the GitHub App
//! calls (installation lookups, token mints, `check`).

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::UpstreamConfig;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Request and response bodies on the upstream side: streamed client bodies, or buffered ones.
pub type UpstreamBody = UnsyncBoxBody<Bytes, BoxError>;

pub type UpstreamClient = Client<HttpsConnector<HttpConnector>, UpstreamBody>;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamSetupError {
    #[error("proxy.upstream.caFile: cannot read {path}: {source}")]
    CaFileRead {
        path: String,
        source: std::io::Error,
    },
    #[error("proxy.upstream.caFile: {path} holds no usable PEM certificate")]
    CaFileEmpty { path: String },
    #[error("cannot set up TLS: {0}")]
    Tls(#[from] rustls::Error),
}

/// Builds the App-call client. System roots are always trusted; `caFile` adds to them.
pub fn build(config: &UpstreamConfig) -> Result<UpstreamClient, UpstreamSetupError> {
    let https = connector(config)?;
    // Without pool_timer, idle connections are never reaped (hyper-util needs a timer for that).
    Ok(Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(std::time::Duration::from_secs(90))
        .pool_max_idle_per_host(256)
        .build(https))
}

/// Builds the forwarding pool, with the same trust and timeouts as [`build`].
pub fn build_pool(config: &UpstreamConfig) -> Result<crate::pool::ForwardPool, UpstreamSetupError> {
    Ok(crate::pool::ForwardPool::new(connector(config)?))
}

/// TCP (no Nagle, connect timeout) then TLS when the origin is `https`.
fn connector(config: &UpstreamConfig) -> Result<HttpsConnector<HttpConnector>, UpstreamSetupError> {
    let mut roots = rustls::RootCertStore::empty();
    // A machine without system roots still works with caFile (tests, air-gapped GHE).
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = &config.ca_file {
        let shown = path.display().to_string();
        let pem = std::fs::read(path).map_err(|source| UpstreamSetupError::CaFileRead {
            path: shown.clone(),
            source,
        })?;
        let mut added = 0;
        for cert in rustls_pemfile::certs(&mut pem.as_slice()).flatten() {
            if roots.add(cert).is_ok() {
                added += 1;
            }
        }
        if added == 0 {
            return Err(UpstreamSetupError::CaFileEmpty { path: shown });
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(config.connect_timeout));
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http))
}
