use reqwest::StatusCode;

backend_tests! {
    async fn healthz_answers_ok(app: &TestApp) {
        let response = app.get("/healthz").await;
        assert_eq!(response.status(), StatusCode::OK);
    }

    async fn readyz_answers_ok_once_migrations_are_applied(app: &TestApp) {
        let response = app.get("/readyz").await;
        assert_eq!(response.status(), StatusCode::OK);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["status"], "ready");
    }

    async fn every_response_carries_a_request_id(app: &TestApp) {
        let response = app.get("/healthz").await;
        let id = response.headers().get("x-request-id").unwrap().to_str().unwrap();
        assert!(id.starts_with("req_"), "{id}");
    }

    async fn a_plain_incoming_request_id_is_kept_and_a_hostile_one_replaced(app: &TestApp) {
        let kept = app.client.get(app.url("/healthz")).header("x-request-id", "abc-123").send().await.unwrap();
        assert_eq!(kept.headers()["x-request-id"], "abc-123");
        let replaced = app.client.get(app.url("/healthz")).header("x-request-id", "a b\tc").send().await.unwrap();
        assert_ne!(replaced.headers()["x-request-id"], "a b\tc");
    }
}
