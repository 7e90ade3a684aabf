//! `GitWebOrigin`: a GitHub web origin double that serves git smart HTTP over TLS (its own test
//! CA, a leaf for `localhost`) by running `git http-backend` as a CGI per request. Like GitHub for
//! a private repository, it answers `401` to any request whose `Authorization` the test's
//! authorizer does not accept.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Decides whether a request's `Authorization` (if any) may read the repositories.
pub type Authorizer = Arc<dyn Fn(Option<&str>) -> bool + Send + Sync>;

/// One request the web origin received.
#[derive(Debug, Clone)]
pub struct GitRequest {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub authorization: Option<String>,
    /// The request's `Content-Length` (`None`: a chunked body of unknown length).
    pub content_length: Option<u64>,
    pub status: u16,
}

/// Whether `git` is on `PATH` (the git tests skip, with a message, only when it is not).
pub fn git_available() -> bool {
    std::process::Command::new("git")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A `git` command isolated from the developer's configuration.
pub fn git(home: &Path) -> std::process::Command {
    let mut command = std::process::Command::new("git");
    command
        .env("HOME", home)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env_remove("GIT_DIR")
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY")
        .env_remove("all_proxy")
        .env_remove("ALL_PROXY");
    command
}

/// Runs a git command and panics with its output when it fails.
pub fn run_git(home: &Path, args: &[&str], cwd: &Path) -> String {
    let output = git(home).args(args).current_dir(cwd).output().unwrap();
    assert!(
        output.status.success(),
        "git {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Creates the bare repository `{root}/{owner}/{name}.git` with one commit holding `files`.
pub fn create_repo(root: &Path, home: &Path, owner: &str, name: &str, files: &[(&str, &str)]) {
    let work = root.join(format!(".work-{owner}-{name}"));
    std::fs::create_dir_all(&work).unwrap();
    run_git(home, &["init", "-q", "-b", "main"], &work);
    for (path, content) in files {
        let file = work.join(path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(file, content).unwrap();
    }
    run_git(home, &["add", "."], &work);
    run_git(
        home,
        &[
            "-c",
            "user.name=Test",
            "-c",
            "user.email=test@example.com",
            "commit",
            "-q",
            "-m",
            "initial",
        ],
        &work,
    );
    let bare = root.join(owner).join(format!("{name}.git"));
    std::fs::create_dir_all(root.join(owner)).unwrap();
    run_git(
        home,
        &[
            "clone",
            "-q",
            "--bare",
            work.to_str().unwrap(),
            bare.to_str().unwrap(),
        ],
        root,
    );
}

/// A running web origin. Dropping it stops the server.
pub struct GitWebOrigin {
    addr: SocketAddr,
    ca_pem: String,
    requests: Arc<Mutex<Vec<GitRequest>>>,
    task: JoinHandle<()>,
}

impl Drop for GitWebOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl GitWebOrigin {
    /// Serves the repositories under `project_root` on `127.0.0.1:0`.
    pub async fn start(project_root: PathBuf, authorize: Authorizer) -> GitWebOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (acceptor, ca_pem) = super::fake_github::test_tls("GitWebOrigin test CA");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let state = Arc::new(Served {
            project_root,
            authorize,
            requests: requests.clone(),
        });
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let state = state.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let service = service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(state.handle(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        GitWebOrigin {
            addr,
            ca_pem,
            requests,
            task,
        }
    }

    /// `localhost:PORT`: the integration's `host` (its web origin is `https://localhost:PORT`).
    pub fn host(&self) -> String {
        format!("localhost:{}", self.addr.port())
    }

    /// The test CA's PEM (to add to `proxy.upstream.caFile`).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    pub fn requests(&self) -> Vec<GitRequest> {
        self.requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

struct Served {
    project_root: PathBuf,
    authorize: Authorizer,
    requests: Arc<Mutex<Vec<GitRequest>>>,
}

type Reply = Response<Full<Bytes>>;

impl Served {
    async fn handle(&self, req: Request<Incoming>) -> Reply {
        let method = req.method().to_string();
        let path = req.uri().path().to_string();
        let query = req.uri().query().map(str::to_string);
        let authorization = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let content_length = req
            .headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let reply = if (self.authorize)(authorization.as_deref()) {
            self.cgi(req).await
        } else {
            // GitHub hides private repositories from anonymous callers behind a Basic challenge.
            Response::builder()
                .status(401)
                .header("www-authenticate", "Basic realm=\"GitHub\"")
                .body(Full::new(Bytes::from_static(b"Authentication required\n")))
                .unwrap()
        };
        self.requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(GitRequest {
                method,
                path,
                query,
                authorization,
                content_length,
                status: reply.status().as_u16(),
            });
        reply
    }

    /// Runs `git http-backend` (CGI, RFC 3875) for one request.
    async fn cgi(&self, req: Request<Incoming>) -> Reply {
        let (parts, body) = req.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        let header = |name: &str| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        let mut command = tokio::process::Command::new("git");
        command
            .arg("http-backend")
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("HOME", &self.project_root)
            .env("GIT_PROJECT_ROOT", &self.project_root)
            .env("GIT_HTTP_EXPORT_ALL", "1")
            .env("GATEWAY_INTERFACE", "CGI/1.1")
            .env("SERVER_PROTOCOL", "HTTP/1.1")
            .env("REQUEST_METHOD", parts.method.as_str())
            .env("PATH_INFO", parts.uri.path())
            .env("QUERY_STRING", parts.uri.query().unwrap_or(""))
            .env("CONTENT_TYPE", header("content-type"))
            .env("CONTENT_LENGTH", body.len().to_string())
            .env("REMOTE_USER", "x-access-token")
            .env("REMOTE_ADDR", "127.0.0.1")
            .env("HTTP_CONTENT_ENCODING", header("content-encoding"))
            .env("HTTP_GIT_PROTOCOL", header("git-protocol"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().unwrap();
        let mut stdin = child.stdin.take().unwrap();
        // Written from its own task: the backend may answer before it has read everything.
        let writer = tokio::spawn(async move {
            let _ = stdin.write_all(&body).await;
            let _ = stdin.shutdown().await;
        });
        let output = child.wait_with_output().await.unwrap();
        let _ = writer.await;
        if !output.status.success() && output.stdout.is_empty() {
            return Response::builder()
                .status(500)
                .body(Full::new(Bytes::from(output.stderr)))
                .unwrap();
        }
        parse_cgi(&output.stdout)
    }
}

/// Splits CGI output into a response: header lines up to the blank line (`Status:` sets the
/// status), then the body.
fn parse_cgi(out: &[u8]) -> Reply {
    let (head, body) = match find(out, b"\r\n\r\n") {
        Some(i) => (&out[..i], &out[i + 4..]),
        None => match find(out, b"\n\n") {
            Some(i) => (&out[..i], &out[i + 2..]),
            None => (out, &[][..]),
        },
    };
    let mut response = Response::builder();
    let mut status = StatusCode::OK;
    for line in String::from_utf8_lossy(head).lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value.split_whitespace().next().unwrap_or("200");
            status = StatusCode::from_bytes(code.as_bytes()).unwrap();
        } else {
            response = response.header(name.trim(), value);
        }
    }
    response
        .status(status)
        .body(Full::new(Bytes::copy_from_slice(body)))
        .unwrap()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
