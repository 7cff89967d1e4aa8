//! Prometheus metrics: what `GET /metrics` shows. One [`Metrics`] per
//! application (tests run several in one process); the parts that count
//! hold an `Arc` of it. Counting is lock-free or a read lock on a family's
//! label map; the only database work is the gauges' one query, at most once
//! per [`GAUGE_TTL`] however often Prometheus scrapes.

use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Nullable, Text, Timestamp};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use time::PrimitiveDateTime;

use crate::clock::{SharedClock, to_db};
use crate::db::fixed::{Bind, Fixed};
use crate::db::{Database, DbConnection};

/// How long the queue and subscription gauges are reused between scrapes.
pub const GAUGE_TTL: Duration = Duration::from_secs(5);

/// The exposition format `GET /metrics` answers in.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A label set of fixed names and values.
type Labels = [(&'static str, &'static str); 1];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The route's pattern (`/messages/{id}`), never the raw path, so the
    /// number of series stays bounded.
    pub route: &'static str,
    pub method: &'static str,
    pub status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub http_requests: Family<RequestLabels, Counter>,
    pub http_duration: Histograms<RouteLabels>,
    pub events_accepted: Family<Labels, Counter>,
    pub attempts: Family<Labels, Counter>,
    pub attempt_duration: Histogram,
    pub end_to_end: Histogram,
    pub writer_batch: Histogram,
    pub writer_commit: Histogram,
    pub rate_limited: Family<Labels, Counter>,
    pub tokens: Family<Labels, Counter>,
    queued: Family<Labels, Gauge>,
    oldest_due: Gauge<f64, AtomicU64>,
    subscriptions: Family<Labels, Gauge>,
    /// When the gauges were last read from the database.
    gauges_read: Mutex<Option<Instant>>,
}

/// Seconds, from 0.5 ms to about 33 s: loopback requests and slow receivers alike.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.000_5, 2.0, 17))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut metrics = Self {
            registry: Registry::with_prefix("thinhook"),
            http_requests: Family::default(),
            http_duration: Family::new_with_constructor(latency),
            events_accepted: Family::default(),
            attempts: Family::default(),
            attempt_duration: latency(),
            // From 10 ms to about 11 days: retries stretch a delivery's delay.
            end_to_end: Histogram::new(exponential_buckets(0.01, 4.0, 14)),
            writer_batch: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            writer_commit: latency(),
            rate_limited: Family::default(),
            tokens: Family::default(),
            queued: Family::default(),
            oldest_due: Gauge::default(),
            subscriptions: Family::default(),
            gauges_read: Mutex::new(None),
        };
        let registry = &mut metrics.registry;
        registry.register(
            "http_requests",
            "HTTP requests answered, by route pattern, method and status",
            metrics.http_requests.clone(),
        );
        registry.register_with_unit(
            "http_request_duration",
            "Time to answer an HTTP request, by route pattern",
            Unit::Seconds,
            metrics.http_duration.clone(),
        );
        registry.register(
            "events_accepted",
            "Events recorded (each one queued for its matching subscriptions), by type",
            metrics.events_accepted.clone(),
        );
        registry.register(
            "delivery_attempts",
            "Webhook attempts by outcome: delivered, retry (another attempt is scheduled), \
             failed (no attempt left, or 410 Gone), disabled (the attempt's failure disabled \
             its subscription; also counted as retry or failed)",
            metrics.attempts.clone(),
        );
        registry.register_with_unit(
            "delivery_attempt_duration",
            "Time from sending a webhook to its answer (or error)",
            Unit::Seconds,
            metrics.attempt_duration.clone(),
        );
        registry.register_with_unit(
            "delivery_end_to_end",
            "Time from an event to the first successful delivery to each subscription",
            Unit::Seconds,
            metrics.end_to_end.clone(),
        );
        registry.register(
            "deliveries_queued",
            "Deliveries not yet finished: due (waiting for a dispatcher), leased (being \
             attempted), waiting (for a retry), held (their subscription is disabled or \
             awaits the receiver's CloudEvents consent)",
            metrics.queued.clone(),
        );
        registry.register_with_unit(
            "oldest_due_delivery_age",
            "How long the oldest due delivery has been due (0 when none is)",
            Unit::Seconds,
            metrics.oldest_due.clone(),
        );
        registry.register(
            "subscriptions",
            "Subscriptions by state (enabled, disabled, unverified: awaiting the receiver's \
             CloudEvents consent)",
            metrics.subscriptions.clone(),
        );
        registry.register(
            "writer_batch_size",
            "Writes committed together in one transaction by the writer",
            metrics.writer_batch.clone(),
        );
        registry.register_with_unit(
            "writer_commit_duration",
            "Time the writer takes to write and commit one batch",
            Unit::Seconds,
            metrics.writer_commit.clone(),
        );
        registry.register(
            "rate_limited",
            "Requests refused by a limit, by limit: api (per client), token (token requests \
             per address or client), secret_checks (concurrent secret checks), writer (the \
             writer's queue is full)",
            metrics.rate_limited.clone(),
        );
        registry.register(
            "tokens",
            "Token requests by outcome: issued, or the OAuth error code",
            metrics.tokens.clone(),
        );
        metrics
    }

    pub fn event_accepted(&self, event_type: &'static str) {
        self.events_accepted
            .get_or_create(&[("type", event_type)])
            .inc();
    }

    pub fn attempt(&self, outcome: &'static str) {
        self.attempts.get_or_create(&[("outcome", outcome)]).inc();
    }

    pub fn rate_limited(&self, limit: &'static str) {
        self.rate_limited.get_or_create(&[("limit", limit)]).inc();
    }

    pub fn token(&self, outcome: &'static str) {
        self.tokens.get_or_create(&[("outcome", outcome)]).inc();
    }

    /// The exposition text, the gauges refreshed first if they are older
    /// than [`GAUGE_TTL`].
    pub async fn render(&self, db: &Database, clock: &SharedClock) -> String {
        self.refresh_gauges(db, clock).await;
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry);
        text
    }

    async fn refresh_gauges(&self, db: &Database, clock: &SharedClock) {
        {
            let mut read = self.gauges_read.lock().unwrap_or_else(|p| p.into_inner());
            if read.is_some_and(|at| at.elapsed() < GAUGE_TTL) {
                return;
            }
            // Concurrent scrapes reuse the old values rather than query too.
            *read = Some(Instant::now());
        }
        let now = clock.now_utc();
        match db.run(move |conn| queue_state(conn, to_db(now))).await {
            Ok(rows) => {
                self.queued.clear();
                self.subscriptions.clear();
                for state in ["due", "leased", "waiting", "held"] {
                    self.queued.get_or_create(&[("state", state)]).set(0);
                }
                self.oldest_due.set(0.0);
                for row in rows {
                    let Some(&state) = STATES.iter().find(|s| **s == row.state) else {
                        continue;
                    };
                    let family = match row.kind.as_str() {
                        "deliveries" => &self.queued,
                        _ => &self.subscriptions,
                    };
                    family.get_or_create(&[("state", state)]).set(row.count);
                    if let ("deliveries", "due", Some(oldest)) =
                        (row.kind.as_str(), state, row.oldest)
                    {
                        let age = (now - oldest.assume_utc()).as_seconds_f64();
                        self.oldest_due.set(age.max(0.0));
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "cannot read the queue gauges"),
        }
    }
}

const STATES: [&str; 7] = [
    "due",
    "leased",
    "waiting",
    "held",
    "enabled",
    "disabled",
    "unverified",
];

#[derive(Debug, QueryableByName)]
struct StateCount {
    #[diesel(sql_type = Text)]
    kind: String,
    #[diesel(sql_type = Text)]
    state: String,
    #[diesel(sql_type = BigInt)]
    count: i64,
    #[diesel(sql_type = Nullable<Timestamp>)]
    oldest: Option<PrimitiveDateTime>,
}

/// Unfinished deliveries by state, with the oldest due time, and
/// subscriptions by state: one statement, reading the pending deliveries'
/// partial index and the subscriptions.
fn queue_state(
    conn: &mut DbConnection,
    now: PrimitiveDateTime,
) -> diesel::QueryResult<Vec<StateCount>> {
    Fixed::new(
        "SELECT 'deliveries' AS kind,
                CASE WHEN s.enabled = 0 OR s.verification IN ('pending', 'refused') THEN 'held'
                     WHEN d.locked_until IS NOT NULL AND d.locked_until > ? THEN 'leased'
                     WHEN d.next_attempt_at <= ? THEN 'due'
                     ELSE 'waiting' END AS state,
                COUNT(*) AS count,
                MIN(d.next_attempt_at) AS oldest
         FROM deliveries d JOIN subscriptions s ON s.id = d.subscription_id
         WHERE d.status = 'pending'
         GROUP BY 2
         UNION ALL
         SELECT 'subscriptions' AS kind,
                CASE WHEN enabled = 0 THEN 'disabled'
                     WHEN verification IN ('pending', 'refused') THEN 'unverified'
                     ELSE 'enabled' END AS state,
                COUNT(*) AS count,
                NULL AS oldest
         FROM subscriptions
         GROUP BY 2",
        [Bind::Timestamp(now), Bind::Timestamp(now)],
    )
    .load(conn)
}
