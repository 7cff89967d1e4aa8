//! Keeps `openapi.yaml` and the server in step: every operation the spec
//! declares is routed by the server, and every route the server has is in
//! the spec. (CI also validates the file with openapi-spec-validator.)

use std::collections::BTreeSet;

use reqwest::{Method, StatusCode};
use serde_json::Value;

const SPEC: &str = include_str!("../../openapi.yaml");

/// Every route the server registers, as (METHOD, path template). Keep in
/// step with `src/http/*::routes`; the test below checks the spec against it.
pub(crate) const SERVER_ROUTES: &[(&str, &str)] = &[
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("POST", "/oauth/token"),
    ("GET", "/.well-known/jwks.json"),
    ("GET", "/.well-known/oauth-authorization-server"),
    ("GET", "/openapi.yaml"),
    ("GET", "/metrics"),
    ("GET", "/.well-known/webhook-keys.json"),
    ("POST", "/messages"),
    ("GET", "/messages/{messageId}"),
    ("POST", "/messages/{messageId}/comments"),
    ("GET", "/messages/{messageId}/comments"),
    ("GET", "/messages/{messageId}/comments/{commentId}"),
    ("POST", "/subscriptions"),
    ("GET", "/subscriptions"),
    ("GET", "/subscriptions/{subscriptionId}"),
    ("PATCH", "/subscriptions/{subscriptionId}"),
    ("DELETE", "/subscriptions/{subscriptionId}"),
    ("POST", "/subscriptions/{subscriptionId}/secret/rotate"),
    ("POST", "/subscriptions/{subscriptionId}/verify"),
    ("POST", "/subscriptions/{subscriptionId}/test"),
    ("GET", "/subscriptions/{subscriptionId}/deliveries"),
    ("POST", "/subscriptions/{subscriptionId}/replay"),
    ("GET", "/deliveries"),
    ("GET", "/deliveries/stats"),
    ("POST", "/deliveries/{deliveryId}/retry"),
    ("GET", "/events"),
    ("GET", "/events/{eventId}"),
];

/// (METHOD, path) of every operation under `paths:` in the spec.
fn spec_operations() -> BTreeSet<(String, String)> {
    let mut operations = BTreeSet::new();
    let mut in_paths = false;
    let mut path = String::new();
    for line in SPEC.lines() {
        if !line.starts_with(' ') && !line.is_empty() {
            in_paths = line == "paths:";
            continue;
        }
        if !in_paths {
            continue;
        }
        if let Some(p) = line.strip_prefix("  /").and_then(|l| l.strip_suffix(':')) {
            path = format!("/{p}");
        } else if let Some(method) = line
            .strip_prefix("    ")
            .and_then(|l| l.strip_suffix(':'))
            .filter(|m| ["get", "post", "put", "patch", "delete"].contains(m))
        {
            operations.insert((method.to_uppercase(), path.clone()));
        }
    }
    operations
}

/// A path template with well-formed (unknown) ids.
fn concrete(path: &str) -> String {
    path.replace("{messageId}", "msg_01jd5x8w3k2m4n6p7q9r0s1t2v")
        .replace("{commentId}", "cmt_01jd5x8w3k2m4n6p7q9r0s1t2v")
        .replace("{subscriptionId}", "sub_01jd5x8w3k2m4n6p7q9r0s1t2v")
        .replace("{deliveryId}", "dlv_01jd5x8w3k2m4n6p7q9r0s1t2v")
        .replace("{eventId}", "evt_01jd5x8w3k2m4n6p7q9r0s1t2v")
}

#[test]
fn the_spec_declares_exactly_the_server_routes() {
    let declared = spec_operations();
    let served: BTreeSet<(String, String)> = SERVER_ROUTES
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    let undocumented: Vec<_> = served.difference(&declared).collect();
    let unserved: Vec<_> = declared.difference(&served).collect();
    assert!(
        undocumented.is_empty(),
        "routes missing from openapi.yaml: {undocumented:?}"
    );
    assert!(
        unserved.is_empty(),
        "operations in openapi.yaml the server lacks: {unserved:?}"
    );
}

backend_tests! {
    async fn every_server_route_exists_and_every_other_is_unknown(app: &TestApp) {
        for (method, path) in SERVER_ROUTES {
            let method = Method::from_bytes(method.as_bytes()).unwrap();
            let response = app
                .client
                .request(method.clone(), app.url(&concrete(path)))
                .send()
                .await
                .unwrap();
            let status = response.status();
            let body: Value = response.json().await.unwrap_or_default();
            let unrouted = status == StatusCode::METHOD_NOT_ALLOWED
                || body["detail"].as_str().is_some_and(|d| d.starts_with("no route matches"));
            assert!(!unrouted, "{method} {path} is not routed: {status} {body}");
        }
        // The control: a route absent from the table is unknown to the server.
        let response = app.client.get(app.url("/messages/msg_01jd5x8w3k2m4n6p7q9r0s1t2v/likes")).send().await.unwrap();
        let body: Value = response.json().await.unwrap();
        assert!(body["detail"].as_str().unwrap().starts_with("no route matches"), "{body}");
    }
}
