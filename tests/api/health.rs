use reqwest::StatusCode;
use thinhook::startup::{Application, Role};

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

    async fn readyz_fails_when_the_signing_key_does_not_open_with_this_secrets_key(app: &TestApp) {
        // As when `keys rotate` ran with another key file: the newest key is
        // sealed with a key this process does not have.
        let other = thinhook::secret_box::SecretBox::new(&[9u8; 32]);
        let later = app.clock_now() + time::Duration::seconds(1);
        let row = thinhook::auth::keys::generate_row(later, &other).unwrap();
        let db = app.db.clone();
        tokio::task::spawn_blocking(move || thinhook::db::signing_keys::insert(&mut db.get().unwrap(), &row))
            .await
            .unwrap()
            .unwrap();

        let response = app.get("/readyz").await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    async fn a_server_with_a_missing_or_wrong_key_file_refuses_to_start(app: &TestApp) {
        // The app's database holds a signing key sealed with its secrets key.
        let dir = tempfile::tempdir().unwrap();
        let start_with = |key_file: std::path::PathBuf| {
            let mut settings = app.settings.clone();
            settings.listen = "127.0.0.1:0".parse().unwrap();
            settings.secrets.encryption_key = String::new();
            settings.secrets.key_file = key_file.display().to_string();
            async move { Application::build(&settings, Role::Api).await }
        };

        let missing = dir.path().join("new.key");
        let error = start_with(missing.clone()).await.unwrap_err();
        assert!(format!("{error:#}").contains("does not exist"), "{error:#}");
        assert!(!missing.exists(), "a key file was made for a database that has secrets");

        let wrong = dir.path().join("wrong.key");
        std::fs::write(&wrong, "CQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQk=").unwrap();
        let error = start_with(wrong).await.unwrap_err();
        assert!(format!("{error:#}").contains("does not open"), "{error:#}");
    }

    async fn the_latest_migration_reverts_and_applies_again_with_data_in_place(app: &TestApp) {
        let receiver = crate::receiver::Receiver::start().await;
        let message = app.create_message("kept").await["id"].as_str().unwrap().to_owned();
        let subscription: serde_json::Value = app
            .post_json("/subscriptions", &serde_json::json!({"url": receiver.url("/"), "event_types": ["comment.created"]}))
            .await
            .json()
            .await
            .unwrap();
        app.create_comment(&message, "through both directions").await;
        assert_eq!(app.dispatch_all_pending().await, 1);
        let db = app.db.clone();

        let (reverted, applied) = tokio::task::spawn_blocking(move || {
            (db.revert_last_migration().unwrap(), db.migrate().unwrap())
        })
        .await
        .unwrap();

        assert_eq!(applied, [reverted]);
        let comments: serde_json::Value = app.get(&format!("/messages/{message}/comments")).await.json().await.unwrap();
        assert_eq!(comments["data"][0]["text"], "through both directions");
        let log: serde_json::Value = app
            .get(&format!("/subscriptions/{}/deliveries", subscription["id"].as_str().unwrap()))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(log["data"][0]["status"], "delivered");
        assert_eq!(log["data"][0]["attempts"][0]["status_code"], 200);
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
