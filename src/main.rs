//! The `gh-token-proxy` binary: everything lives in the library; see [`gh_token_proxy::cli`].

// mimalloc: per-thread free lists suit the request path (many small, short-lived allocations made
// and freed on the same worker thread); glibc malloc cost ~7 % of the proxy's CPU under load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    gh_token_proxy::cli::main()
}
