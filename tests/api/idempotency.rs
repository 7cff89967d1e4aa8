//! `Idempotency-Key` on the three routes that create: a retry gets the
//! first answer and creates nothing; another request under the key is 422;
//! one while the first runs is 409, in this process and across processes;
//! keys are the client's own, per route, for 24 hours.

use std::time::Duration;

use diesel::prelude::*;
use reqwest::header::HeaderValue;
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};
use thinhook::auth::Scopes;
use thinhook::db::DbError;
use thinhook::db::idempotency::{self, Record};
use thinhook::db::models::{CommentRow, IdempotencyRow};
use thinhook::db::outbox::{Publication, Resource};
use thinhook::db::schema::idempotency_keys;
use thinhook::domain::CommentId;
use thinhook::error::ApiError;

use crate::helpers::{Backend, TestApp, assert_problem, spawn_app};
use crate::receiver::Receiver;

const UNKNOWN_MESSAGE: &str = "msg_01jd5x8w3k2m4n6p7q9r0s1t2v";

fn id(value: &Value) -> String {
    value["id"].as_str().unwrap().to_owned()
}

/// POSTs `body` with `Idempotency-Key: key` and `token`.
async fn post_keyed_as(
    app: &TestApp,
    token: &str,
    path: &str,
    key: &str,
    body: &Value,
) -> Response {
    app.client
        .post(app.url(path))
        .bearer_auth(token)
        .header("idempotency-key", key)
        .json(body)
        .send()
        .await
        .unwrap()
}

/// POSTs `body` with `Idempotency-Key: key`, as the test user.
async fn post_keyed(app: &TestApp, path: &str, key: &str, body: &Value) -> Response {
    post_keyed_as(app, &app.user.token, path, key, body).await
}

/// A response as a client sees it, body byte for byte.
#[derive(Debug, PartialEq)]
struct Answer {
    status: StatusCode,
    location: Option<String>,
    content_type: Option<String>,
    replayed: bool,
    body: String,
}

async fn answer(response: Response) -> Answer {
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|value| value.to_str().unwrap().to_owned())
    };
    let (location, content_type) = (header("location"), header("content-type"));
    let replayed = match header("idempotency-replayed").as_deref() {
        None => false,
        Some("true") => true,
        Some(other) => panic!("Idempotency-Replayed: {other}"),
    };
    Answer {
        status: response.status(),
        location,
        content_type,
        replayed,
        body: response.text().await.unwrap(),
    }
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap()
    }

    /// This answer, as its replay must look.
    fn replayed(&self) -> Self {
        Self {
            replayed: true,
            location: self.location.clone(),
            content_type: self.content_type.clone(),
            body: self.body.clone(),
            ..*self
        }
    }
}

/// `POST /messages {"text": "never"}` as the test user, with these
/// `Idempotency-Key` headers.
async fn post_message_with_keys(app: &TestApp, keys: &[&[u8]]) -> Response {
    let mut request = app
        .client
        .post(app.url("/messages"))
        .bearer_auth(&app.user.token)
        .json(&json!({"text": "never"}));
    for key in keys {
        request = request.header("idempotency-key", HeaderValue::from_bytes(key).unwrap());
    }
    request.send().await.unwrap()
}

/// The first page (of 100) of a list.
async fn listed(app: &TestApp, path: &str) -> Vec<Value> {
    let page: Value = app
        .get(&format!("{path}?limit=100"))
        .await
        .json()
        .await
        .unwrap();
    page["data"].as_array().unwrap().clone()
}

async fn comment_count(app: &TestApp, message: &str) -> usize {
    listed(app, &format!("/messages/{message}/comments"))
        .await
        .len()
}

/// Events in the feed, of one type.
async fn event_count(app: &TestApp, event_type: &str) -> usize {
    let events = listed(app, "/events").await;
    events
        .iter()
        .filter(|event| event["type"] == event_type)
        .count()
}

async fn subscription_count(app: &TestApp) -> usize {
    listed(app, "/subscriptions").await.len()
}

async fn stored_keys(app: &TestApp) -> Vec<IdempotencyRow> {
    app.db
        .run(|conn| {
            idempotency_keys::table
                .order(idempotency_keys::idempotency_key)
                .select(IdempotencyRow::as_select())
                .load(conn)
        })
        .await
        .unwrap()
}

/// Holds the server's writer until the returned sender is used (or
/// dropped): what is sent to it meanwhile waits, and lands in one batch.
async fn hold_writer(app: &TestApp) -> (std::sync::mpsc::Sender<()>, tokio::task::JoinHandle<()>) {
    let (open, gate) = std::sync::mpsc::channel::<()>();
    let (entered, at_gate) = tokio::sync::oneshot::channel::<()>();
    let writer = app.writer.clone();
    let held = tokio::spawn(async move {
        writer
            .run(move |_| {
                let _ = entered.send(());
                let _ = gate.recv_timeout(Duration::from_secs(30));
                Ok(())
            })
            .await
            .unwrap();
    });
    at_gate.await.expect("the writer reached the gate");
    (open, held)
}

/// Waits (at most 10 s) until `n` commands wait for the writer.
async fn writer_queue_reaches(app: &TestApp, n: usize) {
    for _ in 0..200 {
        if app.writer.queued() == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "{n} commands never waited for the writer (now {})",
        app.writer.queued()
    );
}

fn record(app: &TestApp, key: &str) -> Record {
    Record {
        row: IdempotencyRow {
            client_id: app.user.id.clone(),
            route: "POST /messages/{messageId}/comments".into(),
            idempotency_key: key.into(),
            fingerprint: "0".repeat(64),
            status: 201,
            location: None,
            content_type: "application/json".into(),
            body: "{}".into(),
            created_at: thinhook::clock::to_db(app.clock_now()),
        },
        replaces: None,
    }
}

fn keyed_comment(app: &TestApp, message: &str, key: Option<&str>) -> (String, Publication) {
    let comment = CommentId::generate().to_string();
    let publication = Publication {
        resource: Resource::Comment(CommentRow {
            id: comment.clone(),
            message_id: message.to_owned(),
            text: "c".into(),
            created_at: thinhook::clock::to_db(app.clock_now()),
            author_client_id: None,
            workspace_id: thinhook::domain::WorkspaceId::DEFAULT.into(),
        }),
        resource_path: format!("/messages/{message}/comments/{comment}"),
        traceparent: None,
        idempotency: key.map(|key| record(app, key)),
    };
    (comment, publication)
}

fn is_taken(result: &Result<impl std::fmt::Debug, DbError>) -> bool {
    match result {
        Err(error) => idempotency::is_key_taken(error),
        Ok(_) => false,
    }
}

backend_tests! {
    async fn a_retried_comment_gets_the_first_answer_and_makes_no_second_event_or_webhook(app: &TestApp) {
        let receiver = Receiver::start().await;
        let message = id(&app.create_message("m").await);
        let subscribed = app
            .post_json(
                "/subscriptions",
                &json!({"url": receiver.url("/hook"), "event_types": ["comment.created"], "message_id": message}),
            )
            .await;
        assert_eq!(subscribed.status(), StatusCode::CREATED);
        let path = format!("/messages/{message}/comments");
        let body = json!({"text": "once"});

        let first = answer(post_keyed(app, &path, "\"retry-1\"", &body).await).await;
        // The same key, bare instead of quoted.
        let retried = answer(post_keyed(app, &path, "retry-1", &body).await).await;

        assert_eq!(first.status, StatusCode::CREATED);
        assert!(!first.replayed);
        assert_eq!(first.content_type.as_deref(), Some("application/json"));
        let comment = id(&first.json());
        assert_eq!(first.location, Some(app.url(&format!("{path}/{comment}"))));
        assert_eq!(retried, first.replayed());
        assert_eq!(comment_count(app, &message).await, 1);
        assert_eq!(event_count(app, "comment.created").await, 1);
        assert_eq!(app.dispatch_all_pending().await, 1);
        assert_eq!(receiver.received().len(), 1, "the retry was delivered too");
    }

    async fn a_retried_message_with_its_webhook_gets_the_same_secret_and_makes_nothing_new(app: &TestApp) {
        let receiver = Receiver::start().await;
        let body = json!({"text": "with a hook", "newCommentWebhook": receiver.url("/hook")});

        let first = answer(post_keyed(app, "/messages", "m-1", &body).await).await;
        let retried = answer(post_keyed(app, "/messages", "m-1", &body).await).await;

        assert_eq!(first.status, StatusCode::CREATED);
        assert!(first.json()["subscription"]["secret"].as_str().unwrap().starts_with("whsec_"));
        assert_eq!(retried, first.replayed());
        assert_eq!(event_count(app, "message.created").await, 1);
        assert_eq!(subscription_count(app).await, 1);
    }

    async fn a_retried_subscription_gets_the_same_secret_and_makes_no_second_one(app: &TestApp) {
        let receiver = Receiver::start().await;
        let body = json!({"url": receiver.url("/hook"), "event_types": ["comment.created"]});

        let first = answer(post_keyed(app, "/subscriptions", "s-1", &body).await).await;
        let retried = answer(post_keyed(app, "/subscriptions", "s-1", &body).await).await;

        assert_eq!(first.status, StatusCode::CREATED);
        let secret = first.json()["secret"].as_str().unwrap().to_owned();
        assert_eq!(first.location, Some(app.url(&format!("/subscriptions/{}", id(&first.json())))));
        assert_eq!(retried, first.replayed());
        assert_eq!(subscription_count(app).await, 1);
        // Stored as the secrets are: sealed.
        let stored = stored_keys(app).await;
        assert_eq!(stored.len(), 1);
        assert_eq!(stored[0].route, "POST /subscriptions");
        assert!(stored[0].body.starts_with("v1:"), "{}", stored[0].body);
        assert!(!stored[0].body.contains(&secret));
    }

    async fn the_same_key_for_another_body_or_path_is_refused_422(app: &TestApp) {
        let (first, second) = (id(&app.create_message("a").await), id(&app.create_message("b").await));
        let on = |message: &str| format!("/messages/{message}/comments");
        let created = post_keyed(app, &on(&first), "k", &json!({"text": "a"})).await;
        assert_eq!(created.status(), StatusCode::CREATED);

        let other_body = post_keyed(app, &on(&first), "k", &json!({"text": "b"})).await;
        let other_path = post_keyed(app, &on(&second), "k", &json!({"text": "a"})).await;

        let problem = assert_problem(other_body, StatusCode::UNPROCESSABLE_ENTITY, "idempotency-key-mismatch").await;
        assert!(problem["detail"].as_str().unwrap().contains("new key"), "{problem}");
        assert_problem(other_path, StatusCode::UNPROCESSABLE_ENTITY, "idempotency-key-mismatch").await;
        assert_eq!(comment_count(app, &first).await, 1);
        assert_eq!(comment_count(app, &second).await, 0);
    }

    async fn the_same_key_from_another_client_or_on_another_route_is_another_key(app: &TestApp) {
        let other = app.register_client("other", Scopes::all()).await;
        let body = json!({"text": "mine"});

        let mine = answer(post_keyed(app, "/messages", "shared", &body).await).await;
        let theirs = answer(post_keyed_as(app, &other.token, "/messages", "shared", &body).await).await;
        let receiver = Receiver::start().await;
        let subscription = post_keyed(
            app,
            "/subscriptions",
            "shared",
            &json!({"url": receiver.url("/"), "event_types": ["message.created"]}),
        )
        .await;

        assert_eq!((mine.status, theirs.status), (StatusCode::CREATED, StatusCode::CREATED));
        assert!(!theirs.replayed);
        assert_ne!(id(&mine.json()), id(&theirs.json()));
        assert_eq!(theirs.json()["author_client_id"], other.id.as_str());
        assert_eq!(subscription.status(), StatusCode::CREATED);
        assert_eq!(event_count(app, "message.created").await, 2);
    }

    async fn a_request_while_the_first_with_its_key_runs_is_refused_409(app: &TestApp) {
        let message = id(&app.create_message("m").await);
        let path = format!("/messages/{message}/comments");
        let (open, held) = hold_writer(app).await;

        // Whichever arrives first waits for the writer; the other finds it in flight.
        let send = || {
            let request = app
                .client
                .post(app.url(&path))
                .bearer_auth(&app.user.token)
                .header("idempotency-key", "\"in-flight\"")
                .json(&json!({"text": "slow"}));
            tokio::spawn(async move { request.send().await.unwrap() })
        };
        let (refused, running) = match futures_util::future::select(send(), send()).await {
            futures_util::future::Either::Left((done, other))
            | futures_util::future::Either::Right((done, other)) => (done.unwrap(), other),
        };

        assert_eq!(refused.headers()["retry-after"], "1");
        assert_problem(refused, StatusCode::CONFLICT, "idempotency-key-in-flight").await;
        assert!(!running.is_finished(), "the first request did not wait for the writer");
        open.send(()).unwrap();
        held.await.unwrap();
        let first = answer(running.await.unwrap()).await;
        assert_eq!(first.status, StatusCode::CREATED);
        let retried = answer(post_keyed(app, &path, "in-flight", &json!({"text": "slow"})).await).await;
        assert_eq!(retried, first.replayed());
        assert_eq!(comment_count(app, &message).await, 1);
    }

    async fn a_key_stored_twice_fails_as_taken_and_spares_its_batch_mates(app: &TestApp) {
        let message = id(&app.create_message("m").await);
        let (open, held) = hold_writer(app).await;
        let publish = |publication: Publication| {
            let writer = app.writer.clone();
            tokio::spawn(async move { writer.publish(publication).await })
        };
        let store = |record: Record| {
            let writer = app.writer.clone();
            tokio::spawn(async move {
                writer.run(move |conn| idempotency::store_all(conn, Some(&record))).await
            })
        };
        let (first, first_publication) = keyed_comment(app, &message, Some("twice"));
        let (second, second_publication) = keyed_comment(app, &message, Some("twice"));
        let (plain, plain_publication) = keyed_comment(app, &message, None);
        let published = [publish(first_publication), publish(second_publication), publish(plain_publication)];
        let stored = [store(record(app, "job")), store(record(app, "job"))];
        writer_queue_reaches(app, 5).await;
        open.send(()).unwrap();
        held.await.unwrap();

        let [first_result, second_result, plain_result] = published;
        let (first_result, second_result) = (first_result.await.unwrap(), second_result.await.unwrap());
        assert!(first_result.unwrap().is_some());
        assert!(is_taken(&second_result), "{second_result:?}");
        let refused = ApiError::from(second_result.unwrap_err());
        assert_eq!(refused.code(), "idempotency-key-in-flight");
        assert!(plain_result.await.unwrap().unwrap().is_some(), "a batch-mate failed with it");
        let [first_job, second_job] = stored;
        assert!(first_job.await.unwrap().is_ok());
        assert!(is_taken(&second_job.await.unwrap()));
        for (comment, kept) in [(&first, true), (&second, false), (&plain, true)] {
            let fetched = app.get(&format!("/messages/{message}/comments/{comment}")).await;
            assert_eq!(fetched.status() == StatusCode::OK, kept, "comment {comment}");
        }
        assert_eq!(event_count(app, "comment.created").await, 2);
        let keys: Vec<String> = stored_keys(app).await.into_iter().map(|row| row.idempotency_key).collect();
        assert_eq!(keys, ["job", "twice"]);
    }

    async fn a_malformed_key_is_refused_400_and_nothing_is_created(app: &TestApp) {
        let long = "k".repeat(256);
        let malformed: [&[&[u8]]; 7] = [
            &[b"\"\""],
            &[long.as_bytes()],
            &[b"\"unterminated"],
            &[b"two words"],
            &[b"\"a\\nb\""],
            &[b"caf\xe9"],
            &[b"a", b"a"],
        ];
        for keys in malformed {
            let response = post_message_with_keys(app, keys).await;
            let problem = assert_problem(response, StatusCode::BAD_REQUEST, "invalid-request").await;
            assert!(problem["detail"].as_str().unwrap().starts_with("`Idempotency-Key` "), "{problem}");
        }
        assert_eq!(event_count(app, "message.created").await, 0);
        // The token is checked first, as on every route.
        let anonymous = app.client.post(app.url("/messages")).header("idempotency-key", "\"").send().await.unwrap();
        assert_problem(anonymous, StatusCode::UNAUTHORIZED, "unauthorized").await;
    }

    async fn a_keyed_body_is_checked_as_any_other(app: &TestApp) {
        let too_large = format!("{{\"text\": \"{}\"}}", "x".repeat(app.settings.max_body_bytes));
        let cases = [
            ("application/json", too_large, StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large"),
            ("text/plain", "{\"text\": \"hi\"}".to_owned(), StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type"),
            ("application/json", "{\"text\": ".to_owned(), StatusCode::BAD_REQUEST, "malformed-json"),
        ];
        for (content_type, body, status, code) in cases {
            let response = app
                .client
                .post(app.url("/messages"))
                .bearer_auth(&app.user.token)
                .header("idempotency-key", code)
                .header("content-type", content_type)
                .body(body)
                .send()
                .await
                .unwrap();
            assert_problem(response, status, code).await;
        }
        assert!(stored_keys(app).await.is_empty());
    }

    async fn a_request_refused_before_writing_stores_nothing_so_its_key_runs_again(app: &TestApp) {
        let message = id(&app.create_message("m").await);
        let path = format!("/messages/{message}/comments");
        let invalid = post_keyed(app, &path, "fix-me", &json!({"text": ""})).await;
        assert_problem(invalid, StatusCode::UNPROCESSABLE_ENTITY, "validation-failed").await;
        let fixed = post_keyed(app, &path, "fix-me", &json!({"text": "fixed"})).await;
        assert_eq!(fixed.status(), StatusCode::CREATED);

        let nowhere = format!("/messages/{UNKNOWN_MESSAGE}/comments");
        let missing = post_keyed(app, &nowhere, "lost", &json!({"text": "a"})).await;
        assert_problem(missing, StatusCode::NOT_FOUND, "not-found").await;
        let again = post_keyed(app, &nowhere, "lost", &json!({"text": "b"})).await;
        assert_problem(again, StatusCode::NOT_FOUND, "not-found").await;
        let keys: Vec<String> = stored_keys(app).await.into_iter().map(|row| row.idempotency_key).collect();
        assert_eq!(keys, ["fix-me"]);
    }
}

/// Tests that move the clock.
mod over_a_day {
    use super::*;

    backend_tests_with_backend! {
        async fn a_key_is_remembered_for_24_hours_and_then_runs_again(backend: Backend) {
            let mut app = spawn_app(backend).await;
            let message = id(&app.create_message("m").await);
            let path = format!("/messages/{message}/comments");
            let body = json!({"text": "daily"});
            let first = answer(post_keyed(&app, &path, "day", &body).await).await;

            app.advance(Duration::from_secs(23 * 3600 + 3599)).await;
            let within = answer(post_keyed(&app, &path, "day", &body).await).await;
            app.advance(Duration::from_secs(2)).await;
            let after = answer(post_keyed(&app, &path, "day", &body).await).await;
            let retried = answer(post_keyed(&app, &path, "day", &body).await).await;

            assert_eq!(within, first.replayed());
            assert_eq!(after.status, StatusCode::CREATED);
            assert!(!after.replayed);
            assert_ne!(id(&after.json()), id(&first.json()));
            assert_eq!(retried, after.replayed(), "the expired record was not replaced");
            assert_eq!(comment_count(&app, &message).await, 2);
        }

        async fn expired_keys_are_pruned_and_live_ones_kept(backend: Backend) {
            let mut app = spawn_app(backend).await;
            let clock: thinhook::clock::SharedClock = app.clock.clone();
            for key in ["old-1", "old-2"] {
                let created = post_keyed(&app, "/messages", key, &json!({"text": key})).await;
                assert_eq!(created.status(), StatusCode::CREATED);
            }
            app.advance(Duration::from_secs(24 * 3600 + 1)).await;
            let created = post_keyed(&app, "/messages", "new", &json!({"text": "new"})).await;
            assert_eq!(created.status(), StatusCode::CREATED);

            let removed = thinhook::retention::prune_idempotency_keys(&app.writer, &clock).await.unwrap();

            assert_eq!(removed, 2);
            let keys: Vec<String> = stored_keys(&app).await.into_iter().map(|row| row.idempotency_key).collect();
            assert_eq!(keys, ["new"]);
            app.advance(Duration::from_secs(24 * 3600 + 1)).await;
            assert_eq!(thinhook::retention::prune_idempotency_keys(&app.writer, &clock).await.unwrap(), 1);
            assert!(stored_keys(&app).await.is_empty());
        }
    }
}

/// Two API processes on one PostgreSQL database, the same key sent to each:
/// neither sees the other's in-flight mark, so the database decides. The
/// request whose response is stored second fails as a unique violation,
/// answered 409, never 500; the comment sent in its batch still commits.
/// (On SQLite the held writer would hold the database's write lock too, so
/// the second process could not commit first; there the storage test above
/// covers the path.)
#[tokio::test]
#[cfg_attr(
    not(postgres_tests),
    ignore = "set TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
async fn postgres_a_key_stored_first_by_another_process_is_refused_409_and_spares_its_batch_mates()
{
    let app = spawn_app(Backend::Postgres).await;
    let second_api = app.second_api().await;
    let message = id(&app.create_message("m").await);
    let path = format!("/messages/{message}/comments");
    let body = json!({"text": "twice"});
    let (open, held) = hold_writer(&app).await;
    let send = |address: &str, key: Option<&str>| {
        let mut request = app
            .client
            .post(format!("{address}{path}"))
            .bearer_auth(&app.user.token)
            .json(&body);
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        tokio::spawn(async move { request.send().await.unwrap() })
    };
    let here = send(&app.address, Some("shared"));
    let batch_mate = send(&app.address, None);
    writer_queue_reaches(&app, 2).await;

    let there = answer(send(&second_api, Some("shared")).await.unwrap()).await;
    open.send(()).unwrap();
    held.await.unwrap();

    assert_eq!(there.status, StatusCode::CREATED);
    assert_problem(
        here.await.unwrap(),
        StatusCode::CONFLICT,
        "idempotency-key-in-flight",
    )
    .await;
    assert_eq!(batch_mate.await.unwrap().status(), StatusCode::CREATED);
    assert_eq!(comment_count(&app, &message).await, 2);
    let retried = answer(post_keyed(&app, &path, "shared", &body).await).await;
    assert_eq!(retried, there.replayed());
}
