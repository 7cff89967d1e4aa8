//! What an operator watches: `/metrics` moving with real traffic, and the
//! W3C trace context carried from a comment's request to its webhooks.

use reqwest::StatusCode;
use serde_json::Value;
use thinhook::startup::Role;
use thinhook::trace::TraceParent;

use crate::helpers::{Backend, TestApp, spawn_app, spawn_app_with};
use crate::receiver::{Receiver, Reply};
use crate::webhooks::subscribe;

/// The `/metrics` text of `base` (the API's address unless given).
async fn scrape(app: &TestApp, base: Option<&str>) -> String {
    let url = format!("{}/metrics", base.unwrap_or(&app.address));
    let response = app.client.get(url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()["content-type"].to_str().unwrap();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    response.text().await.unwrap()
}

/// The value of one series, `name{labels}` exactly as exposed; 0 if absent
/// (a counter that never moved).
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

async fn post_comment(app: &TestApp, message_id: &str, traceparent: Option<&str>) {
    let mut request = app
        .client
        .post(app.url(&format!("/messages/{message_id}/comments")))
        .bearer_auth(&app.user.token)
        .json(&serde_json::json!({"text": "hello"}));
    if let Some(traceparent) = traceparent {
        request = request.header("traceparent", traceparent);
    }
    assert_eq!(request.send().await.unwrap().status(), StatusCode::CREATED);
}

/// An app with one subscription to comments at a receiver, and a message
/// to comment on.
async fn subscribed(backend: Backend) -> (TestApp, Receiver, String) {
    let app = spawn_app(backend).await;
    let receiver = Receiver::start().await;
    subscribe(&app, &receiver.url("/hook"), &["comment.created"], None).await;
    let message = app.create_message("watched").await;
    let message_id = message["id"].as_str().unwrap().to_owned();
    (app, receiver, message_id)
}

backend_tests_with_backend! {
    async fn the_counters_read_what_the_traffic_did(backend: Backend) {
        let (app, receiver, message_id) = subscribed(backend).await;
        let message_id = message_id.as_str();
        for _ in 0..3 {
            post_comment(&app, message_id, None).await;
        }
        assert_eq!(app.dispatch_all_pending().await, 3);
        // The fourth is refused for good: the subscription is disabled.
        receiver.script([Reply::status(410)]);
        post_comment(&app, message_id, None).await;
        assert_eq!(app.dispatch_all_pending().await, 1);
        app.writes_committed().await;

        let text = scrape(&app, None).await;
        let read = |series: &str| value(&text, series);
        assert_eq!(read(r#"thinhook_events_accepted_total{type="comment.created"}"#), 4.0);
        assert_eq!(read(r#"thinhook_events_accepted_total{type="message.created"}"#), 1.0);
        assert_eq!(read(r#"thinhook_delivery_attempts_total{outcome="delivered"}"#), 3.0);
        assert_eq!(read(r#"thinhook_delivery_attempts_total{outcome="failed"}"#), 1.0);
        assert_eq!(read(r#"thinhook_delivery_attempts_total{outcome="disabled"}"#), 1.0);
        assert_eq!(read("thinhook_delivery_attempt_duration_seconds_count"), 4.0);
        assert_eq!(read("thinhook_delivery_end_to_end_seconds_count"), 3.0);
        assert_eq!(
            read(r#"thinhook_http_requests_total{route="/messages/{messageId}/comments",method="POST",status="201"}"#),
            4.0
        );
        assert_eq!(
            read(r#"thinhook_http_request_duration_seconds_count{route="/messages/{messageId}/comments"}"#),
            4.0
        );
        assert!(read(r#"thinhook_tokens_total{outcome="issued"}"#) >= 1.0);
        assert!(read("thinhook_writer_batch_size_count") >= 1.0);
        assert!(read("thinhook_writer_commit_duration_seconds_count") >= 1.0);
        assert_eq!(read(r#"thinhook_subscriptions{state="disabled"}"#), 1.0);
        assert_eq!(read(r#"thinhook_subscriptions{state="enabled"}"#), 0.0);
        for state in ["due", "leased", "waiting", "held"] {
            assert_eq!(read(&format!(r#"thinhook_deliveries_queued{{state="{state}"}}"#)), 0.0, "{state}");
        }
        assert_eq!(read("thinhook_oldest_due_delivery_age_seconds"), 0.0);
    }

    async fn the_queue_gauges_show_what_waits_and_for_how_long(backend: Backend) {
        let (app, receiver, message_id) = subscribed(backend).await;
        let message_id = message_id.as_str();
        receiver.script([Reply::status(503)]);
        post_comment(&app, message_id, None).await;
        assert_eq!(app.dispatch_all_pending().await, 1);
        post_comment(&app, message_id, None).await;
        app.writes_committed().await;
        // Neither is attempted: one waits for its retry, the other is due
        // and has been for a minute.
        let mut app = app;
        app.advance(std::time::Duration::from_secs(60)).await;

        let text = scrape(&app, None).await;
        let read = |series: &str| value(&text, series);
        assert_eq!(read(r#"thinhook_delivery_attempts_total{outcome="retry"}"#), 1.0);
        assert_eq!(read(r#"thinhook_deliveries_queued{state="waiting"}"#) + read(r#"thinhook_deliveries_queued{state="due"}"#), 2.0);
        assert!(read(r#"thinhook_deliveries_queued{state="due"}"#) >= 1.0);
        let age = read("thinhook_oldest_due_delivery_age_seconds");
        assert!((60.0..3600.0).contains(&age), "{age}");
        assert_eq!(read(r#"thinhook_subscriptions{state="enabled"}"#), 1.0);
    }

    async fn refusals_are_counted_by_limit(backend: Backend) {
        let app = spawn_app_with(backend, Role::Api, |s| {
            s.limits.api_per_second = 0.001;
            s.limits.api_burst = 2;
        })
        .await;
        let statuses: Vec<StatusCode> = futures_util::future::join_all(
            (0..3).map(|_| app.client.get(app.url("/subscriptions")).bearer_auth(&app.user.token).send()),
        )
        .await
        .into_iter()
        .map(|r| r.unwrap().status())
        .collect();
        assert!(statuses.contains(&StatusCode::TOO_MANY_REQUESTS), "{statuses:?}");
        let text = scrape(&app, None).await;
        assert_eq!(value(&text, r#"thinhook_rate_limited_total{limit="api"}"#), 1.0);
        assert_eq!(
            value(&text, r#"thinhook_http_requests_total{route="/subscriptions",method="GET",status="429"}"#),
            1.0
        );
    }

    async fn metrics_can_have_an_address_of_their_own(backend: Backend) {
        let app = spawn_app_with(backend, Role::Api, |s| s.metrics.listen = "127.0.0.1:0".into()).await;
        let own = app.metrics_address.clone().expect("a metrics address");
        app.create_message("counted").await;
        let text = scrape(&app, Some(&own)).await;
        assert_eq!(value(&text, r#"thinhook_events_accepted_total{type="message.created"}"#), 1.0);
        // Not on the API's address any more.
        let on_api = app.client.get(app.url("/metrics")).send().await.unwrap();
        assert_eq!(on_api.status(), StatusCode::NOT_FOUND);
        let elsewhere = app.client.get(format!("{own}/messages")).send().await.unwrap();
        assert_eq!(elsewhere.status(), StatusCode::NOT_FOUND);
    }

    async fn a_webhook_continues_the_trace_of_the_request_that_made_its_event(backend: Backend) {
        let (app, receiver, message_id) = subscribed(backend).await;
        let message_id = message_id.as_str();
        let sent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        post_comment(&app, message_id, Some(sent)).await;
        receiver.script([Reply::status(500)]);
        assert_eq!(app.dispatch_all_pending().await, 1);
        // The retry is a second span of the same trace.
        let mut app = app;
        app.advance(std::time::Duration::from_secs(3600)).await;
        assert_eq!(app.dispatch_all_pending().await, 1);

        let sent = TraceParent::parse(sent).unwrap();
        let spans: Vec<TraceParent> = receiver
            .received()
            .iter()
            .map(|r| TraceParent::parse(r.header("traceparent")).expect("a valid traceparent"))
            .collect();
        assert_eq!(spans.len(), 2);
        for span in &spans {
            assert_eq!(span.trace_id, sent.trace_id);
            assert_eq!(span.flags, sent.flags);
            assert_ne!(span.parent_id, sent.parent_id);
        }
        assert_ne!(spans[0].parent_id, spans[1].parent_id);
    }

    async fn an_event_without_a_trace_starts_one(backend: Backend) {
        let (app, receiver, message_id) = subscribed(backend).await;
        let message_id = message_id.as_str();
        post_comment(&app, message_id, Some("00-not-a-trace")).await;
        post_comment(&app, message_id, None).await;
        assert_eq!(app.dispatch_all_pending().await, 2);
        let traces: Vec<Value> = receiver
            .received()
            .iter()
            .map(|r| Value::from(TraceParent::parse(r.header("traceparent")).expect("valid").trace_id_hex()))
            .collect();
        assert_eq!(traces.len(), 2);
        assert_ne!(traces[0], traces[1]);
    }
}
