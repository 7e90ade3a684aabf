//! The proxy server (server helper).

use std::future::Future;
use std::process::ExitCode;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::config::Config;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    Setup(String),
}

/// Runs the proxy on a bound listener until `shutdown` resolves, then drains.
pub async fn run(
    config: Arc<Config>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let _ = (config, listener, shutdown);
    unimplemented!("server helper")
}

/// `gh-token-proxy serve`: binds `proxy.listen` (and `admin.listen`), runs until SIGINT/SIGTERM.
pub async fn serve_main(config: Config) -> ExitCode {
    let _ = config;
    unimplemented!("server helper")
}
