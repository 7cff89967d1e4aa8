//! CloudEvents subscriptions: the abuse-protection handshake accepted,
//! refused, absent and unanswered (nothing delivered, nothing lost), consent
//! asked again for a new URL and on request, structured and binary mode,
//! the allowed rate, and deliveries decoded by the public `cloudevents`
//! Python SDK.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_problem, spawn_app};
use crate::receiver::{Received, Receiver, Reply};
use crate::webhooks::{deliveries_of, id, signed_with};

/// What the tests' gateway asks for: the host of its public URL.
const ORIGIN: &str = "127.0.0.1";

/// An answer to the handshake that consents for `origin`.
fn consent(origin: &str) -> Reply {
    Reply::status(200)
        .with_header("WebHook-Allowed-Origin", origin)
        .with_header("Allow", "POST")
}

/// A CloudEvents subscription to the comments of `message`; returns (id, secret).
async fn subscribe(app: &TestApp, url: &str, format: &str, message: &str) -> (String, String) {
    let response = app
        .post_json(
            "/subscriptions",
            &json!({"url": url, "event_types": ["comment.created"], "format": format, "message_id": message}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["format"], format);
    assert_eq!(body["verification"]["state"], "pending");
    (id(&body), body["secret"].as_str().unwrap().to_owned())
}

async fn verification(app: &TestApp, subscription: &str) -> Value {
    let body: Value = app
        .get(&format!("/subscriptions/{subscription}"))
        .await
        .json()
        .await
        .unwrap();
    body["verification"].clone()
}

async fn message(app: &TestApp) -> String {
    id(&app.create_message("cloudevents").await)
}

fn posts(receiver: &Receiver) -> Vec<Received> {
    receiver
        .received()
        .into_iter()
        .filter(|r| r.method == "POST")
        .collect()
}

fn options(receiver: &Receiver) -> Vec<Received> {
    receiver
        .received()
        .into_iter()
        .filter(|r| r.method == "OPTIONS")
        .collect()
}

backend_tests! {
    async fn the_receiver_consents_first_and_then_gets_a_signed_cloudevent(app: &TestApp) {
        let receiver = Receiver::start().await;
        receiver.script([consent(ORIGIN)]);
        let message = message(app).await;
        let (subscription, secret) =
            subscribe(app, &receiver.url("/ce"), "cloudevents", &message).await;
        let comment = app.create_comment(&message, "hello").await;

        assert_eq!(app.dispatch_all_pending().await, 1);
        let received = receiver.received();
        assert_eq!(received.len(), 2, "the handshake, then the event");
        let handshake = &received[0];
        assert_eq!((handshake.method.as_str(), handshake.path.as_str()), ("OPTIONS", "/ce"));
        assert_eq!(handshake.header("webhook-request-origin"), ORIGIN);
        assert!(handshake.body.is_empty());
        let state = verification(app, &subscription).await;
        assert_eq!(state["state"], "verified");
        assert!(state["verified_at"].is_string());
        assert_eq!(state["allowed_rate"], Value::Null);

        let delivery = &received[1];
        assert_eq!(delivery.method, "POST");
        assert_eq!(delivery.header("content-type"), "application/cloudevents+json");
        assert_eq!(delivery.header("webhook-request-origin"), ORIGIN);
        assert!(signed_with(delivery, &secret), "the Standard Webhooks signature is still sent");
        let event = delivery.json();
        let path = format!("/messages/{message}/comments/{}", id(&comment));
        assert_eq!(event["specversion"], "1.0");
        assert_eq!(event["id"], delivery.header("webhook-id"));
        assert_eq!(event["source"], app.address.as_str());
        assert_eq!(event["type"], "com.thinhook.comment.created");
        assert_eq!(event["subject"], path.as_str());
        assert_eq!(event["datacontenttype"], "application/json");
        assert_eq!(event["data"]["resource"]["url"], app.url(&path).as_str());
        assert_eq!(event["data"]["resource"]["id"], comment["id"]);
        assert!(event["time"].is_string());

        // Consent is asked once: the next event goes straight out.
        app.create_comment(&message, "again").await;
        assert_eq!(app.dispatch_all_pending().await, 1);
        assert_eq!((options(&receiver).len(), posts(&receiver).len()), (1, 2));
    }

    async fn without_consent_nothing_is_delivered_and_nothing_is_lost(app: &TestApp) {
        // A receiver that does not know OPTIONS, one that answers 200 to
        // anything, one that consents for someone else.
        let answers = [
            ("absent (405)", Reply::status(405)),
            ("absent (200 without consent)", Reply::status(200)),
            ("refused (another origin)", consent("events.example.org")),
        ];
        for (case, answer) in answers {
            let receiver = Receiver::start().await;
            receiver.script([answer]);
            let message = message(app).await;
            let (subscription, _) =
                subscribe(app, &receiver.url("/ce"), "cloudevents", &message).await;
            app.create_comment(&message, "held").await;

            assert_eq!(app.dispatch_all_pending().await, 0, "{case}");
            assert_eq!(app.dispatch_all_pending().await, 0, "{case}: not asked again unasked");
            assert_eq!(options(&receiver).len(), 1, "{case}");
            assert!(posts(&receiver).is_empty(), "{case}");
            let state = verification(app, &subscription).await;
            assert_eq!(state["state"], "refused", "{case}");
            assert!(state["error"].as_str().is_some_and(|e| !e.is_empty()), "{case}");
            let held = deliveries_of(app, &subscription).await;
            assert_eq!(held.len(), 1, "{case}");
            assert_eq!((held[0]["status"].as_str(), held[0]["attempt_count"].as_i64()), (Some("pending"), Some(0)));

            // The receiver is fixed and the owner asks again: the held event goes out.
            receiver.script([consent("*")]);
            let verified = app
                .post_json(&format!("/subscriptions/{subscription}/verify"), &json!({}))
                .await;
            assert_eq!(verified.status(), StatusCode::OK, "{case}");
            let verified: Value = verified.json().await.unwrap();
            assert_eq!(verified["verification"]["state"], "verified", "{case}");
            assert_eq!(verified["verification"]["error"], Value::Null);
            assert_eq!(app.dispatch_all_pending().await, 1, "{case}");
            assert_eq!(posts(&receiver).len(), 1, "{case}");
            assert_eq!(deliveries_of(app, &subscription).await[0]["status"], "delivered");
        }
    }

    async fn binary_mode_puts_the_attributes_in_headers_and_the_data_in_the_body(app: &TestApp) {
        let receiver = Receiver::start().await;
        receiver.script([consent(ORIGIN)]);
        let message = message(app).await;
        let (_, secret) = subscribe(app, &receiver.url("/ce"), "cloudevents-binary", &message).await;
        let comment = app.create_comment(&message, "binary").await;
        assert_eq!(app.dispatch_all_pending().await, 1);

        let delivery = posts(&receiver).pop().expect("a delivery");
        assert_eq!(delivery.header("content-type"), "application/json");
        assert_eq!(delivery.header("ce-specversion"), "1.0");
        assert_eq!(delivery.header("ce-id"), delivery.header("webhook-id"));
        assert_eq!(delivery.header("ce-type"), "com.thinhook.comment.created");
        assert_eq!(delivery.header("ce-source"), app.address.as_str());
        assert_eq!(
            delivery.header("ce-subject"),
            format!("/messages/{message}/comments/{}", id(&comment))
        );
        assert!(!delivery.header("ce-time").is_empty());
        let data = delivery.json();
        assert_eq!(data["resource"]["id"], comment["id"]);
        assert!(data.get("specversion").is_none(), "the body is the data alone");
        assert!(signed_with(&delivery, &secret));
    }

    async fn a_new_url_asks_for_consent_again_and_standard_webhooks_need_none(app: &TestApp) {
        let (first, second) = (Receiver::start().await, Receiver::start().await);
        first.script([consent(ORIGIN)]);
        let message = message(app).await;
        let (subscription, _) = subscribe(app, &first.url("/ce"), "cloudevents", &message).await;
        app.dispatch_all_pending().await;
        assert_eq!(verification(app, &subscription).await["state"], "verified");

        let patch = |body: Value| {
            app.client
                .patch(app.url(&format!("/subscriptions/{subscription}")))
                .bearer_auth(&app.user.token)
                .json(&body)
                .send()
        };
        // Structured to binary: the same receiver, the same consent.
        let patched: Value = patch(json!({"format": "cloudevents-binary"})).await.unwrap().json().await.unwrap();
        assert_eq!(patched["verification"]["state"], "verified");
        // Another endpoint has not consented.
        let patched: Value = patch(json!({"url": second.url("/ce")})).await.unwrap().json().await.unwrap();
        assert_eq!(patched["verification"]["state"], "pending");
        second.script([consent(ORIGIN)]);
        app.create_comment(&message, "to the second").await;
        assert_eq!(app.dispatch_all_pending().await, 1);
        assert_eq!(options(&second).len(), 1);
        assert_eq!(posts(&second).len(), 1);
        assert!(posts(&first).is_empty());

        let patched: Value = patch(json!({"format": "standard-webhooks"})).await.unwrap().json().await.unwrap();
        assert_eq!(patched["verification"]["state"], "not_required");
        let refused = app
            .post_json(&format!("/subscriptions/{subscription}/verify"), &json!({}))
            .await;
        assert_problem(refused, StatusCode::CONFLICT, "conflict").await;
        let response = app
            .post_json(
                "/subscriptions",
                &json!({"url": second.url("/x"), "event_types": ["comment.created"], "format": "xml"}),
            )
            .await;
        assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY, "validation-failed").await;
        let missing = app
            .post_json("/subscriptions/sub_00000000000000000000000000/verify", &json!({}))
            .await;
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    }

    async fn deliveries_decode_with_the_cloudevents_python_sdk(app: &TestApp) {
        let receiver = Receiver::start().await;
        receiver.script([consent(ORIGIN), consent(ORIGIN)]);
        let message = message(app).await;
        subscribe(app, &receiver.url("/structured"), "cloudevents", &message).await;
        subscribe(app, &receiver.url("/binary"), "cloudevents-binary", &message).await;
        let comment = app.create_comment(&message, "decode me").await;
        assert_eq!(app.dispatch_all_pending().await, 2);

        for delivery in posts(&receiver) {
            let event = decode_with_sdk(&delivery).await;
            let path = format!("/messages/{message}/comments/{}", id(&comment));
            assert_eq!(event["specversion"], "1.0", "{}", delivery.path);
            assert_eq!(event["id"], delivery.header("webhook-id"));
            assert_eq!(event["type"], "com.thinhook.comment.created");
            assert_eq!(event["source"], app.address.as_str());
            assert_eq!(event["subject"], path.as_str());
            assert_eq!(event["datacontenttype"], "application/json");
            assert_eq!(event["data"]["resource"]["url"], app.url(&path).as_str());
        }
    }
}

mod asked_again {
    use super::*;

    backend_tests_with_backend! {
        async fn an_unanswered_handshake_is_asked_again_later_and_the_event_waits(backend: Backend) {
            let mut app = spawn_app(backend).await;
            let receiver = Receiver::start().await;
            receiver.script([Reply::status(503)]);
            let message = message(&app).await;
            let (subscription, _) =
                subscribe(&app, &receiver.url("/ce"), "cloudevents", &message).await;
            app.create_comment(&message, "waiting").await;

            assert_eq!(app.dispatch_all_pending().await, 0);
            let state = verification(&app, &subscription).await;
            assert_eq!(state["state"], "pending");
            assert_eq!(state["error"], "answered 503");
            assert!(state["next_attempt_at"].is_string());
            // Not before its time.
            assert_eq!(app.dispatch_all_pending().await, 0);
            assert_eq!(options(&receiver).len(), 1);

            receiver.script([consent(ORIGIN)]);
            app.advance(Duration::from_secs(11)).await;
            assert_eq!(app.dispatch_all_pending().await, 1);
            assert_eq!(options(&receiver).len(), 2);
            assert_eq!(posts(&receiver).len(), 1);
            assert_eq!(verification(&app, &subscription).await["state"], "verified");
        }

        async fn the_allowed_rate_spaces_the_deliveries(backend: Backend) {
            let app = spawn_app(backend).await;
            let receiver = Receiver::start().await;
            // 120 a minute: one every 500 ms.
            receiver.script([consent(ORIGIN).with_header("WebHook-Allowed-Rate", "120")]);
            let message = message(&app).await;
            let (subscription, _) =
                subscribe(&app, &receiver.url("/ce"), "cloudevents", &message).await;
            for n in 0..3 {
                app.create_comment(&message, &format!("paced {n}")).await;
            }
            let (stop, running) = app
                .start_worker(|s| s.delivery.poll_interval_ms = 50)
                .await;
            assert_eq!(receiver.wait_for(4).await, 4, "the handshake and three events");
            let _ = stop.send(());
            running.await.unwrap().unwrap();

            assert_eq!(verification(&app, &subscription).await["allowed_rate"], 120);
            let times: Vec<_> = posts(&receiver).iter().map(|r| r.at).collect();
            for pair in times.windows(2) {
                let gap = pair[1] - pair[0];
                assert!(gap >= Duration::from_millis(450), "{gap:?} between deliveries");
            }
        }
    }
}

/// The event the `cloudevents` Python SDK decodes from `delivery`, as
/// tests/sdk/decode_cloudevent.py prints it.
async fn decode_with_sdk(delivery: &Received) -> Value {
    let request = json!({"headers": delivery.headers, "body": STANDARD.encode(&delivery.body)});
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/decode_cloudevent.py");
    let output = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut child = std::process::Command::new("python3")
            .arg(script)
            .env("PYTHONPATH", python_sdk())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("python3 runs");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(request.to_string().as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "the SDK refused the delivery: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// The pinned `cloudevents` SDK, installed from PyPI once into the tests'
/// scratch directory; the directory to put on `PYTHONPATH`.
fn python_sdk() -> &'static Path {
    static SDK: OnceLock<PathBuf> = OnceLock::new();
    SDK.get_or_init(|| {
        let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("python-cloudevents-2.2.0");
        if !target.join("cloudevents/core/bindings/http.py").exists() {
            let status = std::process::Command::new("python3")
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                ])
                .args([
                    "--root-user-action=ignore",
                    "--no-warn-conflicts",
                    "--target",
                ])
                .arg(&target)
                .arg("cloudevents==2.2.0")
                .status()
                .expect("python3 -m pip runs");
            assert!(
                status.success(),
                "cannot install the cloudevents SDK from PyPI"
            );
        }
        target
    })
}
