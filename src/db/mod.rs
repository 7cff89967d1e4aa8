//! Storage: one diesel code path over SQLite (embedded default) and PostgreSQL.
//!
//! [`DbConnection`] is a diesel `MultiConnection` over both backends; the
//! repository modules ([`messages`]) take a `&mut DbConnection` so that
//! callers can compose them inside one transaction. Whatever differs between
//! the backends — connection set-up, migrations, the queue claim, liveness —
//! stays in this module (and [`queue`], [`presence`]) and matches on the
//! variant; nothing above it knows which database it runs on.
//!
//! Reads go through the [`Database`] pool. Writes go through the process's
//! one [`writer::Writer`], which groups them into few transactions.

/// Inserts a slice of rows into a table; `?` passes a failure on.
/// PostgreSQL: many rows per statement, as each statement costs a round
/// trip. SQLite: a row per statement, which the connection prepares once and
/// then reuses; in process that is cheaper than parsing a statement of many
/// rows every time. (diesel cannot insert many rows through a
/// `MultiConnection`, hence the backends' own connections.)
macro_rules! insert_many {
    ($conn:expr, $table:expr, $rows:expr) => {
        match $conn {
            $crate::db::DbConnection::Sqlite(conn) => {
                for row in $rows {
                    diesel::insert_into($table).values(row).execute(conn)?;
                }
            }
            $crate::db::DbConnection::Postgres(conn) => {
                for chunk in $rows.chunks($crate::db::INSERT_CHUNK) {
                    diesel::insert_into($table).values(chunk).execute(conn)?;
                }
            }
        }
    };
}

/// Rows per multi-row `INSERT` on PostgreSQL: within its 65,535 bound
/// parameters for the widest row.
pub const INSERT_CHUNK: usize = 1_000;

pub mod clients;
pub mod deliveries;
pub mod events;
pub mod fixed;
pub mod messages;
pub mod models;
pub mod outbox;
pub mod presence;
pub mod queue;
pub mod schema;
pub mod signing_keys;
pub mod subscriptions;
pub mod writer;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::r2d2::{Pool, PooledConnection};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use crate::config::{DatabaseSettings, SqliteSynchronous};

const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");
const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");

/// A connection to either backend.
#[derive(diesel::MultiConnection)]
pub enum DbConnection {
    Postgres(PgConnection),
    Sqlite(SqliteConnection),
}

impl std::fmt::Debug for DbConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Postgres(_) => "DbConnection::Postgres",
            Self::Sqlite(_) => "DbConnection::Sqlite",
        })
    }
}

/// Runs `work` in a transaction that will write.
///
/// On SQLite it begins with `BEGIN IMMEDIATE`, taking the write lock up
/// front: a deferred transaction that reads first and writes later fails at
/// once with "database is locked" when another writer committed meanwhile,
/// because SQLite cannot wait for that conflict. With the lock taken first,
/// a second writer simply waits (`busy_timeout`).
pub fn write_transaction<T>(
    conn: &mut DbConnection,
    work: impl FnOnce(&mut DbConnection) -> QueryResult<T>,
) -> QueryResult<T> {
    use diesel::connection::{AnsiTransactionManager, TransactionManager};

    let DbConnection::Sqlite(sqlite) = conn else {
        return conn.transaction(work);
    };
    AnsiTransactionManager::begin_transaction_sql(sqlite, "BEGIN IMMEDIATE")?;
    let result = work(conn);
    let DbConnection::Sqlite(sqlite) = conn else {
        unreachable!("the connection's backend does not change");
    };
    match result {
        Ok(value) => match AnsiTransactionManager::commit_transaction(sqlite) {
            Ok(()) => Ok(value),
            Err(error) => {
                let _ = AnsiTransactionManager::rollback_transaction(sqlite);
                Err(error)
            }
        },
        Err(error) => {
            AnsiTransactionManager::rollback_transaction(sqlite)?;
            Err(error)
        }
    }
}

/// Which database a URL points at, and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    /// A file path; created if missing.
    Sqlite(PathBuf),
    /// A libpq connection URL.
    Postgres(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidDatabaseUrl {
    #[error("must start with sqlite:// or postgres://")]
    Scheme,
    #[error("sqlite:// must be followed by a file path")]
    NoPath,
    #[error(
        "in-memory SQLite is not supported: every pooled connection would see its own empty database"
    )]
    InMemory,
}

impl DatabaseUrl {
    pub fn parse(url: &str) -> Result<Self, InvalidDatabaseUrl> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Self::Postgres(url.to_owned()));
        }
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .ok_or(InvalidDatabaseUrl::Scheme)?;
        match path {
            "" => Err(InvalidDatabaseUrl::NoPath),
            ":memory:" => Err(InvalidDatabaseUrl::InMemory),
            path => Ok(Self::Sqlite(PathBuf::from(path))),
        }
    }

    pub fn backend(&self) -> Backend {
        match self {
            Self::Sqlite(_) => Backend::Sqlite,
            Self::Postgres(_) => Backend::Postgres,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Opens connections of the configured backend for the pool. (diesel's own
/// manager would try each backend in turn on a URL; this one knows.)
#[derive(Debug)]
pub struct Connector {
    options: ConnectOptions,
}

/// Where the database is, and how to set up each connection.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub url: DatabaseUrl,
    pub sqlite_synchronous: SqliteSynchronous,
}

impl ConnectOptions {
    /// Opens a connection with the per-connection settings of its backend.
    pub fn establish(&self) -> Result<DbConnection, diesel::r2d2::Error> {
        let mut connection = match &self.url {
            DatabaseUrl::Postgres(url) => DbConnection::Postgres(PgConnection::establish(url)?),
            DatabaseUrl::Sqlite(path) => {
                let path = path.to_str().ok_or_else(|| {
                    diesel::ConnectionError::BadConnection("path is not UTF-8".into())
                })?;
                DbConnection::Sqlite(SqliteConnection::establish(path)?)
            }
        };
        if let DbConnection::Sqlite(conn) = &mut connection {
            let synchronous = match self.sqlite_synchronous {
                SqliteSynchronous::Normal => "NORMAL",
                SqliteSynchronous::Full => "FULL",
            };
            // WAL lets readers run beside the one writer; the busy timeout makes
            // a writer in another process (the CLI) wait for the lock instead
            // of failing at once.
            conn.batch_execute(&format!(
                "PRAGMA journal_mode = WAL;
                 PRAGMA synchronous = {synchronous};
                 PRAGMA busy_timeout = 5000;
                 PRAGMA foreign_keys = ON;"
            ))
            .map_err(diesel::r2d2::Error::QueryError)?;
        }
        Ok(connection)
    }
}

impl diesel::r2d2::ManageConnection for Connector {
    type Connection = DbConnection;
    type Error = diesel::r2d2::Error;

    fn connect(&self) -> Result<DbConnection, Self::Error> {
        self.options.establish()
    }

    /// Only used when the pool checks idle connections, never on checkout.
    fn is_valid(&self, conn: &mut DbConnection) -> Result<(), Self::Error> {
        conn.batch_execute("SELECT 1")
            .map_err(diesel::r2d2::Error::QueryError)
    }

    /// A connection given back inside a transaction (its user returned
    /// early or failed to roll back), or while its thread unwinds from a
    /// panic, is closed rather than handed to the next user in that state.
    fn has_broken(&self, conn: &mut DbConnection) -> bool {
        std::thread::panicking() || diesel::r2d2::R2D2Connection::is_broken(conn)
    }
}

pub type DbPool = Pool<Connector>;
pub type PooledDb = PooledConnection<Connector>;

/// The connection pool plus the knowledge of which backend it serves.
#[derive(Debug, Clone)]
pub struct Database {
    pool: DbPool,
    backend: Backend,
    options: ConnectOptions,
}

/// Why a database call failed.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("no database connection became free in time")]
    Unavailable(#[source] diesel::r2d2::PoolError),
    #[error("database query failed")]
    Query(#[from] diesel::result::Error),
    #[error("database task panicked or was cancelled")]
    Task(#[source] tokio::task::JoinError),
    /// The writer's queue is full: the caller should come back shortly.
    #[error("too many writes are waiting")]
    Overloaded,
    /// The writer could not write its batch (the database is unreachable,
    /// or the commit failed); nothing of the command was kept.
    #[error("the write could not be committed: {0}")]
    NotCommitted(String),
    #[error("the writer has stopped")]
    WriterStopped,
}

impl DbError {
    /// A failure that says nothing about the request and may pass: another
    /// process holding SQLite's write lock past the busy timeout, a
    /// PostgreSQL serialization failure or a lost connection.
    pub fn is_transient(&self) -> bool {
        use diesel::result::{DatabaseErrorKind as Kind, Error};
        match self {
            Self::Query(Error::DatabaseError(kind, info)) => {
                matches!(
                    kind,
                    Kind::SerializationFailure | Kind::ClosedConnection | Kind::UnableToSendCommand
                ) || {
                    let message = info.message();
                    message.starts_with("database is locked")
                        || message.starts_with("database table is locked")
                        || message.starts_with("database is busy")
                }
            }
            Self::Query(_) | Self::Task(_) => false,
            Self::Unavailable(_)
            | Self::Overloaded
            | Self::NotCommitted(_)
            | Self::WriterStopped => true,
        }
    }
}

impl Database {
    /// Builds the pool. Blocking: opens the first connections.
    pub fn connect(settings: &DatabaseSettings) -> anyhow::Result<Self> {
        let url = DatabaseUrl::parse(&settings.url).context("invalid database URL")?;
        let backend = url.backend();
        let options = ConnectOptions {
            url,
            sqlite_synchronous: settings.sqlite_synchronous,
        };
        let pool = Pool::builder()
            .max_size(settings.pool_size)
            .min_idle(Some(1))
            // A broken connection shows as a failed query; a `SELECT 1` on
            // every checkout would cost every request a round trip.
            .test_on_check_out(false)
            .connection_timeout(Duration::from_secs(settings.acquire_timeout_secs))
            .build(Connector {
                options: options.clone(),
            })
            .with_context(|| format!("cannot connect to the {backend:?} database"))?;
        Ok(Self {
            pool,
            backend,
            options,
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn url(&self) -> &DatabaseUrl {
        &self.options.url
    }

    /// How this database's connections are opened.
    pub fn connect_options(&self) -> &ConnectOptions {
        &self.options
    }

    /// The connection URL when the backend is PostgreSQL.
    pub fn postgres_url(&self) -> Option<String> {
        match &self.options.url {
            DatabaseUrl::Postgres(url) => Some(url.clone()),
            DatabaseUrl::Sqlite(_) => None,
        }
    }

    /// A pooled connection, for blocking code that is already off the async runtime.
    pub fn get(&self) -> Result<PooledDb, DbError> {
        self.pool.get().map_err(DbError::Unavailable)
    }

    /// Runs `work` with a pooled connection on the blocking thread pool, so a
    /// query never stalls the async runtime.
    pub async fn run<T, F>(&self, work: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(&mut DbConnection) -> QueryResult<T> + Send + 'static,
    {
        let pool = self.pool.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = pool.get().map_err(DbError::Unavailable)?;
            Ok(work(&mut conn)?)
        })
        .await
        .map_err(DbError::Task)?
    }

    /// Applies pending migrations; returns the names of those applied.
    pub fn migrate(&self) -> anyhow::Result<Vec<String>> {
        let mut conn = self.get()?;
        let applied = match &mut *conn {
            DbConnection::Sqlite(c) => c.run_pending_migrations(SQLITE_MIGRATIONS),
            DbConnection::Postgres(c) => c.run_pending_migrations(POSTGRES_MIGRATIONS),
        }
        .map_err(|e| anyhow::anyhow!(e))
        .context("cannot apply database migrations")?;
        Ok(applied.iter().map(ToString::to_string).collect())
    }

    /// Reverts the latest applied migration; returns its name.
    pub fn revert_last_migration(&self) -> anyhow::Result<String> {
        let mut conn = self.get()?;
        let reverted = match &mut *conn {
            DbConnection::Sqlite(c) => c.revert_last_migration(SQLITE_MIGRATIONS),
            DbConnection::Postgres(c) => c.revert_last_migration(POSTGRES_MIGRATIONS),
        }
        .map_err(|e| anyhow::anyhow!(e))
        .context("cannot revert the latest migration")?;
        Ok(reverted.to_string())
    }

    /// Ready means reachable with every migration applied.
    pub async fn check_ready(&self) -> Result<(), String> {
        let pool = self.pool.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = pool
                .get()
                .map_err(|e| format!("database unreachable: {e}"))?;
            let pending = match &mut *conn {
                DbConnection::Sqlite(c) => c.has_pending_migration(SQLITE_MIGRATIONS),
                DbConnection::Postgres(c) => c.has_pending_migration(POSTGRES_MIGRATIONS),
            }
            .map_err(|e| format!("cannot read migration state: {e}"))?;
            if pending {
                Err("database migrations are pending; run `thinhook migrate`".to_owned())
            } else {
                Ok(())
            }
        })
        .await
        .map_err(|e| format!("readiness check failed: {e}"))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_urls_choose_the_backend() {
        assert_eq!(
            DatabaseUrl::parse("sqlite://data/thinhook.sqlite3"),
            Ok(DatabaseUrl::Sqlite("data/thinhook.sqlite3".into()))
        );
        assert_eq!(
            DatabaseUrl::parse("sqlite:///var/lib/thinhook.db"),
            Ok(DatabaseUrl::Sqlite("/var/lib/thinhook.db".into()))
        );
        assert_eq!(
            DatabaseUrl::parse("postgres://postgres@127.0.0.1/thinhook").map(|u| u.backend()),
            Ok(Backend::Postgres)
        );
        assert_eq!(
            DatabaseUrl::parse("postgresql://h/db").map(|u| u.backend()),
            Ok(Backend::Postgres)
        );
        assert_eq!(
            DatabaseUrl::parse("mysql://h/db"),
            Err(InvalidDatabaseUrl::Scheme)
        );
        assert_eq!(
            DatabaseUrl::parse("sqlite://"),
            Err(InvalidDatabaseUrl::NoPath)
        );
        assert_eq!(
            DatabaseUrl::parse("sqlite::memory:"),
            Err(InvalidDatabaseUrl::InMemory)
        );
    }
}
