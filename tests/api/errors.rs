//! Requests that must be refused before any handler logic runs.

use reqwest::StatusCode;

use crate::helpers::assert_problem;

backend_tests! {
    async fn a_one_mebibyte_body_returns_413(app: &TestApp) {
        let body = format!("{{\"text\": \"{}\"}}", "a".repeat(1024 * 1024));
        let response = app.post_raw("/messages", "application/json", body).await;
        assert_problem(response, StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large").await;
    }

    async fn a_body_that_is_not_json_returns_415(app: &TestApp) {
        for content_type in ["text/plain", "application/x-www-form-urlencoded", "application/xml"] {
            let response = app.post_raw("/messages", content_type, "text=hello").await;
            assert_problem(response, StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type").await;
        }
    }

    async fn an_unknown_route_returns_404(app: &TestApp) {
        let response = app.get("/no/such/route").await;
        assert_problem(response, StatusCode::NOT_FOUND, "not-found").await;
    }

    async fn an_unsupported_method_returns_405_with_the_allowed_ones(app: &TestApp) {
        for (path, allow) in [("/messages", "POST"), ("/subscriptions/sub_x", "DELETE, GET, PATCH"), ("/healthz", "GET")] {
            let response = app.client.put(app.url(path)).send().await.unwrap();
            assert_eq!(response.headers()["allow"], allow, "{path}");
            assert_problem(response, StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed").await;
        }
    }

    async fn a_malformed_cursor_in_any_list_is_a_problem_document(app: &TestApp) {
        let message = app.create_message("m").await["id"].as_str().unwrap().to_owned();
        let subscription: serde_json::Value = app
            .post_json("/subscriptions", &serde_json::json!({"url": "http://127.0.0.1:9/", "event_types": ["comment.created"]}))
            .await
            .json()
            .await
            .unwrap();
        let lists = [
            "/events".to_owned(),
            format!("/messages/{message}/comments"),
            "/subscriptions".to_owned(),
            format!("/subscriptions/{}/deliveries", subscription["id"].as_str().unwrap()),
        ];
        for list in &lists {
            for cursor in ["garbage", "%ZZ", "", "djE6", "djE6bXNnX3g", "%00", &"a".repeat(5000)] {
                let response = app.get(&format!("{list}?after={cursor}")).await;
                let what = format!("{list}?after={}", &cursor[..cursor.len().min(20)]);
                assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{what}");
                assert_eq!(response.headers()["content-type"], "application/problem+json", "{what}");
                let problem: serde_json::Value = response.json().await.unwrap();
                assert!(problem["detail"].as_str().is_some_and(|d| !d.is_empty()), "{what}: {problem}");
            }
        }
    }
}
