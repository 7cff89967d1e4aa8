//! The bench's API client: set-up (token, message, subscriptions) and the
//! load itself, `POST /messages/{id}/comments` from `concurrency` keep-alive
//! clients, paced on an open-loop schedule or as fast as possible.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{Value, json};

use super::gateway::Credentials;

/// Longest wait for any one request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The gateway's API as the bench's client sees it.
#[derive(Debug)]
pub struct Api {
    http: reqwest::Client,
    base_url: String,
    token: String,
}

impl Api {
    /// Trades the client credentials for an access token.
    pub async fn connect(
        http: reqwest::Client,
        base_url: &str,
        credentials: &Credentials,
    ) -> anyhow::Result<Self> {
        let response = http
            .post(format!("{base_url}/oauth/token"))
            .basic_auth(&credentials.id, Some(&credentials.secret))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("grant_type=client_credentials")
            .send()
            .await
            .context("POST /oauth/token")?;
        let body = expect_json(response, reqwest::StatusCode::OK, "POST /oauth/token").await?;
        let token = body["access_token"]
            .as_str()
            .context("the token response has no access_token")?
            .to_owned();
        Ok(Self {
            http,
            base_url: base_url.to_owned(),
            token,
        })
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    /// Creates the message every comment goes to; returns its id.
    pub async fn create_message(&self) -> anyhow::Result<String> {
        let body = self
            .post_json("/messages", &json!({"text": "thinhook bench"}))
            .await?;
        Ok(body["id"]
            .as_str()
            .context("the created message has no id")?
            .to_owned())
    }

    /// Subscribes `url` to new comments on the message.
    pub async fn subscribe(&self, message_id: &str, url: &str) -> anyhow::Result<()> {
        self.post_json(
            "/subscriptions",
            &json!({"url": url, "event_types": ["comment.created"], "message_id": message_id}),
        )
        .await?;
        Ok(())
    }

    async fn post_json(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let response = self
            .http
            .post(format!("{}{path}", self.base_url))
            .bearer_auth(&self.token)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .with_context(|| format!("POST {path}"))?;
        expect_json(
            response,
            reqwest::StatusCode::CREATED,
            &format!("POST {path}"),
        )
        .await
    }
}

async fn expect_json(
    response: reqwest::Response,
    expected: reqwest::StatusCode,
    what: &str,
) -> anyhow::Result<Value> {
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    anyhow::ensure!(status == expected, "{what} answered {status}: {text}");
    serde_json::from_str(&text).with_context(|| format!("{what} answered no JSON: {text}"))
}

/// One POST of the load.
#[derive(Debug, Clone)]
pub struct Sent {
    /// The comment id from `Location`, when the gateway accepted the event.
    pub comment_id: Option<Box<str>>,
    /// When the event was due: its slot on the paced schedule, else when it was sent.
    pub intended: Instant,
    pub completed: Instant,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Status(u16),
    /// No answer: connection error or timeout, or a 2xx without a usable `Location`.
    Error,
}

/// What to send.
#[derive(Debug, Clone)]
pub struct Load {
    pub events: u64,
    pub concurrency: usize,
    /// Events per second, or as fast as possible.
    pub rate: Option<f64>,
    /// No event is sent after this.
    pub deadline: Instant,
}

/// What the load did.
#[derive(Debug, Default)]
pub struct Driven {
    pub sends: Vec<Sent>,
    /// Paced runs: the longest an event was sent after its slot.
    pub max_lag: Option<Duration>,
}

/// When event `i` is due on an open-loop schedule of `rate` per second:
/// fixed in advance, so a slow answer delays no later slot.
pub fn due(start: Instant, i: u64, rate: f64) -> Instant {
    start + Duration::from_secs_f64(i as f64 / rate)
}

/// A comment of about 300 bytes.
pub fn comment_body(i: u64) -> String {
    const FILLER: &str = "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod \
        tempor incididunt ut labore et dolore magna aliqua. Ut enim ad minim veniam, quis nostrud \
        exercitation ullamco laboris nisi ut aliquip ex ea commodo consequat. Duis aute irure \
        dolor in reprehenderit in voluptate.";
    json!({ "text": format!("bench comment {i:08}: {FILLER}") }).to_string()
}

/// Sends the load; every loop ends at `events` or at the deadline.
pub async fn drive(api: Arc<Api>, message_id: &str, load: &Load) -> Driven {
    let url = Arc::<str>::from(format!("{}/messages/{message_id}/comments", api.base_url));
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..load.concurrency {
        let (api, url, next, load) = (api.clone(), url.clone(), next.clone(), load.clone());
        workers.spawn(async move {
            let mut sends = Vec::new();
            let mut max_lag = Duration::ZERO;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= load.events {
                    break;
                }
                let intended = match load.rate {
                    Some(rate) => {
                        let due = due(start, i, rate);
                        if due >= load.deadline {
                            break;
                        }
                        tokio::time::sleep_until(due.into()).await;
                        max_lag = max_lag.max(due.elapsed());
                        due
                    }
                    None if Instant::now() >= load.deadline => break,
                    None => Instant::now(),
                };
                sends.push(api.post_comment(&url, i, intended).await);
            }
            (sends, max_lag)
        });
    }
    let mut driven = Driven::default();
    let mut max_lag = Duration::ZERO;
    while let Some(joined) = workers.join_next().await {
        // A worker only ends by returning; a panic would be a bench bug.
        if let Ok((sends, lag)) = joined {
            driven.sends.extend(sends);
            max_lag = max_lag.max(lag);
        }
    }
    driven.max_lag = load.rate.map(|_| max_lag);
    driven
}

impl Api {
    async fn post_comment(&self, url: &str, i: u64, intended: Instant) -> Sent {
        let response = self
            .http
            .post(url)
            .bearer_auth(&self.token)
            .header("content-type", "application/json")
            .body(comment_body(i))
            .send()
            .await;
        let (outcome, comment_id) = match response {
            Err(_) => (Outcome::Error, None),
            Ok(response) => {
                let status = response.status();
                let comment_id = response
                    .headers()
                    .get("location")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|location| location.rsplit('/').next())
                    .filter(|id| !id.is_empty())
                    .map(Box::<str>::from);
                // Drain the body so the connection is reused.
                let read = response.bytes().await;
                match (status.is_success(), comment_id, read) {
                    (true, Some(id), Ok(_)) => (Outcome::Status(status.as_u16()), Some(id)),
                    (true, _, _) => (Outcome::Error, None),
                    (false, _, _) => (Outcome::Status(status.as_u16()), None),
                }
            }
        };
        Sent {
            comment_id,
            intended,
            completed: Instant::now(),
            outcome,
        }
    }
}

/// The HTTP client for set-up and load: keep-alive, no Nagle delay.
pub fn http_client(connections: usize) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .pool_max_idle_per_host(connections)
        .tcp_nodelay(true)
        .build()
        .context("cannot build the HTTP client")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_open_loop_schedule_is_fixed_by_the_rate_alone() {
        let start = Instant::now();
        assert_eq!(due(start, 0, 500.0), start);
        assert_eq!(due(start, 1, 500.0), start + Duration::from_millis(2));
        assert_eq!(due(start, 1000, 500.0), start + Duration::from_secs(2));
        assert_eq!(due(start, 3, 0.5), start + Duration::from_secs(6));
    }

    #[test]
    fn comments_are_about_300_bytes_of_json() {
        let body = comment_body(42);
        assert!((280..=340).contains(&body.len()), "{} bytes", body.len());
        let parsed: Value = serde_json::from_str(&body).unwrap();
        assert!(parsed["text"].as_str().unwrap().contains("00000042"));
    }
}
