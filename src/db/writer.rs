//! The writer: every write transaction of this process, grouped.
//!
//! One thread owns the write connection. Handlers and the dispatcher send it
//! commands over a bounded channel; it takes everything that is waiting (up
//! to `max_batch` commands), runs it in one transaction with one commit — one
//! fsync for all of them — and then answers each caller. Commands that write
//! rows of the same kind (events and their deliveries, attempt outcomes,
//! fetch marks) are written together, many rows per statement; the others run
//! one after another. Each command (or group) runs in a savepoint, so one that
//! fails is rolled back alone and its batch-mates still commit. A full channel
//! is refused at once ([`DbError::Overloaded`], answered `503`) rather than
//! queued without bound.
//!
//! On SQLite this is the only writer, so `BEGIN IMMEDIATE` never waits for a
//! lock held in this process; reads use the pool's own connections (WAL).
//! On PostgreSQL several processes share the database: the batches of
//! dispatching processes take one advisory lock first (see
//! [`queue::begin_sql`]), which makes their claims and their leases at
//! creation see each other, and the feed counter is taken once per batch.

use std::sync::Arc;
use std::time::Duration;

use diesel::connection::SimpleConnection;

use diesel::prelude::*;
use tokio::sync::{mpsc, oneshot};

use super::deliveries::{self, AttemptOutcome, FetchMark, Leased, Recorded};
use super::outbox::{self, LeaseTo, Publication, Published};
use super::queue::{self, Handoff};
use super::{ConnectOptions, DbConnection, DbError};
use crate::clock::to_db;
use crate::metrics::Metrics;

#[derive(Debug, Clone)]
pub struct WriterSettings {
    /// Commands that may wait for the writer; more are refused.
    pub queue: usize,
    /// Commands written in one transaction at most.
    pub max_batch: usize,
    pub metrics: Arc<Metrics>,
}

/// The handle: cheap to clone; the thread stops when the last one is dropped.
#[derive(Debug, Clone)]
pub struct Writer {
    sender: mpsc::Sender<Command>,
}

/// Sends a command's result to its caller once the batch's fate is known:
/// `Err` carries why the batch did not commit.
type Answer = Box<dyn FnOnce(Result<(), &str>) + Send>;

/// Work for the batch's transaction, with its caller's reply.
trait Job: Send {
    /// Runs in a savepoint; returns how to answer after commit.
    fn run(self: Box<Self>, conn: &mut DbConnection) -> Answer;
    /// Answers without running: the batch could not begin.
    fn refuse(self: Box<Self>, why: &str);
}

struct Work<F, T> {
    work: F,
    reply: oneshot::Sender<Result<T, DbError>>,
}

impl<F, T> Job for Work<F, T>
where
    T: Send + 'static,
    F: FnOnce(&mut DbConnection) -> QueryResult<T> + Send + 'static,
{
    fn run(self: Box<Self>, conn: &mut DbConnection) -> Answer {
        let Work { work, reply } = *self;
        let result = conn.transaction(work);
        Box::new(move |committed| {
            let _ = reply.send(committed_or(committed, result));
        })
    }

    fn refuse(self: Box<Self>, why: &str) {
        let _ = self.reply.send(Err(DbError::NotCommitted(why.to_owned())));
    }
}

/// A command's own result, unless its batch did not commit.
fn committed_or<T>(committed: Result<(), &str>, result: QueryResult<T>) -> Result<T, DbError> {
    match committed {
        Ok(()) => result.map_err(DbError::Query),
        Err(why) => Err(DbError::NotCommitted(why.to_owned())),
    }
}

enum Command {
    Job(Box<dyn Job>),
    Publish(
        Box<Publication>,
        oneshot::Sender<Result<Option<Published>, DbError>>,
    ),
    Record(Record),
    Fetched(FetchMark),
}

struct Record {
    worker: String,
    outcomes: Vec<AttemptOutcome>,
    disable_after: Duration,
    reply: oneshot::Sender<Result<Vec<bool>, DbError>>,
}

impl Writer {
    /// Opens the write connection and starts the writer's thread. `handoff`
    /// is set when this process dispatches: deliveries it creates are then
    /// leased to its own dispatcher and handed over at commit.
    pub fn start(
        url: &ConnectOptions,
        settings: WriterSettings,
        handoff: Option<Handoff>,
    ) -> anyhow::Result<Self> {
        let conn = url.establish()?;
        let alive = Arc::new(());
        if matches!(conn, DbConnection::Sqlite(_)) {
            spawn_checkpointer(url.establish()?, Arc::downgrade(&alive))?;
        }
        let (sender, receiver) = mpsc::channel(settings.queue.max(1));
        let thread = Thread {
            _alive: alive,
            url: url.clone(),
            conn: Some(conn),
            receiver,
            max_batch: settings.max_batch.max(1),
            handoff,
            metrics: settings.metrics,
        };
        std::thread::Builder::new()
            .name("thinhook-writer".into())
            .spawn(move || thread.run())?;
        Ok(Self { sender })
    }

    /// Runs `work` in the next batch (in a savepoint of its own) and returns
    /// its result once the batch has committed.
    pub async fn run<T, F>(&self, work: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(&mut DbConnection) -> QueryResult<T> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        self.submit(Command::Job(Box::new(Work { work, reply })))?;
        answer.await.map_err(|_| DbError::WriterStopped)?
    }

    /// Writes a new resource with its event and deliveries. `None`: the
    /// comment's message does not exist (nothing was written).
    pub async fn publish(&self, publication: Publication) -> Result<Option<Published>, DbError> {
        let (reply, answer) = oneshot::channel();
        self.submit(Command::Publish(Box::new(publication), reply))?;
        answer.await.map_err(|_| DbError::WriterStopped)?
    }

    /// Records attempt outcomes of `worker`'s leases; per outcome, whether it
    /// was recorded (false: the lease had passed to another worker).
    pub async fn record(
        &self,
        worker: &str,
        outcomes: Vec<AttemptOutcome>,
        disable_after: Duration,
    ) -> Result<Vec<bool>, DbError> {
        let (reply, answer) = oneshot::channel();
        self.submit(Command::Record(Record {
            worker: worker.to_owned(),
            outcomes,
            disable_after,
            reply,
        }))?;
        answer.await.map_err(|_| DbError::WriterStopped)?
    }

    /// Records a fetch in the background; the caller does not wait. Dropped
    /// (and logged) when the writer is overloaded.
    pub fn mark_fetched(&self, mark: FetchMark) {
        if let Err(error) = self.submit(Command::Fetched(mark)) {
            tracing::warn!(%error, "fetch not recorded");
        }
    }

    /// Commands waiting for the writer.
    pub fn queued(&self) -> usize {
        self.sender.max_capacity() - self.sender.capacity()
    }

    fn submit(&self, command: Command) -> Result<(), DbError> {
        self.sender.try_send(command).map_err(|error| match error {
            mpsc::error::TrySendError::Full(_) => DbError::Overloaded,
            mpsc::error::TrySendError::Closed(_) => DbError::WriterStopped,
        })
    }
}

/// SQLite: copies the write-ahead log into the database file every so
/// often, on a connection of its own; a passive checkpoint never waits for
/// the writer. The writer still checkpoints when the log is full (SQLite's
/// automatic checkpoint), which is what lets the log start over, but by then
/// little is left to copy: that commit no longer stops for tens of
/// milliseconds. Stops when the writer does.
fn spawn_checkpointer(mut conn: DbConnection, writer: std::sync::Weak<()>) -> std::io::Result<()> {
    const EVERY: Duration = Duration::from_millis(250);
    std::thread::Builder::new()
        .name("thinhook-checkpoint".into())
        .spawn(move || {
            while writer.upgrade().is_some() {
                std::thread::sleep(EVERY);
                if let Err(error) = conn.batch_execute("PRAGMA wal_checkpoint(PASSIVE)") {
                    tracing::warn!(%error, "WAL checkpoint failed");
                }
            }
        })
        .map(drop)
}

/// The writer's thread and what it owns.
struct Thread {
    /// Dropped when the thread ends, which stops the checkpointer.
    _alive: Arc<()>,
    url: ConnectOptions,
    /// `None` after a failure that may have broken it; reopened for the next batch.
    conn: Option<DbConnection>,
    receiver: mpsc::Receiver<Command>,
    max_batch: usize,
    handoff: Option<Handoff>,
    metrics: Arc<Metrics>,
}

/// A batch, sorted by kind.
#[derive(Default)]
struct Batch {
    jobs: Vec<Box<dyn Job>>,
    publications: Vec<Publication>,
    publish_replies: Vec<oneshot::Sender<Result<Option<Published>, DbError>>>,
    records: Vec<Record>,
    marks: Vec<FetchMark>,
}

impl Batch {
    fn push(&mut self, command: Command) {
        match command {
            Command::Job(job) => self.jobs.push(job),
            Command::Publish(publication, reply) => {
                self.publications.push(*publication);
                self.publish_replies.push(reply);
            }
            Command::Record(record) => self.records.push(record),
            Command::Fetched(mark) => self.marks.push(mark),
        }
    }

    /// Tells every caller that nothing of the batch was written.
    fn fail(self, why: &str) {
        for job in self.jobs {
            job.refuse(why);
        }
        for reply in self.publish_replies {
            let _ = reply.send(Err(DbError::NotCommitted(why.to_owned())));
        }
        for record in self.records {
            let _ = record
                .reply
                .send(Err(DbError::NotCommitted(why.to_owned())));
        }
        if !self.marks.is_empty() {
            tracing::warn!(marks = self.marks.len(), why, "fetches not recorded");
        }
    }
}

impl Thread {
    fn run(mut self) {
        while let Some(first) = self.receiver.blocking_recv() {
            let mut batch = Batch::default();
            batch.push(first);
            for _ in 1..self.max_batch {
                match self.receiver.try_recv() {
                    Ok(command) => batch.push(command),
                    Err(_) => break,
                }
            }
            self.write(batch);
        }
    }

    fn write(&mut self, batch: Batch) {
        let conn = match self.conn.take() {
            Some(conn) => Ok(conn),
            None => self.url.establish(),
        };
        match conn {
            Ok(mut conn) => {
                if self.write_with(&mut conn, batch) {
                    self.conn = Some(conn);
                }
            }
            Err(error) => batch.fail(&format!("cannot connect to the database: {error}")),
        }
    }

    /// Writes the batch; returns whether the connection is still good.
    ///
    /// A batch of data only (publications, outcomes, fetch marks) is written
    /// first without savepoints, which on PostgreSQL cost a round trip each;
    /// should anything fail, the transaction is rolled back and the batch
    /// written again carefully: each command in a savepoint of its own.
    /// Jobs are closures that run once, so a batch with jobs is careful from
    /// the start.
    fn write_with(&self, conn: &mut DbConnection, batch: Batch) -> bool {
        let started = std::time::Instant::now();
        let Batch {
            jobs,
            publications,
            publish_replies,
            records,
            marks,
        } = batch;
        let data = Data {
            records: &records,
            marks: &marks,
            publications: &publications,
        };
        let mut answers: Vec<Answer> = Vec::with_capacity(jobs.len());
        let begun = queue::begin(conn, self.handoff.is_some()).and_then(|()| {
            if jobs.is_empty() {
                match self.write_data(conn, &data, false) {
                    Ok(written) => return Ok(written),
                    Err(error) => {
                        tracing::warn!(%error, "a write batch failed; writing it again command by command");
                        queue::roll_back(conn)?;
                        queue::begin(conn, self.handoff.is_some())?;
                    }
                }
            } else {
                answers.extend(jobs.into_iter().map(|job| job.run(conn)));
            }
            self.write_data(conn, &data, true)
        });
        let written = match begun {
            Ok(written) => written,
            Err(error) => {
                let why = format!("cannot write: {error}");
                tracing::error!(why, "write batch failed");
                let _ = queue::roll_back(conn);
                for answer in answers {
                    answer(Err(&why));
                }
                Batch {
                    jobs: Vec::new(),
                    publications,
                    publish_replies,
                    records,
                    marks,
                }
                .fail(&why);
                return false;
            }
        };
        let committed = queue::commit(conn).map_err(|error| {
            let why = format!("commit failed: {error}");
            tracing::error!(why, "write batch failed");
            why
        });
        let elapsed = started.elapsed();
        tracing::debug!(
            jobs = answers.len(),
            outcomes = records.iter().map(|r| r.outcomes.len()).sum::<usize>(),
            marks = marks.len(),
            publications = publications.len(),
            elapsed_us = elapsed.as_micros(),
            "write batch"
        );
        let status = committed.as_ref().map(|_| ()).map_err(String::as_str);
        if status.is_ok() {
            self.count(&written, &publications, elapsed);
        }
        self.metrics
            .writer_batch
            .observe((answers.len() + records.len() + marks.len() + publications.len()) as f64);
        for answer in answers {
            answer(status);
        }
        for (record, result) in records.into_iter().zip(written.recorded) {
            let kept = result.map(|recorded| recorded.kept);
            let _ = record.reply.send(committed_or(status, kept));
        }
        let queued: usize = written
            .published
            .iter()
            .flat_map(|result| result.as_ref().ok().and_then(Option::as_ref))
            .map(|published| published.queued)
            .sum();
        for (reply, result) in publish_replies.into_iter().zip(written.published) {
            let _ = reply.send(committed_or(status, result));
        }
        if let (Some(handoff), Ok(())) = (&self.handoff, status) {
            if queued > written.leased.len() {
                handoff.wake.notify_one();
            }
            handoff.deliver(written.leased);
        }
        committed.is_ok()
    }

    /// What a committed batch adds to the metrics.
    fn count(&self, written: &Written, publications: &[Publication], elapsed: Duration) {
        let metrics = &self.metrics;
        metrics.writer_commit.observe(elapsed.as_secs_f64());
        for (publication, result) in publications.iter().zip(&written.published) {
            if let Ok(Some(_)) = result {
                metrics.event_accepted(publication.resource.event_type().as_str());
            }
        }
        let disabled: usize = written
            .recorded
            .iter()
            .flatten()
            .map(|recorded| recorded.disabled)
            .sum();
        if disabled > 0 {
            metrics
                .attempts
                .get_or_create(&[("outcome", "disabled")])
                .inc_by(disabled as u64);
        }
    }

    /// Writes the batch's data in the open transaction. `careful`: each
    /// command in a savepoint, its failure kept in its own result (never
    /// `Err`); otherwise the first failure is returned.
    fn write_data(
        &self,
        conn: &mut DbConnection,
        data: &Data<'_>,
        careful: bool,
    ) -> QueryResult<Written> {
        let mut recorded = Vec::with_capacity(data.records.len());
        for record in data.records {
            let record_outcomes = |conn: &mut DbConnection| {
                deliveries::record_outcomes(
                    conn,
                    &record.worker,
                    &record.outcomes,
                    record.disable_after,
                )
            };
            recorded.push(if careful {
                conn.transaction(record_outcomes)
                    .or_else(|_| record_one_by_one(conn, record))
            } else {
                Ok(record_outcomes(conn)?)
            });
        }
        if !data.marks.is_empty() {
            let marked = if careful {
                conn.transaction(|conn| deliveries::mark_fetched_all(conn, data.marks))
            } else {
                deliveries::mark_fetched_all(conn, data.marks)
            };
            match marked {
                Err(error) if careful => {
                    tracing::warn!(%error, marks = data.marks.len(), "fetches not recorded");
                }
                other => {
                    other?;
                }
            }
        }
        // Last: publishing takes the feed counter, held from here to commit.
        let (published, leased) = if careful {
            publish_carefully(conn, data.publications, self.handoff.as_ref())
        } else {
            let (published, leased) = publish_some(
                conn,
                data.publications,
                self.handoff.as_ref(),
                free_capacity(self.handoff.as_ref()),
            )?;
            (published.into_iter().map(Ok).collect(), leased)
        };
        Ok(Written {
            recorded,
            published,
            leased,
        })
    }
}

/// A record that failed as a whole, outcome by outcome: one outcome whose
/// row cannot be stored must not hold back the others, nor itself. One that
/// still fails is recorded without the receiver's text, so that no answer
/// can wedge its delivery; only a failure of that too (the database itself)
/// fails the record, which the dispatcher then retries.
fn record_one_by_one(conn: &mut DbConnection, record: &Record) -> QueryResult<Recorded> {
    let mut recorded = Recorded::default();
    for outcome in &record.outcomes {
        let record_one = |conn: &mut DbConnection, outcome: &AttemptOutcome| {
            conn.transaction(|conn| {
                deliveries::record_outcomes(
                    conn,
                    &record.worker,
                    std::slice::from_ref(outcome),
                    record.disable_after,
                )
            })
        };
        let one = record_one(conn, outcome).or_else(|error| {
            tracing::warn!(
                %error,
                delivery = outcome.attempt.delivery_id,
                "cannot record an attempt as it came; recording it without the answer's text"
            );
            record_one(conn, &outcome.without_text())
        })?;
        recorded
            .kept
            .push(one.kept.first().copied().unwrap_or(false));
        recorded.disabled += one.disabled;
    }
    Ok(recorded)
}

/// The data commands of a batch.
struct Data<'a> {
    records: &'a [Record],
    marks: &'a [FetchMark],
    publications: &'a [Publication],
}

/// What writing a batch's data produced, per command.
struct Written {
    recorded: Vec<QueryResult<Recorded>>,
    published: Vec<QueryResult<Option<Published>>>,
    leased: Vec<Leased>,
}

/// How many deliveries the dispatcher can take in; none once it stopped.
fn free_capacity(handoff: Option<&Handoff>) -> usize {
    handoff
        .filter(|handoff| !handoff.sender.is_closed())
        .map_or(0, |handoff| handoff.capacity.free())
}

/// Publishes `items`, leasing up to `capacity` of the new deliveries.
fn publish_some(
    conn: &mut DbConnection,
    items: &[Publication],
    handoff: Option<&Handoff>,
    capacity: usize,
) -> QueryResult<(Vec<Option<Published>>, Vec<Leased>)> {
    if items.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let lease = handoff.map(|handoff| {
        let now = handoff.clock.now_utc();
        LeaseTo {
            worker: &handoff.worker,
            now: to_db(now),
            until: to_db(now + handoff.lease),
            capacity,
            per_subscription: handoff.per_subscription,
        }
    });
    outbox::publish_all(conn, items, lease.as_ref())
}

/// Publishes every publication in one savepoint; if that fails, each in one
/// of its own, so that one bad publication does not take the others with it.
fn publish_carefully(
    conn: &mut DbConnection,
    publications: &[Publication],
    handoff: Option<&Handoff>,
) -> (Vec<QueryResult<Option<Published>>>, Vec<Leased>) {
    let mut capacity = free_capacity(handoff);
    let mut publish = |conn: &mut DbConnection, items: &[Publication]| {
        let published = conn.transaction(|conn| publish_some(conn, items, handoff, capacity));
        if let Ok((_, leased)) = &published {
            capacity = capacity.saturating_sub(leased.len());
        }
        published
    };
    match publish(conn, publications) {
        Ok((results, leased)) => (results.into_iter().map(Ok).collect(), leased),
        Err(error) if publications.len() == 1 => (vec![Err(error)], Vec::new()),
        Err(error) => {
            tracing::warn!(%error, "publishing a batch failed; publishing one by one");
            let mut results = Vec::with_capacity(publications.len());
            let mut leased = Vec::new();
            for item in publications.chunks(1) {
                match publish(conn, item) {
                    Ok((one, more)) => {
                        leased.extend(more);
                        results.extend(one.into_iter().map(Ok));
                    }
                    Err(error) => results.push(Err(error)),
                }
            }
            (results, leased)
        }
    }
}
