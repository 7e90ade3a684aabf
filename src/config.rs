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

/// One entry of `proxy.clients[]` (§6).
#[derive(Debug)]
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
    if let Value::String(s) = node
        && s != "-"
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
    fn reference(&mut self, map: Map<String, Value>, path: &str) -> Result<Option<String>, ConfigError> {
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
            std::fs::read_to_string(&full).map(Some).map_err(|e| {
                invalid(
                    path,
                    format!("cannot read $file {}: {e}", full.display()),
                )
            })
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
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
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
            "" => (inner, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (inner, Some(port)),
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
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.' || c == '_');
        if !name_ok {
            return false;
        }
        (name, port)
    };
    let _ = name;
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
    let token = node
        .secret("token")?
        .and_then(|t| {
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
        None => return Err(invalid(node.key("appId"), "required (the App's numeric ID)")),
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
    let allowed_installation_owners = node
        .string_list("allowedInstallationOwners")?
        .map(|owners| owners.iter().map(|o| o.trim().to_ascii_lowercase()).collect());
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
    jsonwebtoken::encode(&header, &serde_json::json!({ "iss": "config-check" }), &encoding)
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

fn parse_listen(value: Option<String>, key: &str, default: &str) -> Result<SocketAddr, ConfigError> {
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

    let listen = parse_listen(node.string("listen")?, &node.key("listen"), "127.0.0.1:8080")?;
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
                format!("duplicate client name '{}'; names must be unique", client.name),
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
        Some(n) => usize::try_from(n)
            .map_err(|_| invalid(node.key("maxConnections"), "is too large"))?,
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

const CLIENT_KEYS: &[&str] = &["name", "key", "keySha256", "allow", "methods", "credentials"];

/// Methods a client may be limited to. `CONNECT` is never served (§4), so it is not listed.
const METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

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
            if key.expose_secret().is_empty() {
                return Err(invalid(key_path, "must not be empty"));
            }
            let digest = Sha256::digest(key.expose_secret().as_bytes());
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
                        invalid(format!("{}[{i}]", node.key("methods")), "not an HTTP method")
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
                    format!("'{}' is not a credential kind (one of: app, pat, anonymous)", c.trim()),
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
