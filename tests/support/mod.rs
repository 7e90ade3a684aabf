//! Shared test infrastructure: [`fake_github::FakeGitHub`], the test keys, and a [`TestConfig`]
//! builder for a `Config` whose one integration points at a FakeGitHub.
// Each integration test binary uses a different part of this module.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod fake_github;
pub mod git_backend;
pub mod process;
pub mod secrets;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use gh_token_proxy::config::{
    AppConfig, AuditSink, Config, Integration, Origin, OriginKind, ProxyConfig, Scheme,
    UpstreamConfig,
};
use gh_token_proxy::github::GitHub;
use gh_token_proxy::resolve::Resolver;
use secrecy::SecretString;

pub use fake_github::FakeGitHub;

pub const APP1_KEY: &str = include_str!("../fixtures/app1.key.pem");
pub const APP1_PUB: &str = include_str!("../fixtures/app1.pub.pem");
pub const APP2_KEY: &str = include_str!("../fixtures/app2.key.pem");
pub const APP2_PUB: &str = include_str!("../fixtures/app2.pub.pem");
/// A valid RSA key FakeGitHub does not know: its JWTs are answered 401.
pub const WRONG_KEY: &str = include_str!("../fixtures/wrong.key.pem");

/// One App of the integration under test.
pub struct TestApp {
    pub app_id: u64,
    pub private_key: String,
    pub allowed_installation_owners: Option<Vec<String>>,
    pub public_access: bool,
}

impl TestApp {
    pub fn new(app_id: u64, private_key: &str) -> Self {
        TestApp {
            app_id,
            private_key: private_key.to_string(),
            allowed_installation_owners: None,
            public_access: false,
        }
    }

    pub fn allowed_owners(mut self, owners: &[&str]) -> Self {
        self.allowed_installation_owners = Some(owners.iter().map(|o| o.to_string()).collect());
        self
    }

    pub fn public_access(mut self) -> Self {
        self.public_access = true;
        self
    }
}

/// Builds a `Config` with one `github.com` integration whose `apiBaseUrl` is the FakeGitHub:
/// [`TestConfig::yaml`] is the app-config YAML, [`TestConfig::build`] parses it with the real
/// parser, [`TestConfig::build_direct`] constructs the same `Config` by hand (a cross-check).
pub struct TestConfig {
    api_url: String,
    ca_file: Option<PathBuf>,
    token: Option<String>,
    apps: Vec<TestApp>,
    allow_anonymous: bool,
    default_owner: Option<String>,
    refresh_before_expiry: Duration,
}

impl TestConfig {
    pub fn new(fake: &FakeGitHub) -> Self {
        TestConfig {
            api_url: fake.api_url().to_string(),
            ca_file: Some(fake.ca_file().to_path_buf()),
            token: None,
            apps: Vec::new(),
            allow_anonymous: false,
            default_owner: None,
            refresh_before_expiry: Duration::from_secs(600),
        }
    }

    /// The integration's PAT.
    pub fn token(mut self, pat: &str) -> Self {
        self.token = Some(pat.to_string());
        self
    }

    pub fn app(mut self, app: TestApp) -> Self {
        self.apps.push(app);
        self
    }

    pub fn allow_anonymous(mut self) -> Self {
        self.allow_anonymous = true;
        self
    }

    pub fn default_owner(mut self, owner: &str) -> Self {
        self.default_owner = Some(owner.to_string());
        self
    }

    pub fn refresh_before_expiry(mut self, margin: Duration) -> Self {
        self.refresh_before_expiry = margin;
        self
    }

    /// The same config as app-config YAML.
    pub fn yaml(&self) -> String {
        let mut out = String::from("integrations:\n  github:\n    - host: github.com\n");
        out.push_str(&format!("      apiBaseUrl: {}\n", self.api_url));
        if let Some(token) = &self.token {
            out.push_str(&format!("      token: {token}\n"));
        }
        if !self.apps.is_empty() {
            out.push_str("      apps:\n");
            for app in &self.apps {
                out.push_str(&format!("        - appId: {}\n", app.app_id));
                out.push_str(&format!(
                    "          privateKey: {}\n",
                    serde_json::to_string(&app.private_key).unwrap()
                ));
                if let Some(owners) = &app.allowed_installation_owners {
                    out.push_str(&format!(
                        "          allowedInstallationOwners: {}\n",
                        serde_json::to_string(owners).unwrap()
                    ));
                }
                if app.public_access {
                    out.push_str("          publicAccess: true\n");
                }
            }
        }
        out.push_str("proxy:\n");
        out.push_str(&format!("  allowAnonymous: {}\n", self.allow_anonymous));
        if let Some(owner) = &self.default_owner {
            out.push_str(&format!("  defaultOwner: {owner}\n"));
        }
        if let Some(ca) = &self.ca_file {
            out.push_str(&format!("  upstream:\n    caFile: {}\n", ca.display()));
        }
        out.push_str(&format!(
            "  tokens:\n    refreshBeforeExpirySeconds: {}\n",
            self.refresh_before_expiry.as_secs()
        ));
        out
    }

    /// The config as the real parser reads it from [`TestConfig::yaml`].
    pub fn build(self) -> Config {
        let yaml = self.yaml();
        Config::from_yaml_with(&yaml, std::path::Path::new("."), &|_| None)
            .unwrap_or_else(|err| panic!("{err}\n{yaml}"))
    }

    /// The same config built from the types directly.
    pub fn build_direct(self) -> Config {
        let authority = self
            .api_url
            .strip_prefix("https://")
            .unwrap()
            .trim_end_matches('/')
            .to_string();
        let apps = self
            .apps
            .into_iter()
            .map(|app| AppConfig {
                app_id: app.app_id,
                private_key: SecretString::from(app.private_key),
                client_id: None,
                client_secret: None,
                allowed_installation_owners: app
                    .allowed_installation_owners
                    .map(|o| o.into_iter().map(|o| o.to_ascii_lowercase()).collect()),
                public_access: app.public_access,
            })
            .collect();
        let integration = Integration {
            index: 0,
            host: "github.com".to_string(),
            api: Origin {
                kind: OriginKind::Api,
                scheme: Scheme::Https,
                authority: authority.clone(),
                path_prefix: String::new(),
            },
            raw: None,
            web: Origin {
                kind: OriginKind::Web,
                scheme: Scheme::Https,
                authority: "github.com".to_string(),
                path_prefix: String::new(),
            },
            graphql: Origin {
                kind: OriginKind::Graphql,
                scheme: Scheme::Https,
                authority,
                path_prefix: "/graphql".to_string(),
            },
            token: self.token.map(SecretString::from),
            apps,
        };
        Config {
            integrations: vec![Arc::new(integration)],
            proxy: ProxyConfig {
                listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                public_url: None,
                default_host: 0,
                default_owner: self.default_owner,
                allow_anonymous: self.allow_anonymous,
                allow_unauthenticated_clients: false,
                clients: Vec::new(),
                admin_listen: None,
                audit: AuditSink::Stdout,
                upstream: UpstreamConfig {
                    ca_file: self.ca_file,
                    connect_timeout: Duration::from_secs(10),
                    response_timeout: Duration::from_secs(60),
                },
                refresh_before_expiry: self.refresh_before_expiry,
                shutdown_grace: Duration::from_secs(30),
                max_connections: 10_000,
                header_read_timeout: Duration::from_secs(10),
            },
            warnings: Vec::new(),
        }
    }
}

/// A `Resolver` (and its `GitHub`) for `config`, talking to GitHub through the real upstream client.
pub fn resolver(config: Config) -> (Arc<Config>, Resolver) {
    let config = Arc::new(config);
    let client = gh_token_proxy::upstream::build(&config.proxy.upstream).unwrap();
    let github = Arc::new(GitHub::new(config.clone(), client));
    let resolver = Resolver::new(github, config.proxy.allow_anonymous);
    (config, resolver)
}
