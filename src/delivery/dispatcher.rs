//! The dispatcher: keeps many attempts in flight, fairly across
//! subscriptions, and records what happened in batches.
//!
//! Work arrives two ways: deliveries this process created, leased to it in
//! their own transaction and handed over by the writer at commit (no claim
//! query), and claims ([`queue::claim`]) for backlog, retries and deliveries
//! of other processes. Deliveries wait in one queue per subscription; the
//! subscriptions with work take turns (round robin), each with at most
//! `per_subscription` attempts in flight, all of them with at most
//! `max_in_flight`. Attempts run concurrently over the client's keep-alive
//! connections; their outcomes are gathered and recorded through the writer
//! a batch at a time, fenced by the lease ([`deliveries::record_outcomes`]).
//! Leases are renewed while work waits.
//!
//! On shutdown it stops taking work, lets attempts in flight finish for a
//! grace period, records them, and releases every lease it still holds.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, mpsc, watch};
use tokio::task::{Id, JoinSet};
use tokio::time::Instant;

use super::attempt::Attempter;
use super::handshake::Handshaker;
use crate::clock::{SharedClock, to_db};
use crate::db::deliveries::{AttemptOutcome, Leased};
use crate::db::queue::{self, Capacity, Claim, ClaimLimits};
use crate::db::writer::Writer;
use crate::db::{Backend, DbError};
use crate::domain::RequestId;

#[derive(Debug, Clone)]
pub struct DispatchSettings {
    pub lease: Duration,
    /// Deliveries claimed at once.
    pub batch: u32,
    pub max_in_flight: u32,
    pub per_subscription: u32,
    /// Attempts in flight at once to one host.
    pub per_host: u32,
    /// Subscriptions a claim visits per pass.
    pub claim_window: u32,
    pub poll_interval: Duration,
    pub disable_after: Duration,
    /// How long shutdown waits for attempts in flight.
    pub shutdown_grace: Duration,
}

/// Wakes the dispatcher of this process: deliveries became due.
pub type Wake = Arc<Notify>;

/// Deliveries leased at creation, from the writer.
pub type Handoffs = mpsc::UnboundedReceiver<Vec<Leased>>;

/// How often a PostgreSQL worker looks for dead workers to take work from.
const REAP_INTERVAL: Duration = Duration::from_secs(5);
/// A subscription no other worker holds may have this many times its bound
/// leased to this one: enough waiting that its slots stay busy while the
/// next claim is made.
const SOLE_HOLDER_FACTOR: i64 = 4;
/// Wait before recording again after a failure.
const RECORD_RETRY: Duration = Duration::from_millis(500);

pub struct Dispatcher {
    writer: Writer,
    attempter: Attempter,
    clock: SharedClock,
    backend: Backend,
    settings: DispatchSettings,
    /// Names this process's leases.
    worker_id: String,
    wake: Wake,
    /// Deliveries held in memory, shared with the writer.
    capacity: Arc<Capacity>,
    handoffs: Mutex<Option<Handoffs>>,
    /// Asks CloudEvents receivers for consent.
    handshaker: Arc<Handshaker>,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("worker_id", &self.worker_id)
            .finish_non_exhaustive()
    }
}

/// What the dispatcher is made of.
#[derive(Debug)]
pub struct Parts {
    pub writer: Writer,
    pub attempter: Attempter,
    pub backend: Backend,
    pub settings: DispatchSettings,
    pub worker_id: String,
    pub wake: Wake,
    pub capacity: Arc<Capacity>,
    pub handoffs: Handoffs,
    pub handshaker: Arc<Handshaker>,
}

/// A new worker id: the process id and something random.
pub fn new_worker_id() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        &RequestId::generate().as_str()[20..]
    )
}

/// Work the dispatcher waits for besides attempts.
enum Control {
    Claimed(Result<Claim, DbError>),
    Recorded(Vec<AttemptOutcome>, Result<Vec<bool>, DbError>),
    /// Dead workers' leases were freed: there may be work to claim.
    Reaped(usize),
    /// Handshakes were asked; this many receivers consented.
    Verified(usize),
    Done,
}

impl Dispatcher {
    pub fn new(parts: Parts) -> Self {
        Self {
            clock: parts.attempter.clock.clone(),
            writer: parts.writer,
            attempter: parts.attempter,
            backend: parts.backend,
            settings: parts.settings,
            worker_id: parts.worker_id,
            wake: parts.wake,
            capacity: parts.capacity,
            handoffs: Mutex::new(Some(parts.handoffs)),
            handshaker: parts.handshaker,
        }
    }

    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }

    pub fn client(&self) -> &super::client::WebhookClient {
        &self.attempter.client
    }

    /// Claims and attempts due deliveries until none is due; returns how many
    /// attempts were made. For tests and one-shot runs: the attempts of one
    /// claim run concurrently, claims one after another.
    pub async fn dispatch_all_pending(&self) -> Result<usize, DbError> {
        self.verify_due().await;
        let mut attempted = 0;
        let mut cursor = String::new();
        loop {
            let claim = self.claim(self.settings.batch as usize, cursor).await?;
            cursor = claim.cursor;
            if claim.leased.is_empty() {
                return Ok(attempted);
            }
            attempted += claim.leased.len();
            let attempts = claim.leased.iter().map(|d| self.attempter.attempt(d));
            let outcomes = futures_util::future::join_all(attempts).await;
            self.writer
                .record(&self.worker_id, outcomes, self.settings.disable_after)
                .await?;
        }
    }

    /// Runs until `stop` turns true.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let Some(mut handoffs) = self
            .handoffs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        else {
            tracing::error!("the dispatcher runs once");
            return;
        };
        tracing::info!(worker = self.worker_id, "dispatcher started");
        self.take_back_leases().await;

        let mut run = Run::new(&self.settings);
        let mut poll = tokio::time::interval(self.settings.poll_interval);
        let mut renew = tokio::time::interval(self.settings.lease / 3);
        let mut reap = tokio::time::interval(REAP_INTERVAL);
        for timer in [&mut poll, &mut renew, &mut reap] {
            timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        renew.reset();
        reap.reset();
        loop {
            self.start_work(&mut run);
            // When the next subscription held to its allowed rate may send.
            let paced = run.queues.next_paced();
            tokio::select! {
                Some(batch) = handoffs.recv() => run.queues.extend(batch),
                Some(done) = run.attempts.join_next_with_id(), if !run.attempts.is_empty() => {
                    run.finished(done);
                }
                Some(done) = run.control.join_next(), if !run.control.is_empty() => {
                    if let Ok(control) = done {
                        self.handle(&mut run, control);
                    }
                }
                () = self.wake.notified() => run.claim_wanted = true,
                _ = poll.tick() => {
                    run.claim_wanted = true;
                    if !run.verifying {
                        run.verifying = true;
                        let this = self.clone();
                        run.control.spawn(async move { Control::Verified(this.verify_due().await) });
                    }
                }
                () = tokio::time::sleep_until(paced.unwrap_or_else(Instant::now)), if paced.is_some() => {
                    run.queues.release_paced(Instant::now());
                }
                _ = renew.tick() => {
                    let (writer, worker) = (self.writer.clone(), self.worker_id.clone());
                    let until = to_db(self.clock.now_utc() + self.settings.lease);
                    run.control.spawn(async move {
                        if let Err(error) = writer.run(move |conn| queue::renew(conn, &worker, until)).await {
                            tracing::warn!(error = format!("{:#}", anyhow::Error::from(error)), "cannot renew leases");
                        }
                        Control::Done
                    });
                }
                _ = reap.tick(), if self.backend == Backend::Postgres => {
                    let this = self.clone();
                    run.control.spawn(async move { Control::Reaped(this.reap().await) });
                }
                _ = stop.changed() => break,
            }
        }
        drop(handoffs);
        self.stop_gracefully(run).await;
        tracing::info!(worker = self.worker_id, "dispatcher stopped");
    }

    /// Starts attempts, a record and a claim, as far as bounds allow.
    fn start_work(self: &Arc<Self>, run: &mut Run) {
        while let Some(delivery) = run.queues.next(Instant::now()) {
            let attempter = self.attempter.clone();
            let task = delivery.clone();
            let handle = run
                .attempts
                .spawn(async move { attempter.attempt(&task).await });
            run.running.insert(handle.id(), delivery);
        }
        if !run.recording && !run.unrecorded.is_empty() {
            run.recording = true;
            let outcomes = std::mem::take(&mut run.unrecorded);
            let this = self.clone();
            run.control.spawn(async move {
                let recorded = this
                    .writer
                    .record(
                        &this.worker_id,
                        outcomes.clone(),
                        this.settings.disable_after,
                    )
                    .await;
                if recorded.is_err() {
                    tokio::time::sleep(RECORD_RETRY).await;
                }
                Control::Recorded(outcomes, recorded)
            });
        }
        let want = self.capacity.free().min(self.settings.batch as usize);
        if run.claim_wanted && !run.claiming && want > 0 {
            run.claim_wanted = false;
            run.claiming = true;
            let this = self.clone();
            let cursor = std::mem::take(&mut run.cursor);
            run.control
                .spawn(async move { Control::Claimed(this.claim(want, cursor).await) });
        }
    }

    fn handle(&self, run: &mut Run, control: Control) {
        match control {
            Control::Claimed(claimed) => {
                run.claiming = false;
                match claimed {
                    Ok(claim) => {
                        // A full claim means more may be due at once; any
                        // claim, that more may come due as leases end.
                        run.claim_wanted = claim.leased.len() >= self.settings.batch as usize;
                        run.backlog = !claim.leased.is_empty();
                        run.cursor = claim.cursor;
                        self.capacity.take(claim.leased.len());
                        run.queues.extend(claim.leased);
                    }
                    Err(error) => tracing::error!(
                        error = format!("{:#}", anyhow::Error::from(error)),
                        "cannot claim deliveries"
                    ),
                }
            }
            Control::Recorded(outcomes, recorded) => {
                run.recording = false;
                match recorded {
                    Ok(recorded) => {
                        for (outcome, _) in outcomes.iter().zip(recorded).filter(|(_, ok)| !ok) {
                            tracing::warn!(
                                delivery = outcome.attempt.delivery_id,
                                "the lease passed to another worker; this attempt's outcome is discarded"
                            );
                        }
                        self.capacity.give_back(outcomes.len());
                        // Their leases ended: a subscription at its bound has room again.
                        run.claim_wanted |= run.backlog;
                    }
                    Err(error) => {
                        tracing::error!(
                            error = format!("{:#}", anyhow::Error::from(error)),
                            outcomes = outcomes.len(),
                            "cannot record attempts; trying again"
                        );
                        run.unrecorded.splice(0..0, outcomes);
                    }
                }
            }
            Control::Reaped(released) => run.claim_wanted |= released > 0,
            Control::Verified(consented) => {
                run.verifying = false;
                run.claim_wanted |= consented > 0;
            }
            Control::Done => {}
        }
    }

    /// Asks the CloudEvents receivers whose handshake is due; returns how
    /// many consented (their held deliveries are due now).
    async fn verify_due(&self) -> usize {
        match self.handshaker.verify_due(&self.writer, &self.clock).await {
            Ok(consented) => consented,
            Err(error) => {
                tracing::error!(
                    error = format!("{:#}", anyhow::Error::from(error)),
                    "cannot ask the CloudEvents handshakes"
                );
                0
            }
        }
    }

    async fn claim(&self, want: usize, cursor: String) -> Result<Claim, DbError> {
        let now = self.clock.now_utc();
        let worker = self.worker_id.clone();
        let limits = ClaimLimits {
            batch: i64::try_from(want).unwrap_or(i64::MAX),
            per_subscription: i64::from(self.settings.per_subscription),
            sole_holder: i64::from(self.settings.per_subscription) * SOLE_HOLDER_FACTOR,
            window: i64::from(self.settings.claim_window),
        };
        let until = to_db(now + self.settings.lease);
        self.writer
            .run(move |conn| queue::claim(conn, &worker, to_db(now), until, limits, &cursor))
            .await
    }

    /// A starting dispatcher takes back the work of its dead predecessors at
    /// once: on SQLite (one dispatching process) every lease; on PostgreSQL
    /// those of workers whose liveness lock is free.
    async fn take_back_leases(&self) {
        let released = match self.backend {
            Backend::Sqlite => self
                .writer
                .run(|conn| queue::release_all(conn, None))
                .await
                .map_err(|e| {
                    tracing::error!(
                        error = format!("{:#}", anyhow::Error::from(e)),
                        "cannot release old leases"
                    )
                })
                .unwrap_or(0),
            Backend::Postgres => self.reap().await,
        };
        if released > 0 {
            tracing::info!(released, "took back the leases of a stopped dispatcher");
        }
    }

    /// PostgreSQL: frees the leases of dead workers; returns how many.
    async fn reap(&self) -> usize {
        let me = self.worker_id.clone();
        match self.writer.run(move |conn| queue::reap(conn, &me)).await {
            Ok(reaped) => reaped
                .into_iter()
                .map(|(worker, released)| {
                    tracing::info!(worker, released, "took back the leases of a dead worker");
                    released
                })
                .sum(),
            Err(error) => {
                tracing::warn!(
                    error = format!("{:#}", anyhow::Error::from(error)),
                    "cannot look for dead workers"
                );
                0
            }
        }
    }

    async fn stop_gracefully(&self, mut run: Run) {
        run.queues.clear();
        tracing::info!(
            in_flight = run.attempts.len(),
            "dispatcher stopping; finishing attempts in flight"
        );
        let grace = tokio::time::sleep(self.settings.shutdown_grace);
        tokio::pin!(grace);
        while !run.attempts.is_empty() || !run.control.is_empty() {
            tokio::select! {
                Some(done) = run.attempts.join_next_with_id() => run.finished(done),
                Some(done) = run.control.join_next() => match done {
                    Ok(Control::Recorded(outcomes, Ok(_))) => self.capacity.give_back(outcomes.len()),
                    Ok(Control::Recorded(outcomes, Err(_))) => run.unrecorded.extend(outcomes),
                    _ => {}
                },
                () = &mut grace => break,
            }
        }
        run.attempts.abort_all();
        while run.attempts.join_next().await.is_some() {}
        if !run.unrecorded.is_empty() {
            let outcomes = std::mem::take(&mut run.unrecorded);
            if let Err(error) = self
                .writer
                .record(&self.worker_id, outcomes, self.settings.disable_after)
                .await
            {
                tracing::error!(
                    error = format!("{:#}", anyhow::Error::from(error)),
                    "cannot record the last attempts; they are made again"
                );
            }
        }
        // Whatever is still leased to this worker was not attempted, or not
        // to the end: due again at once, for whoever comes next.
        let worker = self.worker_id.clone();
        match self
            .writer
            .run(move |conn| queue::release_all(conn, Some(&worker)))
            .await
        {
            Ok(0) => {}
            Ok(released) => tracing::info!(released, "released leases of unfinished work"),
            Err(error) => tracing::error!(
                error = format!("{:#}", anyhow::Error::from(error)),
                "cannot release leases; they expire by themselves"
            ),
        }
    }
}

/// The state of a running dispatcher, owned by its loop.
struct Run {
    queues: Queues,
    attempts: JoinSet<AttemptOutcome>,
    /// The delivery each running attempt is for.
    running: HashMap<Id, Leased>,
    control: JoinSet<Control>,
    /// Finished attempts waiting to be recorded.
    unrecorded: Vec<AttemptOutcome>,
    recording: bool,
    claiming: bool,
    verifying: bool,
    claim_wanted: bool,
    /// The last claim found work: claim again whenever leases end.
    backlog: bool,
    /// Where the next claim starts (round robin across subscriptions).
    cursor: String,
}

impl Run {
    fn new(settings: &DispatchSettings) -> Self {
        Self {
            queues: Queues::new(
                settings.max_in_flight,
                settings.per_subscription,
                settings.per_host,
            ),
            attempts: JoinSet::new(),
            running: HashMap::new(),
            control: JoinSet::new(),
            unrecorded: Vec::new(),
            recording: false,
            claiming: false,
            verifying: false,
            claim_wanted: true,
            backlog: false,
            cursor: String::new(),
        }
    }

    fn finished(&mut self, done: Result<(Id, AttemptOutcome), tokio::task::JoinError>) {
        let id = match &done {
            Ok((id, _)) => *id,
            Err(error) => error.id(),
        };
        let Some(delivery) = self.running.remove(&id) else {
            return;
        };
        let timed_out = matches!(&done, Ok((_, outcome)) if outcome.timed_out);
        self.queues.finished(&delivery.subscription.id, timed_out);
        match done {
            Ok((_, outcome)) => self.unrecorded.push(outcome),
            // Cancelled at shutdown, or a bug: the lease is released when the
            // dispatcher stops, or expires.
            Err(error) if error.is_panic() => tracing::error!(
                delivery = delivery.delivery_id,
                "a webhook attempt panicked"
            ),
            Err(_) => {}
        }
    }
}

/// Deliveries waiting, one queue per subscription, served round robin,
/// within three bounds: `max_in_flight` in all; `per_subscription` each, or
/// one while the subscription's breaker is open; and `per_host` for all the
/// subscriptions whose URLs name one host, so that a few subscriptions
/// pointing at a host that never answers cannot hold every slot. A
/// subscription whose receiver allowed a rate (CloudEvents'
/// `WebHook-Allowed-Rate`) starts its attempts evenly spaced at that rate,
/// waiting without a slot between them.
struct Queues {
    by_subscription: HashMap<String, SubscriptionQueue>,
    /// Subscriptions with waiting work and a free slot, in turn order.
    ready: VecDeque<String>,
    /// Subscriptions with waiting work held back by their host's bound,
    /// ready again when one of its attempts ends.
    held_by_host: HashMap<String, Vec<String>>,
    /// Attempts in flight per host.
    hosts: HashMap<String, usize>,
    /// Subscriptions with waiting work held back by their allowed rate,
    /// ready again at the instant given.
    paced: Vec<(Instant, String)>,
    /// Consecutive timeouts per subscription; at [`BREAKER_TIMEOUTS`] its
    /// breaker is open: one attempt at a time until one ends otherwise.
    timeouts: HashMap<String, u32>,
    in_flight: usize,
    max_in_flight: usize,
    per_subscription: usize,
    per_host: usize,
}

struct SubscriptionQueue {
    waiting: VecDeque<Leased>,
    in_flight: usize,
    /// Whether it is in `ready` (or held by its host or its rate).
    ready: bool,
    host: String,
    /// The spacing its allowed rate asks for, if it has one.
    interval: Option<Duration>,
    /// Its next attempt starts no earlier.
    not_before: Option<Instant>,
}

/// The spacing of attempts at `per_minute` requests a minute.
fn spacing(per_minute: Option<i32>) -> Option<Duration> {
    let per_minute = u32::try_from(per_minute?).ok().filter(|&n| n > 0)?;
    Some(Duration::from_secs(60) / per_minute)
}

/// Consecutive timeouts that open a subscription's breaker.
const BREAKER_TIMEOUTS: u32 = 3;

impl Queues {
    fn new(max_in_flight: u32, per_subscription: u32, per_host: u32) -> Self {
        Self {
            by_subscription: HashMap::new(),
            ready: VecDeque::new(),
            held_by_host: HashMap::new(),
            hosts: HashMap::new(),
            paced: Vec::new(),
            timeouts: HashMap::new(),
            in_flight: 0,
            max_in_flight: max_in_flight as usize,
            per_subscription: per_subscription as usize,
            per_host: per_host as usize,
        }
    }

    /// Attempts `subscription` may have in flight now.
    fn bound(&self, subscription: &str) -> usize {
        match self.timeouts.get(subscription) {
            Some(&n) if n >= BREAKER_TIMEOUTS => 1,
            _ => self.per_subscription,
        }
    }

    fn extend(&mut self, deliveries: Vec<Leased>) {
        for delivery in deliveries {
            let id = delivery.subscription.id.clone();
            let bound = self.bound(&id);
            let queue =
                self.by_subscription
                    .entry(id.clone())
                    .or_insert_with(|| SubscriptionQueue {
                        waiting: VecDeque::new(),
                        in_flight: 0,
                        ready: false,
                        host: host_of(&delivery.subscription.url),
                        interval: None,
                        not_before: None,
                    });
            queue.interval = spacing(delivery.subscription.allowed_rate);
            queue.waiting.push_back(delivery);
            if !queue.ready && queue.in_flight < bound {
                queue.ready = true;
                self.ready.push_back(id);
            }
        }
    }

    /// The next delivery to attempt `now`, if the bounds allow one.
    fn next(&mut self, now: Instant) -> Option<Leased> {
        while self.in_flight < self.max_in_flight {
            let id = self.ready.pop_front()?;
            let bound = self.bound(&id);
            let Some(queue) = self.by_subscription.get_mut(&id) else {
                continue;
            };
            if queue.waiting.is_empty() {
                queue.ready = false;
                continue;
            }
            if let Some(at) = queue.not_before.filter(|&at| at > now) {
                // Still `ready`: held until its rate allows the next one.
                self.paced.push((at, id));
                continue;
            }
            let host_in_flight = self.hosts.entry(queue.host.clone()).or_default();
            if *host_in_flight >= self.per_host {
                // Still `ready`: held until an attempt to its host ends.
                self.held_by_host
                    .entry(queue.host.clone())
                    .or_default()
                    .push(id);
                continue;
            }
            let delivery = queue.waiting.pop_front()?;
            queue.not_before = queue.interval.map(|interval| now + interval);
            *host_in_flight += 1;
            queue.in_flight += 1;
            self.in_flight += 1;
            if !queue.waiting.is_empty() && queue.in_flight < bound {
                // Its next turn comes after every other ready subscription's.
                self.ready.push_back(id);
            } else {
                queue.ready = false;
            }
            return Some(delivery);
        }
        None
    }

    /// When the first subscription held back by its rate may go on.
    fn next_paced(&self) -> Option<Instant> {
        self.paced.iter().map(|(at, _)| *at).min()
    }

    /// Makes the subscriptions whose rate allows an attempt `now` ready again.
    fn release_paced(&mut self, now: Instant) {
        let (due, later) = std::mem::take(&mut self.paced)
            .into_iter()
            .partition(|(at, _)| *at <= now);
        self.paced = later;
        self.ready
            .extend(due.into_iter().map(|(_, id): (Instant, String)| id));
    }

    /// An attempt of `subscription` ended; `timed_out` feeds its breaker.
    fn finished(&mut self, subscription: &str, timed_out: bool) {
        self.note(subscription, timed_out);
        self.in_flight = self.in_flight.saturating_sub(1);
        let bound = self.bound(subscription);
        let Some(queue) = self.by_subscription.get_mut(subscription) else {
            return;
        };
        queue.in_flight = queue.in_flight.saturating_sub(1);
        let host = queue.host.clone();
        if queue.waiting.is_empty() && queue.in_flight == 0 {
            self.by_subscription.remove(subscription);
        } else if !queue.ready && !queue.waiting.is_empty() && queue.in_flight < bound {
            queue.ready = true;
            self.ready.push_back(subscription.to_owned());
        }
        if let Some(n) = self.hosts.get_mut(&host) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.hosts.remove(&host);
            }
        }
        if let Some(held) = self.held_by_host.remove(&host) {
            self.ready.extend(held);
        }
    }

    /// Counts consecutive timeouts; any other ending closes the breaker.
    fn note(&mut self, subscription: &str, timed_out: bool) {
        if timed_out {
            let n = self.timeouts.entry(subscription.to_owned()).or_default();
            *n += 1;
            if *n == BREAKER_TIMEOUTS {
                tracing::warn!(
                    subscription,
                    "attempts keep timing out: one at a time until one ends otherwise"
                );
            }
        } else if self
            .timeouts
            .remove(subscription)
            .is_some_and(|n| n >= BREAKER_TIMEOUTS)
        {
            tracing::info!(subscription, "answers again: attempts in parallel again");
        }
    }

    fn clear(&mut self) {
        for queue in self.by_subscription.values_mut() {
            queue.waiting.clear();
            queue.ready = false;
        }
        self.ready.clear();
        self.held_by_host.clear();
        self.paced.clear();
    }
}

/// The host a subscription's URL names (its share of `per_host`).
fn host_of(url: &str) -> String {
    url::Url::parse(url)
        .ok()
        .and_then(|url| url.host_str().map(str::to_ascii_lowercase))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::models::{EventRow, SubscriptionRow};
    use time::macros::datetime;

    fn delivery(subscription: &Arc<SubscriptionRow>, n: usize) -> Leased {
        let at = datetime!(2026-11-29 10:00);
        Leased {
            delivery_id: format!("dlv_{n}"),
            attempts: 0,
            event: Arc::new(EventRow {
                id: format!("evt_{n}"),
                event_type: "comment.created".into(),
                resource_type: "comment".into(),
                resource_id: format!("cmt_{n}"),
                resource_path: String::new(),
                message_id: "msg_1".into(),
                sequence: 1,
                created_at: at,
                feed_position: Some(1),
                traceparent: None,
                workspace_id: "wsp_00000000000000000000000000".into(),
            }),
            delivered_before: false,
            subscription: subscription.clone(),
        }
    }

    fn subscription(id: &str) -> Arc<SubscriptionRow> {
        let at = datetime!(2026-11-29 10:00);
        Arc::new(SubscriptionRow {
            id: id.into(),
            owner_client_id: "cli_1".into(),
            url: "http://127.0.0.1/".into(),
            event_types: " comment.created ".into(),
            message_id: None,
            description: None,
            enabled: 1,
            disabled_reason: None,
            secret: String::new(),
            previous_secret: None,
            previous_secret_expires_at: None,
            failing_since: None,
            created_at: at,
            updated_at: at,
            signature_scheme: "v1".into(),
            format: "standard-webhooks".into(),
            verification: "not_required".into(),
            verification_due_at: None,
            verification_attempts: 0,
            verification_error: None,
            verified_at: None,
            allowed_rate: None,
            workspace_id: "wsp_00000000000000000000000000".into(),
            last_success_at: None,
        })
    }

    fn subscription_of(delivery: &Leased) -> &str {
        &delivery.subscription.id
    }

    #[test]
    fn subscriptions_take_turns_and_a_full_one_does_not_block_the_others() {
        let (busy, quiet) = (subscription("sub_busy"), subscription("sub_quiet"));
        let mut queues = Queues::new(100, 2, 100);
        queues.extend((0..1000).map(|n| delivery(&busy, n)).collect());
        queues.extend(vec![delivery(&quiet, 1000)]);

        let started: Vec<String> = std::iter::from_fn(|| queues.next(Instant::now()))
            .map(|d| subscription_of(&d).to_owned())
            .collect();

        assert_eq!(started, ["sub_busy", "sub_quiet", "sub_busy"]);
        assert!(
            queues.next(Instant::now()).is_none(),
            "the busy subscription is at its bound"
        );
        queues.finished("sub_busy", false);
        assert_eq!(
            queues.next(Instant::now()).map(|d| d.delivery_id),
            Some("dlv_2".to_owned())
        );
    }

    #[test]
    fn the_global_bound_holds_across_subscriptions() {
        let mut queues = Queues::new(3, 10, 100);
        for n in 0..5 {
            let subscription = subscription(&format!("sub_{n}"));
            queues.extend(vec![delivery(&subscription, n)]);
        }
        assert_eq!(
            std::iter::from_fn(|| queues.next(Instant::now())).count(),
            3
        );
        queues.finished("sub_0", false);
        assert!(queues.next(Instant::now()).is_some());
        assert!(queues.next(Instant::now()).is_none());
    }

    fn subscription_at(id: &str, url: &str) -> Arc<SubscriptionRow> {
        let mut row = (*subscription(id)).clone();
        row.url = url.into();
        Arc::new(row)
    }

    #[test]
    fn subscriptions_of_one_host_share_its_bound_and_others_keep_flowing() {
        let slow: Vec<_> = (0..4)
            .map(|n| subscription_at(&format!("sub_slow{n}"), "https://slow.example/hook"))
            .collect();
        let other = subscription_at("sub_other", "https://fast.example/hook");
        let mut queues = Queues::new(100, 10, 3);
        for (n, subscription) in slow.iter().enumerate() {
            queues.extend(
                (0..10)
                    .map(|i| delivery(subscription, n * 10 + i))
                    .collect(),
            );
        }
        queues.extend(vec![delivery(&other, 99)]);

        let started: Vec<String> = std::iter::from_fn(|| queues.next(Instant::now()))
            .map(|d| subscription_of(&d).to_owned())
            .collect();
        assert_eq!(
            started.iter().filter(|s| s.starts_with("sub_slow")).count(),
            3
        );
        assert!(started.contains(&"sub_other".to_owned()));

        // A slot of the host frees: one more of its subscriptions goes.
        queues.finished("sub_slow0", false);
        let next = queues
            .next(Instant::now())
            .map(|d| subscription_of(&d).to_owned());
        assert!(next.is_some_and(|s| s.starts_with("sub_slow")));
        assert!(queues.next(Instant::now()).is_none());
    }

    #[test]
    fn a_subscription_that_keeps_timing_out_gets_one_slot_until_it_answers() {
        let hanging = subscription_at("sub_hanging", "https://hanging.example/");
        let mut queues = Queues::new(100, 10, 100);
        queues.extend((0..50).map(|n| delivery(&hanging, n)).collect());
        assert_eq!(
            std::iter::from_fn(|| queues.next(Instant::now())).count(),
            10
        );
        for _ in 0..10 {
            queues.finished("sub_hanging", true);
        }
        // Open: one at a time.
        assert!(queues.next(Instant::now()).is_some());
        assert!(queues.next(Instant::now()).is_none());
        queues.finished("sub_hanging", true);
        assert!(queues.next(Instant::now()).is_some());
        assert!(queues.next(Instant::now()).is_none());
        // An answer closes it.
        queues.finished("sub_hanging", false);
        assert_eq!(
            std::iter::from_fn(|| queues.next(Instant::now())).count(),
            10
        );
    }

    #[test]
    fn a_subscription_with_an_allowed_rate_is_spaced_and_the_others_are_not() {
        let mut paced = (*subscription("sub_paced")).clone();
        paced.allowed_rate = Some(120);
        let (paced, free) = (Arc::new(paced), subscription("sub_free"));
        let mut queues = Queues::new(100, 10, 100);
        queues.extend((0..3).map(|n| delivery(&paced, n)).collect());
        queues.extend((3..6).map(|n| delivery(&free, n)).collect());
        let start = Instant::now();

        let started: Vec<String> = std::iter::from_fn(|| queues.next(start))
            .map(|d| subscription_of(&d).to_owned())
            .collect();
        assert_eq!(started, ["sub_paced", "sub_free", "sub_free", "sub_free"]);
        assert_eq!(
            queues.next_paced(),
            Some(start + Duration::from_millis(500))
        );

        queues.release_paced(start + Duration::from_millis(499));
        assert!(queues.next(start + Duration::from_millis(499)).is_none());
        let later = start + Duration::from_millis(500);
        queues.release_paced(later);
        assert_eq!(
            queues.next(later).map(|d| d.delivery_id),
            Some("dlv_1".to_owned())
        );
        assert!(queues.next(later).is_none());
        assert_eq!(
            queues.next_paced(),
            Some(later + Duration::from_millis(500))
        );
    }
}
