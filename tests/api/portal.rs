//! The subscriber portal's server side: its pages with their security
//! headers, the portal-link grant at `POST /oauth/token` (RFC 7523 JWT
//! bearer), and the health a subscription shows. The pages themselves are
//! tested in a browser by tests/portal.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use thinhook::auth::Scopes;
use thinhook::auth::portal_links::{self, JWT_BEARER};
use thinhook::domain::{ClientId, WorkspaceId};

use crate::auth::{server_policy, server_signing_key};
use crate::helpers::{TestApp, TestClient};
use crate::receiver::{Receiver, Reply};
use crate::webhooks::subscribe;

/// A link for `client`, signed as `thinhook portal-link` signs it.
async fn link_for(app: &TestApp, client: &TestClient, lifetime: Duration) -> String {
    let (key, policy) = (server_signing_key(app).await, server_policy(app));
    let id = ClientId::parse(&client.id).unwrap();
    portal_links::issue(
        &key,
        &policy,
        &id,
        &client.workspace,
        app.clock_now(),
        lifetime,
    )
    .unwrap()
    .0
}

async fn exchange(app: &TestApp, form: &[(&str, &str)]) -> (StatusCode, Value) {
    let response = app
        .client
        .post(app.url("/oauth/token"))
        .form(form)
        .send()
        .await
        .unwrap();
    (response.status(), response.json().await.unwrap())
}

async fn exchange_link(app: &TestApp, link: &str) -> (StatusCode, Value) {
    exchange(app, &[("grant_type", JWT_BEARER), ("assertion", link)]).await
}

/// The refusal of a link: `invalid_grant` saying `why`.
fn refused(answer: &(StatusCode, Value), why: &str) -> bool {
    answer.0 == StatusCode::BAD_REQUEST
        && answer.1["error"] == "invalid_grant"
        && answer.1["error_description"]
            .as_str()
            .unwrap()
            .contains(why)
}

backend_tests! {
    async fn a_portal_link_signs_in_once_to_manage_subscriptions(app: &TestApp) {
        let client = app.register_client("portal", Scopes::all()).await;
        let link = link_for(app, &client, portal_links::DEFAULT_LIFETIME).await;
        let (status, token) = exchange_link(app, &link).await;
        assert_eq!(status, StatusCode::OK, "{token}");
        assert_eq!(token["scope"], "subscriptions:manage", "only what the portal does");
        let token = token["access_token"].as_str().unwrap();
        assert_eq!(app.get_with_token("/subscriptions", token).await.status(), StatusCode::OK);
        let posted = app.client.post(app.url("/messages")).bearer_auth(token)
            .json(&serde_json::json!({"text": "not from the portal"})).send().await.unwrap();
        assert_eq!(posted.status(), StatusCode::FORBIDDEN, "the portal's token only manages subscriptions");

        assert!(refused(&exchange_link(app, &link).await, "used already"));
    }

    async fn a_client_that_may_not_manage_subscriptions_gets_no_portal_token(app: &TestApp) {
        let reader = app.register_client("reader", Scopes::parse("messages:read events:read").unwrap()).await;
        let answer = exchange_link(app, &link_for(app, &reader, portal_links::DEFAULT_LIFETIME).await).await;
        assert!(refused(&answer, "may not manage subscriptions"), "{answer:?}");
    }

    async fn a_link_of_a_revoked_or_moved_client_is_refused(app: &TestApp) {
        let revoked = app.register_client("revoked", Scopes::all()).await;
        let link = link_for(app, &revoked, portal_links::DEFAULT_LIFETIME).await;
        app.revoke(&revoked.id).await;
        assert!(refused(&exchange_link(app, &link).await, "revoked"));

        // A link naming another workspace than the client's.
        let client = app.register_client("moved", Scopes::all()).await;
        let elsewhere = TestClient { workspace: WorkspaceId::generate(), ..client };
        let link = link_for(app, &elsewhere, portal_links::DEFAULT_LIFETIME).await;
        assert!(refused(&exchange_link(app, &link).await, "no longer in the link's workspace"));
    }

    async fn malformed_links_and_requests_are_refused_clearly(app: &TestApp) {
        // An access token is not a link.
        assert!(refused(&exchange_link(app, &app.user.token).await, "malformed"));
        assert!(refused(&exchange_link(app, "not.a.jwt").await, "malformed"));
        let (status, body) = exchange(app, &[("grant_type", JWT_BEARER)]).await;
        assert_eq!((status, body["error"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_request")));
        let link = link_for(app, &app.user, portal_links::DEFAULT_LIFETIME).await;
        let (status, body) = exchange(app, &[("grant_type", JWT_BEARER), ("assertion", &link), ("scope", "messages:write")]).await;
        assert_eq!((status, body["error"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_scope")));
        // Its signature broken.
        let mut forged = link.clone();
        forged.replace_range(forged.len() - 4.., "AAAA");
        assert!(refused(&exchange_link(app, &forged).await, "signature"));
        // The metadata names the grant.
        let metadata: Value = app.get("/.well-known/oauth-authorization-server").await.json().await.unwrap();
        assert!(metadata["grant_types_supported"].as_array().unwrap().contains(&JWT_BEARER.into()));
    }

    async fn the_portal_is_served_with_a_strict_policy(app: &TestApp) {
        let page = app.client.get(app.url("/portal/")).send().await.unwrap();
        assert_eq!(page.status(), StatusCode::OK);
        let headers = page.headers().clone();
        assert_eq!(headers["content-type"], "text/html; charset=utf-8");
        let csp = headers["content-security-policy"].to_str().unwrap();
        for directive in ["default-src 'none'", "script-src 'self'", "style-src 'self'", "connect-src 'self'",
            "form-action 'none'", "base-uri 'none'", "frame-ancestors 'none'"] {
            assert!(csp.contains(directive), "{directive} in {csp}");
        }
        assert_eq!(headers["x-frame-options"], "DENY");
        assert_eq!(headers["x-content-type-options"], "nosniff");
        assert_eq!(headers["referrer-policy"], "no-referrer");
        let body = page.text().await.unwrap();
        assert!(body.contains(r#"<script type="module" src="app.js">"#) && !body.contains("<script>"), "no inline script");

        let script = app.client.get(app.url("/portal/app.js")).send().await.unwrap();
        assert_eq!(script.headers()["content-type"], "text/javascript; charset=utf-8");
        let etag = script.headers()["etag"].clone();
        let again = app.client.get(app.url("/portal/app.js")).header("if-none-match", etag).send().await.unwrap();
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        let style = app.client.get(app.url("/portal/app.css")).send().await.unwrap();
        assert_eq!(style.headers()["content-type"], "text/css; charset=utf-8");

        let bare = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
            .get(app.url("/portal")).send().await.unwrap();
        assert_eq!(bare.status(), StatusCode::PERMANENT_REDIRECT);
        assert_eq!(bare.headers()["location"], "portal/");
        let missing = app.client.get(app.url("/portal/secrets.txt")).send().await.unwrap();
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    }

    async fn a_test_event_is_signed_like_a_delivery_and_recorded_nowhere(app: &TestApp) {
        let receiver = Receiver::start().await;
        let (id, secret) = subscribe(app, &receiver.url("/hook"), &["comment.created"], None).await;
        // It also checks a disabled endpoint.
        let disabled = app.client.patch(app.url(&format!("/subscriptions/{id}"))).bearer_auth(&app.user.token)
            .json(&serde_json::json!({"enabled": false})).send().await.unwrap();
        assert_eq!(disabled.status(), StatusCode::OK);
        receiver.script([Reply::status(200).with_body(b"all good")]);
        let sent: Value = app.post_json(&format!("/subscriptions/{id}/test"), &serde_json::json!({})).await.json().await.unwrap();
        assert_eq!(sent["delivered"], true, "{sent}");
        assert_eq!((sent["status_code"].as_u64(), sent["response_excerpt"].as_str()), (Some(200), Some("all good")));
        let got = receiver.received();
        assert_eq!(got.len(), 1);
        assert!(crate::webhooks::signed_with(&got[0], &secret));
        assert_eq!(got[0].header("webhook-id"), sent["event_id"].as_str().unwrap());
        let body: Value = serde_json::from_slice(&got[0].body).unwrap();
        assert_eq!(body["type"], "webhook.test");
        assert_eq!(body["data"]["resource"]["type"], "subscription");
        assert!(body["data"].get("message_id").is_none(), "{body}");
        // Its link fetches the subscription.
        let link = body["data"]["resource"]["url"].as_str().unwrap();
        let fetched = app.client.get(link).bearer_auth(&app.user.token).send().await.unwrap();
        assert_eq!(fetched.status(), StatusCode::OK);
        // Recorded nowhere.
        assert!(crate::webhooks::deliveries_of(app, &id).await.is_empty());
        let feed: Value = app.get("/events").await.json().await.unwrap();
        assert!(feed["data"].as_array().unwrap().is_empty(), "{feed}");

        receiver.script([Reply::status(503)]);
        let sent: Value = app.post_json(&format!("/subscriptions/{id}/test"), &serde_json::json!({})).await.json().await.unwrap();
        assert_eq!((sent["delivered"].as_bool(), sent["status_code"].as_u64()), (Some(false), Some(503)));
        // Another client's subscription is as missing as any.
        let other = app.register_client("other", Scopes::all()).await;
        let theirs = app.client.post(app.url(&format!("/subscriptions/{id}/test"))).bearer_auth(&other.token)
            .json(&serde_json::json!({})).send().await.unwrap();
        assert_eq!(theirs.status(), StatusCode::NOT_FOUND);
    }

    async fn a_subscription_tells_its_last_success_and_since_when_it_fails(app: &TestApp) {
        let receiver = Receiver::start().await;
        let (id, _) = subscribe(app, &receiver.url("/"), &["comment.created"], None).await;
        let health = |body: Value| body["health"].clone();
        let read = || async { app.get(&format!("/subscriptions/{id}")).await.json::<Value>().await.unwrap() };
        assert_eq!(health(read().await), serde_json::json!({"last_success_at": null, "failing_since": null}));

        let message = crate::webhooks::id(&app.create_message("m").await);
        app.create_comment(&message, "ok").await;
        app.dispatch_all_pending().await;
        let healthy = health(read().await);
        assert!(healthy["last_success_at"].is_string(), "{healthy}");
        assert!(healthy["failing_since"].is_null());

        receiver.script([Reply::status(500)]);
        app.create_comment(&message, "fails").await;
        app.dispatch_all_pending().await;
        let failing = health(read().await);
        assert!(failing["failing_since"].is_string(), "{failing}");
        assert_eq!(failing["last_success_at"], healthy["last_success_at"]);

        // The same deliveries, counted per hour for a chart.
        let stats: Value = app.get("/deliveries/stats").await.json().await.unwrap();
        let hours = stats["hours"].as_array().unwrap();
        let total = |status: &str| hours.iter().map(|hour| hour[status].as_i64().unwrap()).sum::<i64>();
        assert_eq!((total("delivered"), total("failed"), total("pending")), (1, 0, 1), "{stats}");
        assert!(hours[0]["hour"].as_str().unwrap().ends_with(":00:00Z"), "{stats}");
        let other = app.register_client("other", Scopes::all()).await;
        let theirs: Value = app.get_with_token("/deliveries/stats", &other.token).await.json().await.unwrap();
        assert_eq!(theirs["hours"], serde_json::json!([]));
        let later = (app.clock_now() + Duration::from_secs(3600)).format(&time::format_description::well_known::Rfc3339).unwrap();
        let none: Value = app.get(&format!("/deliveries/stats?since={later}")).await.json().await.unwrap();
        assert_eq!(none["hours"], serde_json::json!([]));
        for bad in ["yesterday", "2000-01-01T00:00:00Z"] {
            assert_eq!(app.get(&format!("/deliveries/stats?since={bad}")).await.status(), StatusCode::BAD_REQUEST, "{bad}");
        }
    }
}

mod configured {
    use super::*;
    use crate::helpers::spawn_app_with;
    use thinhook::startup::Role;

    backend_tests_with_backend! {
        async fn a_link_expires(backend: Backend) {
            let mut app = crate::helpers::spawn_app(backend).await;
            let link = link_for(&app, &app.user, Duration::from_secs(600)).await;
            app.advance(Duration::from_secs(600 + app.settings.auth.leeway_secs)).await;
            assert!(refused(&exchange_link(&app, &link).await, "expired"));
        }

        async fn the_portal_may_be_framed_where_configured_or_turned_off(backend: Backend) {
            let app = spawn_app_with(backend, Role::Api, |s| {
                s.portal.frame_ancestors = "'self' https://app.example.com".into();
            }).await;
            let page = app.client.get(app.url("/portal/")).send().await.unwrap();
            let csp = page.headers()["content-security-policy"].to_str().unwrap().to_owned();
            assert!(csp.ends_with("frame-ancestors 'self' https://app.example.com"), "{csp}");
            assert!(page.headers().get("x-frame-options").is_none());

            let off = spawn_app_with(backend, Role::Api, |s| s.portal.enabled = false).await;
            let page = off.client.get(off.url("/portal/")).send().await.unwrap();
            assert_eq!(page.status(), StatusCode::NOT_FOUND);
        }
    }
}
