//! The `gh-token-proxy` binary: everything lives in the library; see [`gh_token_proxy::cli`].

fn main() -> std::process::ExitCode {
    gh_token_proxy::cli::main()
}
