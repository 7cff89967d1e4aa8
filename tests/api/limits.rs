//! Limits on what one caller may ask: the per-client API rate limit and the
//! token endpoint's limits, which keep a flood of guesses from taking the
//! gateway down.

use reqwest::StatusCode;
use serde_json::Value;

use thinhook::auth::Scopes;
use thinhook::startup::Role;

use crate::helpers::{assert_problem, spawn_app_with};

/// The structured-field parameter `name` of a `RateLimit` header value.
fn parameter(value: &str, name: &str) -> u64 {
    value
        .split(';')
        .find_map(|part| part.trim().strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no `{name}` in {value}"))
        .parse()
        .unwrap()
}

backend_tests_with_backend! {
    async fn past_its_burst_a_client_gets_429_with_retry_after_and_ratelimit_headers(backend: Backend) {
        // One request per 100 s refills nothing during the test.
        let app = spawn_app_with(backend, Role::Api, |s| {
            s.limits.api_per_second = 0.01;
            s.limits.api_burst = 3;
        })
        .await;
        let other = app.register_client("other", Scopes::all()).await;
        let feed = "/events";

        for remaining in [2, 1, 0] {
            let response = app.get(feed).await;
            assert_eq!(response.status(), StatusCode::OK);
            let headers = response.headers();
            assert_eq!(headers["ratelimit-policy"], "\"per-client\";q=3;w=300");
            let left = headers["ratelimit"].to_str().unwrap();
            assert_eq!(parameter(left, "r"), remaining, "{left}");
        }

        let refused = app.get(feed).await;
        let retry_after: u64 = refused.headers()["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=100).contains(&retry_after), "{retry_after}");
        let left = refused.headers()["ratelimit"].to_str().unwrap().to_owned();
        assert_eq!(parameter(&left, "r"), 0);
        assert_problem(refused, StatusCode::TOO_MANY_REQUESTS, "rate-limited").await;

        // Buckets are per client.
        let theirs = app.get_with_token(feed, &other.token).await;
        assert_eq!(theirs.status(), StatusCode::OK);
    }

    async fn token_requests_past_the_limit_get_429_slow_down(backend: Backend) {
        let app = spawn_app_with(backend, Role::Api, |s| {
            s.limits.token_per_second = 0.01;
            s.limits.token_burst = 2;
        })
        .await;
        // The app's own client took one token from this address at start.
        let form = [("grant_type", "client_credentials")];
        let ask = || {
            app.client
                .post(app.url("/oauth/token"))
                .basic_auth(&app.user.id, Some(&app.user.secret))
                .form(&form)
                .send()
        };
        assert_eq!(ask().await.unwrap().status(), StatusCode::OK);
        let refused = ask().await.unwrap();
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        let retry_after: u64 = refused.headers()["retry-after"].to_str().unwrap().parse().unwrap();
        assert!(retry_after >= 1);
        let body: Value = refused.json().await.unwrap();
        assert_eq!(body["error"], "slow_down", "{body}");
    }

    async fn a_flood_of_bad_token_requests_leaves_the_api_answering(backend: Backend) {
        // The default limits, which the other tests raise.
        let app = spawn_app_with(backend, Role::Api, |s| s.limits = thinhook::config::LimitSettings::default())
        .await;
        let path = format!("/messages/{}", app.create_message("still here").await["id"].as_str().unwrap());
        // Well-formed ids that exist nowhere: each one that passes the
        // limits costs a secret check.
        let flood: Vec<_> = (0..200)
            .map(|_| {
                let client = app.client.clone();
                let url = app.url("/oauth/token");
                let id = thinhook::domain::ClientId::generate().to_string();
                tokio::spawn(async move {
                    client
                        .post(url)
                        .basic_auth(id, Some("thcs_guess"))
                        .form(&[("grant_type", "client_credentials")])
                        .send()
                        .await
                        .map(|r| r.status())
                })
            })
            .collect();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let started = std::time::Instant::now();
        let response = app.get(&path).await;
        let took = started.elapsed();
        assert_eq!(response.status(), StatusCode::OK);
        assert!(took < std::time::Duration::from_secs(1), "an authenticated GET took {took:?} during the flood");
        for request in flood {
            let status = request.await.unwrap().unwrap();
            assert!(
                [StatusCode::UNAUTHORIZED, StatusCode::TOO_MANY_REQUESTS, StatusCode::SERVICE_UNAVAILABLE]
                    .contains(&status),
                "{status}"
            );
        }
    }

    async fn a_malformed_client_id_is_refused_without_a_secret_check(backend: Backend) {
        // With the only secret checker taken, any check would wait, then 503.
        let app = spawn_app_with(backend, Role::Api, |s| s.limits.concurrent_secret_checks = 1).await;
        let checks = app.authenticator.as_ref().unwrap().limits.secret_checks.clone();
        let busy = checks.acquire().await.unwrap();
        let response = app
            .client
            .post(app.url("/oauth/token"))
            .basic_auth("not-a-client-id", Some("whatever"))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], "invalid_client");
        drop(busy);
    }
}

/// POST /subscriptions as `token`.
async fn subscribe(
    app: &crate::helpers::TestApp,
    token: &str,
    message_id: Option<&str>,
) -> reqwest::Response {
    let mut body =
        serde_json::json!({"url": "http://127.0.0.1:9/hook", "event_types": ["comment.created"]});
    if let Some(message_id) = message_id {
        body["message_id"] = message_id.into();
    }
    app.client
        .post(app.url("/subscriptions"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// Quotas on subscriptions.
mod quotas {
    use super::*;

    backend_tests_with_backend! {
        async fn a_client_past_its_subscription_quota_gets_409(backend: Backend) {
            let app = spawn_app_with(backend, Role::Api, |s| s.limits.max_subscriptions_per_client = 2).await;
            let token = app.user.token.clone();
            for _ in 0..2 {
                assert_eq!(subscribe(&app, &token, None).await.status(), StatusCode::CREATED);
            }
            assert_problem(subscribe(&app, &token, None).await, StatusCode::CONFLICT, "quota-exceeded").await;

            // newCommentWebhook counts too, and nothing of the refused request is kept.
            let refused = app
                .post_json("/messages", &serde_json::json!({"text": "m", "newCommentWebhook": "http://127.0.0.1:9/hook"}))
                .await;
            assert_problem(refused, StatusCode::CONFLICT, "quota-exceeded").await;
            let feed: Value = app.get("/events").await.json().await.unwrap();
            assert_eq!(feed["data"], serde_json::json!([]), "the refused message was created");

            // Quotas are per client.
            let other = app.register_client("other", Scopes::all()).await;
            assert_eq!(subscribe(&app, &other.token, None).await.status(), StatusCode::CREATED);
        }

        async fn no_event_matches_more_subscriptions_than_the_bound(backend: Backend) {
            let app = spawn_app_with(backend, Role::Api, |s| s.limits.max_subscriptions_per_event = 2).await;
            let message = app.create_message("busy").await["id"].as_str().unwrap().to_owned();
            let (a, b) = (app.register_client("a", Scopes::all()).await, app.register_client("b", Scopes::all()).await);
            assert_eq!(subscribe(&app, &a.token, None).await.status(), StatusCode::CREATED);
            assert_eq!(subscribe(&app, &b.token, Some(&message)).await.status(), StatusCode::CREATED);
            // Either would make the message's events match 3.
            assert_problem(subscribe(&app, &b.token, Some(&message)).await, StatusCode::CONFLICT, "quota-exceeded").await;
            assert_problem(subscribe(&app, &a.token, None).await, StatusCode::CONFLICT, "quota-exceeded").await;
            // Another message's events match only the unfiltered one so far.
            let quiet = app.create_message("quiet").await["id"].as_str().unwrap().to_owned();
            assert_eq!(subscribe(&app, &a.token, Some(&quiet)).await.status(), StatusCode::CREATED);
        }
    }
}
