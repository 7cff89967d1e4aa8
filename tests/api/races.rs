//! Lost updates: writes that race, interleaved by hand, must each keep
//! what the other wrote.

use reqwest::StatusCode;
use serde_json::{Value, json};
use thinhook::db::subscriptions as repo;

use crate::helpers::TestApp;

async fn create_subscription(app: &TestApp) -> Value {
    let response = app
        .post_json(
            "/subscriptions",
            &json!({"url": "http://127.0.0.1:9/hook", "event_types": ["comment.created"]}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    response.json().await.unwrap()
}

backend_tests! {
    async fn a_patch_keeps_a_disable_that_came_between_its_read_and_its_write(app: &TestApp) {
        let subscription = create_subscription(app).await;
        let (id, owner) = (subscription["id"].as_str().unwrap().to_owned(), app.user.owner());
        let (db, now) = (app.db.clone(), thinhook::clock::to_db(app.clock_now()));
        let stored = tokio::task::spawn_blocking(move || {
            let mut conn = db.get().unwrap();
            let patch = repo::Patch { description: Some(Some("renamed".into())), ..Default::default() };
            let planned = repo::plan_patch(&mut conn, &id, &owner, &patch, now).unwrap().unwrap();
            // Meanwhile the dispatcher sees a 410.
            repo::disable(&mut conn, &id, "the endpoint answered 410 Gone", now).unwrap();
            repo::apply_patch(&mut conn, &planned).unwrap().unwrap()
        })
        .await
        .unwrap();
        assert_eq!(stored.description.as_deref(), Some("renamed"));
        assert!(!stored.is_enabled(), "the patch re-enabled a subscription it did not touch");
        assert_eq!(stored.disabled_reason.as_deref(), Some("the endpoint answered 410 Gone"));
    }

    async fn two_rotations_at_once_return_the_secrets_that_are_kept(app: &TestApp) {
        let subscription = create_subscription(app).await;
        let id = subscription["id"].as_str().unwrap().to_owned();
        let path = format!("/subscriptions/{id}/secret/rotate");
        let empty = json!({});
        let (first, second) = tokio::join!(app.post_json(&path, &empty), app.post_json(&path, &empty));
        let mut returned = Vec::new();
        for response in [first, second] {
            assert_eq!(response.status(), StatusCode::OK);
            let body: Value = response.json().await.unwrap();
            returned.push(body["secret"].as_str().unwrap().to_owned());
        }

        let (db, lookup, owner) = (app.db.clone(), id.clone(), app.user.owner());
        let row = tokio::task::spawn_blocking(move || repo::find_owned(&mut db.get().unwrap(), &lookup, &owner).unwrap().unwrap())
            .await
            .unwrap();
        let secrets = thinhook::secret_box::SecretBox::from_base64(&app.settings.secrets.encryption_key).unwrap();
        let kept = [
            secrets.open(&row.secret, &id).unwrap(),
            secrets.open(row.previous_secret.as_deref().unwrap(), &id).unwrap(),
        ];
        returned.sort();
        let mut kept = kept.to_vec();
        kept.sort();
        assert_eq!(returned, kept, "a rotation answered with a secret that is not kept");
    }
}
