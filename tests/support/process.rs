//! The real `gh-token-proxy` binary as a child process: a temp config on free ports, bounded
//! waits for its port, its memory from `/proc/PID/status`, signals via `kill`, and a guard that
//! kills it when a test fails.

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Everything a process test waits for is bounded by this.
pub const PROCESS_WAIT: Duration = Duration::from_secs(30);

/// The binary under test.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_gh-token-proxy"))
}

/// A port that was free a moment ago: bind `127.0.0.1:0`, read the port, close. The caller
/// retries on collision (another process may take it in between).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether something listens on (or holds) `127.0.0.1:port`.
pub fn port_busy(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_err()
}

/// A `Command` for the binary with an empty environment except `PATH` (no `GITHUB_TOKEN`,
/// `RUST_LOG` or `GH_TOKEN_PROXY_CONFIG` leaking in from the developer's shell).
pub fn clean_command() -> Command {
    let mut command = Command::new(binary());
    command.env_clear();
    if let Some(path) = std::env::var_os("PATH") {
        command.env("PATH", path);
    }
    command
}

/// A running proxy process. Dropping it kills the process (SIGKILL) and reaps it.
pub struct ProxyProcess {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub audit_path: PathBuf,
    pub stderr_path: PathBuf,
    pub stdout_path: PathBuf,
}

impl ProxyProcess {
    /// Starts `serve` with the config `yaml(listen, admin, audit_path)` (the function returns a
    /// whole config using those values), on free ports, retrying when a port was taken.
    pub fn start(yaml: impl Fn(SocketAddr, SocketAddr, &Path) -> String) -> ProxyProcess {
        let mut last_error = String::new();
        for _attempt in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let admin_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
            if addr == admin_addr {
                continue;
            }
            let audit_path = dir.path().join("audit.log");
            let config_path = dir.path().join("gh-token-proxy.yaml");
            std::fs::write(&config_path, yaml(addr, admin_addr, &audit_path)).unwrap();
            let mut command = clean_command();
            command.arg("serve").arg("--config").arg(&config_path);
            match Self::spawn(command, dir, config_path, audit_path, addr, admin_addr) {
                Ok(process) => return process,
                Err(err) => last_error = err,
            }
        }
        panic!("the proxy did not start: {last_error}");
    }

    /// Spawns `command` (stdout and stderr to files in `dir`) and waits until it logs that it is
    /// serving and `addr` and `admin_addr` accept connections. `Err` (with the process's stderr)
    /// if it exited first.
    pub fn spawn(
        mut command: Command,
        dir: tempfile::TempDir,
        config_path: PathBuf,
        audit_path: PathBuf,
        addr: SocketAddr,
        admin_addr: SocketAddr,
    ) -> Result<ProxyProcess, String> {
        let stderr_path = dir.path().join("stderr.log");
        let stdout_path = dir.path().join("stdout.log");
        command
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout_path).unwrap())
            .stderr(std::fs::File::create(&stderr_path).unwrap());
        let child = command.spawn().unwrap();
        let mut process = ProxyProcess {
            child: Some(child),
            addr,
            admin_addr,
            dir,
            config_path,
            audit_path,
            stderr_path,
            stdout_path,
        };
        let deadline = Instant::now() + PROCESS_WAIT;
        loop {
            if let Some(status) = process.child_mut().try_wait().unwrap() {
                return Err(format!("exited with {status}: {}", process.stderr()));
            }
            // The "serving" line comes after both binds: a port that answers before it may
            // belong to another process (a collision this process is about to report).
            if process.stderr().contains(" serving")
                && TcpStream::connect(addr).is_ok()
                && TcpStream::connect(admin_addr).is_ok()
            {
                return Ok(process);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "not listening on {addr} after {PROCESS_WAIT:?}: {}",
                    process.stderr()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn child_mut(&mut self) -> &mut Child {
        self.child.as_mut().unwrap()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Everything the process wrote to stderr so far (its diagnostics).
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Everything the process wrote to stdout so far (the audit log when `audit.path` is `-`).
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    /// Sends a signal by name (`TERM`, `HUP`, ...) with `kill`.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name} {} failed", self.pid());
    }

    /// Waits (bounded) for the process to exit and returns its status.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child_mut().try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the proxy did not exit within {within:?}; stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `true` while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        self.child_mut().try_wait().unwrap().is_none()
    }

    /// The process's memory from `/proc/PID/status`.
    pub fn memory(&self) -> Memory {
        Memory::of(self.pid())
    }

    /// Parsed audit records in `path`.
    pub fn audit_records(path: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    /// Polls `audit_path` until it holds at least `count` records (bounded) and returns them.
    pub fn wait_audit(&self, path: &Path, count: usize) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + PROCESS_WAIT;
        loop {
            let records = Self::audit_records(path);
            if records.len() >= count {
                return records;
            }
            assert!(
                Instant::now() < deadline,
                "{} holds {} audit records, expected {count}; stderr:\n{}",
                path.display(),
                records.len(),
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take()
            && child.try_wait().ok().flatten().is_none()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `VmRSS` and `VmHWM` (peak RSS) in bytes.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    pub rss: u64,
    pub hwm: u64,
}

impl Memory {
    pub fn of(pid: u32) -> Memory {
        let mut text = String::new();
        std::fs::File::open(format!("/proc/{pid}/status"))
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        let field = |name: &str| -> u64 {
            let line = text
                .lines()
                .find(|l| l.starts_with(name))
                .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"));
            let kb: u64 = line
                .trim_start_matches(name)
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .unwrap();
            kb * 1024
        };
        Memory {
            rss: field("VmRSS:"),
            hwm: field("VmHWM:"),
        }
    }
}

/// Bytes as MiB with one decimal, for messages.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}
