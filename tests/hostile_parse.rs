//! Hostile request lines through the public routing and target API, as the server would call
//! them: each must be refused with the right reason, or routed to exactly what was authorised.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use gh_token_proxy::config::{
    AuditSink, Config, Integration, Origin, OriginKind, ProxyConfig, Scheme, UpstreamConfig,
};
use gh_token_proxy::credential::Reason;
use gh_token_proxy::route::route;
use gh_token_proxy::target::{self, PathTarget};
use http::{Method, Uri};

fn origin(kind: OriginKind, scheme: Scheme, authority: &str, prefix: &str) -> Origin {
    Origin {
        kind,
        scheme,
        authority: authority.to_owned(),
        path_prefix: prefix.to_owned(),
    }
}

fn config() -> Config {
    let https = Scheme::Https;
    let github = Integration {
        index: 0,
        host: "github.com".to_owned(),
        api: origin(OriginKind::Api, https, "api.github.com", ""),
        raw: Some(origin(
            OriginKind::Raw,
            https,
            "raw.githubusercontent.com",
            "",
        )),
        web: origin(OriginKind::Web, https, "github.com", ""),
        graphql: origin(OriginKind::Graphql, https, "api.github.com", "/graphql"),
        token: None,
        apps: Vec::new(),
    };
    let ghe = Integration {
        index: 1,
        host: "ghe.acme.com".to_owned(),
        api: origin(OriginKind::Api, https, "ghe.acme.com", "/api/v3"),
        raw: None,
        web: origin(OriginKind::Web, https, "ghe.acme.com", ""),
        graphql: origin(OriginKind::Graphql, https, "ghe.acme.com", "/api/graphql"),
        token: None,
        apps: Vec::new(),
    };
    Config {
        integrations: vec![Arc::new(github), Arc::new(ghe)],
        proxy: ProxyConfig {
            listen: "127.0.0.1:8080".parse().unwrap(),
            public_url: None,
            default_host: 0,
            default_owner: None,
            allow_anonymous: false,
            allow_unauthenticated_clients: false,
            clients: Vec::new(),
            admin_listen: None,
            audit: AuditSink::Stdout,
            upstream: UpstreamConfig {
                ca_file: None,
                connect_timeout: Duration::from_secs(10),
                response_timeout: Duration::from_secs(60),
            },
            refresh_before_expiry: Duration::from_secs(600),
            shutdown_grace: Duration::from_secs(30),
            max_connections: 10_000,
            header_read_timeout: Duration::from_secs(10),
        },
        warnings: Vec::new(),
    }
}

/// The server's two steps: route, then parse the target. `Err` carries the refusal reason.
fn decide(uri: &str) -> Result<(String, PathTarget), Reason> {
    let uri: Uri = uri.parse().unwrap();
    let r = route(&config(), &Method::GET, &uri).map_err(|e| e.reason)?;
    let t = target::parse(r.origin, &r.target_path, r.query.as_deref())
        .map_err(|_| Reason::InvalidPath)?;
    Ok((r.upstream_uri(), t))
}

fn about(owner: &str, repo: Option<&str>) -> PathTarget {
    PathTarget::About {
        owner: Some(owner.to_owned()),
        repo: repo.map(str::to_owned),
    }
}

#[test]
fn traversal_out_of_an_authorised_repo_is_refused_in_every_form() {
    for uri in [
        "/repos/acme/ok/../../secret/x",
        "/repos/acme/ok/%2e%2e/%2E%2E/secret/x",
        "/repos/acme/ok/.%2e/x",
        "/ghe.acme.com/api/v3/repos/acme/ok/../x",
        "http://api.github.com/repos/acme/ok/%2e%2e/x",
        "http://github.com/acme/ok/../secret.git/info/refs",
        "/raw.githubusercontent.com/acme/ok/main/../../secret/x",
    ] {
        assert_eq!(decide(uri).unwrap_err(), Reason::InvalidPath, "{uri}");
    }
}

#[test]
fn encoded_separators_and_controls_are_refused() {
    for uri in [
        "/repos/acme%2Fsecret/x",
        "/repos/acme/ok%2f..%2fsecret",
        "/repos/acme/ok/contents/a%5Cb",
        "/repos/acme/ok%00",
        "/repos/acme/ok/%0d%0aX-Injected:%201",
    ] {
        assert_eq!(decide(uri).unwrap_err(), Reason::InvalidPath, "{uri}");
    }
}

#[test]
fn names_that_are_not_github_names_are_refused() {
    for uri in [
        "/repos/%61cme/ok",
        "/repos/ac_me/ok",
        "/repos/%D0%B0cme/ok",
        "/repos/acme/ok%252Fx",
        "/repos//ok",
        "/repos/acme//x",
        "/orgs/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    ] {
        assert_eq!(decide(uri).unwrap_err(), Reason::InvalidPath, "{uri}");
    }
}

#[test]
fn what_is_authorised_is_what_is_forwarded() {
    assert_eq!(
        decide("/repos/Acme/OK/contents/a%252Fb?ref=main").unwrap(),
        (
            "https://api.github.com/repos/Acme/OK/contents/a%252Fb?ref=main".to_owned(),
            about("Acme", Some("OK"))
        )
    );
    assert_eq!(
        decide("/ghe.acme.com/acme/ok.git/git-upload-pack").unwrap(),
        (
            "https://ghe.acme.com/acme/ok.git/git-upload-pack".to_owned(),
            about("acme", Some("ok"))
        )
    );
}

#[test]
fn app_endpoints_are_recognised_however_they_are_addressed() {
    for uri in [
        "/app/installations",
        "/api/v3/app",
        "/App/installations",
        "http://api.github.com/installation/repositories",
        "/ghe.acme.com/api/v3/app-manifests/x/conversions",
    ] {
        assert_eq!(decide(uri).unwrap().1, PathTarget::AppEndpoint, "{uri}");
    }
    assert_eq!(
        decide("/%61pp/installations").unwrap_err(),
        Reason::InvalidPath
    );
}

#[test]
fn never_an_open_proxy() {
    for uri in [
        "http://evil.example/repos/acme/ok",
        "http://api.github.com@evil.example/repos/acme/ok",
        "/evil.example/repos/acme/ok",
        "http://api.github.com.evil.example/x",
        "http://ghe.acme.com:8443/api/v3/x",
    ] {
        let reason = decide(uri).unwrap_err();
        assert!(
            reason == Reason::UnknownHost || reason == Reason::InvalidRequest,
            "{uri}: {reason:?}"
        );
    }
}

#[test]
fn search_cannot_smuggle_a_second_target() {
    assert_eq!(
        decide("/search/issues?q=repo:acme/ok+is:open").unwrap().1,
        about("acme", Some("ok"))
    );
    for q in [
        "q=repo:acme/ok&q=repo:secret/x",
        "q=repo:acme/ok;q=repo:secret/x",
        "q=repo:acme/ok&%71=repo:secret/x",
    ] {
        assert_eq!(
            decide(&format!("/search/issues?{q}")).unwrap_err(),
            Reason::InvalidPath,
            "{q}"
        );
    }
}
