//! The one HTTP client every delivery goes through: SSRF-guarded name
//! resolution, no redirects, no proxy, bounded time and response size.

use std::time::{Duration, Instant};

use reqwest::Method;
use reqwest::header::HeaderMap;
use url::Url;

use super::ssrf::{Blocked, Guard, GuardedResolver, find_blocked};

#[derive(Debug, Clone)]
pub struct ClientSettings {
    pub connect_timeout: Duration,
    pub timeout: Duration,
    /// Bytes of the response body kept for the delivery log.
    pub max_response_bytes: usize,
}

#[derive(Debug, Clone)]
pub struct WebhookClient {
    http: reqwest::Client,
    guard: Guard,
    max_response_bytes: usize,
}

/// What one request produced.
#[derive(Debug, Clone, Default)]
pub struct Reply {
    pub status: Option<u16>,
    pub retry_after: Option<String>,
    /// `class: message` when no HTTP answer came (timeout, connect, blocked…).
    pub error: Option<String>,
    /// The start of the response body, lossily decoded.
    pub excerpt: Option<String>,
    pub elapsed: Duration,
    /// The request or its answer's body ran out of time: the attempt held
    /// its slot for the whole timeout.
    pub timed_out: bool,
    /// The answer's headers.
    pub headers: HeaderMap,
}

impl WebhookClient {
    pub fn new(guard: Guard, settings: &ClientSettings) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("thinhook/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(settings.connect_timeout)
            .timeout(settings.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(GuardedResolver(guard.clone()))
            .build()?;
        Ok(Self {
            http,
            guard,
            max_response_bytes: settings.max_response_bytes,
        })
    }

    pub fn guard(&self) -> &Guard {
        &self.guard
    }

    pub async fn post(&self, url: &Url, headers: HeaderMap, body: Vec<u8>) -> Reply {
        self.request(Method::POST, url, headers, body).await
    }

    /// An `OPTIONS` request without a body (the CloudEvents handshake).
    pub async fn options(&self, url: &Url, headers: HeaderMap) -> Reply {
        self.request(Method::OPTIONS, url, headers, Vec::new())
            .await
    }

    async fn request(&self, method: Method, url: &Url, headers: HeaderMap, body: Vec<u8>) -> Reply {
        let started = Instant::now();
        let mut reply = match self.guard.check_literal(url) {
            Err(blocked) => Reply {
                error: Some(blocked_error(url, &blocked)),
                ..Reply::default()
            },
            Ok(()) => self.send(method, url, headers, body).await,
        };
        reply.elapsed = started.elapsed();
        reply
    }

    async fn send(&self, method: Method, url: &Url, headers: HeaderMap, body: Vec<u8>) -> Reply {
        let mut response = match self
            .http
            .request(method, url.clone())
            .headers(headers)
            .body(body)
            .send()
            .await
        {
            Ok(response) => response,
            Err(error) => {
                return Reply {
                    error: Some(classify(url, &error)),
                    timed_out: error.is_timeout(),
                    ..Reply::default()
                };
            }
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let headers = std::mem::take(response.headers_mut());
        let (excerpt, error) = self.read_excerpt(response).await;
        Reply {
            status: Some(status),
            retry_after,
            headers,
            timed_out: error.as_ref().is_some_and(reqwest::Error::is_timeout),
            error: error.as_ref().map(|error| classify(url, error)),
            excerpt,
            elapsed: Duration::ZERO,
        }
    }

    /// Reads at most `max_response_bytes` of the body, then stops reading.
    async fn read_excerpt(
        &self,
        mut response: reqwest::Response,
    ) -> (Option<String>, Option<reqwest::Error>) {
        let mut kept = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    let room = self.max_response_bytes - kept.len();
                    kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
                    if kept.len() >= self.max_response_bytes {
                        break;
                    }
                }
                Ok(None) => break,
                // The status already counts; a body cut short is only noted.
                Err(error) => return (excerpt(&kept), Some(error)),
            }
        }
        (excerpt(&kept), None)
    }
}

fn excerpt(bytes: &[u8]) -> Option<String> {
    (!bytes.is_empty()).then(|| String::from_utf8_lossy(bytes).into_owned())
}

/// The delivery log's text for a refused destination, which the subscriber
/// reads: the reason without the address. The operator's log keeps the address.
fn blocked_error(url: &Url, blocked: &Blocked) -> String {
    tracing::debug!(
        url = %url,
        refused = blocked.for_operator(),
        "webhook destination refused"
    );
    format!("blocked: {blocked}")
}

/// `class: message` for the delivery log.
fn classify(url: &Url, error: &reqwest::Error) -> String {
    if let Some(blocked) = find_blocked(error) {
        return blocked_error(url, blocked);
    }
    let class = if error.is_timeout() {
        "timeout"
    } else if error.is_connect() {
        "connect"
    } else if error.is_body() || error.is_decode() {
        "body"
    } else {
        "request"
    };
    // The source chain says why (refused, reset…) without the URL reqwest adds.
    let mut cause = String::new();
    let mut source = std::error::Error::source(error);
    while let Some(e) = source {
        cause = e.to_string();
        source = e.source();
    }
    if cause.is_empty() {
        class.to_owned()
    } else {
        format!("{class}: {cause}")
    }
}
