//! `FakeGitHub`: an HTTPS GitHub API double on 127.0.0.1:0 with its own test CA. It verifies App
//! JWTs (RS256 with the app's public key, `iss`, `exp`, backdated `iat`) and installation tokens
//! like GitHub does, records every request, and has knobs for failures. All routes are in
//! [`route`], one `match`, so adding an endpoint is one arm.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// One installation as FakeGitHub knows it.
#[derive(Debug, Clone)]
pub struct FakeInstallation {
    pub id: u64,
    pub app_id: u64,
    pub account: String,
    pub suspended: bool,
    /// `Some` → `repository_selection: selected` with these repositories.
    pub selected_repos: Option<Vec<String>>,
}

/// Who a request authenticated as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    /// A valid App JWT of this app id.
    Jwt(u64),
    /// A valid installation token of this installation id.
    Installation(u64),
    Pat,
    None,
    Invalid,
}

impl Auth {
    /// The form of the catch-all's `auth` field: `app:<installation>`, `pat`, `none`, `invalid`.
    pub fn as_string(&self) -> String {
        match self {
            Auth::Jwt(app) => format!("jwt:{app}"),
            Auth::Installation(id) => format!("app:{id}"),
            Auth::Pat => "pat".to_string(),
            Auth::None => "none".to_string(),
            Auth::Invalid => "invalid".to_string(),
        }
    }
}

/// One request FakeGitHub received.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    pub auth: Auth,
}

struct IssuedToken {
    installation: u64,
    expires: SystemTime,
}

struct State {
    base: String,
    apps: HashMap<u64, DecodingKey>,
    installations: Vec<FakeInstallation>,
    pats: HashSet<String>,
    tokens: HashMap<String, IssuedToken>,
    token_lifetime: Duration,
    page_size: usize,
    /// (status, how many more mints fail).
    fail_mints: Option<(u16, usize)>,
    mint_delay: Duration,
    requests: Vec<RecordedRequest>,
    last_authorization: Option<String>,
    /// `/rate_limit` headers per PAT (check).
    pat_details: HashMap<String, PatDetails>,
    /// e2e: path prefix stripped before routing (GHE's `/api/v3`), scripted answers, and
    /// whether the catch-all answers `401` to a credential it does not know.
    prefix: String,
    scripted: HashMap<String, Scripted>,
    strict_auth: bool,
    read_bodies: bool,
    /// Every App JWT that authenticated (the canary searches for them).
    jwts: Vec<String>,
}

/// A scripted answer (e2e tests), keyed by `"METHOD /path"` or `"METHOD /path?query"` (the
/// exact query wins over the bare path).
#[derive(Debug, Clone)]
pub struct Scripted {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// Waits this long before answering (response-timeout tests).
    pub delay: Duration,
    /// Answers `401 Bad credentials` unless an installation token or a PAT authenticated.
    pub require_token: bool,
}

impl Scripted {
    /// `200` with this JSON body, GitHub's request-id and rate-limit headers, token required.
    pub fn json(body: Value) -> Self {
        Scripted {
            status: 200,
            headers: Vec::new(),
            body: Bytes::from(body.to_string()),
            delay: Duration::ZERO,
            require_token: true,
        }
    }

    pub fn status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

/// What `/rate_limit` says about one PAT, as GitHub's headers do (`check` reads them).
#[derive(Debug, Clone, Default)]
pub struct PatDetails {
    /// `X-OAuth-Scopes` (classic PATs): `"repo, read:org"`. `None` sends no header (fine-grained).
    pub scopes: Option<String>,
    /// `GitHub-Authentication-Token-Expiration`: `"2026-12-01 10:00:00 UTC"`. `None`: no expiry.
    pub expiration: Option<String>,
    /// `resources.core.remaining` and `X-RateLimit-Remaining`; default 4999.
    pub remaining: Option<u64>,
    /// Answer like GitHub Enterprise Server with rate limiting off: 404 "Rate limiting is not
    /// enabled." (still with the PAT's headers).
    pub rate_limiting_disabled: bool,
}

/// Configures a [`FakeGitHub`] before it starts.
pub struct FakeGitHubBuilder {
    apps: Vec<(u64, String)>,
    installations: Vec<FakeInstallation>,
    pats: Vec<String>,
    token_lifetime: Duration,
    page_size: usize,
    pat_details: Vec<(String, PatDetails)>,
    prefix: String,
}

impl FakeGitHubBuilder {
    /// Serves under a path prefix, as GitHub Enterprise Server does (`/api/v3`): the
    /// `api_url()` includes it and requests have it stripped before routing.
    pub fn api_prefix(mut self, prefix: &str) -> Self {
        self.prefix = prefix.trim_end_matches('/').to_string();
        self
    }

    /// An App FakeGitHub knows, with its public key (PEM): its JWTs verify.
    pub fn app(mut self, app_id: u64, public_pem: &str) -> Self {
        self.apps.push((app_id, public_pem.to_string()));
        self
    }

    /// An installation of `app_id` on `account` (all repositories, not suspended).
    pub fn installation(mut self, app_id: u64, installation_id: u64, account: &str) -> Self {
        self.installations.push(FakeInstallation {
            id: installation_id,
            app_id,
            account: account.to_string(),
            suspended: false,
            selected_repos: None,
        });
        self
    }

    pub fn suspended(mut self, installation_id: u64) -> Self {
        for i in self
            .installations
            .iter_mut()
            .filter(|i| i.id == installation_id)
        {
            i.suspended = true;
        }
        self
    }

    /// Makes the installation `repository_selection: selected` with these repositories.
    pub fn selected_repos(mut self, installation_id: u64, repos: &[&str]) -> Self {
        for i in self
            .installations
            .iter_mut()
            .filter(|i| i.id == installation_id)
        {
            i.selected_repos = Some(repos.iter().map(|r| r.to_string()).collect());
        }
        self
    }

    /// A PAT FakeGitHub accepts.
    pub fn pat(mut self, pat: &str) -> Self {
        self.pats.push(pat.to_string());
        self
    }

    /// A PAT FakeGitHub accepts, whose `/rate_limit` answer carries these details (check).
    pub fn pat_with(mut self, pat: &str, details: PatDetails) -> Self {
        self.pats.push(pat.to_string());
        self.pat_details.push((pat.to_string(), details));
        self
    }

    /// Lifetime of minted installation tokens (GitHub: 1 hour).
    pub fn token_lifetime(mut self, lifetime: Duration) -> Self {
        self.token_lifetime = lifetime;
        self
    }

    /// Page size cap for list endpoints (GitHub: `per_page` up to 100); small values test pagination.
    pub fn page_size(mut self, size: usize) -> Self {
        self.page_size = size.max(1);
        self
    }

    pub async fn start(self) -> FakeGitHub {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let base = format!("https://localhost:{}{}", addr.port(), self.prefix);
        let (acceptor, ca_pem) = test_tls("FakeGitHub test CA");
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("fake-github-ca.pem");
        std::fs::write(&ca_file, ca_pem).unwrap();
        let apps = self
            .apps
            .iter()
            .map(|(id, pem)| (*id, DecodingKey::from_rsa_pem(pem.as_bytes()).unwrap()))
            .collect();
        let state = Arc::new(Mutex::new(State {
            base: base.clone(),
            apps,
            installations: self.installations,
            pats: self.pats.into_iter().collect(),
            tokens: HashMap::new(),
            token_lifetime: self.token_lifetime,
            page_size: self.page_size,
            fail_mints: None,
            mint_delay: Duration::ZERO,
            requests: Vec::new(),
            last_authorization: None,
            pat_details: self.pat_details.into_iter().collect(),
            prefix: self.prefix,
            scripted: HashMap::new(),
            strict_auth: false,
            read_bodies: false,
            jwts: Vec::new(),
        }));
        let task = tokio::spawn(serve(listener, acceptor, state.clone()));
        FakeGitHub {
            state,
            addr,
            base,
            ca_file,
            _dir: dir,
            task,
        }
    }
}

/// A running fake. Dropping it stops the server.
pub struct FakeGitHub {
    state: Arc<Mutex<State>>,
    addr: SocketAddr,
    base: String,
    ca_file: PathBuf,
    _dir: tempfile::TempDir,
    task: JoinHandle<()>,
}

impl Drop for FakeGitHub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeGitHub {
    pub fn builder() -> FakeGitHubBuilder {
        FakeGitHubBuilder {
            apps: Vec::new(),
            installations: Vec::new(),
            pats: Vec::new(),
            token_lifetime: Duration::from_secs(3600),
            page_size: 100,
            pat_details: Vec::new(),
            prefix: String::new(),
        }
    }

    /// `https://localhost:PORT`: the `apiBaseUrl`.
    pub fn api_url(&self) -> &str {
        &self.base
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The test CA's PEM, for `proxy.upstream.caFile`.
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    // ---- runtime knobs ----

    /// The next `count` mints answer `status` (with a GitHub-shaped `message`).
    pub fn fail_mints(&self, status: u16, count: usize) {
        self.state().fail_mints = Some((status, count));
    }

    /// Every mint takes this long before answering (to widen race windows).
    pub fn set_mint_delay(&self, delay: Duration) {
        self.state().mint_delay = delay;
    }

    /// The token no longer authenticates (GitHub answers 401 to it).
    pub fn revoke_token(&self, token: &str) {
        self.state().tokens.remove(token);
    }

    pub fn set_suspended(&self, installation_id: u64, suspended: bool) {
        for i in self
            .state()
            .installations
            .iter_mut()
            .filter(|i| i.id == installation_id)
        {
            i.suspended = suspended;
        }
    }

    pub fn set_selected_repos(&self, installation_id: u64, repos: &[&str]) {
        for i in self
            .state()
            .installations
            .iter_mut()
            .filter(|i| i.id == installation_id)
        {
            i.selected_repos = Some(repos.iter().map(|r| r.to_string()).collect());
        }
    }

    pub fn add_installation(&self, app_id: u64, installation_id: u64, account: &str) {
        self.state().installations.push(FakeInstallation {
            id: installation_id,
            app_id,
            account: account.to_string(),
            suspended: false,
            selected_repos: None,
        });
    }

    /// Uninstalls: mints for it answer 404, lookups no longer list it.
    pub fn remove_installation(&self, installation_id: u64) {
        self.state()
            .installations
            .retain(|i| i.id != installation_id);
    }

    /// The PAT no longer authenticates: `/rate_limit` answers 401 `Bad credentials`.
    pub fn revoke_pat(&self, pat: &str) {
        self.state().pats.remove(pat);
    }

    /// e2e: answers `"METHOD /path"` (or `"METHOD /path?query"`) with `answer`.
    pub fn script(&self, key: &str, answer: Scripted) {
        self.state().scripted.insert(key.to_string(), answer);
    }

    /// e2e: every request's body is read to its end before the answer (as GitHub reads an
    /// upload), so a body that fails on the way fails the exchange.
    pub fn set_read_bodies(&self, read: bool) {
        self.state().read_bodies = read;
    }

    /// e2e: the catch-all answers `401 Bad credentials` to a credential it does not know (a
    /// revoked token), as GitHub does.
    pub fn set_strict_auth(&self, strict: bool) {
        self.state().strict_auth = strict;
    }

    // ---- what happened ----

    /// Every App JWT that authenticated, in order (e2e canary).
    pub fn jwts(&self) -> Vec<String> {
        self.state().jwts.clone()
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state().requests.clone()
    }

    /// How each request to exactly `path` authenticated, in order.
    pub fn auths_for(&self, path: &str) -> Vec<Auth> {
        self.requests()
            .into_iter()
            .filter(|r| r.path == path)
            .map(|r| r.auth)
            .collect()
    }

    /// Requests whose path (or `"METHOD path"`, when the pattern has a space) matches `pattern`,
    /// where `*` matches any run of characters: `calls("/app/installations/*/access_tokens")`.
    pub fn calls(&self, pattern: &str) -> usize {
        self.state()
            .requests
            .iter()
            .filter(|r| {
                if pattern.contains(' ') {
                    glob(pattern, &format!("{} {}", r.method, r.path))
                } else {
                    glob(pattern, &r.path)
                }
            })
            .count()
    }

    /// `POST /app/installations/{id}/access_tokens` requests, failed ones included.
    pub fn mint_count(&self) -> usize {
        self.calls("POST /app/installations/*/access_tokens")
    }

    /// Installation lookups: the list and the per-owner endpoints.
    pub fn lookup_count(&self) -> usize {
        self.calls("GET /app/installations")
            + self.calls("GET /orgs/*/installation")
            + self.calls("GET /users/*/installation")
            + self.calls("GET /repos/*/*/installation")
    }

    /// The `Authorization` header of the last request (the catch-all's view of what arrived).
    pub fn last_authorization(&self) -> Option<String> {
        self.state().last_authorization.clone()
    }

    /// Tokens minted so far (newest last is not guaranteed).
    pub fn issued_tokens(&self) -> Vec<String> {
        self.state().tokens.keys().cloned().collect()
    }
}

fn glob(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((head, rest)) => {
            let Some(text) = text.strip_prefix(head) else {
                return false;
            };
            (0..=text.len()).any(|i| text.is_char_boundary(i) && glob(rest, &text[i..]))
        }
    }
}

/// A test CA (ECDSA P-256) named `ca_name` and a leaf for `localhost` and `127.0.0.1`: the
/// acceptor and the CA's PEM (for `proxy.upstream.caFile`).
pub fn test_tls(ca_name: &str) -> (tokio_rustls::TlsAcceptor, String) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, ca_name);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf_params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone()], key)
        .unwrap();
    (
        tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        ca_cert.pem(),
    )
}

async fn serve(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    state: Arc<Mutex<State>>,
) {
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
                async move { Ok::<_, Infallible>(handle(state, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service)
                .await;
        });
    }
}

type Reply = Response<Full<Bytes>>;

fn reply(status: u16, body: Value) -> Reply {
    Response::builder()
        .status(status)
        .header("content-type", "application/json; charset=utf-8")
        .header("x-github-request-id", "FAKE:0001")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

fn message(status: u16, text: &str) -> Reply {
    reply(
        status,
        json!({"message": text, "documentation_url": "https://docs.github.com/rest"}),
    )
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn authenticate(state: &State, header: Option<&str>) -> Auth {
    let Some(value) = header else {
        return Auth::None;
    };
    let secret = if let Some(rest) = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("token "))
    {
        rest.to_string()
    } else if let Some(b64) = value.strip_prefix("Basic ") {
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(b64) else {
            return Auth::Invalid;
        };
        match String::from_utf8(decoded)
            .ok()
            .and_then(|s| s.strip_prefix("x-access-token:").map(str::to_string))
        {
            Some(token) => token,
            None => return Auth::Invalid,
        }
    } else {
        return Auth::Invalid;
    };
    if secret.matches('.').count() == 2 {
        return verify_jwt(state, &secret).map_or(Auth::Invalid, Auth::Jwt);
    }
    if let Some(issued) = state.tokens.get(&secret) {
        return if issued.expires > SystemTime::now() {
            Auth::Installation(issued.installation)
        } else {
            Auth::Invalid
        };
    }
    if state.pats.contains(&secret) {
        return Auth::Pat;
    }
    Auth::Invalid
}

/// Verifies an App JWT as GitHub does: RS256 signed by a known app's key, `iss` that app,
/// `exp` in the future and at most 10 minutes after `iat`, `iat` not in the future.
fn verify_jwt(state: &State, jwt: &str) -> Option<u64> {
    let payload = jwt.split('.').nth(1)?;
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .ok()?,
    )
    .ok()?;
    // GitHub accepts `iss` as a number or a string.
    let app_id = match &claims["iss"] {
        Value::Number(n) => n.as_u64()?,
        Value::String(s) => s.parse().ok()?,
        _ => return None,
    };
    let key = state.apps.get(&app_id)?;
    let mut validation = Validation::new(Algorithm::RS256);
    validation.leeway = 0;
    // `iss` is checked above (jsonwebtoken only takes string issuers; GitHub also takes numbers).
    validation.set_required_spec_claims(&["exp", "iat"]);
    let verified = jsonwebtoken::decode::<Value>(jwt, key, &validation).ok()?;
    let iat = verified.claims["iat"].as_u64()?;
    let exp = verified.claims["exp"].as_u64()?;
    let now = now_unix();
    // The proxy backdates `iat` by 60 s; demand at least 30 s so a regression shows.
    if iat + 30 > now || exp <= now || exp - iat > 600 {
        return None;
    }
    Some(app_id)
}

fn installation_json(i: &FakeInstallation) -> Value {
    json!({
        "id": i.id,
        "app_id": i.app_id,
        "account": {"login": i.account, "type": "Organization"},
        "repository_selection": if i.selected_repos.is_some() { "selected" } else { "all" },
        "suspended_at": if i.suspended { json!("2026-01-01T00:00:00Z") } else { Value::Null },
    })
}

fn query_param(query: Option<&str>, name: &str) -> Option<usize> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .and_then(|(_, v)| v.parse().ok())
}

/// One page of `items`, with GitHub's `Link` header when more follow.
fn paginate(
    state: &State,
    path: &str,
    query: Option<&str>,
    items: Vec<Value>,
    wrap: impl Fn(Vec<Value>, usize) -> Value,
) -> Reply {
    let per_page = query_param(query, "per_page")
        .unwrap_or(30)
        .clamp(1, 100)
        .min(state.page_size);
    let page = query_param(query, "page").unwrap_or(1).max(1);
    let total = items.len();
    let pages = total.div_ceil(per_page).max(1);
    let slice: Vec<Value> = items
        .into_iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .collect();
    let mut response = reply(200, wrap(slice, total));
    if page < pages {
        let link = format!(
            "<{base}{path}?per_page={per_page}&page={next}>; rel=\"next\", <{base}{path}?per_page={per_page}&page={pages}>; rel=\"last\"",
            base = state.base,
            next = page + 1,
        );
        response.headers_mut().insert("link", link.parse().unwrap());
    }
    response
}

static TOKEN_COUNTER: AtomicU64 = AtomicU64::new(0);

fn new_token() -> String {
    let n = TOKEN_COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let digest = Sha256::digest(format!("{n}:{nanos}:{:p}", &n));
    let hex: String = digest.iter().take(18).map(|b| format!("{b:02x}")).collect();
    format!("ghs_{hex}")
}

async fn handle(state: Arc<Mutex<State>>, req: Request<Incoming>) -> Reply {
    let read_bodies = state.lock().unwrap_or_else(|p| p.into_inner()).read_bodies;
    let (req, body) = req.into_parts();
    if read_bodies {
        // As GitHub does before answering an upload: a body that fails fails the exchange.
        if http_body_util::BodyExt::collect(body).await.is_err() {
            return message(400, "Problems parsing the request body");
        }
    }
    let method = req.method.clone();
    let mut path = req.uri.path().to_string();
    {
        let s = state.lock().unwrap_or_else(|p| p.into_inner());
        if !s.prefix.is_empty()
            && let Some(rest) = path.strip_prefix(&s.prefix)
            && rest.starts_with('/')
        {
            path = rest.to_string();
        }
    }
    let query = req.uri.query().map(str::to_string);
    let authorization = req
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let presented = authorization.clone();
    let (auth, delay) = {
        let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
        let auth = authenticate(&s, authorization.as_deref());
        s.requests.push(RecordedRequest {
            method: method.clone(),
            path: path.clone(),
            query: query.clone(),
            auth: auth.clone(),
        });
        if let (Auth::Jwt(_), Some(value)) = (&auth, &authorization)
            && let Some(jwt) = value.strip_prefix("Bearer ")
        {
            s.jwts.push(jwt.to_string());
        }
        s.last_authorization = authorization;
        (auth, s.mint_delay)
    };
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let is_mint = method == Method::POST
        && matches!(
            segments.as_slice(),
            ["app", "installations", _, "access_tokens"]
        );
    if is_mint && !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if let Some(reply) = scripted(&state, &method, &path, query.as_deref(), &auth).await {
        return reply;
    }
    let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
    if s.strict_auth && auth == Auth::Invalid {
        return message(401, "Bad credentials");
    }
    if let Some(reply) = pat_rate_limit(&s, &method, &path, &auth, presented.as_deref()) {
        return reply;
    }
    route(&mut s, &method, &segments, &path, query.as_deref(), &auth)
}

/// The scripted answer for this request, if any (e2e).
async fn scripted(
    state: &Mutex<State>,
    method: &Method,
    path: &str,
    query: Option<&str>,
    auth: &Auth,
) -> Option<Reply> {
    let answer = {
        let s = state.lock().unwrap_or_else(|p| p.into_inner());
        let bare = format!("{method} {path}");
        query
            .and_then(|q| s.scripted.get(&format!("{bare}?{q}")))
            .or_else(|| s.scripted.get(&bare))
            .cloned()?
    };
    if !answer.delay.is_zero() {
        tokio::time::sleep(answer.delay).await;
    }
    if answer.require_token && !matches!(auth, Auth::Installation(_) | Auth::Pat) {
        return Some(message(401, "Bad credentials"));
    }
    let mut response = Response::builder()
        .status(answer.status)
        .header("content-type", "application/json; charset=utf-8")
        .header("x-github-request-id", "FAKE:0001")
        .body(Full::new(answer.body))
        .unwrap();
    for (name, value) in &answer.headers {
        response.headers_mut().insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    Some(response)
}

/// `GET /rate_limit` for a PAT with [`PatDetails`]: GitHub's headers about that PAT. `route` only
/// knows *that* a PAT authenticated, not which one, so this answers before it.
fn pat_rate_limit(
    s: &State,
    method: &Method,
    path: &str,
    auth: &Auth,
    authorization: Option<&str>,
) -> Option<Reply> {
    if *method != Method::GET || path != "/rate_limit" || *auth != Auth::Pat {
        return None;
    }
    let pat = authorization?
        .strip_prefix("Bearer ")
        .or_else(|| authorization?.strip_prefix("token "))?;
    let details = s.pat_details.get(pat)?;
    let remaining = details.remaining.unwrap_or(4999);
    let mut response = if details.rate_limiting_disabled {
        message(404, "Rate limiting is not enabled.")
    } else {
        let mut response = reply(
            200,
            json!({"resources": {"core": {"limit": 5000, "remaining": remaining, "used": 5000 - remaining.min(5000), "reset": now_unix() + 3600}}}),
        );
        response.headers_mut().insert(
            "x-ratelimit-remaining",
            remaining.to_string().parse().unwrap(),
        );
        response
    };
    let headers = response.headers_mut();
    if let Some(scopes) = &details.scopes {
        headers.insert("x-oauth-scopes", scopes.parse().unwrap());
    }
    if let Some(expiration) = &details.expiration {
        headers.insert(
            "github-authentication-token-expiration",
            expiration.parse().unwrap(),
        );
    }
    Some(response)
}

/// Every endpoint FakeGitHub knows, in one place.
fn route(
    s: &mut State,
    method: &Method,
    segments: &[&str],
    path: &str,
    query: Option<&str>,
    auth: &Auth,
) -> Reply {
    let jwt_app = match auth {
        Auth::Jwt(app) => Some(*app),
        _ => None,
    };
    let needs_jwt = || message(401, "A JSON web token could not be decoded");
    match (method.clone(), segments) {
        (Method::GET, ["app"]) => match jwt_app {
            Some(app) => reply(
                200,
                json!({"id": app, "slug": format!("app-{app}"), "name": format!("App {app}")}),
            ),
            None => needs_jwt(),
        },
        (Method::GET, ["app", "installations"]) => match jwt_app {
            Some(app) => {
                let items = s
                    .installations
                    .iter()
                    .filter(|i| i.app_id == app)
                    .map(installation_json)
                    .collect();
                paginate(s, path, query, items, |page, _| Value::Array(page))
            }
            None => needs_jwt(),
        },
        (Method::GET, ["orgs" | "users", owner, "installation"])
        | (Method::GET, ["repos", owner, _, "installation"]) => match jwt_app {
            Some(app) => match s
                .installations
                .iter()
                .find(|i| i.app_id == app && i.account.eq_ignore_ascii_case(owner))
            {
                Some(i) => reply(200, installation_json(i)),
                None => message(404, "Not Found"),
            },
            None => needs_jwt(),
        },
        (Method::POST, ["app", "installations", id, "access_tokens"]) => {
            let Some(app) = jwt_app else {
                return needs_jwt();
            };
            if let Some((status, left)) = s.fail_mints {
                s.fail_mints = if left > 1 {
                    Some((status, left - 1))
                } else {
                    None
                };
                return message(status, &format!("Fake failure {status}"));
            }
            let Some(inst) = id
                .parse::<u64>()
                .ok()
                .and_then(|id| {
                    s.installations
                        .iter()
                        .find(|i| i.id == id && i.app_id == app)
                })
                .cloned()
            else {
                return message(404, "Not Found");
            };
            if inst.suspended {
                return message(403, "This installation has been suspended");
            }
            let token = new_token();
            let expires = SystemTime::now() + s.token_lifetime;
            let expires_at = time::OffsetDateTime::from(expires)
                .replace_nanosecond(0)
                .unwrap()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap();
            s.tokens.insert(
                token.clone(),
                IssuedToken {
                    installation: inst.id,
                    expires,
                },
            );
            reply(
                201,
                json!({
                    "token": token,
                    "expires_at": expires_at,
                    "permissions": {"contents": "read", "metadata": "read"},
                    "repository_selection": if inst.selected_repos.is_some() { "selected" } else { "all" },
                }),
            )
        }
        (Method::GET, ["installation", "repositories"]) => {
            let Auth::Installation(id) = auth else {
                return message(401, "Bad credentials");
            };
            let Some(inst) = s.installations.iter().find(|i| i.id == *id).cloned() else {
                return message(401, "Bad credentials");
            };
            let items = inst
                .selected_repos
                .clone()
                .unwrap_or_default()
                .into_iter()
                .map(|name| {
                    json!({
                        "name": name,
                        "full_name": format!("{}/{}", inst.account, name),
                        "owner": {"login": inst.account},
                    })
                })
                .collect();
            paginate(
                s,
                path,
                query,
                items,
                |page, total| json!({"total_count": total, "repositories": page}),
            )
        }
        (Method::GET, ["rate_limit"]) => match auth {
            Auth::Invalid | Auth::Jwt(_) => message(401, "Bad credentials"),
            _ => {
                let mut response = reply(
                    200,
                    json!({"resources": {"core": {"limit": 5000, "remaining": 4999, "used": 1, "reset": now_unix() + 3600}}}),
                );
                response
                    .headers_mut()
                    .insert("x-ratelimit-remaining", "4999".parse().unwrap());
                response
            }
        },
        _ => {
            let shown = match auth {
                Auth::Jwt(_) => "invalid".to_string(),
                other => other.as_string(),
            };
            reply(200, json!({"path": path, "auth": shown}))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::glob;

    #[test]
    fn glob_matches_stars() {
        assert!(glob(
            "/app/installations/*/access_tokens",
            "/app/installations/12/access_tokens"
        ));
        assert!(!glob("/app/installations", "/app/installations/12"));
        assert!(glob("POST /app/*", "POST /app/x"));
    }
}
