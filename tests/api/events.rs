//! The event feed: order, filters, cursors under concurrent writers, retention.

use std::cell::Cell;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use thinhook::auth::Scopes;

use crate::helpers::{TestApp, assert_problem, spawn_app};

fn id(value: &Value) -> String {
    value["id"].as_str().unwrap().to_owned()
}

async fn page(app: &TestApp, query: &str) -> Value {
    let response = app.get(&format!("/events?{query}")).await;
    assert_eq!(response.status(), StatusCode::OK, "{query}");
    response.json().await.unwrap()
}

fn ids(page: &Value) -> Vec<String> {
    page["data"].as_array().unwrap().iter().map(id).collect()
}

backend_tests! {
    async fn the_feed_lists_events_oldest_first_with_their_links(app: &TestApp) {
        let message = id(&app.create_message("m").await);
        let comments: Vec<String> = [
            app.create_comment(&message, "one").await,
            app.create_comment(&message, "two").await,
        ]
        .iter()
        .map(id)
        .collect();

        let all = page(app, "").await;
        let data = all["data"].as_array().unwrap();
        assert_eq!(data.len(), 3);
        assert_eq!(data[0]["type"], "message.created");
        assert_eq!(data[0]["data"]["resource"]["id"], message.as_str());
        assert_eq!(data[1]["data"]["resource"]["id"], comments[0].as_str());
        assert_eq!(data[2]["data"]["resource"]["id"], comments[1].as_str());
        assert_eq!(data[2]["data"]["sequence"], 3);
        assert_eq!(all["has_more"], false);
        let url = data[2]["data"]["resource"]["url"].as_str().unwrap();
        assert!(url.ends_with(&format!("/messages/{message}/comments/{}", comments[1])));

        let one: Value = app.get(&format!("/events/{}", id(&data[1]))).await.json().await.unwrap();
        assert_eq!(one, data[1]);
        let comments_only = page(app, "types=comment.created").await;
        assert_eq!(ids(&comments_only).len(), 2);
        let other = id(&app.create_message("other").await);
        assert_eq!(ids(&page(app, &format!("message_id={other}")).await).len(), 1);
    }

    async fn a_cursor_resumes_where_the_reader_stopped(app: &TestApp) {
        let message = id(&app.create_message("m").await);
        let first = page(app, "limit=1").await;
        assert_eq!(first["has_more"], false);
        let cursor = first["next_cursor"].as_str().unwrap().to_owned();
        app.create_comment(&message, "later").await;
        let next = page(app, &format!("after={cursor}")).await;
        assert_eq!(next["data"][0]["type"], "comment.created");
        let empty = page(app, &format!("after={}", next["next_cursor"].as_str().unwrap())).await;
        assert_eq!(empty["data"], json!([]));
        assert_eq!(empty["next_cursor"], next["next_cursor"], "an empty page keeps the cursor");
    }

    async fn bad_feed_parameters_are_refused(app: &TestApp) {
        for query in ["types=comment.deleted", "after=garbage", "limit=0", "message_id=nope", "since=1"] {
            let response = app.get(&format!("/events?{query}")).await;
            assert_problem(response, StatusCode::BAD_REQUEST, "invalid-request").await;
        }
        let unknown = app.get("/events/evt_01jd5x8w3k2m4n6p7q9r0s1t2v").await;
        assert_problem(unknown, StatusCode::NOT_FOUND, "not-found").await;
    }

    async fn reading_the_feed_needs_its_scope(app: &TestApp) {
        let writer = app.register_client("writer", Scopes::parse("messages:write").unwrap()).await;
        let response = app.get_with_token("/events", &writer.token).await;
        assert_problem(response, StatusCode::FORBIDDEN, "insufficient-scope").await;
    }
}

/// Reads the feed in pages of 7 while `writers` writers work, until all of
/// them have finished and a page comes back empty; returns the event ids in
/// the order read.
async fn read_while_writing(app: &TestApp, finished: &Cell<usize>, writers: usize) -> Vec<String> {
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    // Bounded: far more rounds than the few thousand events in pages of 7 need.
    for _ in 0..20_000 {
        let done = finished.get() == writers;
        let query = match &cursor {
            Some(c) => format!("limit=7&after={c}"),
            None => "limit=7".to_owned(),
        };
        let page = page(app, &query).await;
        seen.extend(ids(&page));
        cursor = page["next_cursor"].as_str().map(str::to_owned);
        if done && page["data"].as_array().unwrap().is_empty() {
            break;
        }
    }
    seen
}

/// Reads the whole feed from the start, when nothing writes.
async fn read_all(app: &TestApp) -> Vec<String> {
    let mut all = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let query = cursor
            .as_ref()
            .map_or("limit=100".to_owned(), |c| format!("limit=100&after={c}"));
        let page = page(app, &query).await;
        all.extend(ids(&page));
        cursor = page["next_cursor"].as_str().map(str::to_owned);
        if page["has_more"] == false {
            return all;
        }
    }
}

/// Asserts that `seen` holds `expected` events, each once, in the order a
/// later reader from the start sees too.
async fn assert_each_event_seen_once_in_a_stable_order(
    app: &TestApp,
    seen: &[String],
    expected: usize,
) {
    assert_eq!(seen.len(), expected, "events missed or repeated");
    let mut unique = seen.to_vec();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), seen.len(), "an event was seen twice");
    assert_eq!(read_all(app).await, seen);
}

/// Posts `count` comments on `message` through the API at `base`.
async fn post_comments(app: &TestApp, base: &str, message: &str, writer: usize, count: usize) {
    for n in 0..count {
        let response = app
            .client
            .post(format!("{base}/messages/{message}/comments"))
            .bearer_auth(&app.user.token)
            .json(&json!({"text": format!("{writer}-{n}")}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
    }
}

/// Tests that start their own app.
mod own_app {
    use super::*;

    backend_tests_with_backend! {
        async fn a_reader_sees_every_event_of_concurrent_writers_exactly_once(backend: Backend) {
            let app = spawn_app(backend).await;
            let message = id(&app.create_message("busy").await);
            const WRITERS: usize = 8;
            const EACH: usize = 500;
            let finished = Cell::new(0);

            let writers = (0..WRITERS).map(|w| {
                let (app, message, finished) = (&app, &message, &finished);
                async move {
                    post_comments(app, &app.address, message, w, EACH).await;
                    finished.set(finished.get() + 1);
                }
            });
            let reader = read_while_writing(&app, &finished, WRITERS);
            let (_, seen) = tokio::join!(futures_util::future::join_all(writers), reader);

            assert_each_event_seen_once_in_a_stable_order(&app, &seen, WRITERS * EACH + 1).await;
        }

        /// Writers on one message are ordered by that message's row lock
        /// (its sequence counter), and writers in one process by its one
        /// writer: either would hide feed positions handed out in any order
        /// but commit order. Here each writer has its own message, and two
        /// API processes, each with its own writer, share the database, so
        /// transactions overlap and commit in any order (on PostgreSQL; SQLite
        /// takes one write transaction at a time whatever the process).
        async fn a_reader_sees_every_event_of_writers_on_different_messages_in_two_processes_exactly_once(backend: Backend) {
            let app = spawn_app(backend).await;
            let apis = [app.address.clone(), app.second_api().await];
            const WRITERS: usize = 8;
            const EACH: usize = 300;
            let mut messages = Vec::new();
            for w in 0..WRITERS {
                messages.push(id(&app.create_message(&format!("writer {w}")).await));
            }
            let finished = Cell::new(0);

            let writers = messages.iter().enumerate().map(|(w, message)| {
                let (app, base, finished) = (&app, &apis[w % apis.len()], &finished);
                async move {
                    post_comments(app, base, message, w, EACH).await;
                    finished.set(finished.get() + 1);
                }
            });
            let reader = read_while_writing(&app, &finished, WRITERS);
            let (_, seen) = tokio::join!(futures_util::future::join_all(writers), reader);

            assert_each_event_seen_once_in_a_stable_order(&app, &seen, WRITERS * EACH + WRITERS).await;
            // Each message's comments are in the feed in the order they were posted.
            for message in &messages {
                let of_message = page(&app, &format!("message_id={message}&limit=100")).await;
                let sequences: Vec<i64> = of_message["data"].as_array().unwrap().iter()
                    .map(|e| e["data"]["sequence"].as_i64().unwrap()).collect();
                assert!(sequences.windows(2).all(|w| w[0] < w[1]), "{sequences:?}");
            }
        }

        async fn expired_events_are_pruned_and_their_cursors_are_gone(backend: Backend) {
            let mut app = spawn_app(backend).await;
            let message = id(&app.create_message("old").await);
            // A reader stops after the first event; a second one follows.
            let first = page(&app, "limit=1").await;
            let stale_cursor = first["next_cursor"].as_str().unwrap().to_owned();
            let old_event = id(&first["data"][0]);
            app.create_comment(&message, "unread, then expired").await;

            app.advance(Duration::from_secs(31 * 86_400)).await;
            app.create_comment(&message, "new").await;
            let clock: thinhook::clock::SharedClock = app.clock.clone();
            let removed = thinhook::retention::prune_expired(&app.writer, &clock, Duration::from_secs(30 * 86_400))
                .await
                .unwrap();

            assert_eq!(removed, 2);
            // The reader missed an event that no longer exists: it must start over.
            let gone = app.get(&format!("/events?after={stale_cursor}")).await;
            assert_problem(gone, StatusCode::GONE, "gone").await;
            assert_problem(app.get(&format!("/events/{old_event}")).await, StatusCode::NOT_FOUND, "not-found").await;
            let fresh = page(&app, "").await;
            assert_eq!(fresh["data"].as_array().unwrap().len(), 1);
            assert_eq!(fresh["data"][0]["type"], "comment.created");
        }

        /// The order that used to lose events: the reader reads one of
        /// `pruned_through` and the rows, a prune commits, the reader reads
        /// the other. The prune is run by hand from the reading
        /// connection's instrumentation, right after its first query.
        async fn a_prune_between_the_feeds_two_reads_cannot_make_a_page_skip_events(backend: Backend) {
            let mut app = spawn_app(backend).await;
            let message = id(&app.create_message("old").await);
            let first = page(&app, "limit=1").await;
            let cursor = first["next_cursor"].as_str().unwrap().to_owned();
            app.create_comment(&message, "unread, then expired").await;
            app.advance(Duration::from_secs(31 * 86_400)).await;
            app.create_comment(&message, "new").await;
            let before = thinhook::clock::to_db(app.clock_now() - Duration::from_secs(30 * 86_400));

            let options = app.db.connect_options().clone();
            let pruner = app.db.clone();
            let removed = std::sync::Arc::new(std::sync::Mutex::new(None));
            let removed_by_hook = removed.clone();
            let read = tokio::task::spawn_blocking(move || {
                use diesel::connection::{Connection, InstrumentationEvent};
                use thinhook::db::{events, write_transaction};
                let mut reader = options.establish().unwrap();
                reader.set_instrumentation(move |event: InstrumentationEvent<'_>| {
                    let mut removed = removed_by_hook.lock().unwrap();
                    if matches!(event, InstrumentationEvent::FinishQuery { .. }) && removed.is_none() {
                        let mut conn = pruner.get().unwrap();
                        *removed = Some(write_transaction(&mut conn, |c| events::prune(c, thinhook::domain::WorkspaceId::DEFAULT, before, 1_000)).map_err(|e| e.to_string()));
                    }
                });
                let query = events::FeedQuery { workspace: thinhook::domain::WorkspaceId::DEFAULT.into(), after: Some(1), types: Vec::new(), message_id: None, limit: 100 };
                events::read_feed(&mut reader, &query).unwrap()
            })
            .await
            .unwrap();

            assert_eq!(*removed.lock().unwrap(), Some(Ok(2)), "the prune ran between the reads");
            // The page would have begun after the pruned event 2: the cursor is gone instead.
            assert!(matches!(read, thinhook::db::events::FeedRead::Expired), "{read:?}");
            assert_problem(app.get(&format!("/events?after={cursor}")).await, StatusCode::GONE, "gone").await;
        }
    }
}
