//! The bench's webhook receiver: a bare hyper HTTP/1.1 server on
//! 127.0.0.1 that notes which subscription (`/s/{i}`) got which event and
//! when, answers 204 and, in notify+fetch mode, first fetches the comment
//! the notification links to. It shares two cores with the gateway, its
//! database and the driver, so the hot path only parses and appends.

use std::borrow::Cow;
use std::collections::HashSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use http_body_util::{BodyExt, Empty};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::task::JoinSet;

/// One notification as it arrived.
#[derive(Debug, Clone)]
pub struct Arrival {
    /// The `i` of `/s/{i}`: which subscription it was sent for.
    pub subscription: u32,
    pub webhook_id: Box<str>,
    /// `data.resource.id`: joins the notification to the POST that caused it.
    pub comment_id: Box<str>,
    pub at: Instant,
    pub fetch: Fetch,
}

/// The notify+fetch step of one arrival.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetch {
    NotAsked,
    /// The comment was read (200) at this instant.
    Done(Instant),
    Failed,
}

/// Everything the receiver saw, handed over when it stops.
#[derive(Debug, Default)]
pub struct Received {
    pub arrivals: Vec<Arrival>,
    /// Requests that were not a notification for `/s/{i}` (answered 400).
    pub rejected: u64,
    /// The first fetch failure, to say what went wrong.
    pub first_fetch_error: Option<String>,
}

#[derive(Default)]
struct Log {
    received: Received,
    /// (subscription, webhook-id) pairs seen, to count unique deliveries.
    seen: HashSet<(u32, Box<str>)>,
}

struct State {
    log: Mutex<Log>,
    unique: AtomicU64,
    fetcher: Option<Fetcher>,
}

/// Reads the linked comment as a real thin-webhook receiver does.
#[derive(Debug)]
pub struct Fetcher {
    pub http: reqwest::Client,
    pub token: String,
}

#[derive(Debug)]
pub struct Receiver {
    address: SocketAddr,
    state: Arc<State>,
    server: tokio::task::JoinHandle<()>,
}

impl Receiver {
    /// Listens on 127.0.0.1 at a free port; fetches each comment first when
    /// a `fetcher` is given.
    pub async fn start(fetcher: Option<Fetcher>) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("the receiver cannot listen on 127.0.0.1")?;
        let address = listener.local_addr()?;
        let state = Arc::new(State {
            log: Mutex::default(),
            unique: AtomicU64::new(0),
            fetcher,
        });
        let server = tokio::spawn(accept(listener, state.clone()));
        Ok(Self {
            address,
            state,
            server,
        })
    }

    /// The URL of subscription `i`.
    pub fn url(&self, subscription: u32) -> String {
        format!("http://{}/s/{subscription}", self.address)
    }

    /// Unique (subscription, webhook-id) deliveries so far.
    pub fn unique(&self) -> u64 {
        self.state.unique.load(Ordering::Relaxed)
    }

    /// Stops listening and hands over what arrived.
    pub fn finish(self) -> Received {
        self.server.abort();
        let mut log = self
            .state
            .log
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        std::mem::take(&mut log.received)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("unique", &self.unique)
            .finish_non_exhaustive()
    }
}

/// Serves every connection until aborted; the connections are aborted with it.
async fn accept(listener: tokio::net::TcpListener, state: Arc<State>) {
    let mut connections = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of descriptors, most likely: let some connections end.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        connections.spawn(async move {
            let service = service_fn(move |request| receive(state.clone(), request));
            // A connection error (the gateway hung up) ends only that connection.
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
        // Reap finished connections so the set does not grow for ever.
        while connections.try_join_next().is_some() {}
    }
}

#[derive(Deserialize)]
struct Notification<'a> {
    #[serde(borrow)]
    data: Data<'a>,
}

#[derive(Deserialize)]
struct Data<'a> {
    #[serde(borrow)]
    resource: Resource<'a>,
}

#[derive(Deserialize)]
struct Resource<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(borrow)]
    url: Cow<'a, str>,
}

fn answer(status: StatusCode) -> Response<Empty<Bytes>> {
    let mut response = Response::new(Empty::new());
    *response.status_mut() = status;
    response
}

async fn receive(
    state: Arc<State>,
    request: Request<Incoming>,
) -> Result<Response<Empty<Bytes>>, Infallible> {
    let at = Instant::now();
    let subscription = request
        .uri()
        .path()
        .strip_prefix("/s/")
        .and_then(|i| i.parse::<u32>().ok());
    let webhook_id = request
        .headers()
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .map(Box::<str>::from);
    let body = request.into_body().collect().await.map(|b| b.to_bytes());
    let notification = body
        .as_ref()
        .ok()
        .and_then(|body| serde_json::from_slice::<Notification<'_>>(body).ok());
    let (Some(subscription), Some(webhook_id), Some(notification)) =
        (subscription, webhook_id, notification)
    else {
        state
            .log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .received
            .rejected += 1;
        return Ok(answer(StatusCode::BAD_REQUEST));
    };
    let resource = notification.data.resource;
    let (fetch, fetch_error) = match &state.fetcher {
        None => (Fetch::NotAsked, None),
        Some(fetcher) => match fetcher.fetch(&resource.url).await {
            Ok(()) => (Fetch::Done(Instant::now()), None),
            Err(error) => (Fetch::Failed, Some(format!("{error:#}"))),
        },
    };
    let arrival = Arrival {
        subscription,
        webhook_id: webhook_id.clone(),
        comment_id: resource.id.into(),
        at,
        fetch,
    };
    let mut log = state.log.lock().unwrap_or_else(PoisonError::into_inner);
    if log.seen.insert((subscription, webhook_id)) {
        state.unique.fetch_add(1, Ordering::Relaxed);
    }
    log.received.arrivals.push(arrival);
    if log.received.first_fetch_error.is_none() {
        log.received.first_fetch_error = fetch_error;
    }
    Ok(answer(StatusCode::NO_CONTENT))
}

impl Fetcher {
    async fn fetch(&self, url: &str) -> anyhow::Result<()> {
        let response = self.http.get(url).bearer_auth(&self.token).send().await?;
        let status = response.status();
        // Read the whole comment: that is what a receiver pays for.
        response.bytes().await?;
        anyhow::ensure!(
            status == reqwest::StatusCode::OK,
            "GET {url} answered {status}"
        );
        Ok(())
    }
}
