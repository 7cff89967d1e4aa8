//! A process's own session with PostgreSQL, on a thread of its own (diesel's
//! notification API is synchronous): it `LISTEN`s for what other processes
//! announce, and a dispatching process holds its liveness lock on it.
//!
//! A worker registers in `workers` with a random key and holds a session
//! advisory lock on that key for as long as it lives. When the process dies,
//! PostgreSQL ends the session and the lock is free: another worker's
//! [`super::queue::reap`] takes the lock, which proves the death, and
//! releases the dead worker's leases at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use diesel::prelude::*;
use diesel::sql_types::BigInt;
use tokio::sync::{Notify, oneshot};

use super::schema::workers;

/// A dispatching process as other processes see it.
#[derive(Debug, Clone)]
pub struct Worker {
    pub id: String,
    pub lock_key: i64,
}

impl Worker {
    pub fn new(id: &str) -> Self {
        let mut key = [0u8; 8];
        // Without randomness two workers could share a key; the id's own
        // randomness serves then.
        if getrandom::fill(&mut key).is_err() {
            let fallback = id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
                (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
            });
            key = fallback.to_le_bytes();
        }
        Self {
            id: id.to_owned(),
            lock_key: i64::from_le_bytes(key),
        }
    }
}

/// What the session listens for, and whom it wakes.
#[derive(Debug, Default)]
pub struct Listeners {
    /// `(channel, who to wake)`.
    pub channels: Vec<(&'static str, Arc<Notify>)>,
}

/// The running session; [`Presence::stop`] ends it, and with it the
/// worker's registration.
#[derive(Debug)]
pub struct Presence {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Presence {
    /// Starts the session. With a `worker`, resolves once the worker is
    /// registered and its liveness lock held (or the first attempt failed).
    pub async fn start(url: String, worker: Option<Worker>, listeners: Listeners) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready, registered) = oneshot::channel();
        let session = Session {
            url,
            worker,
            listeners,
            stop: stop.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("thinhook-presence".into())
            .spawn(move || session.run(ready));
        let thread = match thread {
            Ok(thread) => Some(thread),
            Err(error) => {
                tracing::warn!(%error, "cannot start the PostgreSQL session thread; polling only");
                None
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(10), registered).await;
        Self { stop, thread }
    }

    /// Ends the session: unregisters the worker and frees its lock.
    pub async fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

struct Session {
    url: String,
    worker: Option<Worker>,
    listeners: Listeners,
    stop: Arc<AtomicBool>,
}

impl Session {
    fn run(self, ready: oneshot::Sender<()>) {
        const IDLE: Duration = Duration::from_millis(20);
        const RETRY: Duration = Duration::from_secs(1);
        let mut ready = Some(ready);
        while !self.stopped() {
            let mut conn = match self.open() {
                Ok(conn) => conn,
                Err(error) => {
                    tracing::warn!(%error, "no PostgreSQL session for notifications and liveness; retrying");
                    if let Some(ready) = ready.take() {
                        let _ = ready.send(());
                    }
                    std::thread::sleep(RETRY);
                    continue;
                }
            };
            if let Some(ready) = ready.take() {
                let _ = ready.send(());
            }
            while !self.stopped() {
                let mut broken = false;
                let mut woken: Vec<&Arc<Notify>> = Vec::new();
                for notification in conn.notifications_iter() {
                    match notification {
                        Ok(notification) => woken.extend(
                            self.listeners
                                .channels
                                .iter()
                                .filter(|(channel, _)| *channel == notification.channel)
                                .map(|(_, notify)| notify),
                        ),
                        Err(error) => {
                            tracing::warn!(%error, "PostgreSQL session failed; reconnecting");
                            broken = true;
                            break;
                        }
                    }
                }
                for notify in woken {
                    notify.notify_one();
                }
                if broken {
                    break;
                }
                std::thread::sleep(IDLE);
            }
            if self.stopped()
                && let Some(worker) = &self.worker
            {
                // Gone for good: nobody needs to reap this worker.
                let _ = diesel::delete(workers::table.find(&worker.id)).execute(&mut conn);
            }
        }
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Connects, takes the liveness lock and registers, then listens.
    fn open(&self) -> QueryResult<PgConnection> {
        let mut conn = PgConnection::establish(&self.url)
            .map_err(|e| diesel::result::Error::QueryBuilderError(e.into()))?;
        if let Some(worker) = &self.worker {
            diesel::sql_query("SELECT pg_advisory_lock($1)")
                .bind::<BigInt, _>(worker.lock_key)
                .execute(&mut conn)?;
            diesel::insert_into(workers::table)
                .values((
                    workers::id.eq(&worker.id),
                    workers::lock_key.eq(worker.lock_key),
                    workers::started_at.eq(crate::clock::to_db(time::OffsetDateTime::now_utc())),
                ))
                .on_conflict_do_nothing()
                .execute(&mut conn)?;
        }
        for (channel, _) in &self.listeners.channels {
            diesel::sql_query(format!("LISTEN {channel}")).execute(&mut conn)?;
        }
        Ok(conn)
    }
}
