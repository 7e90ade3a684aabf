//! `gh-token-proxy audit summary` (operator tools helper).

use std::path::PathBuf;
use std::process::ExitCode;

pub fn summary_main(files: &[PathBuf], json: bool) -> ExitCode {
    let _ = (files, json);
    unimplemented!("operator helper")
}
