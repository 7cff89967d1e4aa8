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
        let row = thinhook::auth::keys::generate_row(later, &other, thinhook::db::signing_keys::Purpose::Tokens).unwrap();
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

/// The pool discards a connection given back in a bad state.
mod pool {
    use diesel::connection::{AnsiTransactionManager, SimpleConnection, TransactionManager};
    use thinhook::db::{Database, DbConnection};

    /// A pool of one connection on the test app's database.
    fn one_connection(app: &crate::helpers::TestApp) -> Database {
        let mut settings = app.settings.database.clone();
        settings.pool_size = 1;
        Database::connect(&settings).unwrap()
    }

    /// Whether this connection carries the marker (a temporary table, which
    /// only the connection that made it sees).
    fn marked(conn: &mut DbConnection) -> bool {
        conn.batch_execute("SELECT * FROM pool_marker").is_ok()
    }

    backend_tests! {
        async fn a_connection_given_back_inside_a_transaction_is_not_reused(app: &TestApp) {
            let db = one_connection(app);
            tokio::task::spawn_blocking(move || {
                {
                    let mut conn = db.get().unwrap();
                    let conn: &mut DbConnection = &mut conn;
                    match conn {
                        DbConnection::Sqlite(c) => AnsiTransactionManager::begin_transaction(c).unwrap(),
                        DbConnection::Postgres(c) => AnsiTransactionManager::begin_transaction(c).unwrap(),
                    }
                    conn.batch_execute("CREATE TEMPORARY TABLE pool_marker (x INTEGER)").unwrap();
                    // Given back without a commit or a rollback.
                }
                let mut conn = db.get().unwrap();
                assert!(!marked(&mut conn), "the next user got the open transaction");
            })
            .await
            .unwrap();
        }

        async fn a_connection_held_by_a_panicking_task_is_not_reused(app: &TestApp) {
            let db = one_connection(app);
            let holder = db.clone();
            let panicked = tokio::task::spawn_blocking(move || {
                let mut conn = holder.get().unwrap();
                conn.batch_execute("CREATE TEMPORARY TABLE pool_marker (x INTEGER)").unwrap();
                panic!("a bug while holding a connection");
            })
            .await;
            assert!(panicked.is_err());
            tokio::task::spawn_blocking(move || assert!(!marked(&mut db.get().unwrap())))
                .await
                .unwrap();
        }
    }
}

#[tokio::test]
async fn sqlite_commits_sync_at_every_commit_when_asked() {
    use diesel::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct Synchronous {
        #[diesel(sql_type = diesel::sql_types::Integer)]
        synchronous: i32,
    }
    let app = crate::helpers::spawn_app_with(crate::helpers::Backend::Sqlite, Role::Api, |s| {
        s.database.sqlite_synchronous = thinhook::config::SqliteSynchronous::Full;
    })
    .await;
    let db = app.db.clone();
    let level = tokio::task::spawn_blocking(move || {
        diesel::sql_query("PRAGMA synchronous")
            .get_result::<Synchronous>(&mut *db.get().unwrap())
            .unwrap()
            .synchronous
    })
    .await
    .unwrap();
    assert_eq!(level, 2, "FULL");
    let response = app
        .post_json("/messages", &serde_json::json!({"text": "kept"}))
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
}

mod discovery {
    use reqwest::StatusCode;
    use serde_json::Value;

    backend_tests! {
        async fn the_spec_and_the_authorization_server_metadata_are_served(app: &TestApp) {
            let spec = app.client.get(app.url("/openapi.yaml")).send().await.unwrap();
            assert_eq!(spec.status(), StatusCode::OK);
            assert_eq!(spec.headers()["content-type"], "application/yaml");
            assert_eq!(spec.text().await.unwrap(), include_str!("../../openapi.yaml"));

            let metadata: Value = app
                .client
                .get(app.url("/.well-known/oauth-authorization-server"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert_eq!(metadata["issuer"], app.address.as_str());
            assert_eq!(
                metadata["grant_types_supported"],
                serde_json::json!(["client_credentials", "urn:ietf:params:oauth:grant-type:jwt-bearer"])
            );
            // The endpoints it names work.
            let token_endpoint = metadata["token_endpoint"].as_str().unwrap();
            let token = app
                .client
                .post(token_endpoint)
                .basic_auth(&app.user.id, Some(&app.user.secret))
                .form(&[("grant_type", "client_credentials")])
                .send()
                .await
                .unwrap();
            assert_eq!(token.status(), StatusCode::OK);
            let keys: Value = app.client.get(metadata["jwks_uri"].as_str().unwrap()).send().await.unwrap().json().await.unwrap();
            assert!(!keys["keys"].as_array().unwrap().is_empty());
        }
    }
}
