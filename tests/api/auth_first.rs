//! Authentication comes before the body: a request to a protected route
//! without a valid token is answered 401 whatever its body, path or query
//! say, and the token endpoint reads no more than `max_body_bytes`.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use thinhook::startup::Role;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{TestApp, assert_problem, spawn_app_with};
use crate::spec::SERVER_ROUTES;

/// Routes anyone may call.
const PUBLIC_ROUTES: &[&str] = &[
    "/healthz",
    "/readyz",
    "/oauth/token",
    "/.well-known/jwks.json",
    "/.well-known/oauth-authorization-server",
    "/openapi.yaml",
    "/metrics",
    "/.well-known/webhook-keys.json",
];

/// A well-formed EdDSA at+jwt naming a key the server does not have. Its
/// check has to wait for the key ring to be read again, which is when a
/// body extractor polled beside it used to answer first.
fn token_of_an_unknown_key() -> String {
    let part = |value: Value| URL_SAFE_NO_PAD.encode(value.to_string());
    format!(
        "{}.{}.{}",
        part(json!({"alg": "EdDSA", "typ": "at+jwt", "kid": "no-such-key"})),
        part(json!({"sub": "cli_01jd5x8w3k2m4n6p7q9r0s1t2v"})),
        URL_SAFE_NO_PAD.encode([7u8; 64]),
    )
}

/// A body over the limit, of a type no route accepts, that is not JSON either.
fn oversize_body(app: &TestApp) -> String {
    "<".repeat(app.settings.max_body_bytes + 1)
}

/// Every way of not holding a valid token: none, garbage, an unknown key.
fn bad_authorizations() -> Vec<Option<String>> {
    vec![
        None,
        Some("Bearer not-a-jwt".to_owned()),
        Some(format!("Bearer {}", token_of_an_unknown_key())),
    ]
}

async fn send(
    app: &TestApp,
    method: Method,
    path: &str,
    authorization: Option<&str>,
    body: String,
) -> reqwest::Response {
    let mut request = app
        .client
        .request(method, app.url(path))
        .header("content-type", "text/plain")
        .body(body);
    if let Some(authorization) = authorization {
        request = request.header("authorization", authorization);
    }
    request.send().await.unwrap()
}

/// A path template with malformed ids, which would earn a 400 if the path
/// were looked at before the token.
fn malformed(path: &str) -> String {
    [
        "{messageId}",
        "{commentId}",
        "{subscriptionId}",
        "{deliveryId}",
        "{eventId}",
    ]
    .iter()
    .fold(path.to_owned(), |path, param| path.replace(param, "nope"))
}

backend_tests_with_backend! {
    async fn an_unauthenticated_oversize_body_of_the_wrong_type_gets_401(backend: Backend) {
        let app = spawn_app_with(backend, Role::Api, |_| {}).await;
        for authorization in bad_authorizations() {
            for path in ["/messages", "/subscriptions"] {
                let response = send(&app, Method::POST, path, authorization.as_deref(), oversize_body(&app)).await;
                assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{path} with {authorization:?}");
                assert_problem(response, StatusCode::UNAUTHORIZED, "unauthorized").await;
            }
        }
        // The control: with a valid token, the body is judged on its own.
        let response = app.post_raw("/messages", "text/plain", oversize_body(&app)).await;
        assert_problem(response, StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type").await;
        let response = app.post_raw("/messages", "application/json", oversize_body(&app)).await;
        assert_problem(response, StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large").await;
    }

    async fn every_protected_route_checks_the_token_before_path_query_and_body(backend: Backend) {
        let app = spawn_app_with(backend, Role::Api, |_| {}).await;
        let protected: Vec<_> = SERVER_ROUTES.iter().filter(|(_, path)| !PUBLIC_ROUTES.contains(path)).collect();
        assert_eq!(protected.len(), 20, "a protected route was added: check it here too");
        for (method, path) in protected {
            let method = Method::from_bytes(method.as_bytes()).unwrap();
            let path = format!("{}?limit=0&unknown=1", malformed(path));
            for authorization in bad_authorizations() {
                let response = send(&app, method.clone(), &path, authorization.as_deref(), oversize_body(&app)).await;
                assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{method} {path} with {authorization:?}");
                assert!(response.headers().contains_key("www-authenticate"), "{method} {path}");
            }
        }
    }

    async fn a_token_request_over_the_body_limit_is_refused(backend: Backend) {
        // Far below actix's own default of 256 KiB, which the endpoint used to apply.
        let app = spawn_app_with(backend, Role::Api, |s| s.max_body_bytes = 1024).await;
        let padding = "x".repeat(2048);
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", app.user.id.as_str()),
            ("client_secret", app.user.secret.as_str()),
            ("padding", padding.as_str()),
        ];
        let response = app.client.post(app.url("/oauth/token")).form(&form).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(response.headers()["cache-control"], "no-store");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], "invalid_request", "{body}");

        // Chunked, with no length declared: cut off at the limit all the same.
        let status = post_chunked(&app, "/oauth/token", &serde_urlencoded::to_string(form).unwrap()).await;
        assert_eq!(status, 413);

        // The control: the same credentials without the padding get a token.
        let response = app.client.post(app.url("/oauth/token")).form(&form[..3]).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
}

/// POSTs `body` as a form in 100-byte chunks (no `Content-Length`); returns
/// the response status.
async fn post_chunked(app: &TestApp, path: &str, body: &str) -> u16 {
    let address = app.address.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nhost: {address}\r\ncontent-type: application/x-www-form-urlencoded\r\n\
         transfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    );
    for chunk in body.as_bytes().chunks(100) {
        request.push_str(&format!(
            "{:x}\r\n{}\r\n",
            chunk.len(),
            std::str::from_utf8(chunk).unwrap()
        ));
    }
    request.push_str("0\r\n\r\n");
    // The server may answer and close before it has read everything.
    let _ = stream.write_all(request.as_bytes()).await;
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    let response = String::from_utf8_lossy(&response);
    response
        .split(' ')
        .nth(1)
        .and_then(|status| status.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {response:?}"))
}
