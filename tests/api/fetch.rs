//! Fetch semantics of resource URLs: ETag/304 and delivered → fetched.

use reqwest::StatusCode;
use serde_json::{Value, json};
use thinhook::auth::Scopes;

use crate::helpers::TestApp;
use crate::receiver::Receiver;

fn id(value: &Value) -> String {
    value["id"].as_str().unwrap().to_owned()
}

backend_tests! {
    async fn a_resource_carries_a_strong_etag_and_answers_304_when_unchanged(app: &TestApp) {
        let message = id(&app.create_message("m").await);
        let comment = id(&app.create_comment(&message, "c").await);
        for path in [format!("/messages/{message}"), format!("/messages/{message}/comments/{comment}")] {
            let first = app.get(&path).await;
            assert_eq!(first.status(), StatusCode::OK);
            assert_eq!(first.headers()["cache-control"], "private");
            let etag = first.headers()["etag"].to_str().unwrap().to_owned();
            assert!(etag.starts_with('"') && !etag.starts_with("W/"), "{etag}");
            let body: Value = first.json().await.unwrap();
            assert_eq!(body["id"].as_str().map(|_| ()), Some(()));

            let again = app.client.get(app.url(&path)).bearer_auth(&app.user.token)
                .header("if-none-match", &etag).send().await.unwrap();
            assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
            assert_eq!(again.headers()["etag"].to_str().unwrap(), etag);
            assert!(again.bytes().await.unwrap().is_empty());

            let other = app.client.get(app.url(&path)).bearer_auth(&app.user.token)
                .header("if-none-match", "\"something-else\"").send().await.unwrap();
            assert_eq!(other.status(), StatusCode::OK);
        }
    }

    async fn a_fetch_by_the_subscriber_marks_its_delivery_fetched(app: &TestApp) {
        let receiver = Receiver::start().await;
        let message = id(&app.create_message("m").await);
        let created: Value = app
            .post_json("/subscriptions", &json!({"url": receiver.url("/"), "event_types": ["comment.created"]}))
            .await
            .json()
            .await
            .unwrap();
        let subscription = id(&created);
        let comment = id(&app.create_comment(&message, "c").await);
        app.dispatch_all_pending().await;
        let log_path = format!("/subscriptions/{subscription}/deliveries");
        let fetched_at = |log: &Value| log["data"][0]["fetched_at"].clone();
        assert_eq!(fetched_at(&log(app, &log_path).await), Value::Null);

        // Another client reading the comment is not the subscriber.
        let other = app.register_client("other", Scopes::all()).await;
        let path = format!("/messages/{message}/comments/{comment}");
        assert_eq!(app.get_with_token(&path, &other.token).await.status(), StatusCode::OK);
        app.writes_committed().await;
        assert_eq!(fetched_at(&log(app, &log_path).await), Value::Null);

        assert_eq!(app.get(&path).await.status(), StatusCode::OK);
        app.writes_committed().await;
        let first = fetched_at(&log(app, &log_path).await);
        assert!(first.is_string(), "{first}");
        // The first fetch counts; later ones do not move it.
        app.clock.advance(std::time::Duration::from_secs(60));
        app.get(&path).await;
        app.writes_committed().await;
        assert_eq!(fetched_at(&log(app, &log_path).await), first);
    }
}

async fn log(app: &TestApp, path: &str) -> Value {
    app.get(path).await.json().await.unwrap()
}
