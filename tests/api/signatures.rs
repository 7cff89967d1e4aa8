//! Standard Webhooks `v1a`: Ed25519 signatures with the gateway's key,
//! verified by a receiver from the published JWK Set alone; `v1` and `v1a`
//! together; a rotation of the webhook key.

use std::time::Duration;

use aws_lc_rs::signature::{ED25519, UnparsedPublicKey};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use reqwest::StatusCode;
use serde_json::{Value, json};
use thinhook::db::signing_keys::Purpose;

use crate::helpers::{TestApp, assert_problem};
use crate::receiver::{Received, Receiver};
use crate::webhooks::{id, signed_with};

/// The published keys, by kid (unauthenticated, as a receiver reads them).
async fn published_keys(app: &TestApp) -> Vec<(String, Vec<u8>)> {
    let response = app
        .client
        .get(app.url("/.well-known/webhook-keys.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let set: Value = response.json().await.unwrap();
    set["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|key| {
            assert_eq!(key["kty"], "OKP");
            assert_eq!(key["crv"], "Ed25519");
            let x = URL_SAFE_NO_PAD.decode(key["x"].as_str().unwrap()).unwrap();
            (key["kid"].as_str().unwrap().to_owned(), x)
        })
        .collect()
}

/// Whether a `v1a` signature of `received` verifies with the published key
/// its `webhook-key-id` names.
fn verified_by(received: &Received, keys: &[(String, Vec<u8>)]) -> bool {
    let kid = received.header("webhook-key-id");
    let Some((_, public)) = keys.iter().find(|(k, _)| k == kid) else {
        return false;
    };
    let message = [
        received.header("webhook-id").as_bytes(),
        b".",
        received.header("webhook-timestamp").as_bytes(),
        b".",
        &received.body,
    ]
    .concat();
    received
        .header("webhook-signature")
        .split(' ')
        .filter_map(|s| s.strip_prefix("v1a,"))
        .any(|signature| {
            let raw = STANDARD.decode(signature).unwrap();
            UnparsedPublicKey::new(&ED25519, public)
                .verify(&message, &raw)
                .is_ok()
        })
}

/// A subscription with `scheme`; returns (id, secret).
async fn subscribe_with(app: &TestApp, url: &str, scheme: &str) -> (String, String) {
    let response = app
        .post_json(
            "/subscriptions",
            &json!({"url": url, "event_types": ["comment.created"], "signature_scheme": scheme}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["signature_scheme"], scheme);
    (id(&body), body["secret"].as_str().unwrap().to_owned())
}

async fn one_webhook(app: &TestApp, receiver: &Receiver) -> Received {
    let message = app.create_message("signed").await;
    app.create_comment(message["id"].as_str().unwrap(), "hi")
        .await;
    assert_eq!(app.dispatch_all_pending().await, 1);
    receiver.received().pop().expect("a webhook")
}

backend_tests! {
    async fn a_v1a_webhook_verifies_with_the_published_key_alone(app: &TestApp) {
        let receiver = Receiver::start().await;
        let (_, secret) = subscribe_with(app, &receiver.url("/hook"), "v1a").await;
        let received = one_webhook(app, &receiver).await;
        let signature = received.header("webhook-signature");
        assert!(signature.starts_with("v1a,") && !signature.contains(' '), "{signature}");
        assert!(!signed_with(&received, &secret));
        let keys = published_keys(app).await;
        assert_eq!(keys.len(), 1);
        assert!(verified_by(&received, &keys));
        // Another body does not verify.
        let mut forged = received.clone();
        forged.body = b"{}".to_vec();
        assert!(!verified_by(&forged, &keys));
    }

    async fn both_schemes_sign_one_webhook(app: &TestApp) {
        let receiver = Receiver::start().await;
        let (_, secret) = subscribe_with(app, &receiver.url("/hook"), "v1 v1a").await;
        let received = one_webhook(app, &receiver).await;
        let signature = received.header("webhook-signature");
        assert_eq!(signature.split(' ').count(), 2, "{signature}");
        assert!(signed_with(&received, &secret));
        assert!(verified_by(&received, &published_keys(app).await));
    }

    async fn the_scheme_is_chosen_and_changed_and_checked(app: &TestApp) {
        let receiver = Receiver::start().await;
        let (subscription, secret) = subscribe_with(app, &receiver.url("/hook"), "v1").await;
        let received = one_webhook(app, &receiver).await;
        assert!(signed_with(&received, &secret));
        assert!(received.header("webhook-key-id").is_empty());

        let patched = app
            .client
            .patch(app.url(&format!("/subscriptions/{subscription}")))
            .bearer_auth(&app.user.token)
            .json(&json!({"signature_scheme": "v1a"}))
            .send()
            .await
            .unwrap();
        assert_eq!(patched.status(), StatusCode::OK);
        let received = one_webhook(app, &receiver).await;
        assert!(verified_by(&received, &published_keys(app).await));

        for bad in ["v2", "", "v1  v1a", "v1a v1a"] {
            let response = app
                .post_json(
                    "/subscriptions",
                    &json!({"url": receiver.url("/x"), "event_types": ["comment.created"], "signature_scheme": bad}),
                )
                .await;
            assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY, "validation-failed").await;
        }
    }
}

mod rotation {
    use super::*;
    use crate::helpers::spawn_app;

    backend_tests_with_backend! {
        async fn a_rotated_webhook_key_stays_published_for_the_overlap(backend: Backend) {
            let mut app = spawn_app(backend).await;
            let receiver = Receiver::start().await;
            subscribe_with(&app, &receiver.url("/hook"), "v1a").await;
            let before = one_webhook(&app, &receiver).await;
            let old_kid = before.header("webhook-key-id").to_owned();

            let (db, secrets_key) = (app.db.clone(), app.settings.secrets.clone());
            let now = app.clock_now();
            let new_kid = tokio::task::spawn_blocking(move || {
                let secrets = thinhook::startup::open_secrets(&db, &secrets_key).unwrap();
                thinhook::auth::keys::rotate(&mut db.get().unwrap(), now, &secrets, Purpose::Webhooks)
                    .unwrap()
            })
            .await
            .unwrap();
            assert_ne!(new_kid, old_kid);
            // Each process reads the signing key again within 30 s.
            app.advance(Duration::from_secs(31)).await;
            let after = one_webhook(&app, &receiver).await;
            assert_eq!(after.header("webhook-key-id"), new_kid);

            let keys = published_keys(&app).await;
            assert_eq!(keys.len(), 2, "the old key is still published");
            assert!(verified_by(&before, &keys) && verified_by(&after, &keys));
            // After the overlap (delivery.secret_overlap_secs) only the new one is.
            app.advance(Duration::from_secs(app.settings.delivery.secret_overlap_secs)).await;
            let keys = published_keys(&app).await;
            assert_eq!(keys.len(), 1);
            assert!(verified_by(&after, &keys) && !verified_by(&before, &keys));
        }
    }
}
