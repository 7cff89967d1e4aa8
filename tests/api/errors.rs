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

    async fn an_unsupported_method_returns_405(app: &TestApp) {
        let response = app.client.delete(app.url("/messages")).send().await.unwrap();
        assert_problem(response, StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed").await;
    }
}
