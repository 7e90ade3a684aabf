//! Configuration: a Backstage-shaped `app-config.yaml` (only `integrations.github` and `proxy` are
//! read) turned into a validated, immutable [`Config`]. SPEC §3.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::credential::CredentialKind;

/// Everything the proxy needs, validated. Built once at startup, shared behind an `Arc`.
#[derive(Debug)]
pub struct Config {
    /// In config order; `index` of each equals its position (used in messages:
    /// `integrations.github[0].token`).
    pub integrations: Vec<Arc<Integration>>,
    pub proxy: ProxyConfig,
    /// One line per unset `${VAR}` / `$env` (naming the variable and the key), for startup to log.
    pub warnings: Vec<String>,
}

/// One entry of `integrations.github[]`.
#[derive(Debug)]
pub struct Integration {
    pub index: usize,
    /// Web host, lowercase, optional `:port` (`github.com`, `ghe.acme.com`).
    pub host: String,
    pub api: Origin,
    pub raw: Option<Origin>,
    /// `https://{host}`.
    pub web: Origin,
    /// The GraphQL endpoint: `{api}/graphql`, or `…/api/graphql` when `apiBaseUrl` ends in `/api/v3`.
    pub graphql: Origin,
    /// The PAT, trimmed; `None` when absent or blank.
    pub token: Option<SecretString>,
    pub apps: Vec<AppConfig>,
}

/// Which of an integration's endpoints a request goes to (§4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OriginKind {
    Api,
    Raw,
    Web,
    Graphql,
}

impl OriginKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OriginKind::Api => "api",
            OriginKind::Raw => "raw",
            OriginKind::Web => "web",
            OriginKind::Graphql => "graphql",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// A base URL split for matching and forwarding: `https://ghe.acme.com/api/v3` is scheme `https`,
/// authority `ghe.acme.com`, path prefix `/api/v3`. For the GraphQL origin, `path_prefix` is the
/// whole endpoint path (`/graphql`, `/api/graphql`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub kind: OriginKind,
    pub scheme: Scheme,
    /// Lowercase `host[:port]`, the port only when given explicitly.
    pub authority: String,
    /// Empty or starting with `/`, never ending with `/`.
    pub path_prefix: String,
}

impl Origin {
    /// `scheme://authority/prefix`.
    pub fn base_url(&self) -> String {
        format!(
            "{}://{}{}",
            self.scheme.as_str(),
            self.authority,
            self.path_prefix
        )
    }
}

/// One entry of `apps[]`.
#[derive(Debug)]
pub struct AppConfig {
    pub app_id: u64,
    /// PEM, with literal `\n` already turned into newlines. Parsed (and checked) at load time.
    pub private_key: SecretString,
    pub client_id: Option<String>,
    pub client_secret: Option<SecretString>,
    /// Lowercased. `None` means every owner.
    pub allowed_installation_owners: Option<Vec<String>>,
    pub public_access: bool,
}

impl AppConfig {
    /// `allowedInstallationOwners` admits `owner` (case-insensitively; no list admits all).
    pub fn allows_owner(&self, owner: &str) -> bool {
        match &self.allowed_installation_owners {
            None => true,
            Some(list) => list.iter().any(|o| o.eq_ignore_ascii_case(owner)),
        }
    }
}

/// The `proxy:` section, defaults applied.
#[derive(Debug)]
pub struct ProxyConfig {
    pub listen: SocketAddr,
    /// Without a trailing `/`.
    pub public_url: Option<String>,
    /// Index into `Config::integrations`.
    pub default_host: usize,
    pub default_owner: Option<String>,
    pub allow_anonymous: bool,
    pub allow_unauthenticated_clients: bool,
    pub clients: Vec<ClientConfig>,
    pub admin_listen: Option<SocketAddr>,
    pub audit: AuditSink,
    pub upstream: UpstreamConfig,
    pub refresh_before_expiry: Duration,
    pub shutdown_grace: Duration,
    pub max_connections: usize,
    pub header_read_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditSink {
    Stdout,
    File(PathBuf),
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// Resolved relative to the config file that named it.
    pub ca_file: Option<PathBuf>,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
}

/// One entry of `proxy.clients[]` (§6). `Debug` leaves the key hash out: it is what a key is
/// checked against, so it would let whoever reads a log try guesses offline.
pub struct ClientConfig {
    pub name: String,
    /// SHA-256 of the key: from `keySha256`, or computed from `key` at load time so the plain key
    /// is not kept. Requests are matched by hashing the presented key and comparing in constant time.
    pub key_sha256: [u8; 32],
    /// Glob patterns on `owner` or `owner/repo`; default `["*"]`.
    pub allow: Vec<String>,
    /// `None` means every method.
    pub methods: Option<Vec<http::Method>>,
    /// Default `[app, pat, anonymous]`.
    pub credentials: Vec<CredentialKind>,
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("name", &self.name)
            .field("allow", &self.allow)
            .field("methods", &self.methods)
            .field("credentials", &self.credentials)
            .finish_non_exhaustive()
    }
}

/// A configuration problem. Messages name the key path and never contain a secret value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: invalid YAML: {message}")]
    Yaml { path: String, message: String },
    /// `key` is the key path (`integrations.github[0].apps[1].privateKey`).
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

/// Where `${VAR}` and `$env` values come from. Tests pass a map; the binary passes the process env.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

impl Config {
    /// Parses one YAML document with no environment and relative `$file` paths resolved from the
    /// current directory. For tests.
    pub fn from_yaml(yaml: &str) -> Result<Config, ConfigError> {
        Self::from_yaml_with(yaml, Path::new("."), &|_| None)
    }

    /// Parses one YAML document; `base_dir` is where relative `$file` and `caFile` paths start.
    pub fn from_yaml_with(
        yaml: &str,
        base_dir: &Path,
        env: EnvLookup<'_>,
    ) -> Result<Config, ConfigError> {
        let mut notes = Notes::default();
        let tree = parse_yaml(yaml, "config")?;
        let tree = prepare(tree, base_dir, env, &mut notes)?;
        build(&tree, notes)
    }

    /// Reads and deep-merges the files (later ones win), then validates.
    pub fn load(paths: &[PathBuf], env: EnvLookup<'_>) -> Result<Config, ConfigError> {
        let mut notes = Notes::default();
        let mut merged = Value::Object(Map::new());
        for path in paths {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?;
            let tree = parse_yaml(&text, &path.display().to_string())?;
            // Each file is substituted and has its relative paths resolved on its own, before the
            // merge, because `$file` and `caFile` are relative to the file that wrote them.
            let base_dir = path.parent().unwrap_or(Path::new(""));
            let tree = prepare(tree, base_dir, env, &mut notes)?;
            deep_merge(&mut merged, tree);
        }
        build(&merged, notes)
    }

    /// The integration requests without a host go to (`proxy.defaultHost`).
    pub fn default_integration(&self) -> &Arc<Integration> {
        &self.integrations[self.proxy.default_host]
    }
}

// ---------------------------------------------------------------------------------------------
// Stage 1: YAML text -> generic tree, with `${VAR}` / `$env` / `$file` substituted.
// ---------------------------------------------------------------------------------------------

/// What substitution learned on the way: warnings to log, and which keys an unset variable removed
/// (a client `key` removed that way is an error, not a warning).
#[derive(Default)]
struct Notes {
    warnings: Vec<String>,
    /// `(key path, variable)` for every key made absent by an unset variable.
    unset: Vec<(String, String)>,
}

const GITHUB_HOST: &str = "github.com";
const GITHUB_API_BASE_URL: &str = "https://api.github.com";
const GITHUB_RAW_BASE_URL: &str = "https://raw.githubusercontent.com";

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// Parses YAML into a generic tree. The parser's own rendering of an error quotes the document
/// (which may hold a token), so only its position is passed on.
fn parse_yaml(yaml: &str, source: &str) -> Result<Value, ConfigError> {
    if yaml.trim().is_empty() {
        return Ok(Value::Object(Map::new()));
    }
    serde_saphyr::from_str::<Value>(yaml).map_err(|e| {
        let what = match &e {
            serde_saphyr::Error::MultipleDocuments { .. } => {
                "more than one YAML document; use one document per file"
            }
            _ => "syntax error (check indentation, quoting and duplicate keys)",
        };
        let message = match e.location() {
            Some(loc) if loc.line() > 0 => {
                format!("{what} at line {}, column {}", loc.line(), loc.column())
            }
            _ => what.to_string(),
        };
        ConfigError::Yaml {
            path: source.to_string(),
            message,
        }
    })
}

/// Keeps only `integrations.github` and `proxy`, substitutes values in them, and resolves the
/// relative paths in `proxy` against `base_dir`. Other top-level keys are dropped untouched, so
/// an unset variable under `backend:` neither warns nor fails.
fn prepare(
    tree: Value,
    base_dir: &Path,
    env: EnvLookup<'_>,
    notes: &mut Notes,
) -> Result<Value, ConfigError> {
    let mut top = match tree {
        Value::Object(map) => map,
        Value::Null => Map::new(),
        other => {
            return Err(invalid(
                "config",
                format!(
                    "expected a mapping at the top level of the file, found {}",
                    kind(&other)
                ),
            ));
        }
    };
    let mut out = Map::new();
    if let Some(integrations) = top.remove("integrations") {
        match integrations {
            Value::Object(mut map) => {
                if let Some(github) = map.remove("github") {
                    let sub = Subst {
                        env,
                        base_dir,
                        notes,
                    };
                    if let Some(github) = sub.value(github, "integrations.github")? {
                        let mut m = Map::new();
                        m.insert("github".into(), github);
                        out.insert("integrations".into(), Value::Object(m));
                    }
                }
            }
            Value::Null => {}
            other => {
                return Err(invalid(
                    "integrations",
                    format!("expected a mapping, found {}", kind(&other)),
                ));
            }
        }
    }
    if let Some(proxy) = top.remove("proxy") {
        let sub = Subst {
            env,
            base_dir,
            notes,
        };
        if let Some(mut proxy) = sub.value(proxy, "proxy")? {
            resolve_path_at(&mut proxy, &["upstream", "caFile"], base_dir);
            resolve_path_at(&mut proxy, &["audit", "path"], base_dir);
            out.insert("proxy".into(), proxy);
        }
    }
    Ok(Value::Object(out))
}

/// Makes a relative path string at `keys` (under `proxy`) relative to `base_dir`. `-` is stdout.
fn resolve_path_at(proxy: &mut Value, keys: &[&str], base_dir: &Path) {
    let mut node = proxy;
    for key in keys {
        match node.get_mut(*key) {
            Some(next) => node = next,
            None => return,
        }
    }
    // Blank is left for validation to refuse with its own message, not turned into a directory.
    if let Value::String(s) = node
        && s.trim() != "-"
        && !s.trim().is_empty()
    {
        *s = resolve_relative(base_dir, s).to_string_lossy().into_owned();
    }
}

fn resolve_relative(base_dir: &Path, path: &str) -> PathBuf {
    let p = Path::new(path);
    // `.` and `` are the current directory already; joining would only add a `./` prefix.
    if p.is_absolute() || base_dir.as_os_str().is_empty() || base_dir == Path::new(".") {
        p.to_path_buf()
    } else {
        base_dir.join(p)
    }
}

/// One substitution pass over a subtree (§3.2).
struct Subst<'a, 'n> {
    env: EnvLookup<'a>,
    base_dir: &'a Path,
    notes: &'n mut Notes,
}

impl Subst<'_, '_> {
    /// The substituted value, or `None` when an unset variable makes it absent.
    fn value(mut self, v: Value, path: &str) -> Result<Option<Value>, ConfigError> {
        self.walk(v, path)
    }

    fn walk(&mut self, v: Value, path: &str) -> Result<Option<Value>, ConfigError> {
        match v {
            Value::String(s) => Ok(self.string(&s, path)?.map(Value::String)),
            Value::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.into_iter().enumerate() {
                    if let Some(item) = self.walk(item, &format!("{path}[{i}]"))? {
                        out.push(item);
                    }
                }
                Ok(Some(Value::Array(out)))
            }
            Value::Object(map) => {
                if map.contains_key("$env") || map.contains_key("$file") {
                    return self.reference(map, path).map(|s| s.map(Value::String));
                }
                let mut out = Map::new();
                for (k, item) in map {
                    let child = format!("{path}.{k}");
                    if let Some(item) = self.walk(item, &child)? {
                        out.insert(k, item);
                    }
                }
                Ok(Some(Value::Object(out)))
            }
            other => Ok(Some(other)),
        }
    }

    /// `{ $env: VAR }` or `{ $file: path }`.
    fn reference(
        &mut self,
        map: Map<String, Value>,
        path: &str,
    ) -> Result<Option<String>, ConfigError> {
        if map.len() != 1 {
            return Err(invalid(
                path,
                "a $env or $file mapping must have that one key and nothing else",
            ));
        }
        if let Some(var) = map.get("$env") {
            let Value::String(var) = var else {
                return Err(invalid(
                    format!("{path}.$env"),
                    "expected the name of an environment variable",
                ));
            };
            let var = var.trim();
            match (self.env)(var) {
                Some(value) => Ok(Some(value)),
                None => {
                    self.unset(var, path);
                    Ok(None)
                }
            }
        } else if let Some(file) = map.get("$file") {
            let Value::String(file) = file else {
                return Err(invalid(format!("{path}.$file"), "expected a file path"));
            };
            let full = resolve_relative(self.base_dir, file);
            std::fs::read_to_string(&full)
                .map(Some)
                .map_err(|e| invalid(path, format!("cannot read $file {}: {e}", full.display())))
        } else {
            Ok(None)
        }
    }

    fn unset(&mut self, var: &str, path: &str) {
        self.notes
            .warnings
            .push(format!("{var} is not set; {path} is treated as absent"));
        self.notes.unset.push((path.to_string(), var.to_string()));
    }

    /// Expands `${VAR}` and `$${`. Messages never quote the string: it may be a secret.
    fn string(&mut self, s: &str, path: &str) -> Result<Option<String>, ConfigError> {
        if !s.contains("${") {
            return Ok(Some(s.to_string()));
        }
        let mut out = String::with_capacity(s.len());
        let mut missing: Option<String> = None;
        let mut rest = s;
        while let Some(pos) = rest.find('$') {
            out.push_str(&rest[..pos]);
            let tail = &rest[pos..];
            if let Some(after) = tail.strip_prefix("$${") {
                out.push_str("${");
                rest = after;
            } else if let Some(after) = tail.strip_prefix("${") {
                let Some(end) = after.find('}') else {
                    return Err(invalid(
                        path,
                        "unterminated ${ (write ${NAME}, or $${ for a literal ${)",
                    ));
                };
                let name = after[..end].trim();
                if !is_var_name(name) {
                    return Err(invalid(
                        path,
                        "invalid variable reference: names are letters, digits and _ (write $${ for a literal ${)",
                    ));
                }
                match (self.env)(name) {
                    Some(value) => out.push_str(&value),
                    None => {
                        if missing.is_none() {
                            missing = Some(name.to_string());
                        }
                    }
                }
                rest = &after[end + 1..];
            } else {
                out.push('$');
                rest = &tail[1..];
            }
        }
        out.push_str(rest);
        match missing {
            Some(var) => {
                self.unset(&var, path);
                Ok(None)
            }
            None => Ok(Some(out)),
        }
    }
}

fn is_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Backstage's merge: mappings merge key by key, anything else is replaced by the later value.
fn deep_merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Object(base), Value::Object(over)) => {
            for (k, v) in over {
                match base.get_mut(&k) {
                    Some(existing) => deep_merge(existing, v),
                    None => {
                        base.insert(k, v);
                    }
                }
            }
        }
        (base, over) => *base = over,
    }
}

// ---------------------------------------------------------------------------------------------
// Stage 2: generic tree -> validated Config.
// ---------------------------------------------------------------------------------------------

/// Names a value's type for messages, never its content.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

fn expected(key: &str, what: &str, found: &Value) -> ConfigError {
    invalid(key, format!("expected {what}, found {}", kind(found)))
}

/// Read access to one mapping, with its key path for messages. `null` counts as absent.
struct Node<'a> {
    map: &'a Map<String, Value>,
    path: String,
}

impl<'a> Node<'a> {
    fn new(v: &'a Value, path: impl Into<String>) -> Result<Self, ConfigError> {
        let path = path.into();
        match v {
            Value::Object(map) => Ok(Node { map, path }),
            other => Err(expected(&path, "a mapping", other)),
        }
    }

    fn key(&self, k: &str) -> String {
        format!("{}.{k}", self.path)
    }

    fn get(&self, k: &str) -> Option<&'a Value> {
        self.map.get(k).filter(|v| !v.is_null())
    }

    /// Rejects keys outside `known`, naming the full path (only `proxy` is strict, SPEC §3).
    fn only(&self, known: &[&str]) -> Result<(), ConfigError> {
        match self.map.keys().find(|k| !known.contains(&k.as_str())) {
            Some(k) => Err(invalid(
                self.key(k),
                format!("unknown key (expected one of: {})", known.join(", ")),
            )),
            None => Ok(()),
        }
    }

    /// A string; numbers are accepted as their text (a GitHub login may be all digits).
    fn string(&self, k: &str) -> Result<Option<String>, ConfigError> {
        match self.get(k) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(Value::Number(n)) => Ok(Some(n.to_string())),
            Some(other) => Err(expected(&self.key(k), "a string", other)),
        }
    }

    /// A secret string; wrapped before anything else sees it.
    fn secret(&self, k: &str) -> Result<Option<SecretString>, ConfigError> {
        match self.get(k) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(SecretString::from(s.clone()))),
            Some(other) => Err(expected(&self.key(k), "a string", other)),
        }
    }

    fn bool(&self, k: &str) -> Result<Option<bool>, ConfigError> {
        match self.get(k) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(expected(&self.key(k), "true or false", other)),
        }
    }

    /// A non-negative integer; a numeric string is accepted (values from `${VAR}` are strings).
    fn uint(&self, k: &str) -> Result<Option<u64>, ConfigError> {
        match self.get(k) {
            None => Ok(None),
            Some(Value::Number(n)) => n
                .as_u64()
                .map(Some)
                .ok_or_else(|| invalid(self.key(k), "expected a whole number of at least 0")),
            Some(Value::String(s)) => s
                .trim()
                .parse::<u64>()
                .map(Some)
                .map_err(|_| invalid(self.key(k), "expected a whole number of at least 0")),
            Some(other) => Err(expected(&self.key(k), "a whole number", other)),
        }
    }

    fn list(&self, k: &str) -> Result<Option<&'a Vec<Value>>, ConfigError> {
        match self.get(k) {
            None => Ok(None),
            Some(Value::Array(items)) => Ok(Some(items)),
            Some(other) => Err(expected(&self.key(k), "a list", other)),
        }
    }

    fn string_list(&self, k: &str) -> Result<Option<Vec<String>>, ConfigError> {
        let Some(items) = self.list(k)? else {
            return Ok(None);
        };
        let key = self.key(k);
        items
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s.clone()),
                Value::Number(n) => Ok(n.to_string()),
                other => Err(expected(&format!("{key}[{i}]"), "a string", other)),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    fn child(&self, k: &str) -> Result<Option<Node<'a>>, ConfigError> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => Node::new(v, self.key(k)).map(Some),
        }
    }
}

fn build(tree: &Value, notes: Notes) -> Result<Config, ConfigError> {
    // A key an unset variable removed may be the one the error is about ("apiBaseUrl: required"):
    // the warning naming the variable would never be logged, so the error says it.
    let unset = notes.unset.clone();
    build_checked(tree, notes).map_err(|err| match err {
        ConfigError::Invalid { key, mut message } => {
            for (path, var) in &unset {
                let related = key == *path
                    // the error is inside what the variable removed
                    || key
                        .strip_prefix(path.as_str())
                        .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
                    // the error is about the mapping the removed key belonged to
                    // ("set exactly one of key or keySha256")
                    || path
                        .strip_prefix(key.as_str())
                        .and_then(|rest| rest.strip_prefix('.'))
                        .is_some_and(|name| !name.contains(['.', '[']))
                    // the non-loopback `listen` refusal is what that flag would have allowed
                    || (key == "proxy.listen" && path == "proxy.allowUnauthenticatedClients");
                if related && !message.contains(var.as_str()) {
                    message.push_str(&format!(" ({var} is not set, so {path} is absent)"));
                }
            }
            ConfigError::Invalid { key, message }
        }
        other => other,
    })
}

fn build_checked(tree: &Value, notes: Notes) -> Result<Config, ConfigError> {
    let root = Node::new(tree, "config")?;
    let integrations = match root.child("integrations")? {
        Some(node) => match node.list("github")? {
            Some(items) if !items.is_empty() => items
                .iter()
                .enumerate()
                .map(|(i, v)| parse_integration(i, v))
                .collect::<Result<Vec<_>, _>>()?,
            _ => vec![implicit_github_com()?],
        },
        None => vec![implicit_github_com()?],
    };
    for (i, integration) in integrations.iter().enumerate() {
        if let Some(first) = integrations[..i]
            .iter()
            .find(|other| other.host == integration.host)
        {
            return Err(invalid(
                format!("integrations.github[{i}].host"),
                format!(
                    "duplicate host '{}' (also integrations.github[{}]); each host may be configured once",
                    integration.host, first.index
                ),
            ));
        }
    }
    let empty = Value::Object(Map::new());
    let proxy = parse_proxy(root.get("proxy").unwrap_or(&empty), &integrations, &notes)?;
    Ok(Config {
        integrations: integrations.into_iter().map(Arc::new).collect(),
        proxy,
        warnings: notes.warnings,
    })
}

fn implicit_github_com() -> Result<Integration, ConfigError> {
    let empty = Value::Object(Map::new());
    parse_integration(0, &empty)
}

/// Backstage's `isValidHost`: what `new URL('http://x').host = host` keeps unchanged, i.e. a
/// lowercase host name or IP with an optional port and nothing else.
fn is_valid_host(host: &str) -> bool {
    let port = if let Some(rest) = host.strip_prefix('[') {
        let Some((inner, after)) = rest.split_once(']') else {
            return false;
        };
        if inner.is_empty()
            || !inner
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c) || c == ':' || c == '.')
        {
            return false;
        }
        match after {
            "" => None,
            _ => match after.strip_prefix(':') {
                Some(port) => Some(port),
                None => return false,
            },
        }
    } else {
        let (name, port) = match host.split_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (host, None),
        };
        let name_ok = !name.is_empty()
            && !name.starts_with('.')
            && !name.ends_with('.')
            && !name.contains("..")
            && name.chars().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.' || c == '_'
            });
        if !name_ok {
            return false;
        }
        port
    };
    match port {
        None => true,
        Some(p) => {
            !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()) && p.parse::<u16>().is_ok()
        }
    }
}

/// Splits a base URL into an [`Origin`]. Messages do not quote the URL: it could carry userinfo.
fn parse_origin(kind: OriginKind, url: &str, key: &str) -> Result<Origin, ConfigError> {
    let url = url.trim().trim_end_matches('/');
    if url.contains('?') || url.contains('#') {
        return Err(invalid(key, "must not have a query string or fragment"));
    }
    let uri: http::Uri = url.parse().map_err(|_| {
        invalid(
            key,
            "not a valid URL; expected http(s)://host[:port][/path]",
        )
    })?;
    let scheme = match uri.scheme_str() {
        Some(s) if s.eq_ignore_ascii_case("https") => Scheme::Https,
        Some(s) if s.eq_ignore_ascii_case("http") => Scheme::Http,
        _ => {
            return Err(invalid(
                key,
                "the URL must start with https:// (or http:// for a local mirror)",
            ));
        }
    };
    let Some(authority) = uri.authority() else {
        return Err(invalid(key, "the URL has no host"));
    };
    if authority.as_str().contains('@') {
        return Err(invalid(
            key,
            "the URL must not contain user information; put credentials in token or apps",
        ));
    }
    if authority.host().is_empty() {
        return Err(invalid(key, "the URL has no host"));
    }
    Ok(Origin {
        kind,
        scheme,
        authority: authority.as_str().to_ascii_lowercase(),
        path_prefix: uri.path().trim_end_matches('/').to_string(),
    })
}

/// `…/api/v3` → `…/api/graphql` (GHE); anything else → `{api}/graphql` (§4).
fn graphql_origin(api: &Origin) -> Origin {
    let path_prefix = match api.path_prefix.strip_suffix("/api/v3") {
        Some(base) => format!("{base}/api/graphql"),
        None => format!("{}/graphql", api.path_prefix),
    };
    Origin {
        kind: OriginKind::Graphql,
        scheme: api.scheme,
        authority: api.authority.clone(),
        path_prefix,
    }
}

fn parse_integration(index: usize, v: &Value) -> Result<Integration, ConfigError> {
    // Unknown keys are ignored on purpose: Backstage's integration config has more of them.
    let node = Node::new(v, format!("integrations.github[{index}]"))?;
    let host = node
        .string("host")?
        .unwrap_or_else(|| GITHUB_HOST.to_string());
    if !is_valid_host(&host) {
        return Err(invalid(
            node.key("host"),
            format!("Invalid GitHub integration config, '{host}' is not a valid host"),
        ));
    }
    let is_github_com = host == GITHUB_HOST;
    let api_url = match node.string("apiBaseUrl")? {
        Some(url) => url,
        None if is_github_com => GITHUB_API_BASE_URL.to_string(),
        None => {
            return Err(invalid(
                node.key("apiBaseUrl"),
                format!(
                    "required for host '{host}' (for GitHub Enterprise Server: https://{host}/api/v3)"
                ),
            ));
        }
    };
    let api = parse_origin(OriginKind::Api, &api_url, &node.key("apiBaseUrl"))?;
    let raw_url = match node.string("rawBaseUrl")? {
        Some(url) => Some(url),
        None if is_github_com => Some(GITHUB_RAW_BASE_URL.to_string()),
        None => None,
    };
    let raw = raw_url
        .map(|url| parse_origin(OriginKind::Raw, &url, &node.key("rawBaseUrl")))
        .transpose()?;
    let web = Origin {
        kind: OriginKind::Web,
        scheme: Scheme::Https,
        authority: host.clone(),
        path_prefix: String::new(),
    };
    let graphql = graphql_origin(&api);
    let token = node.secret("token")?.and_then(|t| {
        let trimmed = t.expose_secret().trim();
        (!trimmed.is_empty()).then(|| SecretString::from(trimmed.to_string()))
    });
    let apps = match node.list("apps")? {
        None => Vec::new(),
        Some(items) => items
            .iter()
            .enumerate()
            .map(|(j, v)| parse_app(v, &format!("{}[{j}]", node.key("apps"))))
            .collect::<Result<Vec<_>, _>>()?,
    };
    Ok(Integration {
        index,
        host,
        api,
        raw,
        web,
        graphql,
        token,
        apps,
    })
}

fn parse_app(v: &Value, path: &str) -> Result<AppConfig, ConfigError> {
    let node = Node::new(v, path)?;
    let app_id = match node.get("appId") {
        None => {
            return Err(invalid(
                node.key("appId"),
                "required (the App's numeric ID)",
            ));
        }
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.trim().parse::<u64>().ok(),
        Some(other) => return Err(expected(&node.key("appId"), "a number", other)),
    }
    .filter(|id| *id > 0)
    .ok_or_else(|| {
        invalid(
            node.key("appId"),
            "expected the App's numeric ID (a positive whole number)",
        )
    })?;
    let private_key = match node.secret("privateKey")? {
        Some(key) => key,
        None => {
            return Err(invalid(
                node.key("privateKey"),
                "required (the App's PEM private key, e.g. privateKey: { $file: app.pem })",
            ));
        }
    };
    // Keys pasted into an env var often carry literal `\n` instead of newlines.
    let private_key = SecretString::from(private_key.expose_secret().replace("\\n", "\n"));
    check_private_key(&private_key, &node.key("privateKey"))?;
    let client_id = node.string("clientId")?;
    let client_secret = node.secret("clientSecret")?;
    // `webhookSecret` is accepted (Backstage configs have it) and deliberately not kept.
    let allowed_installation_owners =
        node.string_list("allowedInstallationOwners")?
            .map(|owners| {
                owners
                    .iter()
                    .map(|o| o.trim().to_ascii_lowercase())
                    .collect()
            });
    let public_access = node.bool("publicAccess")?.unwrap_or(false);
    Ok(AppConfig {
        app_id,
        private_key,
        client_id,
        client_secret,
        allowed_installation_owners,
        public_access,
    })
}

/// Parses the key and signs a throwaway JWT with it: `from_rsa_pem` alone only checks the PEM
/// armour, and a key that cannot sign should fail at startup, not on the first request.
fn check_private_key(key: &SecretString, path: &str) -> Result<(), ConfigError> {
    let bad = || {
        invalid(
            path,
            "not a PEM RSA private key; use the .pem file GitHub generated for the App \
             (-----BEGIN RSA PRIVATE KEY-----), with real newlines or literal \\n",
        )
    };
    let encoding = jsonwebtoken::EncodingKey::from_rsa_pem(key.expose_secret().as_bytes())
        .map_err(|_| bad())?;
    let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    jsonwebtoken::encode(
        &header,
        &serde_json::json!({ "iss": "config-check" }),
        &encoding,
    )
    .map(|_| ())
    .map_err(|_| bad())
}

const PROXY_KEYS: &[&str] = &[
    "listen",
    "publicUrl",
    "defaultHost",
    "defaultOwner",
    "allowAnonymous",
    "allowUnauthenticatedClients",
    "clients",
    "admin",
    "audit",
    "upstream",
    "tokens",
    "shutdownGraceSeconds",
    "maxConnections",
    "headerReadTimeoutMs",
];

fn parse_listen(
    value: Option<String>,
    key: &str,
    default: &str,
) -> Result<SocketAddr, ConfigError> {
    let text = value.unwrap_or_else(|| default.to_string());
    text.trim().parse::<SocketAddr>().map_err(|_| {
        invalid(
            key,
            format!(
                "'{}' is not a socket address; expected ip:port such as 127.0.0.1:8080, 0.0.0.0:8080 or [::1]:8080",
                text.trim()
            ),
        )
    })
}

fn positive_ms(node: &Node<'_>, k: &str, default: u64) -> Result<Duration, ConfigError> {
    match node.uint(k)? {
        None => Ok(Duration::from_millis(default)),
        Some(0) => Err(invalid(node.key(k), "must be at least 1")),
        Some(ms) => Ok(Duration::from_millis(ms)),
    }
}

fn parse_proxy(
    v: &Value,
    integrations: &[Integration],
    notes: &Notes,
) -> Result<ProxyConfig, ConfigError> {
    let node = Node::new(v, "proxy")?;
    node.only(PROXY_KEYS)?;

    let listen = parse_listen(
        node.string("listen")?,
        &node.key("listen"),
        "127.0.0.1:8080",
    )?;
    let public_url = match node.string("publicUrl")? {
        None => None,
        Some(url) => {
            let url = url.trim().trim_end_matches('/').to_string();
            parse_origin(OriginKind::Api, &url, &node.key("publicUrl"))?;
            Some(url)
        }
    };
    let default_host = match node.string("defaultHost")? {
        Some(host) => {
            let host = host.trim().to_ascii_lowercase();
            integrations
                .iter()
                .position(|i| i.host == host)
                .ok_or_else(|| {
                    let known: Vec<&str> = integrations.iter().map(|i| i.host.as_str()).collect();
                    invalid(
                        node.key("defaultHost"),
                        format!(
                            "'{host}' is not a configured integration host (configured: {})",
                            known.join(", ")
                        ),
                    )
                })?
        }
        None => integrations
            .iter()
            .position(|i| i.host == GITHUB_HOST)
            .unwrap_or(0),
    };
    let default_owner = node
        .string("defaultOwner")?
        .map(|o| o.trim().to_string())
        .filter(|o| !o.is_empty());
    let allow_anonymous = node.bool("allowAnonymous")?.unwrap_or(false);
    let allow_unauthenticated_clients = node.bool("allowUnauthenticatedClients")?.unwrap_or(false);

    let clients = match node.list("clients")? {
        None => Vec::new(),
        Some(items) => items
            .iter()
            .enumerate()
            .map(|(i, v)| parse_client(v, &format!("proxy.clients[{i}]"), notes))
            .collect::<Result<Vec<_>, _>>()?,
    };
    for (i, client) in clients.iter().enumerate() {
        if clients[..i].iter().any(|c| c.name == client.name) {
            return Err(invalid(
                format!("proxy.clients[{i}].name"),
                format!(
                    "duplicate client name '{}'; names must be unique",
                    client.name
                ),
            ));
        }
        // The key is what identifies a client: with two alike, the first would always win and
        // the second's rules would never apply.
        if let Some(j) = clients[..i]
            .iter()
            .position(|c| c.key_sha256 == client.key_sha256)
        {
            return Err(invalid(
                format!("proxy.clients[{i}]"),
                format!(
                    "same key as proxy.clients[{j}] ('{}'); each client needs its own key",
                    clients[j].name
                ),
            ));
        }
    }

    // `admin: { listen: null }` disables the admin listener; an absent key means the default.
    let admin_listen = match node.child("admin")? {
        None => Some(parse_listen(None, "proxy.admin.listen", "127.0.0.1:9090")?),
        Some(admin) => {
            admin.only(&["listen"])?;
            match admin.map.get("listen") {
                Some(Value::Null) => None,
                _ => Some(parse_listen(
                    admin.string("listen")?,
                    &admin.key("listen"),
                    "127.0.0.1:9090",
                )?),
            }
        }
    };

    // Both on one address (or one on the unspecified address and the same port): `serve` could
    // bind only one of them, so say so now, naming the keys.
    if let Some(admin) = admin_listen
        && admin.port() != 0
        && admin.port() == listen.port()
        && (admin.ip() == listen.ip()
            || admin.ip().is_unspecified()
            || listen.ip().is_unspecified())
    {
        return Err(invalid(
            "proxy.admin.listen",
            format!(
                "{admin} conflicts with proxy.listen {listen}: the proxy and the admin listener \
                 need different ports"
            ),
        ));
    }

    let audit = match node.child("audit")? {
        None => AuditSink::Stdout,
        Some(audit) => {
            audit.only(&["path"])?;
            match audit.string("path")? {
                None => AuditSink::Stdout,
                Some(p) if p.trim() == "-" => AuditSink::Stdout,
                Some(p) if p.trim().is_empty() => {
                    return Err(invalid(
                        audit.key("path"),
                        "must be a file path, or - for stdout",
                    ));
                }
                Some(p) => AuditSink::File(PathBuf::from(p)),
            }
        }
    };

    let upstream = match node.child("upstream")? {
        None => UpstreamConfig {
            ca_file: None,
            connect_timeout: Duration::from_millis(10_000),
            response_timeout: Duration::from_millis(60_000),
        },
        Some(up) => {
            up.only(&["caFile", "connectTimeoutMs", "responseTimeoutMs"])?;
            UpstreamConfig {
                ca_file: up
                    .string("caFile")?
                    .filter(|p| !p.trim().is_empty())
                    .map(PathBuf::from),
                connect_timeout: positive_ms(&up, "connectTimeoutMs", 10_000)?,
                response_timeout: positive_ms(&up, "responseTimeoutMs", 60_000)?,
            }
        }
    };

    let refresh_before_expiry = match node.child("tokens")? {
        None => Duration::from_secs(600),
        Some(tokens) => {
            tokens.only(&["refreshBeforeExpirySeconds"])?;
            match tokens.uint("refreshBeforeExpirySeconds")? {
                None => Duration::from_secs(600),
                // Installation tokens live one hour; refreshing earlier than that never caches.
                Some(s) if s >= 3600 => {
                    return Err(invalid(
                        tokens.key("refreshBeforeExpirySeconds"),
                        "must be less than 3600 (installation tokens live one hour)",
                    ));
                }
                Some(s) => Duration::from_secs(s),
            }
        }
    };
    let shutdown_grace = Duration::from_secs(node.uint("shutdownGraceSeconds")?.unwrap_or(30));
    let max_connections = match node.uint("maxConnections")? {
        None => 10_000,
        Some(0) => return Err(invalid(node.key("maxConnections"), "must be at least 1")),
        Some(n) => {
            usize::try_from(n).map_err(|_| invalid(node.key("maxConnections"), "is too large"))?
        }
    };
    let header_read_timeout = positive_ms(&node, "headerReadTimeoutMs", 10_000)?;

    // Safe by default (§3.3): a proxy that adds credentials must not be open to the network.
    if !listen.ip().is_loopback() && clients.is_empty() && !allow_unauthenticated_clients {
        return Err(invalid(
            "proxy.listen",
            format!(
                "{listen} is not a loopback address and proxy.clients is empty, so anyone who can \
                 reach the port could use the configured GitHub credentials; add proxy.clients \
                 (each with a key), listen on 127.0.0.1, or set \
                 proxy.allowUnauthenticatedClients: true if the network is trusted"
            ),
        ));
    }

    Ok(ProxyConfig {
        listen,
        public_url,
        default_host,
        default_owner,
        allow_anonymous,
        allow_unauthenticated_clients,
        clients,
        admin_listen,
        audit,
        upstream,
        refresh_before_expiry,
        shutdown_grace,
        max_connections,
        header_read_timeout,
    })
}

const CLIENT_KEYS: &[&str] = &[
    "name",
    "key",
    "keySha256",
    "allow",
    "methods",
    "credentials",
];

/// Methods a client may be limited to. `CONNECT` is never served (§4), so it is not listed.
const METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

/// An `allow` pattern that can match something: `owner` or `owner/repo`, each part non-empty and
/// made of the characters GitHub allows there, or `*`.
fn valid_allow_pattern(p: &str) -> bool {
    let (owner, repo) = match p.split_once('/') {
        Some((o, r)) => (o, Some(r)),
        None => (p, None),
    };
    let owner_ok = !owner.is_empty()
        && owner
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'*');
    let repo_ok = repo.is_none_or(|r| {
        !r.is_empty()
            && r.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'*'))
    });
    owner_ok && repo_ok
}

fn parse_client(v: &Value, path: &str, notes: &Notes) -> Result<ClientConfig, ConfigError> {
    let node = Node::new(v, path)?;
    node.only(CLIENT_KEYS)?;
    let name = node
        .string("name")?
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty())
        .ok_or_else(|| invalid(node.key("name"), "required (it appears in audit records)"))?;

    let key_path = node.key("key");
    if let Some((_, var)) = notes.unset.iter().find(|(p, _)| *p == key_path)
        && node.get("key").is_none()
    {
        // Dropping the key would leave a client nobody needs to authenticate as.
        return Err(invalid(
            key_path,
            format!("{var} is not set; a client needs a key: set {var}, or use keySha256"),
        ));
    }
    let key = node.secret("key")?;
    let key_sha256 = match (key, node.string("keySha256")?) {
        (Some(_), Some(_)) | (None, None) => {
            return Err(invalid(
                path,
                "set exactly one of key or keySha256 (the hex SHA-256 of the key)",
            ));
        }
        (Some(key), None) => {
            // Trimmed, as `token` is: a key read with `$file` ends in a newline, which no
            // `Bearer` header can carry. Blank would be a key anyone can guess.
            let key = key.expose_secret().trim();
            if key.is_empty() {
                return Err(invalid(key_path, "must not be empty or blank"));
            }
            let digest = Sha256::digest(key.as_bytes());
            let mut out = [0u8; 32];
            out.copy_from_slice(&digest);
            out
        }
        (None, Some(hex)) => parse_sha256_hex(hex.trim()).ok_or_else(|| {
            invalid(
                node.key("keySha256"),
                "expected 64 hex characters, the SHA-256 of the key (e.g. printf %s \"$KEY\" | sha256sum)",
            )
        })?,
    };

    let allow = match node.string_list("allow")? {
        None => vec!["*".to_string()],
        Some(patterns) => {
            for (i, p) in patterns.iter().enumerate() {
                if p.trim().is_empty() {
                    return Err(invalid(
                        format!("{}[{i}]", node.key("allow")),
                        "must not be empty; use \"*\" for every owner",
                    ));
                }
                if !valid_allow_pattern(p.trim()) {
                    return Err(invalid(
                        format!("{}[{i}]", node.key("allow")),
                        format!(
                            "'{}' can never match: a pattern is an owner or owner/repo (GitHub's \
                             characters, A-Z a-z 0-9 - and . _ in a repo), with * as the only \
                             wildcard",
                            p.trim()
                        ),
                    ));
                }
            }
            patterns.into_iter().map(|p| p.trim().to_string()).collect()
        }
    };

    let methods = match node.string_list("methods")? {
        None => None,
        Some(list) => Some(
            list.iter()
                .enumerate()
                .map(|(i, m)| {
                    let upper = m.trim().to_ascii_uppercase();
                    if !METHODS.contains(&upper.as_str()) {
                        return Err(invalid(
                            format!("{}[{i}]", node.key("methods")),
                            format!(
                                "'{}' is not an HTTP method the proxy serves (one of: {})",
                                m.trim(),
                                METHODS.join(", ")
                            ),
                        ));
                    }
                    http::Method::from_bytes(upper.as_bytes()).map_err(|_| {
                        invalid(
                            format!("{}[{i}]", node.key("methods")),
                            "not an HTTP method",
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };

    let credentials = match node.string_list("credentials")? {
        None => vec![
            CredentialKind::App,
            CredentialKind::Pat,
            CredentialKind::Anonymous,
        ],
        Some(list) => list
            .iter()
            .enumerate()
            .map(|(i, c)| match c.trim().to_ascii_lowercase().as_str() {
                "app" => Ok(CredentialKind::App),
                "pat" => Ok(CredentialKind::Pat),
                "anonymous" => Ok(CredentialKind::Anonymous),
                _ => Err(invalid(
                    format!("{}[{i}]", node.key("credentials")),
                    format!(
                        "'{}' is not a credential kind (one of: app, pat, anonymous)",
                        c.trim()
                    ),
                )),
            })
            .collect::<Result<Vec<_>, _>>()?,
    };

    Ok(ClientConfig {
        name,
        key_sha256,
        allow,
        methods,
        credentials,
    })
}

fn parse_sha256_hex(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const KEY_PEM: &str = include_str!("../tests/fixtures/app1.key.pem");

    fn env_of(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn load_with(yaml: &str, pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env = env_of(pairs);
        Config::from_yaml_with(yaml, Path::new("."), &|k| env.get(k).cloned())
    }

    fn err(yaml: &str) -> String {
        Config::from_yaml(yaml).unwrap_err().to_string()
    }

    /// The key as a YAML double-quoted scalar with `\n` escapes (one line).
    fn key_inline() -> String {
        KEY_PEM.trim_end().replace('\n', "\\n")
    }

    #[test]
    fn defaults_apply_to_an_empty_document() {
        let c = Config::from_yaml("").unwrap();
        assert_eq!(c.integrations.len(), 1);
        let gh = &c.integrations[0];
        assert_eq!(gh.index, 0);
        assert_eq!(gh.host, "github.com");
        assert_eq!(gh.api.base_url(), "https://api.github.com");
        assert_eq!(
            gh.raw.as_ref().unwrap().base_url(),
            "https://raw.githubusercontent.com"
        );
        assert_eq!(gh.web.base_url(), "https://github.com");
        assert_eq!(gh.web.kind, OriginKind::Web);
        assert!(gh.token.is_none());
        assert!(gh.apps.is_empty());
        let p = &c.proxy;
        assert_eq!(p.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(p.admin_listen, Some("127.0.0.1:9090".parse().unwrap()));
        assert_eq!(p.audit, AuditSink::Stdout);
        assert_eq!(p.public_url, None);
        assert_eq!(p.default_host, 0);
        assert_eq!(p.default_owner, None);
        assert!(!p.allow_anonymous);
        assert!(!p.allow_unauthenticated_clients);
        assert!(p.clients.is_empty());
        assert_eq!(p.upstream.ca_file, None);
        assert_eq!(p.upstream.connect_timeout, Duration::from_millis(10_000));
        assert_eq!(p.upstream.response_timeout, Duration::from_millis(60_000));
        assert_eq!(p.refresh_before_expiry, Duration::from_secs(600));
        assert_eq!(p.shutdown_grace, Duration::from_secs(30));
        assert_eq!(p.max_connections, 10_000);
        assert_eq!(p.header_read_timeout, Duration::from_millis(10_000));
        assert!(c.warnings.is_empty());
    }

    #[test]
    fn implicit_github_com_when_integrations_absent() {
        let c = Config::from_yaml("app:\n  title: x\nproxy: {}\n").unwrap();
        assert_eq!(c.integrations.len(), 1);
        assert_eq!(c.default_integration().host, "github.com");
    }

    #[test]
    fn proxy_values_are_read() {
        let c = Config::from_yaml(
            r#"
proxy:
  listen: "[::1]:8081"
  publicUrl: https://proxy.example.com/
  defaultOwner: acme
  allowAnonymous: true
  admin: { listen: null }
  audit: { path: /var/log/audit.jsonl }
  upstream: { caFile: /etc/ca.pem, connectTimeoutMs: 500, responseTimeoutMs: 2000 }
  tokens: { refreshBeforeExpirySeconds: 300 }
  shutdownGraceSeconds: 5
  maxConnections: 7
  headerReadTimeoutMs: 1500
"#,
        )
        .unwrap();
        let p = &c.proxy;
        assert_eq!(p.listen, "[::1]:8081".parse().unwrap());
        assert_eq!(p.public_url.as_deref(), Some("https://proxy.example.com"));
        assert_eq!(p.default_owner.as_deref(), Some("acme"));
        assert!(p.allow_anonymous);
        assert_eq!(p.admin_listen, None);
        assert_eq!(
            p.audit,
            AuditSink::File(PathBuf::from("/var/log/audit.jsonl"))
        );
        assert_eq!(p.upstream.ca_file, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(p.upstream.connect_timeout, Duration::from_millis(500));
        assert_eq!(p.upstream.response_timeout, Duration::from_secs(2));
        assert_eq!(p.refresh_before_expiry, Duration::from_secs(300));
        assert_eq!(p.shutdown_grace, Duration::from_secs(5));
        assert_eq!(p.max_connections, 7);
        assert_eq!(p.header_read_timeout, Duration::from_millis(1500));
    }

    #[test]
    fn max_connections_must_be_positive() {
        assert!(
            err("proxy: { maxConnections: 0 }")
                .contains("proxy.maxConnections: must be at least 1")
        );
    }

    #[test]
    fn rejects_invalid_hosts_like_backstage() {
        for host in [
            "https://ghe.acme.com",
            "ghe.acme.com/path",
            "GHE.acme.com",
            "ghe.acme.com:x",
        ] {
            let e = err(&format!(
                "integrations:\n  github:\n    - host: '{host}'\n      apiBaseUrl: https://ghe.acme.com/api/v3\n"
            ));
            assert_eq!(
                e,
                format!(
                    "integrations.github[0].host: Invalid GitHub integration config, '{host}' is not a valid host"
                )
            );
        }
        let ok = Config::from_yaml(
            "integrations:\n  github:\n    - host: ghe.acme.com:8443\n      apiBaseUrl: https://ghe.acme.com:8443/api/v3\n",
        )
        .unwrap();
        assert_eq!(ok.integrations[0].host, "ghe.acme.com:8443");
    }

    #[test]
    fn ghe_requires_api_base_url() {
        let e = err("integrations:\n  github:\n    - host: ghe.acme.com\n");
        assert!(
            e.starts_with("integrations.github[0].apiBaseUrl: required"),
            "{e}"
        );
    }

    #[test]
    fn trims_trailing_slash_and_lowercases_authority() {
        let c = Config::from_yaml(
            "integrations:\n  github:\n    - host: ghe.acme.com\n      apiBaseUrl: https://GHE.acme.com/api/v3/\n      rawBaseUrl: https://ghe.acme.com/raw/\n",
        )
        .unwrap();
        let i = &c.integrations[0];
        assert_eq!(i.api.authority, "ghe.acme.com");
        assert_eq!(i.api.path_prefix, "/api/v3");
        assert_eq!(i.api.scheme, Scheme::Https);
        assert_eq!(i.raw.as_ref().unwrap().path_prefix, "/raw");
        let root = Config::from_yaml(
            "integrations:\n  github:\n    - apiBaseUrl: http://localhost:9999/\n",
        )
        .unwrap();
        assert_eq!(root.integrations[0].api.path_prefix, "");
        assert_eq!(root.integrations[0].api.scheme, Scheme::Http);
        assert_eq!(root.integrations[0].api.base_url(), "http://localhost:9999");
    }

    #[test]
    fn ghe_raw_base_url_is_optional() {
        let c = Config::from_yaml(
            "integrations:\n  github:\n    - host: ghe.acme.com\n      apiBaseUrl: https://ghe.acme.com/api/v3\n",
        )
        .unwrap();
        assert!(c.integrations[0].raw.is_none());
    }

    #[test]
    fn rejects_api_base_url_with_query_or_bad_scheme() {
        assert!(
            err("integrations:\n  github:\n    - apiBaseUrl: https://api.github.com/?x=1\n")
                .starts_with("integrations.github[0].apiBaseUrl: ")
        );
        assert!(
            err("integrations:\n  github:\n    - apiBaseUrl: ftp://api.github.com\n")
                .starts_with("integrations.github[0].apiBaseUrl: ")
        );
    }

    #[test]
    fn graphql_origin_for_both_shapes() {
        let c = Config::from_yaml(
            "integrations:\n  github:\n    - host: github.com\n    - host: ghe.acme.com\n      apiBaseUrl: https://ghe.acme.com/api/v3\n",
        )
        .unwrap();
        let gh = &c.integrations[0].graphql;
        assert_eq!(gh.kind, OriginKind::Graphql);
        assert_eq!(gh.base_url(), "https://api.github.com/graphql");
        assert_eq!(gh.path_prefix, "/graphql");
        let ghe = &c.integrations[1].graphql;
        assert_eq!(ghe.base_url(), "https://ghe.acme.com/api/graphql");
        assert_eq!(c.integrations[1].index, 1);
    }

    #[test]
    fn token_is_trimmed_and_blank_means_none() {
        let c = Config::from_yaml(
            "integrations:\n  github:\n    - token: '  ghp_abc  '\n    - host: ghe.acme.com\n      apiBaseUrl: https://ghe.acme.com/api/v3\n      token: '   '\n",
        )
        .unwrap();
        assert_eq!(
            c.integrations[0].token.as_ref().unwrap().expose_secret(),
            "ghp_abc"
        );
        assert!(c.integrations[1].token.is_none());
    }

    #[test]
    fn app_with_numeric_string_id_and_escaped_newlines() {
        let yaml = format!(
            "integrations:\n  github:\n    - apps:\n        - appId: '12345'\n          privateKey: '{}'\n          clientId: Iv1.abc\n          clientSecret: shh\n          webhookSecret: whsec\n          allowedInstallationOwners: [Acme, OTHER]\n          publicAccess: true\n",
            key_inline()
        );
        // Single-quoted YAML keeps `\n` as a literal backslash-n, as it arrives from an env var.
        assert!(yaml.contains("-----\\nMII"));
        let c = Config::from_yaml(&yaml).unwrap();
        let app = &c.integrations[0].apps[0];
        assert_eq!(app.app_id, 12345);
        assert!(
            app.private_key
                .expose_secret()
                .starts_with("-----BEGIN RSA PRIVATE KEY-----\n")
        );
        assert!(!app.private_key.expose_secret().contains("\\n"));
        assert_eq!(app.client_id.as_deref(), Some("Iv1.abc"));
        assert_eq!(app.client_secret.as_ref().unwrap().expose_secret(), "shh");
        assert_eq!(
            app.allowed_installation_owners,
            Some(vec!["acme".to_string(), "other".to_string()])
        );
        assert!(app.allows_owner("ACME"));
        assert!(!app.allows_owner("someone"));
        assert!(app.public_access);
    }

    #[test]
    fn app_id_as_number_and_defaults() {
        let env = env_of(&[("KEY", KEY_PEM)]);
        let c = Config::from_yaml_with(
            "integrations:\n  github:\n    - apps:\n        - appId: 42\n          privateKey: ${KEY}\n",
            Path::new("."),
            &|k| env.get(k).cloned(),
        )
        .unwrap();
        let app = &c.integrations[0].apps[0];
        assert_eq!(app.app_id, 42);
        assert!(!app.public_access);
        assert_eq!(app.allowed_installation_owners, None);
        assert!(app.client_secret.is_none());
    }

    #[test]
    fn bad_private_key_names_the_key_and_hides_its_text() {
        let yaml = format!(
            "integrations:\n  github:\n    - apps:\n        - appId: 1\n          privateKey: \"{}\"\n",
            key_inline()
        );
        let ok = Config::from_yaml(&yaml);
        assert!(ok.is_ok());
        // Corrupt the body: valid PEM armour, garbage DER.
        let broken = yaml.replacen("MII", "MIX", 1);
        let e = Config::from_yaml(&broken).unwrap_err().to_string();
        assert!(
            e.starts_with("integrations.github[0].apps[0].privateKey: not a PEM RSA private key"),
            "{e}"
        );
        assert!(!e.contains("MIX"));
        let e = err(
            "integrations:\n  github:\n    - apps:\n        - appId: 1\n          privateKey: SECRETKEYTEXT\n",
        );
        assert!(
            e.contains("integrations.github[0].apps[0].privateKey"),
            "{e}"
        );
        assert!(!e.contains("SECRETKEYTEXT"));
    }

    #[test]
    fn bad_app_id_is_an_error() {
        let e = err(
            "integrations:\n  github:\n    - apps:\n        - appId: abc\n          privateKey: x\n",
        );
        assert!(
            e.starts_with("integrations.github[0].apps[0].appId: "),
            "{e}"
        );
    }

    #[test]
    fn unknown_proxy_key_names_full_path() {
        assert!(
            err("proxy:\n  upstream:\n    caFil: x\n")
                .starts_with("proxy.upstream.caFil: unknown key")
        );
        assert!(err("proxy:\n  lisen: 1\n").starts_with("proxy.lisen: unknown key"));
        assert!(
            err("proxy:\n  clients:\n    - name: a\n      key: k\n      alow: ['*']\n")
                .starts_with("proxy.clients[0].alow: unknown key")
        );
    }

    #[test]
    fn unknown_integration_keys_and_other_top_level_keys_are_ignored() {
        let c = Config::from_yaml(
            "backend:\n  baseUrl: ${UNSET_BACKEND}\nintegrations:\n  gitlab:\n    - token: ${UNSET_GITLAB}\n  github:\n    - host: github.com\n      somethingBackstageHas: 1\n",
        )
        .unwrap();
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    }

    #[test]
    fn duplicate_host_is_an_error() {
        let e = err("integrations:\n  github:\n    - host: github.com\n    - host: github.com\n");
        assert!(
            e.starts_with("integrations.github[1].host: duplicate host 'github.com'"),
            "{e}"
        );
    }

    #[test]
    fn substitutes_variables_and_escapes() {
        let c = load_with(
            "integrations:\n  github:\n    - token: ${TOKEN}\nproxy:\n  defaultOwner: '$${NOT_A_VAR}'\n  publicUrl: https://${HOST}:8443\n",
            &[("TOKEN", "ghp_x"), ("HOST", "proxy.acme.com")],
        )
        .unwrap();
        assert_eq!(
            c.integrations[0].token.as_ref().unwrap().expose_secret(),
            "ghp_x"
        );
        assert_eq!(c.proxy.default_owner.as_deref(), Some("${NOT_A_VAR}"));
        assert_eq!(
            c.proxy.public_url.as_deref(),
            Some("https://proxy.acme.com:8443")
        );
    }

    #[test]
    fn env_mapping_stands_for_a_string() {
        let c = load_with(
            "integrations:\n  github:\n    - token: { $env: TOKEN }\n",
            &[("TOKEN", "ghp_env")],
        )
        .unwrap();
        assert_eq!(
            c.integrations[0].token.as_ref().unwrap().expose_secret(),
            "ghp_env"
        );
    }

    #[test]
    fn file_mapping_reads_relative_to_base_dir() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token.txt"), "ghp_file\n").unwrap();
        std::fs::write(dir.path().join("app.pem"), KEY_PEM).unwrap();
        let c = Config::from_yaml_with(
            "integrations:\n  github:\n    - token: { $file: token.txt }\n      apps:\n        - appId: 1\n          privateKey: { $file: app.pem }\nproxy:\n  audit: { path: audit.jsonl }\n  upstream: { caFile: ca.pem }\n",
            dir.path(),
            &|_| None,
        )
        .unwrap();
        assert_eq!(
            c.integrations[0].token.as_ref().unwrap().expose_secret(),
            "ghp_file"
        );
        assert_eq!(c.integrations[0].apps.len(), 1);
        assert_eq!(
            c.proxy.audit,
            AuditSink::File(dir.path().join("audit.jsonl"))
        );
        assert_eq!(c.proxy.upstream.ca_file, Some(dir.path().join("ca.pem")));
    }

    #[test]
    fn unreadable_file_names_key_and_path() {
        let dir = tempfile::tempdir().unwrap();
        let e = Config::from_yaml_with(
            "integrations:\n  github:\n    - token: { $file: missing.txt }\n",
            dir.path(),
            &|_| None,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("integrations.github[0].token: cannot read $file "),
            "{e}"
        );
        assert!(e.contains("missing.txt"), "{e}");
    }

    #[test]
    fn unset_variable_makes_key_absent_with_one_warning() {
        let c = load_with(
            "integrations:\n  github:\n    - token: ${GITHUB_TOKEN}\n",
            &[],
        )
        .unwrap();
        assert!(c.integrations[0].token.is_none());
        assert_eq!(
            c.warnings,
            vec![
                "GITHUB_TOKEN is not set; integrations.github[0].token is treated as absent"
                    .to_string()
            ]
        );
        let c = load_with("proxy:\n  defaultOwner: { $env: OWNER }\n", &[]).unwrap();
        assert_eq!(c.proxy.default_owner, None);
        assert_eq!(
            c.warnings,
            vec!["OWNER is not set; proxy.defaultOwner is treated as absent".to_string()]
        );
    }

    #[test]
    fn unterminated_variable_is_an_error_without_the_value() {
        let e = err("integrations:\n  github:\n    - token: 'SECRET${OOPS'\n");
        assert!(
            e.starts_with("integrations.github[0].token: unterminated ${"),
            "{e}"
        );
        assert!(!e.contains("SECRET"));
    }

    #[test]
    fn files_deep_merge_later_wins_and_sequences_replace() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.yaml");
        let b_dir = dir.path().join("overlay");
        std::fs::create_dir(&b_dir).unwrap();
        let b = b_dir.join("b.yaml");
        std::fs::write(
            &a,
            "integrations:\n  github:\n    - host: github.com\n      token: one\n    - host: ghe.acme.com\n      apiBaseUrl: https://ghe.acme.com/api/v3\nproxy:\n  defaultOwner: acme\n  upstream: { connectTimeoutMs: 1000, responseTimeoutMs: 2000 }\n  audit: { path: a.jsonl }\n",
        )
        .unwrap();
        std::fs::write(
            &b,
            "integrations:\n  github:\n    - host: github.com\n      token: two\nproxy:\n  upstream: { connectTimeoutMs: 3000 }\n  audit: { path: b.jsonl }\n",
        )
        .unwrap();
        let c = Config::load(&[a, b], &|_| None).unwrap();
        assert_eq!(
            c.integrations.len(),
            1,
            "sequences are replaced, not merged"
        );
        assert_eq!(
            c.integrations[0].token.as_ref().unwrap().expose_secret(),
            "two"
        );
        assert_eq!(c.proxy.default_owner.as_deref(), Some("acme"));
        assert_eq!(
            c.proxy.upstream.connect_timeout,
            Duration::from_millis(3000)
        );
        assert_eq!(
            c.proxy.upstream.response_timeout,
            Duration::from_millis(2000)
        );
        // Relative to the file that wrote it.
        assert_eq!(c.proxy.audit, AuditSink::File(b_dir.join("b.jsonl")));
    }

    #[test]
    fn unset_variable_in_overlay_keeps_the_base_value() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.yaml");
        let b = dir.path().join("b.yaml");
        std::fs::write(&a, "proxy:\n  defaultOwner: acme\n").unwrap();
        std::fs::write(&b, "proxy:\n  defaultOwner: ${OWNER}\n").unwrap();
        let c = Config::load(&[a, b], &|_| None).unwrap();
        assert_eq!(c.proxy.default_owner.as_deref(), Some("acme"));
        assert_eq!(c.warnings.len(), 1);
    }

    #[test]
    fn an_error_about_a_key_an_unset_variable_removed_names_the_variable() {
        let e = Config::from_yaml(
            "integrations:\n  github:\n    - host: ghe.example.com\n      apiBaseUrl: ${GHE_API}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("integrations.github[0].apiBaseUrl: "), "{e}");
        assert!(e.contains("GHE_API is not set"), "{e}");
        let e = Config::from_yaml(
            "integrations:\n  github:\n    - apps:\n        - appId: ${APP_ID}\n          privateKey: x\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("APP_ID is not set"), "{e}");
        // An error about the mapping the removed key was in, or that the key would have allowed.
        let e = Config::from_yaml("proxy:\n  clients:\n    - name: a\n      keySha256: ${KSHA}\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("proxy.clients[0]: "), "{e}");
        assert!(e.contains("KSHA is not set"), "{e}");
        let e = Config::from_yaml(
            "proxy:\n  listen: 0.0.0.0:8080\n  allowUnauthenticatedClients: ${ALLOW}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("proxy.listen: "), "{e}");
        assert!(e.contains("ALLOW is not set"), "{e}");
        // An unrelated unset variable is not mentioned.
        let e = Config::from_yaml(
            "integrations:\n  github:\n    - host: ghe.example.com\n      token: ${T}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(!e.contains("T is not set"), "{e}");
    }

    #[test]
    fn a_blank_audit_path_is_refused_wherever_the_file_is() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, "proxy:\n  audit:\n    path: \"\"\n").unwrap();
        let e = Config::load(&[path], &|_| None).unwrap_err().to_string();
        assert!(e.contains("proxy.audit.path: must be a file path"), "{e}");
    }

    #[test]
    fn missing_file_is_a_read_error() {
        let e = Config::load(&[PathBuf::from("/nonexistent/x.yaml")], &|_| None).unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }));
    }

    #[test]
    fn yaml_syntax_error_gives_position_not_content() {
        let e = err("proxy:\n  listen: \"SECRETVALUE\n  other: [\n");
        assert!(e.starts_with("config: invalid YAML: "), "{e}");
        assert!(e.contains("line "), "{e}");
        assert!(!e.contains("SECRETVALUE"), "{e}");
    }

    #[test]
    fn default_host_picks_github_com_else_first_else_named() {
        let ghe = "    - host: ghe.acme.com\n      apiBaseUrl: https://ghe.acme.com/api/v3\n";
        let c = Config::from_yaml(&format!(
            "integrations:\n  github:\n{ghe}    - host: github.com\n"
        ))
        .unwrap();
        assert_eq!(c.proxy.default_host, 1);
        assert_eq!(c.default_integration().host, "github.com");
        let c = Config::from_yaml(&format!("integrations:\n  github:\n{ghe}")).unwrap();
        assert_eq!(c.proxy.default_host, 0);
        let c = Config::from_yaml(&format!(
            "integrations:\n  github:\n    - host: github.com\n{ghe}proxy:\n  defaultHost: ghe.acme.com\n"
        ))
        .unwrap();
        assert_eq!(c.default_integration().host, "ghe.acme.com");
        let e = err("proxy:\n  defaultHost: nope.example.com\n");
        assert!(
            e.starts_with("proxy.defaultHost: 'nope.example.com' is not a configured"),
            "{e}"
        );
    }

    #[test]
    fn refuses_non_loopback_listen_without_clients() {
        let e = Config::from_yaml("proxy:\n  listen: 0.0.0.0:8080\n").unwrap_err();
        match &e {
            ConfigError::Invalid { key, message } => {
                assert_eq!(key, "proxy.listen");
                assert!(message.contains(
                    "anyone who can reach the port could use the configured GitHub credentials"
                ));
                assert!(message.contains("proxy.clients"));
                assert!(message.contains("allowUnauthenticatedClients: true"));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(
            Config::from_yaml(
                "proxy:\n  listen: 0.0.0.0:8080\n  allowUnauthenticatedClients: true\n"
            )
            .is_ok()
        );
        assert!(
            Config::from_yaml(
                "proxy:\n  listen: 0.0.0.0:8080\n  clients:\n    - { name: a, key: k }\n"
            )
            .is_ok()
        );
        assert!(Config::from_yaml("proxy:\n  listen: '[::1]:8080'\n").is_ok());
    }

    #[test]
    fn admin_listen_on_the_proxy_address_is_an_error() {
        for yaml in [
            "proxy:\n  listen: 127.0.0.1:8080\n  admin: { listen: 127.0.0.1:8080 }\n",
            "proxy:\n  listen: 0.0.0.0:8080\n  allowUnauthenticatedClients: true\n  admin: { listen: 127.0.0.1:8080 }\n",
        ] {
            assert!(
                err(yaml).starts_with("proxy.admin.listen: "),
                "{yaml}: {}",
                err(yaml)
            );
        }
        // Port 0 (tests) and different ports are fine.
        Config::from_yaml("proxy:\n  listen: 127.0.0.1:0\n  admin: { listen: 127.0.0.1:0 }\n")
            .unwrap();
        Config::from_yaml(
            "proxy:\n  listen: 127.0.0.1:8080\n  admin: { listen: 127.0.0.2:8080 }\n",
        )
        .unwrap();
    }

    #[test]
    fn bad_listen_address_is_an_error() {
        assert!(
            err("proxy:\n  listen: localhost\n")
                .starts_with("proxy.listen: 'localhost' is not a socket address")
        );
        assert!(err("proxy:\n  admin: { listen: nope }\n").starts_with("proxy.admin.listen: "));
    }

    #[test]
    fn clients_hash_keys_and_apply_defaults() {
        let c = load_with(
            "proxy:\n  clients:\n    - name: catalog\n      key: ${CATALOG_KEY}\n    - name: ci\n      keySha256: 2CF24DBA5FB0A30E26E83B2AC5B9E29E1B161E5C1FA7425E73043362938B9824\n      allow: ['acme/*', acme-oss]\n      methods: [GET, head]\n      credentials: [app]\n",
            &[("CATALOG_KEY", "catalog-secret")],
        )
        .unwrap();
        let hello_sha: [u8; 32] = Sha256::digest(b"hello").into();
        let catalog = &c.proxy.clients[0];
        assert_eq!(catalog.name, "catalog");
        assert_eq!(
            catalog.key_sha256,
            <[u8; 32]>::from(Sha256::digest(b"catalog-secret"))
        );
        assert_eq!(catalog.allow, vec!["*".to_string()]);
        assert_eq!(catalog.methods, None);
        assert_eq!(
            catalog.credentials,
            vec![
                CredentialKind::App,
                CredentialKind::Pat,
                CredentialKind::Anonymous
            ]
        );
        let ci = &c.proxy.clients[1];
        assert_eq!(ci.key_sha256, hello_sha);
        assert_eq!(ci.allow, vec!["acme/*".to_string(), "acme-oss".to_string()]);
        assert_eq!(
            ci.methods,
            Some(vec![http::Method::GET, http::Method::HEAD])
        );
        assert_eq!(ci.credentials, vec![CredentialKind::App]);
        assert!(!format!("{c:?}").contains("catalog-secret"));
        // Nor the hash a key is checked against.
        assert!(!format!("{c:?}").contains("key_sha256"));
        assert!(format!("{catalog:?}").contains("catalog"));
    }

    #[test]
    fn client_errors() {
        let bad_method =
            err("proxy:\n  clients:\n    - { name: a, key: k, methods: [GET, FETCH] }\n");
        assert!(
            bad_method.starts_with("proxy.clients[0].methods[1]: 'FETCH' is not an HTTP method"),
            "{bad_method}"
        );
        let both = err("proxy:\n  clients:\n    - { name: a, key: k, keySha256: aa }\n");
        assert!(
            both.starts_with("proxy.clients[0]: set exactly one of key or keySha256"),
            "{both}"
        );
        let neither = err("proxy:\n  clients:\n    - { name: a }\n");
        assert!(
            neither.starts_with("proxy.clients[0]: set exactly one"),
            "{neither}"
        );
        let short = err("proxy:\n  clients:\n    - { name: a, keySha256: abc }\n");
        assert!(
            short.starts_with("proxy.clients[0].keySha256: expected 64 hex"),
            "{short}"
        );
        let dup = err("proxy:\n  clients:\n    - { name: a, key: k }\n    - { name: a, key: j }\n");
        assert!(
            dup.starts_with("proxy.clients[1].name: duplicate client name 'a'"),
            "{dup}"
        );
        // The same key twice (here once as key, once as its hash): the second would never apply.
        let same = err(
            "proxy:\n  clients:\n    - { name: a, key: hello }\n    - { name: b, keySha256: 2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824 }\n",
        );
        assert!(
            same.starts_with("proxy.clients[1]: same key as proxy.clients[0] ('a')"),
            "{same}"
        );
        // Blank keys are refused; keys are trimmed (a `$file` key ends in a newline).
        let blank = err("proxy:\n  clients:\n    - { name: a, key: \"  \" }\n");
        assert!(
            blank.starts_with("proxy.clients[0].key: must not be empty"),
            "{blank}"
        );
        let c =
            Config::from_yaml("proxy:\n  clients:\n    - { name: a, key: \"k1\\n\" }\n").unwrap();
        assert_eq!(c.proxy.clients[0].key_sha256[..], Sha256::digest(b"k1")[..]);
        // Patterns that could never match are refused; the ones GitHub names can take are not.
        for bad in [
            "acme/widgets/x",
            "ac me",
            "acme/",
            "/x",
            "[a-c]cme/*",
            "acm?",
            "{a,b}",
        ] {
            let e = err(&format!(
                "proxy:\n  clients:\n    - {{ name: a, key: k, allow: [\"{bad}\"] }}\n"
            ));
            assert!(e.starts_with("proxy.clients[0].allow[0]: "), "{bad}: {e}");
        }
        for good in [
            "*",
            "acme",
            "acme/*",
            "acme-*",
            "*/*",
            "acme/widgets.js",
            "a/re_po-1",
        ] {
            Config::from_yaml(&format!(
                "proxy:\n  clients:\n    - {{ name: a, key: k, allow: [\"{good}\"] }}\n"
            ))
            .unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        let cred = err("proxy:\n  clients:\n    - { name: a, key: k, credentials: [none] }\n");
        assert!(
            cred.starts_with("proxy.clients[0].credentials[0]: "),
            "{cred}"
        );
        let no_name = err("proxy:\n  clients:\n    - { key: k }\n");
        assert!(
            no_name.starts_with("proxy.clients[0].name: required"),
            "{no_name}"
        );
    }

    #[test]
    fn client_key_from_unset_variable_is_an_error() {
        let e = load_with(
            "proxy:\n  clients:\n    - name: catalog\n      key: ${CATALOG_KEY}\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("proxy.clients[0].key: CATALOG_KEY is not set"),
            "{e}"
        );
    }

    #[test]
    fn debug_output_redacts_secrets() {
        let yaml = format!(
            "integrations:\n  github:\n    - token: ghp_CANARYTOKEN\n      apps:\n        - appId: 1\n          privateKey: \"{}\"\n          clientSecret: CANARYSECRET\n",
            key_inline()
        );
        let c = Config::from_yaml(&yaml).unwrap();
        let debug = format!("{c:?}");
        assert!(!debug.contains("CANARY"), "{debug}");
        assert!(!debug.contains("BEGIN RSA"), "{debug}");
    }

    #[test]
    fn no_error_message_contains_a_secret() {
        let broken = [
            "integrations:\n  github:\n    - token: [CANARY_TOKEN]\n",
            "integrations:\n  github:\n    - token: { nested: CANARY_TOKEN }\n",
            "integrations:\n  github:\n    - token: 'CANARY_TOKEN${'\n",
            "integrations:\n  github:\n    - token: '${CANARY_TOKEN bad}'\n",
            "integrations:\n  github:\n    - token: { $env: X, extra: CANARY_TOKEN }\n",
            "integrations:\n  github:\n    - apps:\n        - appId: 1\n          privateKey: CANARY_PRIVATE_KEY\n",
            "integrations:\n  github:\n    - apps:\n        - appId: 1\n          privateKey: \"-----BEGIN RSA PRIVATE KEY-----\\nCANARY_PRIVATE_KEY\\n-----END RSA PRIVATE KEY-----\"\n",
            "integrations:\n  github:\n    - apps:\n        - appId: CANARY_APPID\n          privateKey: CANARY_PRIVATE_KEY\n",
            "integrations:\n  github:\n    - apps:\n        - appId: 1\n          privateKey: [CANARY_PRIVATE_KEY]\n",
            "integrations:\n  github:\n    - apps:\n        - appId: 1\n          privateKey: x\n          clientSecret: [CANARY_CLIENT_SECRET]\n          publicAccess: CANARY_BOOL\n",
            "integrations:\n  github:\n    - apps:\n        - appId: 1\n          clientSecret: CANARY_CLIENT_SECRET\n",
            "integrations:\n  github:\n    - apiBaseUrl: https://user:CANARY_PASSWORD@api.github.com\n",
            "integrations:\n  github:\n    - apiBaseUrl: 'https://api.github.com/?token=CANARY_TOKEN'\n",
            "integrations:\n  github:\n    - token: \"CANARY_TOKEN\n",
            "integrations:\n  github:\n    - token: CANARY_TOKEN\n      token: CANARY_TOKEN2\n",
            "proxy:\n  clients:\n    - { name: a, key: CANARY_CLIENT_KEY, keySha256: CANARY_HASH }\n",
            "proxy:\n  clients:\n    - { name: a, keySha256: CANARY_HASH }\n",
            "proxy:\n  clients:\n    - { name: a, key: [CANARY_CLIENT_KEY] }\n",
            "proxy:\n  clients:\n    - { name: a, key: CANARY_CLIENT_KEY, bogus: 1 }\n",
            "proxy:\n  allowAnonymous: CANARY_BOOL\n",
            "proxy:\n  maxConnections: CANARY_NUMBER\n",
        ];
        for yaml in broken {
            let e = Config::from_yaml(yaml).expect_err(yaml).to_string();
            assert!(!e.contains("CANARY"), "secret leaked for {yaml:?}: {e}");
        }
    }

    #[test]
    fn yaml_numbers_and_nulls_become_the_right_values() {
        let c = Config::from_yaml(
            "integrations:\n  github:\n    - token: ~\n      rawBaseUrl: null\nproxy:\n  maxConnections: 12\n  shutdownGraceSeconds: 0\n",
        )
        .unwrap();
        assert!(c.integrations[0].token.is_none());
        assert!(
            c.integrations[0].raw.is_some(),
            "null means absent, so github.com's default applies"
        );
        assert_eq!(c.proxy.max_connections, 12);
        assert_eq!(c.proxy.shutdown_grace, Duration::ZERO);
    }
}
