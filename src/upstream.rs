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

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};

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
    #[error("cannot set up TLS certificate verification: {0}")]
    Verifier(#[from] rustls::client::VerifierBuilderError),
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
pub(crate) fn connector(
    config: &UpstreamConfig,
) -> Result<HttpsConnector<HttpConnector>, UpstreamSetupError> {
    let mut roots = rustls::RootCertStore::empty();
    let mut pinned: Vec<CertificateDer<'static>> = Vec::new();
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
            if roots.add(cert.clone()).is_ok() {
                added += 1;
                pinned.push(cert);
            }
        }
        if added == 0 {
            return Err(UpstreamSetupError::CaFileEmpty { path: shown });
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let tls = if pinned.is_empty() {
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        let webpki =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider).build()?;
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(CaFileVerifier { webpki, pinned }))
            .with_no_client_auth()
    };
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

/// rustls' WebPKI verification, plus the one case OpenSSL (curl, nginx) also accepts: the server
/// presents exactly a certificate listed in `caFile`. A self-signed certificate made with
/// `openssl req -x509` (a common way to give a GHE test instance or a mirror TLS) is marked as a
/// CA, and WebPKI refuses a CA certificate as a server's own (`CaUsedAsEndEntity`); the operator
/// named that very certificate, so it is trusted as it stands. Its name must still match, its
/// validity period was already checked (WebPKI checks it before the CA flag: a test holds it to
/// that), and the handshake signature still proves the server holds its key.
#[derive(Debug)]
struct CaFileVerifier {
    webpki: Arc<WebPkiServerVerifier>,
    pinned: Vec<CertificateDer<'static>>,
}

/// A CA certificate presented as the server's own, not listed in `caFile`.
struct CaAsServer;

impl CaAsServer {
    const MESSAGE: &str = "the server's certificate is a CA certificate that proxy.upstream.caFile \
        does not list; list that exact certificate there to trust it, or give the server a \
        certificate issued by a CA";
}

impl std::fmt::Display for CaAsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(Self::MESSAGE)
    }
}

// rustls shows an `OtherError` with `Debug`: the message, not the type's name, is what helps.
impl std::fmt::Debug for CaAsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for CaAsServer {}

impl ServerCertVerifier for CaFileVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let refused = match self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Ok(verified) => return Ok(verified),
            Err(refused) => refused,
        };
        let ca_as_server = matches!(
            &refused,
            rustls::Error::InvalidCertificate(CertificateError::Other(other))
                if matches!(
                    other.0.downcast_ref::<webpki::Error>(),
                    Some(webpki::Error::CaUsedAsEndEntity)
                )
        );
        if !ca_as_server {
            return Err(refused);
        }
        if !self.pinned.iter().any(|pin| pin == end_entity) {
            // WebPKI's own wording (`Other(OtherError(CaUsedAsEndEntity))`) says neither what is
            // wrong nor what to do.
            return Err(CertificateError::Other(rustls::OtherError(Arc::new(CaAsServer))).into());
        }
        let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_name(&parsed, server_name)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}
