//! `gh-token-proxy check` (operator tools helper).

use std::process::ExitCode;

use crate::config::Config;

pub async fn check_main(config: Config, offline: bool) -> ExitCode {
    let _ = (config, offline);
    unimplemented!("operator helper")
}
