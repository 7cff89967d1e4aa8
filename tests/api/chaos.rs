//! Chaos, bounded in count and time, on loopback: the gateway killed with
//! SIGKILL while clients post, and receivers that misbehave in every way
//! the network allows. Figures go to stderr (`--nocapture` shows them).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_app};
use crate::receiver::Receiver;

fn id(value: &Value) -> String {
    value["id"].as_str().unwrap().to_owned()
}

/// `thinhook serve --role all` on the app's database and key, answering
/// tokens the app issued, on `port`.
fn gateway_process(app: &TestApp, port: u16) -> std::process::Child {
    app.serve_process(&[])
        .env("THINHOOK_LISTEN", format!("127.0.0.1:{port}"))
        .env("THINHOOK_AUTH_ISSUER", &app.address)
        .env("THINHOOK_LIMITS_API_BURST", "100000")
        .env("THINHOOK_LOG_LEVEL", "error")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

async fn wait_ready(client: &reqwest::Client, base: &str) {
    for _ in 0..200 {
        if let Ok(response) = client.get(format!("{base}/readyz")).send().await
            && response.status() == StatusCode::OK
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the gateway did not become ready within 5 s");
}

backend_tests_with_backend! {
    async fn killed_four_times_while_four_clients_post_nothing_accepted_is_lost(backend: Backend) {
        const KILLS: usize = 4;
        const WRITERS: usize = 4;
        // Paced, so that posts span every kill; the count bounds the run.
        const MAX_POSTS_PER_WRITER: usize = 2000;
        const PACE: Duration = Duration::from_millis(5);
        let app = spawn_app(backend).await;
        let receiver = Receiver::start().await;
        let message = id(&app.create_message("under fire").await);
        let response = app
            .post_json("/subscriptions", &json!({"url": receiver.url("/"), "event_types": ["comment.created"]}))
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);

        let port = crate::listen::free_port();
        let base = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
        let mut gateway = gateway_process(&app, port);
        wait_ready(&client, &base).await;

        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(Mutex::new(Vec::<String>::new()));
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let (client, stop, accepted, token) = (client.clone(), stop.clone(), accepted.clone(), app.user.token.clone());
                let url = format!("{base}/messages/{message}/comments");
                tokio::spawn(async move {
                    for n in 0..MAX_POSTS_PER_WRITER {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let sent = client.post(&url).bearer_auth(&token).json(&json!({"text": format!("{w}-{n}")})).send().await;
                        match sent {
                            Ok(response) if response.status() == StatusCode::CREATED => {
                                let body: Value = response.json().await.unwrap();
                                accepted.lock().unwrap().push(id(&body));
                                tokio::time::sleep(PACE).await;
                            }
                            // Refused or cut off by the kill: not accepted, nothing promised.
                            _ => tokio::time::sleep(Duration::from_millis(10)).await,
                        }
                    }
                })
            })
            .collect();

        let mut restarted = Instant::now();
        for _ in 0..KILLS {
            tokio::time::sleep(Duration::from_millis(600)).await;
            gateway.kill().unwrap(); // SIGKILL
            gateway.wait().unwrap();
            gateway = gateway_process(&app, port);
            restarted = Instant::now();
            wait_ready(&client, &base).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.store(true, Ordering::Relaxed);
        for writer in writers {
            writer.await.unwrap();
        }
        let accepted: HashSet<String> = accepted.lock().unwrap().iter().cloned().collect();
        assert!(accepted.len() < WRITERS * MAX_POSTS_PER_WRITER, "the writers stopped before the last kill");
        assert!(accepted.len() > 50, "too few comments accepted to tell: {}", accepted.len());

        // Every accepted comment is delivered at least once.
        let delivered = || -> HashMap<String, usize> {
            let mut seen = HashMap::new();
            for received in receiver.received() {
                let comment = received.json()["data"]["resource"]["id"].as_str().unwrap_or_default().to_owned();
                *seen.entry(comment).or_default() += 1;
            }
            seen
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let missing = loop {
            let seen = delivered();
            let missing: Vec<&String> = accepted.iter().filter(|c| !seen.contains_key(*c)).collect();
            if missing.is_empty() || Instant::now() > deadline {
                break missing.len();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let recovery = restarted.elapsed();
        gateway.kill().unwrap();
        gateway.wait().unwrap();
        assert_eq!(missing, 0, "{missing} accepted comments were never delivered");

        // And in the feed.
        let mut in_feed = HashSet::new();
        let mut after: Option<String> = None;
        loop {
            let path = match &after {
                Some(cursor) => format!("/events?limit=100&after={cursor}"),
                None => "/events?limit=100".to_owned(),
            };
            let page: Value = app.get(&path).await.json().await.unwrap();
            for event in page["data"].as_array().unwrap() {
                in_feed.insert(event["data"]["resource"]["id"].as_str().unwrap_or_default().to_owned());
            }
            if page["has_more"] != true {
                break;
            }
            after = page["next_cursor"].as_str().map(str::to_owned);
        }
        let lost_from_feed = accepted.iter().filter(|c| !in_feed.contains(*c)).count();
        assert_eq!(lost_from_feed, 0, "accepted comments missing from the feed");

        let duplicates: usize = delivered().values().map(|n| n.saturating_sub(1)).sum();
        eprintln!(
            "chaos kill -9 ({backend:?}): {KILLS} kills, accepted {}, lost 0, duplicates {duplicates}, \
             all delivered {:.1} s after the last restart",
            accepted.len(),
            recovery.as_secs_f64()
        );
        assert!(recovery < Duration::from_secs(30), "recovery waited for leases to expire");
    }
}

/// How a receiver misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Misbehaviour {
    Answers500,
    NeverAnswers,
    ResetsTheConnection,
    AnswersGone,
    /// The whole answer at one byte per second.
    Trickles,
    /// 200 with a 10 MB body.
    Floods,
    /// 200 with NUL bytes in the body.
    SendsNul,
}

/// A receiver on loopback that misbehaves so at every request; its URL.
async fn misbehaving(mode: Misbehaviour) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                // The request's head is enough to answer; the body is small.
                let mut buffer = [0u8; 16 * 1024];
                let _ = stream.read(&mut buffer).await;
                let answer = |status: u16, body: &[u8]| {
                    let mut bytes = format!(
                        "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        body.len()
                    )
                    .into_bytes();
                    bytes.extend_from_slice(body);
                    bytes
                };
                match mode {
                    Misbehaviour::Answers500 => {
                        let _ = stream.write_all(&answer(500, b"oops")).await;
                    }
                    Misbehaviour::AnswersGone => {
                        let _ = stream.write_all(&answer(410, b"")).await;
                    }
                    Misbehaviour::SendsNul => {
                        let _ = stream.write_all(&answer(200, b"ok\0\0\xff")).await;
                    }
                    Misbehaviour::NeverAnswers => tokio::time::sleep(Duration::from_secs(60)).await,
                    Misbehaviour::ResetsTheConnection => {
                        let _ = stream.set_zero_linger();
                        drop(stream);
                    }
                    Misbehaviour::Trickles => {
                        for byte in answer(200, b"slow") {
                            if stream.write_all(&[byte]).await.is_err() {
                                break;
                            }
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                    Misbehaviour::Floods => {
                        let _ = stream
                            .write_all(&answer(200, &vec![b'x'; 10 * 1024 * 1024]))
                            .await;
                    }
                }
            });
        }
    });
    url
}

/// Receivers that misbehave.
mod receivers {
    use super::*;

    backend_tests_with_backend! {
        async fn every_delivery_to_misbehaving_receivers_ends_and_the_others_keep_their_pace(backend: Backend) {
            use Misbehaviour::*;
            const EVENTS: usize = 4;
            let app = crate::helpers::spawn_app_with(backend, thinhook::startup::Role::All, |s| {
                s.delivery.timeout_secs = 2;
                s.delivery.connect_timeout_secs = 1;
                s.delivery.lease_secs = 10;
                // One attempt: the server's clock is the test's and stands still,
            // so no backoff would ever end.
            s.delivery.retry_schedule_secs = vec![0];
                s.delivery.poll_interval_ms = 50;
            })
            .await;
            let message = id(&app.create_message("chaos").await);
            let subscribe = |url: String| {
                let app = &app;
                async move {
                    let response = app
                        .post_json("/subscriptions", &json!({"url": url, "event_types": ["comment.created"]}))
                        .await;
                    assert_eq!(response.status(), StatusCode::CREATED);
                    id(&response.json().await.unwrap())
                }
            };
            let expected = [
                (Answers500, "failed"),
                (NeverAnswers, "failed"),
                (ResetsTheConnection, "failed"),
                (AnswersGone, "failed"),
                (Trickles, "failed"),
                (Floods, "delivered"),
                (SendsNul, "delivered"),
            ];
            let mut subscriptions = Vec::new();
            for (mode, status) in expected {
                subscriptions.push((mode, status, subscribe(misbehaving(mode).await).await));
            }
            let good = Receiver::start().await;
            subscribe(good.url("/")).await;

            let posted = Instant::now();
            for n in 0..EVENTS {
                app.create_comment(&message, &format!("c{n}")).await;
            }
            assert_eq!(good.wait_for(EVENTS).await, EVENTS);
            let good_took = posted.elapsed();

            // Every delivery reaches the end its receiver's behaviour calls for.
            let deadline = Instant::now() + Duration::from_secs(40);
            for (mode, want, subscription) in &subscriptions {
                loop {
                    let page: Value = app.get(&format!("/subscriptions/{subscription}/deliveries")).await.json().await.unwrap();
                    let statuses: Vec<&str> = page["data"].as_array().unwrap().iter().map(|d| d["status"].as_str().unwrap()).collect();
                    // A 410 disables the subscription: later events make no delivery.
                    let all_made = statuses.len() == EVENTS || (*mode == AnswersGone && !statuses.is_empty());
                    if all_made && statuses.iter().all(|s| s == want) {
                        break;
                    }
                    assert!(Instant::now() < deadline, "{mode:?}: deliveries still {statuses:?}, want {want}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            let gone = &subscriptions.iter().find(|(mode, ..)| *mode == AnswersGone).unwrap().2;
            let state: Value = app.get(&format!("/subscriptions/{gone}")).await.json().await.unwrap();
            assert_eq!(state["enabled"], false, "a 410 did not disable its subscription");
            eprintln!(
                "chaos receivers ({backend:?}): {} misbehaving subscriptions × {EVENTS} events all ended in {:.1} s; \
                 the well-behaved one had all {EVENTS} in {:.2} s",
                subscriptions.len(),
                posted.elapsed().as_secs_f64(),
                good_took.as_secs_f64()
            );
            assert!(good_took < Duration::from_secs(2), "the well-behaved subscription waited {good_took:?}");
        }
    }
}
