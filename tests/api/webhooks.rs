//! Webhook delivery end to end: real receivers on 127.0.0.1, the dispatcher
//! driven step by step, time moved by the test clock.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use thinhook::delivery::signer;
use thinhook::domain::SigningSecret;
use thinhook::startup::Role;

use crate::helpers::{TestApp, assert_problem, spawn_app, spawn_app_with};
use crate::receiver::{Received, Receiver, Reply};

pub fn id(value: &Value) -> String {
    value["id"].as_str().unwrap().to_owned()
}

/// Registers a subscription; returns (id, secret).
pub async fn subscribe(
    app: &TestApp,
    url: &str,
    types: &[&str],
    message_id: Option<&str>,
) -> (String, String) {
    let response = app
        .post_json(
            "/subscriptions",
            &json!({"url": url, "event_types": types, "message_id": message_id}),
        )
        .await;
    assert_eq!(
        response.status(),
        StatusCode::CREATED,
        "{:?}",
        response.text().await
    );
    let body: Value = response.json().await.unwrap();
    (id(&body), body["secret"].as_str().unwrap().to_owned())
}

/// Checks the Standard Webhooks signature of `received` against `secret`.
pub fn signed_with(received: &Received, secret: &str) -> bool {
    let secret = SigningSecret::parse(secret).unwrap();
    let timestamp: i64 = received.header("webhook-timestamp").parse().unwrap();
    let expected = signer::sign(
        &secret,
        received.header("webhook-id"),
        timestamp,
        &received.body,
    );
    received
        .header("webhook-signature")
        .split(' ')
        .any(|s| s == expected)
}

pub async fn deliveries_of(app: &TestApp, subscription: &str) -> Vec<Value> {
    let page: Value = app
        .get(&format!("/subscriptions/{subscription}/deliveries"))
        .await
        .json()
        .await
        .unwrap();
    page["data"].as_array().unwrap().clone()
}

async fn subscription(app: &TestApp, id: &str) -> Value {
    app.get(&format!("/subscriptions/{id}"))
        .await
        .json()
        .await
        .unwrap()
}

async fn post_comment(app: &TestApp, message: &str, text: &str) -> Value {
    app.create_comment(message, text).await
}

backend_tests_with_backend! {
    async fn a_comment_reaches_each_matching_subscription_once_signed_and_thin(backend: Backend) {
        let app = spawn_app(backend).await;
        let receiver = Receiver::start().await;
        let message = id(&app.create_message("the thread").await);
        let other_message = id(&app.create_message("another thread").await);
        let (_, for_message) = subscribe(&app, &receiver.url("/this"), &["comment.created"], Some(&message)).await;
        let (_, for_all) = subscribe(&app, &receiver.url("/all"), &["comment.created", "message.created"], None).await;
        subscribe(&app, &receiver.url("/other-message"), &["comment.created"], Some(&other_message)).await;
        subscribe(&app, &receiver.url("/other-type"), &["message.created"], None).await;
        let (disabled, _) = subscribe(&app, &receiver.url("/disabled"), &["comment.created"], None).await;
        app.client.patch(app.url(&format!("/subscriptions/{disabled}"))).bearer_auth(&app.user.token)
            .json(&json!({"enabled": false})).send().await.unwrap();
        let (deleted, _) = subscribe(&app, &receiver.url("/deleted"), &["comment.created"], None).await;
        app.client.delete(app.url(&format!("/subscriptions/{deleted}"))).bearer_auth(&app.user.token).send().await.unwrap();

        let comment = post_comment(&app, &message, "secret words nobody else may read").await;
        app.dispatch_all_pending().await;

        for (path, secret) in [("/this", &for_message), ("/all", &for_all)] {
            let got = receiver.received_on(path);
            assert_eq!(got.len(), 1, "{path}: {got:?}");
            let request = &got[0];
            assert!(signed_with(request, secret), "{path}: bad signature");
            assert_eq!(request.header("content-type"), "application/json");
            assert!(request.header("user-agent").starts_with("thinhook/"));
            let body_text = String::from_utf8(request.body.clone()).unwrap();
            assert!(!body_text.contains("secret words"), "the body carries the comment: {body_text}");
            let body = request.json();
            assert_eq!(body["type"], "comment.created");
            assert_eq!(body["id"], request.header("webhook-id"));
            assert_eq!(body["data"]["resource"]["type"], "comment");
            assert_eq!(body["data"]["resource"]["id"], comment["id"]);
            assert_eq!(body["data"]["message_id"], message.as_str());
            assert_eq!(body["data"]["sequence"], 2, "message.created was 1");
            // The link leads to the comment, for a client with a token.
            let url = body["data"]["resource"]["url"].as_str().unwrap();
            let fetched: Value = app.client.get(url).bearer_auth(&app.user.token).send().await.unwrap().json().await.unwrap();
            assert_eq!(fetched["text"], "secret words nobody else may read");
        }
        for path in ["/other-message", "/other-type", "/disabled", "/deleted"] {
            assert!(receiver.received_on(path).is_empty(), "{path} received something");
        }
        assert_eq!(app.dispatch_all_pending().await, 0, "delivered twice");
    }

    async fn a_failed_delivery_is_retried_on_schedule_and_then_delivered(backend: Backend) {
        let app = spawn_app(backend).await;
        let receiver = Receiver::start().await;
        let message = id(&app.create_message("m").await);
        let (sub, _) = subscribe(&app, &receiver.url("/"), &["comment.created"], None).await;
        receiver.script([Reply::status(500)]);

        post_comment(&app, &message, "c").await;
        assert_eq!(app.dispatch_all_pending().await, 1);
        assert_eq!(app.dispatch_all_pending().await, 0, "retried before its time");
        app.clock.advance(Duration::from_secs(7));
        assert_eq!(app.dispatch_all_pending().await, 1);

        let log = deliveries_of(&app, &sub).await;
        assert_eq!(log[0]["status"], "delivered");
        let attempts = log[0]["attempts"].as_array().unwrap();
        assert_eq!(attempts.len(), 2);
        assert_eq!(attempts[0]["status_code"], 500);
        assert_eq!(attempts[0]["response_excerpt"], "ok");
        assert_eq!(attempts[1]["status_code"], 200);
        assert_eq!(receiver.received().len(), 2);
        assert_eq!(receiver.received()[0].header("webhook-id"), receiver.received()[1].header("webhook-id"));
    }

    async fn an_answer_with_nul_bytes_and_invalid_utf8_is_recorded_and_not_sent_again(backend: Backend) {
        let app = spawn_app(backend).await;
        let receiver = Receiver::start().await;
        let message = id(&app.create_message("m").await);
        let (sub, _) = subscribe(&app, &receiver.url("/"), &["comment.created"], None).await;
        receiver.script([
            Reply::status(200).with_body(b"200 ok\0"),
            Reply::status(500).with_body(b"\0bad \xff\xfe bytes\0"),
        ]);

        post_comment(&app, &message, "first").await;
        post_comment(&app, &message, "second").await;
        assert_eq!(app.dispatch_all_pending().await, 2);

        let log = deliveries_of(&app, &sub).await;
        let statuses: Vec<&str> = log.iter().map(|d| d["status"].as_str().unwrap()).collect();
        assert_eq!(statuses, ["delivered", "pending"]);
        assert_eq!(log[0]["attempts"][0]["response_excerpt"], "200 ok");
        let kept = log[1]["attempts"][0]["response_excerpt"].as_str().unwrap();
        assert!(kept.starts_with("bad ") && kept.ends_with(" bytes") && !kept.contains('\0'), "{kept}");
        assert_eq!(app.dispatch_all_pending().await, 0, "an attempt was not recorded");
        assert_eq!(receiver.received().len(), 2);
    }

    async fn a_410_disables_the_subscription(backend: Backend) {
        let app = spawn_app(backend).await;
        let receiver = Receiver::start().await;
        let message = id(&app.create_message("m").await);
        let (sub, _) = subscribe(&app, &receiver.url("/"), &["comment.created"], None).await;
        receiver.script([Reply::status(410)]);

        post_comment(&app, &message, "c").await;
        app.dispatch_all_pending().await;

        let state = subscription(&app, &sub).await;
        assert_eq!(state["enabled"], false);
        assert!(state["disabled_reason"].as_str().unwrap().contains("410"));
        assert_eq!(deliveries_of(&app, &sub).await[0]["status"], "failed");
        post_comment(&app, &message, "after").await;
        assert_eq!(app.dispatch_all_pending().await, 0);
    }

    async fn retry_after_is_honoured(backend: Backend) {
        let app = spawn_app(backend).await;
        let receiver = Receiver::start().await;
        let message = id(&app.create_message("m").await);
        subscribe(&app, &receiver.url("/"), &["comment.created"], None).await;
        receiver.script([Reply::status(503).with_header("retry-after", "120")]);

        post_comment(&app, &message, "c").await;
        app.dispatch_all_pending().await;
        app.clock.advance(Duration::from_secs(60));
        assert_eq!(app.dispatch_all_pending().await, 0, "retried before Retry-After");
        app.clock.advance(Duration::from_secs(61));
        assert_eq!(app.dispatch_all_pending().await, 1);
        assert_eq!(receiver.received().len(), 2);
    }

    async fn a_hanging_receiver_times_out_and_is_retried(backend: Backend) {
        let app = spawn_app_with(backend, Role::Api, |s| s.delivery.timeout_secs = 1).await;
        let receiver = Receiver::start().await;
        let message = id(&app.create_message("m").await);
        let (sub, _) = subscribe(&app, &receiver.url("/"), &["comment.created"], None).await;
        receiver.script([Reply::hang(Duration::from_secs(5))]);

        post_comment(&app, &message, "c").await;
        app.dispatch_all_pending().await;

        let log = deliveries_of(&app, &sub).await;
        assert_eq!(log[0]["status"], "pending");
        let error = log[0]["attempts"][0]["error"].as_str().unwrap();
        assert!(error.starts_with("timeout"), "{error}");
        app.clock.advance(Duration::from_secs(7));
        assert_eq!(app.dispatch_all_pending().await, 1);
        assert_eq!(deliveries_of(&app, &sub).await[0]["status"], "delivered");
    }

    async fn a_rotated_secret_signs_beside_the_new_one_until_the_overlap_ends(backend: Backend) {
        let mut app = spawn_app(backend).await;
        let receiver = Receiver::start().await;
        let message = id(&app.create_message("m").await);
        let (sub, old_secret) = subscribe(&app, &receiver.url("/"), &["comment.created"], None).await;
        let rotated: Value = app.post_json(&format!("/subscriptions/{sub}/secret/rotate"), &json!({})).await.json().await.unwrap();
        let new_secret = rotated["secret"].as_str().unwrap().to_owned();
        assert_ne!(new_secret, old_secret);

        post_comment(&app, &message, "during overlap").await;
        app.dispatch_all_pending().await;
        app.advance(Duration::from_secs(86_400 + 1)).await;
        post_comment(&app, &message, "after overlap").await;
        app.dispatch_all_pending().await;

        let got = receiver.received();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].header("webhook-signature").split(' ').count(), 2);
        assert!(signed_with(&got[0], &new_secret) && signed_with(&got[0], &old_secret));
        assert_eq!(got[1].header("webhook-signature").split(' ').count(), 1);
        assert!(signed_with(&got[1], &new_secret) && !signed_with(&got[1], &old_secret));
    }

    async fn a_subscription_failing_for_days_is_disabled_and_can_be_re_enabled(backend: Backend) {
        let mut app = spawn_app(backend).await;
        let receiver = Receiver::start().await;
        let message = id(&app.create_message("m").await);
        let (sub, _) = subscribe(&app, &receiver.url("/"), &["comment.created"], None).await;
        receiver.script((0..20).map(|_| Reply::status(500)));

        post_comment(&app, &message, "first").await;
        app.dispatch_all_pending().await;
        app.advance(Duration::from_secs(4 * 86_400)).await;
        post_comment(&app, &message, "second").await;
        app.dispatch_all_pending().await;
        assert_eq!(subscription(&app, &sub).await["enabled"], true, "disabled before 5 days");
        app.advance(Duration::from_secs(86_400)).await;
        post_comment(&app, &message, "third").await;
        app.dispatch_all_pending().await;

        let state = subscription(&app, &sub).await;
        assert_eq!(state["enabled"], false);
        assert!(state["disabled_reason"].as_str().unwrap().contains("failing"), "{state}");

        let enabled: Value = app.client.patch(app.url(&format!("/subscriptions/{sub}"))).bearer_auth(&app.user.token)
            .json(&json!({"enabled": true})).send().await.unwrap().json().await.unwrap();
        assert_eq!(enabled["enabled"], true);
        receiver.script([]);
        let before = receiver.received().len();
        app.advance(Duration::from_secs(11 * 3600)).await;
        assert!(app.dispatch_all_pending().await > 0);
        assert!(receiver.received().len() > before);
    }

    async fn an_owner_lists_its_deliveries_across_subscriptions_and_no_one_elses(backend: Backend) {
        let app = spawn_app_with(backend, Role::Api, |s| s.delivery.retry_schedule_secs = vec![0]).await;
        let (healthy, failing) = (Receiver::start().await, Receiver::start().await);
        failing.script((0..3).map(|_| Reply::status(500)));
        let message = id(&app.create_message("m").await);
        subscribe(&app, &healthy.url("/"), &["comment.created"], None).await;
        let (broken, _) = subscribe(&app, &failing.url("/"), &["comment.created"], None).await;
        for n in 0..3 {
            post_comment(&app, &message, &format!("c{n}")).await;
        }
        assert_eq!(app.dispatch_all_pending().await, 6);

        let list = |query: String| {
            let app = &app;
            async move {
                let response = app.get(&format!("/deliveries{query}")).await;
                assert_eq!(response.status(), StatusCode::OK, "{query}");
                response.json::<Value>().await.unwrap()
            }
        };
        let failed = list("?status=failed".into()).await;
        let failed = failed["data"].as_array().unwrap();
        assert_eq!(failed.len(), 3);
        assert!(failed.iter().all(|d| d["subscription_id"] == broken.as_str() && d["attempts"].as_array().unwrap().len() == 1));

        // Cursor-paged, oldest first, every delivery once.
        let mut seen = Vec::new();
        let mut after = String::new();
        loop {
            let page = list(format!("?limit=4{after}")).await;
            seen.extend(page["data"].as_array().unwrap().iter().map(id));
            match page["next_cursor"].as_str() {
                Some(cursor) if page["has_more"] == true => after = format!("&after={cursor}"),
                _ => break,
            }
        }
        let mut sorted = seen.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!((seen.len(), &seen), (6, &sorted));

        let later = (app.clock_now() + Duration::from_secs(3600))
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap();
        assert_eq!(list(format!("?since={later}")).await["data"], json!([]));
        assert_problem(app.get("/deliveries?since=yesterday").await, StatusCode::BAD_REQUEST, "invalid-request").await;

        let stranger = app.register_client("stranger", thinhook::auth::Scopes::all()).await;
        let theirs: Value = app.get_with_token("/deliveries", &stranger.token).await.json().await.unwrap();
        assert_eq!(theirs["data"], json!([]));
    }

    async fn a_replay_queues_failed_deliveries_once_and_only_for_their_owner(backend: Backend) {
        let app = spawn_app_with(backend, Role::Api, |s| s.delivery.retry_schedule_secs = vec![0]).await;
        let receiver = Receiver::start().await;
        receiver.script((0..3).map(|_| Reply::status(500)));
        let message = id(&app.create_message("m").await);
        let (sub, _) = subscribe(&app, &receiver.url("/"), &["comment.created"], None).await;
        let since = app.clock_now().format(&time::format_description::well_known::Rfc3339).unwrap();
        for n in 0..4 {
            post_comment(&app, &message, &format!("c{n}")).await;
        }
        assert_eq!(app.dispatch_all_pending().await, 4);
        let replay = format!("/subscriptions/{sub}/replay");

        // Another client cannot replay it.
        let stranger = app.register_client("stranger", thinhook::auth::Scopes::all()).await;
        let refused = app
            .client
            .post(app.url(&replay))
            .bearer_auth(&stranger.token)
            .json(&json!({"since": since}))
            .send()
            .await
            .unwrap();
        assert_problem(refused, StatusCode::NOT_FOUND, "not-found").await;

        let response = app.post_json(&replay, &json!({"since": since})).await;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["requeued"], 3, "{body}");
        // Still queued: a second replay queues nothing twice.
        let again: Value = app.post_json(&replay, &json!({"since": since})).await.json().await.unwrap();
        assert_eq!(again["requeued"], 0, "{again}");

        assert_eq!(app.dispatch_all_pending().await, 3);
        assert_eq!(receiver.received().len(), 7, "4 attempts, then 3 replayed");
        let statuses: Vec<String> = deliveries_of(&app, &sub).await.iter().map(|d| d["status"].as_str().unwrap().to_owned()).collect();
        assert_eq!(statuses, ["delivered"; 4]);
        // `all` replays delivered ones too.
        let all: Value = app.post_json(&replay, &json!({"since": since, "include": "all"})).await.json().await.unwrap();
        assert_eq!(all["requeued"], 4, "{all}");
        assert_problem(app.post_json(&replay, &json!({"since": "yesterday"})).await, StatusCode::UNPROCESSABLE_ENTITY, "validation-failed").await;
    }

    async fn a_dead_delivery_can_be_retried_by_its_owner(backend: Backend) {
        let app = spawn_app_with(backend, Role::Api, |s| s.delivery.retry_schedule_secs = vec![0]).await;
        let receiver = Receiver::start().await;
        let message = id(&app.create_message("m").await);
        let (sub, _) = subscribe(&app, &receiver.url("/"), &["comment.created"], None).await;
        receiver.script([Reply::status(500)]);
        post_comment(&app, &message, "c").await;
        app.dispatch_all_pending().await;
        let delivery = deliveries_of(&app, &sub).await[0].clone();
        assert_eq!(delivery["status"], "failed");

        let retry = format!("/deliveries/{}/retry", id(&delivery));
        let response = app.post_json(&retry, &json!({})).await;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        // One retry at a time: a second one waits for the first attempt.
        for _ in 0..3 {
            assert_problem(app.post_json(&retry, &json!({})).await, StatusCode::CONFLICT, "conflict").await;
        }
        assert_eq!(app.dispatch_all_pending().await, 1);
        assert_eq!(receiver.received().len(), 2, "one attempt, then one retry");
        assert_eq!(deliveries_of(&app, &sub).await[0]["status"], "delivered");
        let failed: Value = app.get(&format!("/subscriptions/{sub}/deliveries?status=failed")).await.json().await.unwrap();
        assert_eq!(failed["data"], json!([]));
    }

    async fn a_redirect_is_never_followed(backend: Backend) {
        let app = spawn_app(backend).await;
        let receiver = Receiver::start().await;
        let target = Receiver::start().await;
        let message = id(&app.create_message("m").await);
        let (sub, _) = subscribe(&app, &receiver.url("/"), &["comment.created"], None).await;
        receiver.script([Reply::status(302).with_header("location", &target.url("/internal"))]);

        post_comment(&app, &message, "c").await;
        app.dispatch_all_pending().await;

        assert!(target.received().is_empty(), "the redirect was followed");
        let log = deliveries_of(&app, &sub).await;
        assert_eq!(log[0]["attempts"][0]["status_code"], 302);
        assert_eq!(log[0]["status"], "pending");
    }

    async fn the_background_dispatcher_delivers_without_being_asked(backend: Backend) {
        let app = spawn_app_with(backend, Role::All, |s| s.delivery.poll_interval_ms = 60_000).await;
        let receiver = Receiver::start().await;
        let message = id(&app.create_message("m").await);
        subscribe(&app, &receiver.url("/"), &["comment.created"], None).await;

        post_comment(&app, &message, "wake up").await;

        // Bounded wait: the poll interval is a minute, so only the wake-up can deliver in time.
        assert_eq!(receiver.wait_for(1).await, 1);
    }

    async fn a_lease_held_by_a_stopped_dispatcher_is_taken_over_when_it_expires(backend: Backend) {
        let app = spawn_app(backend).await;
        let receiver = Receiver::start().await;
        let message = id(&app.create_message("m").await);
        subscribe(&app, &receiver.url("/"), &["comment.created"], None).await;
        post_comment(&app, &message, "c").await;

        // A dispatcher claims the delivery, then dies before attempting it.
        assert_eq!(app.claim_as("dead-worker", 10, 10).await.len(), 1);

        assert_eq!(app.dispatch_all_pending().await, 0, "took a leased delivery");
        app.clock.advance(Duration::from_secs(61));
        assert_eq!(app.dispatch_all_pending().await, 1);
        assert_eq!(receiver.received().len(), 1);
    }

    async fn two_dispatchers_share_one_queue_and_deliver_each_event_once(backend: Backend) {
        let app = spawn_app_with(backend, Role::Api, |s| {
            // High enough that the per-subscription bound never empties a claim early,
            // with claims small enough that both dispatchers get some.
            s.delivery.max_in_flight_per_subscription = 1_000;
            s.delivery.batch_size = 50;
            s.database.pool_size = 8;
        })
        .await;
        let other = app.second_dispatcher().await;
        let receiver = Receiver::start().await;
        let message = id(&app.create_message("busy").await);
        subscribe(&app, &receiver.url("/a"), &["comment.created"], None).await;
        subscribe(&app, &receiver.url("/b"), &["comment.created"], Some(&message)).await;
        const EVENTS: usize = 1_000;
        for n in 0..EVENTS {
            post_comment(&app, &message, &format!("comment {n}")).await;
        }

        let (first, second) = tokio::join!(app.dispatcher.dispatch_all_pending(), other.dispatch_all_pending());
        let (first, second) = (first.unwrap(), second.unwrap());

        assert_eq!(first + second, 2 * EVENTS, "attempts: {first} + {second}");
        assert!(first > 0 && second > 0, "one dispatcher did all the work: {first} + {second}");
        for path in ["/a", "/b"] {
            let mut ids: Vec<String> = receiver.received_on(path).iter().map(|r| r.header("webhook-id").to_owned()).collect();
            assert_eq!(ids.len(), EVENTS, "{path}");
            ids.sort();
            ids.dedup();
            assert_eq!(ids.len(), EVENTS, "{path}: an event was delivered twice");
        }
    }

    async fn concurrent_writers_beside_a_running_dispatcher_all_succeed(backend: Backend) {
        let app = spawn_app_with(backend, Role::All, |s| s.delivery.poll_interval_ms = 50).await;
        let receiver = Receiver::start().await;
        let message = id(&app.create_message("busy").await);
        subscribe(&app, &receiver.url("/"), &["comment.created"], None).await;
        const WRITERS: usize = 8;
        const EACH: usize = 40;

        let writers = (0..WRITERS).map(|w| {
            let (app, message) = (&app, &message);
            async move {
                let mut statuses = Vec::new();
                for n in 0..EACH {
                    let response = app
                        .post_json(&format!("/messages/{message}/comments"), &json!({"text": format!("{w}-{n}")}))
                        .await;
                    statuses.push(response.status());
                }
                statuses
            }
        });
        let statuses: Vec<StatusCode> = futures_util::future::join_all(writers).await.into_iter().flatten().collect();

        assert_eq!(statuses.len(), WRITERS * EACH);
        assert!(statuses.iter().all(|s| *s == StatusCode::CREATED), "{statuses:?}");
        assert_eq!(receiver.wait_for(WRITERS * EACH).await, WRITERS * EACH);
    }

    async fn a_claim_takes_no_more_than_the_per_subscription_bound(backend: Backend) {
        let app = spawn_app(backend).await;
        let receiver = Receiver::start().await;
        let message = id(&app.create_message("m").await);
        let (slow, _) = subscribe(&app, &receiver.url("/slow"), &["comment.created"], None).await;
        let (fast, _) = subscribe(&app, &receiver.url("/fast"), &["comment.created"], None).await;
        for n in 0..10 {
            post_comment(&app, &message, &format!("c{n}")).await;
        }

        let per = |claimed: &[thinhook::db::deliveries::Leased], sub: &str| {
            claimed.iter().filter(|d| d.subscription.id == sub).count()
        };
        let first = app.claim_as("one", 3, 100).await;
        assert_eq!((per(&first, &slow), per(&first, &fast)), (3, 3));
        // Leases still held count against the bound: nothing more until they end.
        let second = app.claim_as("two", 3, 100).await;
        assert!(second.is_empty(), "claimed beyond the bound: {}", second.len());
        let third = app.claim_as("three", 5, 100).await;
        assert_eq!((per(&third, &slow), per(&third, &fast)), (2, 2));
    }

    async fn registration_refuses_urls_that_lead_inside(backend: Backend) {
        let app = spawn_app_with(backend, Role::Api, |s| s.delivery.allow_cidrs.clear()).await;
        app.resolver.set("private.test", &["10.0.0.5"]);
        app.resolver.set("mixed.test", &["93.184.215.14", "192.168.1.1"]);
        for url in REFUSED {
            let response = app.post_json("/subscriptions", &json!({"url": url, "event_types": ["comment.created"]})).await;
            assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY, "{url} was accepted");
            let problem: Value = response.json().await.unwrap();
            assert!(problem["detail"].as_str().unwrap().contains("`url`"), "{problem}");
        }
        let message = app.post_json("/messages", &json!({"text": "x", "newCommentWebhook": "http://169.254.169.254/"})).await;
        assert_eq!(message.status(), StatusCode::UNPROCESSABLE_ENTITY);
    }

    async fn delivery_refuses_urls_that_lead_inside(backend: Backend) {
        let app = spawn_app_with(backend, Role::Api, |s| s.delivery.allow_cidrs.clear()).await;
        app.resolver.set("private.test", &["10.0.0.5"]);
        app.resolver.set("mixed.test", &["93.184.215.14", "192.168.1.1"]);
        let message = id(&app.create_message("m").await);
        // Stored directly, as if they had passed registration when DNS said otherwise.
        let refusable: Vec<&str> = REFUSED.iter().copied().filter(|u| u.starts_with("http")).collect();
        for url in &refusable {
            app.insert_subscription(url).await;
        }
        post_comment(&app, &message, "c").await;
        assert_eq!(app.dispatch_all_pending().await, refusable.len());
        let errors = app.last_errors().await;
        assert_eq!(errors.len(), refusable.len());
        for (url, error) in errors {
            assert!(error.starts_with("blocked"), "{url}: {error}");
        }
    }

    async fn a_name_that_resolves_inside_at_delivery_is_refused(backend: Backend) {
        let app = spawn_app(backend).await;
        let receiver = Receiver::start().await;
        let port = receiver.address.rsplit(':').next().unwrap().to_owned();
        app.resolver.set("rebind.test", &["127.0.0.1"]);
        let message = id(&app.create_message("m").await);
        let (sub, _) = subscribe(&app, &format!("http://rebind.test:{port}/"), &["comment.created"], None).await;
        app.resolver.set("rebind.test", &["10.0.0.1"]);

        post_comment(&app, &message, "c").await;
        app.dispatch_all_pending().await;

        assert!(receiver.received().is_empty());
        let error = deliveries_of(&app, &sub).await[0]["attempts"][0]["error"].as_str().unwrap().to_owned();
        assert!(error.starts_with("blocked"), "{error}");
    }

    async fn refusals_do_not_reveal_the_address_a_name_resolves_to(backend: Backend) {
        let app = spawn_app_with(backend, Role::Api, |s| s.delivery.allow_cidrs = vec!["127.0.0.1/32".into()]).await;
        app.resolver.set("internal.test", &["10.0.0.5"]);
        app.resolver.set("mixed.test", &["93.184.215.14", "192.168.77.1"]);
        let hidden = ["10.0.0.5", "192.168.77.1", "10.0.0.0/8", "192.168.0.0/16", "private"];

        // At registration: the 422 says why, not where.
        let message = id(&app.create_message("m").await);
        for (field, response) in [
            ("url", app.post_json("/subscriptions", &json!({"url": "http://internal.test/", "event_types": ["comment.created"]})).await),
            ("url", app.post_json("/subscriptions", &json!({"url": "http://mixed.test/", "event_types": ["comment.created"]})).await),
            ("newCommentWebhook", app.post_json("/messages", &json!({"text": "x", "newCommentWebhook": "http://internal.test/"})).await),
        ] {
            let problem = crate::helpers::assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY, "validation-failed").await;
            let detail = problem["detail"].as_str().unwrap();
            assert_eq!(detail, format!("`{field}` is not allowed: resolves to a non-public address"));
            for text in hidden {
                assert!(!detail.contains(text), "{detail}");
            }
        }

        // At delivery, after the name moved inside: the delivery log says the same.
        let receiver = Receiver::start().await;
        let port = receiver.address.rsplit(':').next().unwrap().to_owned();
        app.resolver.set("moving.test", &["127.0.0.1"]);
        let (sub, _) = subscribe(&app, &format!("http://moving.test:{port}/"), &["comment.created"], Some(&message)).await;
        app.resolver.set("moving.test", &["10.0.0.5"]);
        post_comment(&app, &message, "c").await;
        app.dispatch_all_pending().await;

        let delivery = &deliveries_of(&app, &sub).await[0];
        for error in [&delivery["last_error"], &delivery["attempts"][0]["error"]] {
            let error = error.as_str().unwrap();
            assert_eq!(error, "blocked: resolves to a non-public address");
            for text in hidden {
                assert!(!error.contains(text), "{error}");
            }
        }
    }
}

/// A worker in another process learns of new deliveries through
/// PostgreSQL `NOTIFY`, not by polling.
mod cross_process {
    use super::*;

    #[tokio::test]
    #[cfg_attr(
        not(postgres_tests),
        ignore = "set TEST_POSTGRES_URL to run the PostgreSQL tests"
    )]
    async fn a_worker_is_woken_by_notify_from_the_api_process() {
        let app = spawn_app(crate::helpers::Backend::Postgres).await;
        let receiver = Receiver::start().await;
        let message = id(&app.create_message("m").await);
        subscribe(&app, &receiver.url("/"), &["comment.created"], None).await;
        let (stop, running) = app
            .start_worker(|s| s.delivery.poll_interval_ms = 60_000)
            .await;
        // Let the worker's first (empty) poll and its LISTEN happen.
        tokio::time::sleep(Duration::from_millis(300)).await;

        post_comment(&app, &message, "notify").await;

        assert_eq!(receiver.wait_for(1).await, 1, "the worker was not woken");
        let _ = stop.send(());
        running.await.unwrap().unwrap();
    }
}

/// A stopping worker finishes what it can within its grace period and hands
/// back the leases of the rest, so another dispatcher takes them at once.
mod shutdown {
    use super::*;

    async fn releases_the_leases_it_cannot_finish(backend: crate::helpers::Backend) {
        let app = spawn_app(backend).await;
        let receiver = Receiver::start().await;
        let message = id(&app.create_message("m").await);
        let (sub, _) = subscribe(&app, &receiver.url("/"), &["comment.created"], None).await;
        receiver.script([Reply::hang(Duration::from_secs(10))]);
        let (stop, running) = app.start_worker(|s| s.shutdown_timeout_secs = 1).await;
        post_comment(&app, &message, "c").await;
        assert_eq!(receiver.wait_for(1).await, 1, "the attempt did not start");

        let _ = stop.send(());
        tokio::time::timeout(Duration::from_secs(10), running)
            .await
            .expect("the worker stopped")
            .unwrap()
            .unwrap();

        let log = deliveries_of(&app, &sub).await;
        assert_eq!(log[0]["status"], "pending");
        assert_eq!(
            log[0]["attempt_count"], 0,
            "an unfinished attempt was recorded"
        );
        // Released, not left leased: due again at once, without waiting for the lease to expire.
        assert_eq!(app.dispatch_all_pending().await, 1);
        assert_eq!(deliveries_of(&app, &sub).await[0]["status"], "delivered");
    }

    #[tokio::test]
    async fn sqlite() {
        releases_the_leases_it_cannot_finish(crate::helpers::Backend::Sqlite).await;
    }

    #[tokio::test]
    #[cfg_attr(
        not(postgres_tests),
        ignore = "set TEST_POSTGRES_URL to run the PostgreSQL tests"
    )]
    async fn postgres() {
        releases_the_leases_it_cannot_finish(crate::helpers::Backend::Postgres).await;
    }
}

/// Refused at registration and at delivery.
const REFUSED: &[&str] = &[
    "http://169.254.169.254/latest/meta-data/",
    "http://[::ffff:127.0.0.1]/",
    "http://0x7f000001/",
    "http://2130706433/",
    "http://127.1/",
    "http://127.0.0.1:8080/",
    "http://localhost/",
    "http://localhost./",
    "http://[::]/",
    "http://[::1]/",
    "http://[fd00::1]/",
    "http://[fe80::1]/",
    "http://0.0.0.0/",
    "http://10.0.0.1/",
    "http://172.16.5.4/",
    "http://192.168.0.1/",
    "http://100.64.0.1/",
    "http://192.0.2.1/",
    "http://198.18.0.1/",
    "http://224.0.0.1/",
    "http://255.255.255.255/",
    "http://[64:ff9b::a00:1]/",
    "http://[2002:7f00:1::]/",
    "http://private.test/",
    "http://mixed.test/",
    "http://unresolvable.test/",
    "ftp://example.com/",
    "file:///etc/passwd",
];

impl TestApp {
    /// Stores a subscription for comment.created directly, skipping the URL checks.
    async fn insert_subscription(&self, url: &str) {
        use thinhook::db::models::SubscriptionRow;
        let now = thinhook::clock::to_db(self.clock_now());
        let id = thinhook::domain::SubscriptionId::generate().to_string();
        let secrets =
            thinhook::secret_box::SecretBox::from_base64(&self.settings.secrets.encryption_key)
                .unwrap();
        let row = SubscriptionRow {
            secret: secrets.seal(&SigningSecret::generate().expose(), &id),
            id,
            owner_client_id: self.user.id.clone(),
            url: url.to_owned(),
            event_types: " comment.created ".into(),
            message_id: None,
            description: None,
            enabled: 1,
            disabled_reason: None,
            previous_secret: None,
            previous_secret_expires_at: None,
            failing_since: None,
            created_at: now,
            updated_at: now,
            signature_scheme: "v1".into(),
            format: "standard-webhooks".into(),
            verification: "not_required".into(),
            verification_due_at: None,
            verification_attempts: 0,
            verification_error: None,
            verified_at: None,
            allowed_rate: None,
            workspace_id: thinhook::domain::WorkspaceId::DEFAULT.into(),
            last_success_at: None,
        };
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            thinhook::db::subscriptions::insert(&mut db.get().unwrap(), &row)
        })
        .await
        .unwrap()
        .unwrap();
    }

    /// (url, error) of every subscription's latest delivery.
    async fn last_errors(&self) -> Vec<(String, String)> {
        let listed: Value = self
            .get("/subscriptions?limit=100")
            .await
            .json()
            .await
            .unwrap();
        let mut out = Vec::new();
        for sub in listed["data"].as_array().unwrap() {
            let log = deliveries_of(self, sub["id"].as_str().unwrap()).await;
            let error = log[0]["last_error"].as_str().unwrap_or("").to_owned();
            out.push((sub["url"].as_str().unwrap().to_owned(), error));
        }
        out
    }
}
