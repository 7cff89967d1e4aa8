//! The delivery engine: the writer's batches, fair claims, fenced leases,
//! bounds across processes, take-over after a crash, fetch before ack.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use thinhook::clock::Clock;
use thinhook::db::DbError;
use thinhook::db::models::{CommentRow, MessageRow};
use thinhook::db::outbox::{Publication, Resource};
use thinhook::domain::{CommentId, MessageId};
use thinhook::startup::Role;

use crate::helpers::{Backend, TestApp, spawn_app, spawn_app_with};
use crate::receiver::{Receiver, Reply};

fn id(value: &Value) -> String {
    value["id"].as_str().unwrap().to_owned()
}

async fn subscribe(app: &TestApp, url: &str, message_id: Option<&str>) -> String {
    let response = app
        .post_json(
            "/subscriptions",
            &json!({"url": url, "event_types": ["comment.created"], "message_id": message_id}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    id(&response.json().await.unwrap())
}

async fn deliveries_of(app: &TestApp, subscription: &str) -> Vec<Value> {
    let page: Value = app
        .get(&format!(
            "/subscriptions/{subscription}/deliveries?limit=100"
        ))
        .await
        .json()
        .await
        .unwrap();
    page["data"].as_array().unwrap().clone()
}

/// Polls `check` every 50 ms until it holds; gives up after `secs`.
async fn eventually<F, Fut>(secs: u64, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: not within {secs} s");
}

fn message_row(app: &TestApp, id: &str) -> MessageRow {
    MessageRow {
        id: id.to_owned(),
        text: "m".into(),
        created_at: thinhook::clock::to_db(app.clock.now_utc()),
        author_client_id: None,
        last_sequence: 0,
        workspace_id: thinhook::domain::WorkspaceId::DEFAULT.into(),
    }
}

fn comment_on(app: &TestApp, message_id: &str, comment_id: &str) -> Publication {
    Publication {
        resource: Resource::Comment(CommentRow {
            id: comment_id.to_owned(),
            message_id: message_id.to_owned(),
            text: "c".into(),
            created_at: thinhook::clock::to_db(app.clock.now_utc()),
            author_client_id: None,
            workspace_id: thinhook::domain::WorkspaceId::DEFAULT.into(),
        }),
        resource_path: format!("/messages/{message_id}/comments/{comment_id}"),
        traceparent: None,
        idempotency: None,
    }
}

/// Publishes `n` comments on `message_id` through the writer, all at once.
async fn publish_comments(app: &TestApp, message_id: &str, n: usize) {
    let publications = (0..n).map(|_| {
        let comment = comment_on(app, message_id, CommentId::generate().as_str());
        app.writer.publish(comment)
    });
    for published in futures_util::future::join_all(publications).await {
        assert!(published.unwrap().is_some());
    }
}

backend_tests_with_backend! {
    async fn a_failing_command_in_a_batch_leaves_its_batch_mates_committed(backend: Backend) {
        let app = spawn_app(backend).await;
        let existing = id(&app.create_message("there").await);
        let comment_taken = id(&app.create_comment(&existing, "first").await);
        // Hold the writer on a gate so that what follows lands in one batch.
        let (open, gate) = std::sync::mpsc::channel::<()>();
        let (entered, at_gate) = std::sync::mpsc::channel::<()>();
        let gated = tokio::spawn({
            let writer = app.writer.clone();
            async move {
                writer
                    .run(move |_| {
                        let _ = entered.send(());
                        let _ = gate.recv();
                        Ok(())
                    })
                    .await
            }
        });
        eventually(10, "the writer is at the gate", || async { at_gate.try_recv().is_ok() }).await;

        let insert = |id: String| {
            let (writer, row) = (app.writer.clone(), message_row(&app, &id));
            tokio::spawn(async move {
                writer.run(move |conn| thinhook::db::messages::insert_message(conn, &row)).await
            })
        };
        let publish = |publication: Publication| {
            let writer = app.writer.clone();
            tokio::spawn(async move { writer.publish(publication).await })
        };
        let (first, second) = (MessageId::generate().to_string(), MessageId::generate().to_string());
        let jobs = [insert(first.clone()), insert(existing.clone()), insert(second.clone())];
        let comment = CommentId::generate().to_string();
        let publications = [
            publish(comment_on(&app, &existing, &comment)),
            publish(comment_on(&app, &existing, &comment_taken)),
            publish(comment_on(&app, MessageId::generate().as_str(), CommentId::generate().as_str())),
        ];
        eventually(10, "every command waits for the writer", || async { app.writer.queued() == 6 }).await;
        open.send(()).unwrap();
        gated.await.unwrap().unwrap();

        let [first_ok, duplicate, second_ok] = jobs;
        assert!(first_ok.await.unwrap().is_ok());
        assert!(matches!(duplicate.await.unwrap(), Err(DbError::Query(_))), "a duplicate id was accepted");
        assert!(second_ok.await.unwrap().is_ok());
        let [fresh, taken, orphan] = publications;
        assert!(fresh.await.unwrap().unwrap().is_some());
        assert!(matches!(taken.await.unwrap(), Err(DbError::Query(_))), "a duplicate comment was accepted");
        assert_eq!(orphan.await.unwrap().unwrap(), None, "a comment on no message");
        for message in [&first, &second] {
            assert_eq!(app.get(&format!("/messages/{message}")).await.status(), StatusCode::OK);
        }
        assert_eq!(app.get(&format!("/messages/{existing}/comments/{comment}")).await.status(), StatusCode::OK);
        let feed: Value = app.get("/events?limit=100").await.json().await.unwrap();
        let comments = feed["data"].as_array().unwrap().iter().filter(|e| e["type"] == "comment.created").count();
        assert_eq!(comments, 2, "events of the rolled-back commands were kept: {feed}");
    }

    async fn a_subscription_at_its_bound_with_a_backlog_does_not_block_anothers_delivery(backend: Backend) {
        let app = spawn_app(backend).await;
        let receiver = Receiver::start().await;
        let busy_message = id(&app.create_message("busy").await);
        let quiet_message = id(&app.create_message("quiet").await);
        let busy = subscribe(&app, &receiver.url("/busy"), Some(&busy_message)).await;
        let quiet = subscribe(&app, &receiver.url("/quiet"), Some(&quiet_message)).await;
        publish_comments(&app, &busy_message, 3_000).await;
        app.create_comment(&quiet_message, "the one").await;

        // A worker fills the busy subscription's slots.
        let taken = app.claim_as("busy-worker", 4, 4).await;
        assert!(taken.iter().all(|d| d.subscription.id == busy), "claimed out of turn");
        assert_eq!(taken.len(), 4);

        let claimed = app.claim_as("other-worker", 4, 100).await;
        let subscriptions: Vec<&str> = claimed.iter().map(|d| d.subscription.id.as_str()).collect();
        assert_eq!(subscriptions, [quiet.as_str()], "the busy subscription, at its bound, blocked the queue");
    }

    async fn a_hanging_endpoint_does_not_hold_up_the_others(backend: Backend) {
        let app = spawn_app_with(backend, Role::All, |s| {
            s.delivery.max_in_flight_per_subscription = 2;
            s.delivery.poll_interval_ms = 50;
        })
        .await;
        let (slow, fast) = (Receiver::start().await, Receiver::start().await);
        slow.script((0..10).map(|_| Reply::hang(Duration::from_secs(3))));
        let message = id(&app.create_message("m").await);
        subscribe(&app, &slow.url("/"), Some(&message)).await;
        subscribe(&app, &fast.url("/"), Some(&message)).await;

        for n in 0..10 {
            app.create_comment(&message, &format!("c{n}")).await;
        }

        assert_eq!(fast.wait_for(10).await, 10);
        assert!(slow.max_in_flight() <= 2, "the bound was exceeded: {}", slow.max_in_flight());
    }

    async fn subscriptions_to_one_hanging_host_cannot_take_every_slot(backend: Backend) {
        let app = spawn_app_with(backend, Role::All, |s| {
            s.delivery.max_in_flight = 6;
            s.delivery.max_in_flight_per_subscription = 4;
            s.delivery.max_in_flight_per_host = 3;
            s.delivery.poll_interval_ms = 50;
        })
        .await;
        let (slow, fast) = (Receiver::start().await, Receiver::start().await);
        slow.script((0..40).map(|_| Reply::hang(Duration::from_secs(3))));
        let port = |receiver: &Receiver| receiver.address.rsplit(':').next().unwrap().to_owned();
        app.resolver.set("slow.test", &["127.0.0.1"]);
        app.resolver.set("fast.test", &["127.0.0.1"]);
        let message = id(&app.create_message("m").await);
        // Three subscriptions could hold 12 slots of 6; their host may hold 3.
        for n in 0..3 {
            subscribe(&app, &format!("http://slow.test:{}/{n}", port(&slow)), Some(&message)).await;
        }
        subscribe(&app, &format!("http://fast.test:{}/", port(&fast)), Some(&message)).await;

        for n in 0..8 {
            app.create_comment(&message, &format!("c{n}")).await;
        }

        let prompt = tokio::time::timeout(Duration::from_secs(2), async {
            while fast.received().len() < 8 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(prompt.is_ok(), "the fast subscription waited for the hanging host: {} of 8", fast.received().len());
        assert!(slow.max_in_flight() <= 3, "the host's bound was exceeded: {}", slow.max_in_flight());
    }

    async fn an_outcome_recorded_after_the_lease_passed_to_another_worker_is_discarded(backend: Backend) {
        let app = spawn_app(backend).await;
        let receiver = Receiver::start().await;
        receiver.script([Reply::hang(Duration::from_secs(2)).with_status(202)]);
        let message = id(&app.create_message("m").await);
        let subscription = subscribe(&app, &receiver.url("/"), None).await;
        let other = app.second_dispatcher().await;
        app.create_comment(&message, "c").await;

        // The first worker's attempt stalls past its lease; a second worker takes over.
        let stalled = tokio::spawn({
            let dispatcher = app.dispatcher.clone();
            async move { dispatcher.dispatch_all_pending().await }
        });
        assert_eq!(receiver.wait_for(1).await, 1);
        app.clock.advance(Duration::from_secs(61));
        assert_eq!(other.dispatch_all_pending().await.unwrap(), 1);
        assert_eq!(stalled.await.unwrap().unwrap(), 1);

        let log = deliveries_of(&app, &subscription).await;
        assert_eq!(log[0]["status"], "delivered");
        let attempts = log[0]["attempts"].as_array().unwrap();
        assert_eq!(attempts.len(), 1, "both workers' outcomes were recorded: {attempts:?}");
        assert_eq!(attempts[0]["status_code"], 200, "the stale worker's outcome (202) was recorded");
    }

    async fn a_fetch_made_before_the_webhook_is_answered_is_recorded(backend: Backend) {
        let app = spawn_app_with(backend, Role::All, |_| {}).await;
        let receiver = Receiver::start().await;
        receiver.script([Reply::fetch_first(&app.user.token)]);
        let message = id(&app.create_message("m").await);
        let subscription = subscribe(&app, &receiver.url("/"), None).await;

        app.create_comment(&message, "read me first").await;

        assert_eq!(receiver.wait_for(1).await, 1);
        eventually(10, "the delivery is recorded delivered and fetched", || async {
            let log = deliveries_of(&app, &subscription).await;
            log[0]["status"] == "delivered" && log[0]["fetched_at"].is_string()
        })
        .await;
        assert_eq!(receiver.fetches(), [200]);
    }

    async fn a_worker_that_starts_after_one_was_killed_resumes_its_work_at_once(backend: Backend) {
        let app = spawn_app(backend).await;
        let receiver = Receiver::start().await;
        const EVENTS: usize = 5;
        receiver.script((0..EVENTS).map(|_| Reply::hang(Duration::from_secs(60))));
        let message = id(&app.create_message("m").await);
        let subscription = subscribe(&app, &receiver.url("/"), None).await;
        let mut worker = app
            .serve_process(&["--role", "worker"])
            .env("THINHOOK_LOG_LEVEL", "warn")
            .spawn()
            .unwrap();
        for n in 0..EVENTS {
            app.create_comment(&message, &format!("c{n}")).await;
        }
        eventually(60, "the worker process starts its attempts", || async {
            receiver.received().len() >= EVENTS
        })
        .await;

        // Killed with its attempts in flight: its leases (60 s) outlive it.
        worker.kill().unwrap();
        worker.wait().unwrap();
        let started = std::time::Instant::now();
        let (stop, running) = app.start_worker(|_| {}).await;

        assert_eq!(receiver.wait_for(2 * EVENTS).await, 2 * EVENTS);
        assert!(started.elapsed() < Duration::from_secs(30), "waited for the leases to expire");
        eventually(10, "every delivery is recorded", || async {
            let log = deliveries_of(&app, &subscription).await;
            log.len() == EVENTS && log.iter().all(|d| d["status"] == "delivered")
        })
        .await;
        let _ = stop.send(());
        running.await.unwrap().unwrap();
    }
}

/// Two worker processes on one PostgreSQL database keep a subscription
/// within its bound together.
#[tokio::test]
#[cfg_attr(
    not(postgres_tests),
    ignore = "set TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
async fn the_per_subscription_bound_holds_across_two_workers_on_postgres() {
    let app = spawn_app(Backend::Postgres).await;
    let receiver = Receiver::start().await;
    const EVENTS: usize = 20;
    receiver.script((0..EVENTS).map(|_| Reply::hang(Duration::from_millis(300))));
    let message = id(&app.create_message("m").await);
    subscribe(&app, &receiver.url("/"), None).await;
    let bound = |s: &mut thinhook::config::Settings| {
        s.delivery.max_in_flight_per_subscription = 2;
        s.delivery.poll_interval_ms = 20;
    };
    let (stop_one, one) = app.start_worker(bound).await;
    let (stop_two, two) = app.start_worker(bound).await;

    for n in 0..EVENTS {
        app.create_comment(&message, &format!("c{n}")).await;
    }

    assert_eq!(receiver.wait_for(EVENTS).await, EVENTS);
    let mut ids: Vec<String> = receiver
        .received()
        .iter()
        .map(|r| r.header("webhook-id").to_owned())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), EVENTS, "an event was delivered twice");
    assert!(
        receiver.max_in_flight() <= 2,
        "{} in flight at once",
        receiver.max_in_flight()
    );
    for (stop, running) in [(stop_one, one), (stop_two, two)] {
        let _ = stop.send(());
        running.await.unwrap().unwrap();
    }
}
