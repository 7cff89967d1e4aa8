//! Every text a client can store is refused with a 422, on both backends,
//! when it holds NUL or another control character: PostgreSQL cannot store
//! NUL in `TEXT` at all (it used to be a 500 there), and SQLite would keep it.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_problem};

async fn send(app: &TestApp, method: Method, path: &str, body: &Value) -> reqwest::Response {
    app.client
        .request(method, app.url(path))
        .bearer_auth(&app.user.token)
        .json(body)
        .send()
        .await
        .unwrap()
}

/// The number of rows in `table`, read beside the server.
async fn count(app: &TestApp, table: &'static str) -> i64 {
    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let db = app.db.clone();
    tokio::task::spawn_blocking(move || {
        use diesel::RunQueryDsl;
        diesel::sql_query(format!("SELECT COUNT(*) AS n FROM {table}"))
            .get_result::<Count>(&mut *db.get().unwrap())
            .unwrap()
            .n
    })
    .await
    .unwrap()
}

backend_tests! {
    async fn nul_in_any_text_a_client_can_store_is_refused_with_422(app: &TestApp) {
        let message = app.create_message("m").await["id"].as_str().unwrap().to_owned();
        let created: Value = send(app, Method::POST, "/subscriptions", &json!({
            "url": "http://127.0.0.1:9/hook", "event_types": ["comment.created"], "description": "before",
        }))
        .await
        .json()
        .await
        .unwrap();
        let subscription = format!("/subscriptions/{}", created["id"].as_str().unwrap());
        let comments = format!("/messages/{message}/comments");
        let ok_url = "http://127.0.0.1:9/hook";
        let (messages_before, comments_before, subscriptions_before) =
            (count(app, "messages").await, count(app, "comments").await, count(app, "subscriptions").await);

        let cases = [
            (Method::POST, "/messages", json!({"text": "a\u{0}b"})),
            (Method::POST, "/messages", json!({"text": "ok", "newCommentWebhook": "http://127.0.0.1:9/a\u{0}b"})),
            (Method::POST, comments.as_str(), json!({"text": "\u{0}"})),
            (Method::POST, "/subscriptions", json!({"url": ok_url, "event_types": ["comment.created"], "description": "ci\u{0}"})),
            (Method::POST, "/subscriptions", json!({"url": ok_url, "event_types": ["comment.created"], "description": "\u{0}"})),
            (Method::POST, "/subscriptions", json!({"url": "http://127.0.0.1:9/a\u{0}b", "event_types": ["comment.created"]})),
            (Method::POST, "/subscriptions", json!({"url": "http://127.0.0.1:9/?q=\u{0}", "event_types": ["comment.created"]})),
            (Method::POST, "/subscriptions", json!({"url": ok_url, "event_types": ["comment.created\u{0}"]})),
            (Method::POST, "/subscriptions", json!({"url": ok_url, "event_types": ["comment.created"], "message_id": "msg_\u{0}"})),
            (Method::PATCH, subscription.as_str(), json!({"description": "after\u{0}"})),
            (Method::PATCH, subscription.as_str(), json!({"url": "http://127.0.0.1:9/a\u{0}b"})),
            (Method::PATCH, subscription.as_str(), json!({"event_types": ["\u{0}"]})),
            // Other control characters take the same way.
            (Method::POST, "/subscriptions", json!({"url": ok_url, "event_types": ["comment.created"], "description": "bell\u{7}"})),
            (Method::POST, "/subscriptions", json!({"url": "http://127.0.0.1:9/a\tb", "event_types": ["comment.created"]})),
        ];
        for (method, path, body) in cases {
            let response = send(app, method.clone(), path, &body).await;
            assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY, "{method} {path} {body}");
            assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY, "validation-failed").await;
        }

        // Nothing was stored or changed.
        assert_eq!(count(app, "messages").await, messages_before);
        assert_eq!(count(app, "comments").await, comments_before);
        assert_eq!(count(app, "subscriptions").await, subscriptions_before);
        let unchanged: Value = app.get(&subscription).await.json().await.unwrap();
        assert_eq!(unchanged["description"], "before");
        assert_eq!(unchanged["url"], ok_url);
        // Tab and newline stay allowed where they were.
        let described = send(app, Method::PATCH, &subscription, &json!({"description": "two\nlines\tand a tab"})).await;
        assert_eq!(described.status(), StatusCode::OK);
    }
}
