//! The subscriptions API: registration (with the SSRF guard), ownership, secrets.

use reqwest::{Response, StatusCode};
use serde_json::{Value, json};
use thinhook::auth::Scopes;

use crate::helpers::{TestApp, assert_problem};

fn id(value: &Value) -> &str {
    value["id"].as_str().unwrap()
}

async fn send(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> Response {
    let mut request = app.client.request(method, app.url(path)).bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    request.send().await.unwrap()
}

async fn subscribe(app: &TestApp, body: Value) -> Response {
    app.post_json("/subscriptions", &body).await
}

backend_tests! {
    async fn a_subscription_is_created_with_its_secret_shown_once(app: &TestApp) {
        let response = subscribe(app, json!({"url": "http://127.0.0.1:9/hook", "event_types": ["comment.created"], "description": "ci"})).await;

        assert_eq!(response.status(), StatusCode::CREATED);
        let location = response.headers()["location"].to_str().unwrap().to_owned();
        let created: Value = response.json().await.unwrap();
        assert!(id(&created).starts_with("sub_"));
        assert_eq!(location, app.url(&format!("/subscriptions/{}", id(&created))));
        assert!(created["secret"].as_str().unwrap().starts_with("whsec_"));
        assert_eq!(created["event_types"], json!(["comment.created"]));
        assert_eq!(created["enabled"], true);

        let read: Value = app.get(&format!("/subscriptions/{}", id(&created))).await.json().await.unwrap();
        assert_eq!(read["url"], "http://127.0.0.1:9/hook");
        assert!(read.get("secret").is_none(), "the secret is shown only once: {read}");
        let listed: Value = app.get("/subscriptions").await.json().await.unwrap();
        assert_eq!(listed["data"].as_array().unwrap().len(), 1);
    }

    async fn the_secret_is_stored_encrypted(app: &TestApp) {
        let created: Value = subscribe(app, json!({"url": "http://127.0.0.1:9/", "event_types": ["comment.created"]})).await.json().await.unwrap();
        let secret = created["secret"].as_str().unwrap().to_owned();
        let (db, sub) = (app.db.clone(), id(&created).to_owned());
        let owner = app.user.owner();
        let row = tokio::task::spawn_blocking(move || {
            thinhook::db::subscriptions::find_owned(&mut db.get().unwrap(), &sub, &owner)
        })
        .await
        .unwrap()
        .unwrap()
        .unwrap();
        assert!(!row.secret.contains(&secret[6..]), "stored in the clear");
        assert!(row.secret.starts_with("v1:"));
    }

    async fn unknown_event_types_and_bad_fields_are_refused(app: &TestApp) {
        for body in [
            json!({"url": "http://127.0.0.1:9/", "event_types": ["comment.deleted"]}),
            json!({"url": "http://127.0.0.1:9/", "event_types": []}),
            json!({"url": "http://127.0.0.1:9/", "event_types": ["comment.created"], "message_id": "msg_nope"}),
            json!({"url": "http://127.0.0.1:9/", "event_types": ["comment.created"], "message_id": "msg_01jd5x8w3k2m4n6p7q9r0s1t2v"}),
            json!({"url": "http://127.0.0.1:9/", "event_types": ["comment.created"], "secret": "mine"}),
            json!({"url": "not a url", "event_types": ["comment.created"]}),
            json!({"event_types": ["comment.created"]}),
        ] {
            let response = subscribe(app, body.clone()).await;
            assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        }
    }

    async fn a_subscription_can_be_changed_disabled_and_deleted(app: &TestApp) {
        let created: Value = subscribe(app, json!({"url": "http://127.0.0.1:9/a", "event_types": ["comment.created"]})).await.json().await.unwrap();
        let path = format!("/subscriptions/{}", id(&created));
        let token = app.user.token.clone();

        let patched: Value = send(app, reqwest::Method::PATCH, &path, &token, Some(json!({
            "url": "http://127.0.0.1:9/b", "event_types": ["message.created", "comment.created"], "enabled": false
        }))).await.json().await.unwrap();
        assert_eq!(patched["url"], "http://127.0.0.1:9/b");
        assert_eq!(patched["event_types"], json!(["message.created", "comment.created"]));
        assert_eq!(patched["enabled"], false);
        assert_eq!(patched["disabled_reason"], "disabled by its owner");

        let enabled: Value = send(app, reqwest::Method::PATCH, &path, &token, Some(json!({"enabled": true}))).await.json().await.unwrap();
        assert_eq!(enabled["enabled"], true);
        assert_eq!(enabled["disabled_reason"], Value::Null);

        let bad = send(app, reqwest::Method::PATCH, &path, &token, Some(json!({"event_types": ["nope"]}))).await;
        assert_problem(bad, StatusCode::UNPROCESSABLE_ENTITY, "validation-failed").await;

        assert_eq!(send(app, reqwest::Method::DELETE, &path, &token, None).await.status(), StatusCode::NO_CONTENT);
        assert_problem(app.get(&path).await, StatusCode::NOT_FOUND, "not-found").await;
    }

    async fn another_clients_subscriptions_do_not_exist_for_it(app: &TestApp) {
        let created: Value = subscribe(app, json!({"url": "http://127.0.0.1:9/", "event_types": ["comment.created"]})).await.json().await.unwrap();
        let sub = id(&created).to_owned();
        let message = app.create_message("m").await;
        app.create_comment(id(&message), "c").await;
        app.dispatch_all_pending().await;
        let log: Value = app.get(&format!("/subscriptions/{sub}/deliveries")).await.json().await.unwrap();
        let delivery = log["data"][0]["id"].as_str().unwrap().to_owned();

        let other = app.register_client("other", Scopes::all()).await;
        let t = other.token.as_str();
        use reqwest::Method;
        for (method, path, body) in [
            (Method::GET, format!("/subscriptions/{sub}"), None),
            (Method::PATCH, format!("/subscriptions/{sub}"), Some(json!({"enabled": false}))),
            (Method::DELETE, format!("/subscriptions/{sub}"), None),
            (Method::POST, format!("/subscriptions/{sub}/secret/rotate"), None),
            (Method::GET, format!("/subscriptions/{sub}/deliveries"), None),
            (Method::POST, format!("/deliveries/{delivery}/retry"), None),
        ] {
            let response = send(app, method.clone(), &path, t, body).await;
            assert_problem(response, StatusCode::NOT_FOUND, "not-found").await;
        }
        let listed: Value = send(app, Method::GET, "/subscriptions", t, None).await.json().await.unwrap();
        assert_eq!(listed["data"], json!([]));
        // Still there, unchanged, for its owner.
        let mine: Value = app.get(&format!("/subscriptions/{sub}")).await.json().await.unwrap();
        assert_eq!(mine["enabled"], true);
    }

    async fn managing_subscriptions_needs_its_scope(app: &TestApp) {
        let reader = app.register_client("reader", Scopes::parse("messages:read").unwrap()).await;
        let response = send(app, reqwest::Method::GET, "/subscriptions", &reader.token, None).await;
        assert_problem(response, StatusCode::FORBIDDEN, "insufficient-scope").await;
    }

    async fn an_unfiltered_subscription_needs_events_read_as_well(app: &TestApp) {
        let message = app.create_message("m").await;
        let manager = app.register_client("manager", Scopes::parse("subscriptions:manage").unwrap()).await;
        let unfiltered = json!({"url": "http://127.0.0.1:9/", "event_types": ["comment.created"]});

        let refused = send(app, reqwest::Method::POST, "/subscriptions", &manager.token, Some(unfiltered.clone())).await;
        assert_eq!(refused.headers()["www-authenticate"].to_str().unwrap(),
            r#"Bearer realm="thinhook", error="insufficient_scope", scope="events:read""#);
        assert_problem(refused, StatusCode::FORBIDDEN, "insufficient-scope").await;
        let listed: Value = send(app, reqwest::Method::GET, "/subscriptions", &manager.token, None).await.json().await.unwrap();
        assert_eq!(listed["data"], json!([]), "nothing was created");

        // Filtered to one message, it tells of that message only: its own scope suffices.
        let filtered = json!({"url": "http://127.0.0.1:9/", "event_types": ["comment.created"], "message_id": id(&message)});
        let created = send(app, reqwest::Method::POST, "/subscriptions", &manager.token, Some(filtered)).await;
        assert_eq!(created.status(), StatusCode::CREATED);

        let feed_reader = app.register_client("both", Scopes::parse("subscriptions:manage events:read").unwrap()).await;
        let created = send(app, reqwest::Method::POST, "/subscriptions", &feed_reader.token, Some(unfiltered)).await;
        assert_eq!(created.status(), StatusCode::CREATED);
    }

    async fn new_comment_webhook_needs_subscriptions_manage(app: &TestApp) {
        let poster = app.register_client("poster", Scopes::parse("messages:read messages:write").unwrap()).await;
        let with_webhook = json!({"text": "hi", "newCommentWebhook": "http://127.0.0.1:9/hook"});

        let refused = send(app, reqwest::Method::POST, "/messages", &poster.token, Some(with_webhook.clone())).await;
        assert_eq!(refused.headers()["www-authenticate"].to_str().unwrap(),
            r#"Bearer realm="thinhook", error="insufficient_scope", scope="subscriptions:manage""#);
        assert_problem(refused, StatusCode::FORBIDDEN, "insufficient-scope").await;
        let feed: Value = app.get("/events").await.json().await.unwrap();
        assert_eq!(feed["data"], json!([]), "no message was created");

        let plain = send(app, reqwest::Method::POST, "/messages", &poster.token, Some(json!({"text": "hi"}))).await;
        assert_eq!(plain.status(), StatusCode::CREATED);
        let manager = app.register_client("poster and manager", Scopes::parse("messages:write subscriptions:manage").unwrap()).await;
        let created = send(app, reqwest::Method::POST, "/messages", &manager.token, Some(with_webhook)).await;
        assert_eq!(created.status(), StatusCode::CREATED);
    }

    async fn new_comment_webhook_creates_an_owned_subscription_for_that_message(app: &TestApp) {
        let response = app
            .post_json("/messages", &json!({"text": "hi", "newCommentWebhook": "http://127.0.0.1:9/hook"}))
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
        let created: Value = response.json().await.unwrap();
        let subscription = &created["subscription"];
        assert!(subscription["secret"].as_str().unwrap().starts_with("whsec_"));
        assert_eq!(subscription["message_id"], created["id"]);
        assert_eq!(subscription["event_types"], json!(["comment.created"]));
        let read = app.get(&format!("/subscriptions/{}", id(subscription))).await;
        assert_eq!(read.status(), StatusCode::OK);
    }
}
