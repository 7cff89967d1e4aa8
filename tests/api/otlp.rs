//! With the `otlp` feature: a worker process exports a span per webhook
//! attempt to a collector (a loopback receiver here), a child of the span
//! that created the event, and the `traceparent` it sends names that span.

use std::process::Stdio;

use thinhook::trace::TraceParent;

use crate::helpers::spawn_app;
use crate::receiver::Receiver;
use crate::webhooks::subscribe;

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

backend_tests_with_backend! {
    async fn each_attempt_is_an_exported_span_that_its_traceparent_names(backend: Backend) {
        let app = spawn_app(backend).await;
        let (collector, receiver) = (Receiver::start().await, Receiver::start().await);
        subscribe(&app, &receiver.url("/hook"), &["comment.created"], None).await;
        let message = app.create_message("exported").await;
        let mut worker = app
            .serve_process(&["--role", "worker"])
            .env("THINHOOK_TRACING_OTLP_ENDPOINT", collector.url("/v1/traces"))
            .env("OTEL_BSP_SCHEDULE_DELAY", "100")
            .stderr(Stdio::null())
            .spawn()
            .expect("the worker starts");

        let sent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let response = app
            .client
            .post(app.url(&format!("/messages/{}/comments", message["id"].as_str().unwrap())))
            .bearer_auth(&app.user.token)
            .header("traceparent", sent)
            .json(&serde_json::json!({"text": "traced"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), reqwest::StatusCode::CREATED);
        let delivered = receiver.wait_for(1).await;
        let exported = collector.wait_for(1).await;
        worker.kill().expect("the worker stops");
        let _ = worker.wait();
        assert_eq!(delivered, 1);
        assert!(exported >= 1, "no span was exported");

        let sent = TraceParent::parse(sent).unwrap();
        let header = TraceParent::parse(receiver.received()[0].header("traceparent")).unwrap();
        assert_eq!(header.trace_id, sent.trace_id);
        let export = &collector.received()[0];
        assert_eq!(export.path, "/v1/traces");
        assert_eq!(export.header("content-type"), "application/x-protobuf");
        // Protobuf carries the ids as raw bytes: the span of the attempt,
        // in the sender's trace.
        assert!(contains(&export.body, &sent.trace_id));
        assert!(contains(&export.body, &header.parent_id));
    }
}
