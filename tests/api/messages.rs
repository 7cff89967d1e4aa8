use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::assert_problem;

backend_tests! {
    async fn create_message_returns_201_with_location_and_the_message(app: &TestApp) {
        let response = app.post_json("/messages", &json!({"text": "Hello, board"})).await;

        assert_eq!(response.status(), StatusCode::CREATED);
        let location = response.headers()["location"].to_str().unwrap().to_owned();
        let message: Value = response.json().await.unwrap();
        let id = message["id"].as_str().unwrap();
        assert!(id.starts_with("msg_"), "{id}");
        assert_eq!(location, app.url(&format!("/messages/{id}")));
        assert_eq!(message["text"], "Hello, board");
        assert!(message["created_at"].as_str().unwrap().ends_with('Z'));
    }

    async fn a_created_message_reads_back_identically(app: &TestApp) {
        let created = app.create_message("read me back").await;

        let response = app.get(&format!("/messages/{}", created["id"].as_str().unwrap())).await;

        assert_eq!(response.status(), StatusCode::OK);
        let read: Value = response.json().await.unwrap();
        assert_eq!(read, created);
    }

    async fn new_comment_webhook_is_accepted_when_it_is_an_http_url(app: &TestApp) {
        let response = app
            .post_json("/messages", &json!({"text": "hi", "newCommentWebhook": "http://127.0.0.1:9/hooks"}))
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
    }

    async fn new_comment_webhook_that_is_not_an_http_url_returns_422(app: &TestApp) {
        for url in ["ftp://example.com/", "not a url", "https://user:pw@example.com/"] {
            let response = app.post_json("/messages", &json!({"text": "hi", "newCommentWebhook": url})).await;
            let problem = assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY, "validation-failed").await;
            assert!(problem["detail"].as_str().unwrap().contains("newCommentWebhook"), "{problem}");
        }
    }

    async fn unknown_message_returns_404(app: &TestApp) {
        let response = app.get("/messages/msg_01jd5x8w3k2m4n6p7q9r0s1t2v").await;
        assert_problem(response, StatusCode::NOT_FOUND, "not-found").await;
    }

    async fn malformed_message_id_returns_400(app: &TestApp) {
        for bad in ["42", "msg_short", "cmt_01jd5x8w3k2m4n6p7q9r0s1t2v", "msg_01JD5X8W3K2M4N6P7Q9R0S1T2V"] {
            let response = app.get(&format!("/messages/{bad}")).await;
            let problem = assert_problem(response, StatusCode::BAD_REQUEST, "invalid-request").await;
            assert!(problem["detail"].as_str().unwrap().contains("message id"), "{problem}");
        }
    }

    async fn malformed_json_returns_400(app: &TestApp) {
        for body in ["{\"text\": ", "not json", "{\"text\": \"a\"} trailing", ""] {
            let response = app.post_raw("/messages", "application/json", body).await;
            assert_problem(response, StatusCode::BAD_REQUEST, "malformed-json").await;
        }
    }

    async fn wrong_field_types_and_missing_fields_return_422(app: &TestApp) {
        for body in [json!({"text": 42}), json!({}), json!([]), json!({"text": "a", "newCommentWebhook": 7})] {
            let response = app.post_json("/messages", &body).await;
            assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY, "validation-failed").await;
        }
    }

    async fn unknown_fields_return_422_naming_the_field(app: &TestApp) {
        let response = app.post_json("/messages", &json!({"text": "a", "newCommentWebHook": "https://x.example/"})).await;
        let problem = assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY, "validation-failed").await;
        assert!(problem["detail"].as_str().unwrap().contains("newCommentWebHook"), "{problem}");
    }

    async fn empty_or_oversized_text_returns_422(app: &TestApp) {
        for text in [String::new(), "   \n ".to_owned(), "x".repeat(10_001)] {
            let response = app.post_json("/messages", &json!({"text": text})).await;
            let problem = assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY, "validation-failed").await;
            assert!(problem["detail"].as_str().unwrap().contains("`text`"), "{problem}");
        }
    }

    async fn text_of_exactly_the_maximum_length_is_accepted(app: &TestApp) {
        let response = app.post_json("/messages", &json!({"text": "ü".repeat(10_000)})).await;
        assert_eq!(response.status(), StatusCode::CREATED);
    }
}
