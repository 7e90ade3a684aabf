//! `gh-token-proxy explain` (resolver helper).

use std::process::ExitCode;

use crate::config::Config;

pub async fn explain_main(
    config: Config,
    url: &str,
    method: &str,
    client: Option<String>,
    json: bool,
) -> ExitCode {
    let _ = (config, url, method, client, json);
    unimplemented!("resolver helper")
}
