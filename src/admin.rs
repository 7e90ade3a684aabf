//! The admin listener (SPEC §9): `/healthz`, `/readyz` (503 while draining), `/metrics`
//! (Prometheus text) and `/explain` (the JSON of `explain --json`). Separate from the proxy port
//! so it is never reachable through the proxy's addressing forms.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::forward::ResponseBody;
use crate::server::Shared;

/// Serves the admin endpoints until `shutdown` resolves.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, shutdown: impl Future<Output = ()>) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(std::time::Duration::from_secs(10));
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                while connections.try_join_next().is_some() {}
                let Ok((stream, _)) = accepted else {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let shared = shared.clone();
                let service = service_fn(move |req| {
                    let shared = shared.clone();
                    async move { Ok::<_, Infallible>(handle(&shared, req).await) }
                });
                let conn = http.serve_connection(TokioIo::new(stream), service);
                connections.spawn(async move {
                    let _ = conn.await;
                });
            }
            () = &mut shutdown => break,
        }
    }
    connections.abort_all();
    while connections.join_next().await.is_some() {}
}

async fn handle(shared: &Shared, request: Request<Incoming>) -> Response<ResponseBody> {
    const PATHS: [&str; 4] = ["/healthz", "/readyz", "/metrics", "/explain"];
    if request.method() != Method::GET && request.method() != Method::HEAD {
        // RFC 9110 §15.5.6: a 405 says what is allowed; a path that does not exist is 404
        // whatever the method.
        if !PATHS.contains(&request.uri().path()) {
            return text(
                StatusCode::NOT_FOUND,
                "not found: /healthz, /readyz, /metrics, /explain\n",
            );
        }
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match request.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => {
            if shared.is_ready() {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            }
        }
        "/metrics" => {
            let mut out = String::with_capacity(8 * 1024);
            shared.metrics.render(&mut out);
            render_token_stats(shared, &mut out);
            let mut response = Response::new(ResponseBody::full(out));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        "/explain" => explain(shared, request.uri().query().unwrap_or("")).await,
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: /healthz, /readyz, /metrics, /explain\n",
        ),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::full(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn json(status: StatusCode, body: Vec<u8>) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn json_error(status: StatusCode, message: &str) -> Response<ResponseBody> {
    let body = serde_json::to_vec(&serde_json::json!({ "message": message })).unwrap_or_default();
    json(status, body)
}

/// `url=`, `method=` and `client=` from a query string, percent-decoded (`+` is a space).
pub fn query_params(query: &str) -> (Option<String>, Option<String>, Option<String>) {
    let mut url = None;
    let mut method = None;
    let mut client = None;
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = value.replace('+', " ");
        let value = percent_encoding::percent_decode_str(&value)
            .decode_utf8_lossy()
            .into_owned();
        match key {
            "url" => url = Some(value),
            "method" => method = Some(value),
            "client" => client = Some(value),
            _ => {}
        }
    }
    (url, method, client)
}

async fn explain(shared: &Shared, query: &str) -> Response<ResponseBody> {
    let (url, method, client) = query_params(query);
    let Some(url) = url else {
        return json_error(StatusCode::BAD_REQUEST, "missing url= parameter");
    };
    let method = match Method::from_bytes(method.as_deref().unwrap_or("GET").as_bytes()) {
        Ok(m) => m,
        Err(_) => return json_error(StatusCode::BAD_REQUEST, "method= is not an HTTP method"),
    };
    if let Some(name) = &client
        && !shared.config.proxy.clients.iter().any(|c| &c.name == name)
    {
        return json_error(
            StatusCode::BAD_REQUEST,
            &format!("no client named '{name}' in proxy.clients"),
        );
    }
    match explain_json(shared, &url, &method, client.as_deref()).await {
        Ok(body) => json(StatusCode::OK, body),
        Err(message) => json_error(StatusCode::BAD_REQUEST, &message),
    }
}

/// The decision as `explain --json` prints it. With `client=`, a credential kind the client may
/// not use is reported as the refusal the proxy would give (`client_policy`).
async fn explain_json(
    shared: &Shared,
    url: &str,
    method: &Method,
    client: Option<&str>,
) -> Result<Vec<u8>, String> {
    let mut explanation = match crate::explain::explain_with_repo_ids(
        &shared.config,
        &shared.resolver,
        Some(&shared.repo_ids),
        url,
        method,
    )
    .await
    {
        Ok(e) => e,
        Err(err) => crate::explain::Explanation::refused(format!("{method} {url}"), &err),
    };
    if let Some(client) =
        client.and_then(|name| shared.config.proxy.clients.iter().find(|c| c.name == name))
    {
        explanation.apply_client_policy(client, method);
    }
    serde_json::to_vec(&explanation).map_err(|e| e.to_string())
}

fn render_token_stats(shared: &Shared, out: &mut String) {
    use std::fmt::Write as _;
    let stats = shared.resolver.github().token_stats();
    out.push_str(
        "# HELP gh_token_proxy_token_mints_total Installation tokens minted, per app and result.\n",
    );
    out.push_str("# TYPE gh_token_proxy_token_mints_total counter\n");
    for ((app_id, result), count) in &stats.mints {
        let _ = writeln!(
            out,
            "gh_token_proxy_token_mints_total{{app_id=\"{app_id}\",result=\"{result}\"}} {count}"
        );
    }
    out.push_str("# HELP gh_token_proxy_token_cache_lookups_total Token cache lookups: hit, miss, refresh.\n");
    out.push_str("# TYPE gh_token_proxy_token_cache_lookups_total counter\n");
    for (result, count) in [
        ("hit", stats.cache_hit),
        ("miss", stats.cache_miss),
        ("refresh", stats.cache_refresh),
    ] {
        let _ = writeln!(
            out,
            "gh_token_proxy_token_cache_lookups_total{{result=\"{result}\"}} {count}"
        );
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_decodes_query() {
        let (url, method, client) = query_params(
            "url=https%3A%2F%2Fapi.github.com%2Frepos%2Fa%2Fb%3Fx%3D1&method=POST&client=cat+alog",
        );
        assert_eq!(url.as_deref(), Some("https://api.github.com/repos/a/b?x=1"));
        assert_eq!(method.as_deref(), Some("POST"));
        assert_eq!(client.as_deref(), Some("cat alog"));
        assert_eq!(query_params(""), (None, None, None));
    }
}
