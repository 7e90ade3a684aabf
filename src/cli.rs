//! The command line (SPEC §2): argument parsing, config loading, telemetry, and dispatch to the
//! subcommands. Exit codes: 0 ok, 1 failure or problems found, 2 bad config.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Config;

#[derive(Debug, Parser)]
#[command(
    name = "gh-token-proxy",
    version,
    about = "Puts the right GitHub credential on every GitHub call"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy until SIGINT/SIGTERM, then drain.
    Serve {
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Validate the config and (unless --offline) verify every credential against GitHub.
    Check {
        #[command(flatten)]
        config: ConfigArgs,
        /// Only validate the config; do not call GitHub.
        #[arg(long)]
        offline: bool,
    },
    /// Show which credential a request would get, without sending it.
    Explain {
        /// Any form: https://api.github.com/..., https://github.com/o/r/blob/..., http://proxy:8080/...
        url: String,
        #[arg(long, default_value = "GET")]
        method: String,
        /// Explain as this proxy client.
        #[arg(long)]
        client: Option<String>,
        /// Print JSON instead of a tree.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Audit log tools.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Summarise audit logs (stdin when no file): credentials and reasons per owner, and the
    /// owners still served by the PAT because the App is not installed.
    Summary {
        files: Vec<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, clap::Args)]
pub struct ConfigArgs {
    /// Config file; may be repeated (deep-merged, later files win).
    /// Default: $GH_TOKEN_PROXY_CONFIG, else config/gh-token-proxy.yaml.
    #[arg(long = "config", value_name = "PATH")]
    pub paths: Vec<PathBuf>,
}

impl ConfigArgs {
    /// Loads the config; on error prints it and gives exit code 2. Unset-variable warnings are logged.
    pub fn load(&self) -> Result<Config, ExitCode> {
        let paths = if self.paths.is_empty() {
            vec![
                std::env::var_os("GH_TOKEN_PROXY_CONFIG")
                    // Set but empty (`GH_TOKEN_PROXY_CONFIG=` in a unit file) means unset.
                    .filter(|v| !v.is_empty())
                    .map(PathBuf::from)
                    .unwrap_or_else(|| PathBuf::from("config/gh-token-proxy.yaml")),
            ]
        } else {
            self.paths.clone()
        };
        match Config::load(&paths, &|name| std::env::var(name).ok()) {
            Ok(config) => {
                for warning in &config.warnings {
                    tracing::warn!("{warning}");
                }
                Ok(config)
            }
            Err(err) => {
                error(format_args!("bad config: {err}"));
                Err(ExitCode::from(2))
            }
        }
    }
}

/// Whether diagnostics are JSON (`LOG_FORMAT=json`).
pub fn json_logs() -> bool {
    std::env::var("LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"))
}

/// An error that ends a command, for the operator on stderr. Under `LOG_FORMAT=json` it is one
/// `tracing` event like every other diagnostic, so a log pipeline never meets a plain line; else
/// a plain `gh-token-proxy: ...` line, shown whatever `RUST_LOG` filters.
pub fn error(message: std::fmt::Arguments<'_>) {
    if json_logs() {
        tracing::error!("{message}");
    } else {
        eprintln!("gh-token-proxy: {message}");
    }
}

/// As [`error`], for a warning that does not end the command.
pub fn warning(message: std::fmt::Arguments<'_>) {
    if json_logs() {
        tracing::warn!("{message}");
    } else {
        eprintln!("gh-token-proxy: {message}");
    }
}

/// Diagnostics to stderr through `tracing`: `RUST_LOG` (default `info`), `LOG_FORMAT=json`.
pub fn init_telemetry() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a person at a terminal, not in a log file or a collector's pipe.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if json_logs() {
        builder.json().init();
    } else {
        builder.init();
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_telemetry();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    // One worker thread per core but one, unless `TOKIO_WORKER_THREADS` says otherwise (tokio
    // reads it when no count is set here). Most of a forwarded request's CPU is the kernel's TCP
    // work on both legs (about two thirds, measured), and the audit writer has a thread of its
    // own: a worker on every core competes with both for the same cores. Measured on two cores
    // (docs/performance.md): one worker used less CPU per request than two (5.9 to 6.3 µs of
    // user time against 6.6 to 7.7) and cut the p99 in five alternating rounds of five.
    if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        rt.worker_threads(cores.saturating_sub(1).max(1));
    }
    // Without the LIFO slot a woken task queues behind the connections already waiting on its
    // worker instead of jumping ahead of them: under load that trims the tail the slot creates
    // (measured: p99 lower in 8 of 10 alternating rounds, ~12 % at the median, throughput level
    // or better; docs/performance.md). Needs `--cfg tokio_unstable` (.cargo/config.toml);
    // without it the runtime keeps tokio's default.
    #[cfg(tokio_unstable)]
    rt.disable_lifo_slot();
    let runtime = match rt.build() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("gh-token-proxy: cannot start the async runtime: {err}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(dispatch(cli.command))
}

async fn dispatch(command: Command) -> ExitCode {
    match command {
        Command::Serve { config } => match config.load() {
            Ok(config) => crate::server::serve_main(config).await,
            Err(code) => code,
        },
        Command::Check { config, offline } => match config.load() {
            Ok(config) => crate::check::check_main(config, offline).await,
            Err(code) => code,
        },
        Command::Explain {
            url,
            method,
            client,
            json,
            config,
        } => match config.load() {
            Ok(config) => crate::explain::explain_main(config, &url, &method, client, json).await,
            Err(code) => code,
        },
        Command::Audit {
            command: AuditCommand::Summary { files, json },
        } => crate::summary::summary_main(&files, json),
    }
}
