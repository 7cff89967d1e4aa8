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
pub mod idempotency;
pub mod messages;
pub mod models;
pub mod outbox;
pub mod portal_links;
pub mod presence;
pub mod queue;
pub mod schema;
pub mod signing_keys;
pub mod subscriptions;
pub mod workspaces;
pub mod writer;

use std::path::{Path, PathBuf};
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

    /// Which database this is, for a person, without a password: "the
    /// database at /abs/path" or "database `name` on host:port".
    pub fn describe(&self) -> String {
        match self {
            Self::Sqlite(path) => format!("the database at {}", absolute(path).display()),
            Self::Postgres(url) => {
                let target = PostgresTarget::parse(url);
                format!("database `{}` on {}", target.dbname, target.place())
            }
        }
    }

    /// The URL to show a person: an absolute SQLite path, a PostgreSQL URL
    /// with its password (in the user part or as a parameter) replaced by `***`.
    pub fn shown(&self) -> String {
        match self {
            Self::Sqlite(path) => format!("sqlite://{}", absolute(path).display()),
            Self::Postgres(url) => redacted(url),
        }
    }
}

/// A URL without its password, in the user part or as a `password`
/// parameter (libpq takes both). A URL the parser refuses (a bad port, say)
/// is cut as text: what stands between `user:` and the last `@`, and what
/// follows `password=`, becomes `***`.
pub fn redacted(url: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        let mut shown = match url.split_once("://") {
            Some((scheme, rest)) => match rest.rsplit_once('@') {
                Some((userinfo, host)) if userinfo.contains(':') => {
                    let user = userinfo.split(':').next().unwrap_or_default();
                    format!("{scheme}://{user}:***@{host}")
                }
                _ => url.to_owned(),
            },
            None => url.to_owned(),
        };
        if let Some(at) = shown.find("password=") {
            shown.truncate(at + "password=".len());
            shown.push_str("***");
        }
        return shown;
    };
    if parsed.password().is_some() {
        let _ = parsed.set_password(Some("***"));
    }
    if parsed.query_pairs().any(|(key, _)| key == "password") {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(key, value)| {
                let value = if key == "password" {
                    "***".into()
                } else {
                    value
                };
                (key.into_owned(), value.into_owned())
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    parsed.to_string()
}

/// `path` from the root, for messages: a relative default such as
/// `thinhook.sqlite3` says nothing about which directory it was looked for in.
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}

/// What every command but `serve` and `migrate` needs done before it runs.
const SET_UP_FIRST: &str = "run `thinhook migrate` (or start `thinhook serve`) first";

/// Where a PostgreSQL URL leads, as libpq reads it: the URL's parts, which
/// its `host`, `port`, `user` and `dbname` parameters override.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PostgresTarget {
    /// A host name or address, or a socket directory; `None`: libpq's default socket.
    host: Option<String>,
    port: u16,
    user: Option<String>,
    dbname: String,
}

impl PostgresTarget {
    fn parse(url: &str) -> Self {
        let parsed = url::Url::parse(url).ok();
        let param = |name: &str| {
            parsed.as_ref().and_then(|u| {
                u.query_pairs()
                    .find(|(key, value)| key == name && !value.is_empty())
                    .map(|(_, value)| value.into_owned())
            })
        };
        let decode = |text: &str| {
            url::form_urlencoded::parse(format!("x={text}").as_bytes())
                .next()
                .map(|(_, value)| value.into_owned())
                .unwrap_or_default()
        };
        let host = param("host").or_else(|| {
            parsed.as_ref().and_then(|u| match u.host()? {
                url::Host::Domain("") => None,
                url::Host::Domain(name) => Some(decode(name)),
                url::Host::Ipv4(ip) => Some(ip.to_string()),
                url::Host::Ipv6(ip) => Some(ip.to_string()),
            })
        });
        let port = param("port")
            .and_then(|p| p.parse().ok())
            .or_else(|| parsed.as_ref().and_then(url::Url::port))
            .unwrap_or(5432);
        let user = param("user").or_else(|| {
            parsed
                .as_ref()
                .map(|u| decode(u.username()))
                .filter(|name| !name.is_empty())
        });
        let dbname = param("dbname")
            .or_else(|| {
                parsed
                    .as_ref()
                    .map(|u| decode(u.path().trim_start_matches('/')))
                    .filter(|name| !name.is_empty())
            })
            // libpq's default: the database named like the user.
            .or_else(|| user.clone())
            .unwrap_or_else(|| "postgres".into());
        Self {
            host,
            port,
            user,
            dbname,
        }
    }

    /// `host:port`, or the socket it means.
    fn place(&self) -> String {
        match self.host.as_deref() {
            Some(dir) if dir.starts_with('/') => {
                format!("the socket in {dir} (port {})", self.port)
            }
            Some(host) if host.contains(':') => format!("[{host}]:{}", self.port),
            Some(host) => format!("{host}:{}", self.port),
            None => format!("the local socket (port {})", self.port),
        }
    }

    /// The `createdb` command that makes the missing database.
    fn createdb(&self) -> String {
        let mut command = String::from("createdb");
        if let Some(host) = &self.host {
            command.push_str(&format!(" -h {}", shell_word(host)));
        }
        command.push_str(&format!(" -p {}", self.port));
        if let Some(user) = &self.user {
            command.push_str(&format!(" -U {}", shell_word(user)));
        }
        command.push_str(&format!(" {}", shell_word(&self.dbname)));
        command
    }
}

/// `word` as one shell word.
fn shell_word(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "_-./:@".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// One line that says why a PostgreSQL connection failed, from libpq's
/// message (several lines, e.g. `connection to server at "127.0.0.1", port
/// 5432 failed: FATAL:  database "x" does not exist`), and what to do about
/// the common cases. libpq reports a failed connection as text only (no
/// SQLSTATE), so the text is what is matched.
fn explain_postgres_failure(url: &str, message: &str) -> String {
    let target = PostgresTarget::parse(url);
    let message = message.split_whitespace().collect::<Vec<_>>().join(" ");
    let missing_database = message
        .split_once("database \"")
        .and_then(|(_, rest)| rest.split_once("\" does not exist"))
        .map(|(name, _)| name.to_owned());
    if let Some(name) = missing_database {
        let create = PostgresTarget {
            dbname: name.clone(),
            ..target.clone()
        };
        return format!(
            "database `{name}` does not exist on {}; create it with `{}`",
            target.place(),
            create.createdb()
        );
    }
    if message.contains("Connection refused") {
        return format!(
            "cannot reach PostgreSQL at {}: connection refused (is the server running and accepting TCP/IP connections?)",
            target.place()
        );
    }
    format!(
        "cannot connect to PostgreSQL at {}: {message}",
        target.place()
    )
}

/// Where a database's schema stands against this build's migrations.
#[derive(Debug, Clone, PartialEq, Eq)]
enum SchemaState {
    /// No migration was ever applied: not a thinhook database (yet).
    NoTables,
    /// Some of this build's migrations are not applied (names, oldest first).
    Behind {
        pending: Vec<String>,
    },
    Current,
}

/// Reads which migrations are applied without writing anything: diesel's
/// own harness would first create its bookkeeping table.
fn schema_state(conn: &mut DbConnection) -> anyhow::Result<SchemaState> {
    use diesel::migration::MigrationSource;

    #[derive(QueryableByName)]
    struct Version {
        #[diesel(sql_type = diesel::sql_types::Text)]
        version: String,
    }
    /// (version, name) of every migration of `source`.
    fn known<DB: diesel::backend::Backend>(
        source: &EmbeddedMigrations,
    ) -> anyhow::Result<Vec<(String, String)>>
    where
        EmbeddedMigrations: MigrationSource<DB>,
    {
        Ok(MigrationSource::<DB>::migrations(source)
            .map_err(|e| anyhow::anyhow!(e))?
            .iter()
            .map(|m| (m.name().version().to_string(), m.name().to_string()))
            .collect())
    }
    // Every migration this build has, oldest first.
    let mut known = match conn {
        DbConnection::Sqlite(_) => known::<diesel::sqlite::Sqlite>(&SQLITE_MIGRATIONS)?,
        DbConnection::Postgres(_) => known::<diesel::pg::Pg>(&POSTGRES_MIGRATIONS)?,
    };
    known.sort();
    let load = |conn: &mut DbConnection, sql: &str| -> QueryResult<Vec<String>> {
        let rows = match conn {
            DbConnection::Sqlite(conn) => diesel::sql_query(sql).load::<Version>(conn)?,
            DbConnection::Postgres(conn) => diesel::sql_query(sql).load::<Version>(conn)?,
        };
        Ok(rows.into_iter().map(|row| row.version).collect())
    };
    let bookkeeping = match conn {
        DbConnection::Sqlite(_) => {
            "SELECT name AS version FROM sqlite_master \
             WHERE type = 'table' AND name = '__diesel_schema_migrations'"
        }
        DbConnection::Postgres(_) => {
            "SELECT relname::text AS version FROM pg_catalog.pg_class \
             WHERE oid = to_regclass('__diesel_schema_migrations')"
        }
    };
    if load(conn, bookkeeping)?.is_empty() {
        return Ok(SchemaState::NoTables);
    }
    let applied: std::collections::HashSet<String> =
        load(conn, "SELECT version FROM __diesel_schema_migrations")?
            .into_iter()
            .collect();
    if applied.is_empty() {
        return Ok(SchemaState::NoTables);
    }
    let pending: Vec<String> = known
        .into_iter()
        .filter(|(version, _)| !applied.contains(version))
        .map(|(_, name)| name)
        .collect();
    Ok(if pending.is_empty() {
        SchemaState::Current
    } else {
        SchemaState::Behind { pending }
    })
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
    pub fn from_settings(settings: &DatabaseSettings) -> anyhow::Result<Self> {
        Ok(Self {
            url: DatabaseUrl::parse(&settings.url).context("invalid database URL")?,
            sqlite_synchronous: settings.sqlite_synchronous,
        })
    }

    /// One plain connection, without the pool's per-connection settings (a
    /// probe must not switch somebody else's SQLite file to WAL), or why
    /// there is none, in one line.
    fn probe(&self) -> anyhow::Result<DbConnection> {
        match &self.url {
            DatabaseUrl::Postgres(url) => PgConnection::establish(url)
                .map(DbConnection::Postgres)
                .map_err(|error| {
                    anyhow::anyhow!(explain_postgres_failure(url, &error.to_string()))
                }),
            DatabaseUrl::Sqlite(path) => {
                let opened = path
                    .to_str()
                    .ok_or_else(|| anyhow::anyhow!("the path is not UTF-8"))
                    .and_then(|path| Ok(SqliteConnection::establish(path)?))
                    .and_then(|mut conn| {
                        // Another process may hold the lock: wait as the pool does.
                        conn.batch_execute("PRAGMA busy_timeout = 5000;")?;
                        Ok(DbConnection::Sqlite(conn))
                    });
                opened.map_err(|error| {
                    let shown = absolute(path);
                    let missing_dir = shown
                        .parent()
                        .filter(|dir| !dir.exists())
                        .map(|dir| format!(" (directory {} does not exist)", dir.display()))
                        .unwrap_or_default();
                    anyhow::anyhow!(
                        "cannot open the SQLite database at {}: {error}{missing_dir}",
                        shown.display()
                    )
                })
            }
        }
    }

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
    /// Builds the pool, creating a missing SQLite file: for `serve` and
    /// `migrate`, which then apply the migrations. Blocking: opens the first
    /// connections. One direct connection comes first, so a database that
    /// cannot be reached fails at once, with the reason, instead of after
    /// the pool's `acquire_timeout_secs`.
    pub fn connect(settings: &DatabaseSettings) -> anyhow::Result<Self> {
        let options = ConnectOptions::from_settings(settings)?;
        drop(options.probe()?);
        Self::with_pool(settings, options)
    }

    /// Builds the pool on a database that `thinhook migrate` (or `serve`)
    /// has set up, for the commands that only use one: it never creates a
    /// file, a table or a migration record, and refuses a database without
    /// thinhook's tables or with migrations pending.
    pub fn connect_existing(settings: &DatabaseSettings) -> anyhow::Result<Self> {
        let options = ConnectOptions::from_settings(settings)?;
        if let DatabaseUrl::Sqlite(path) = &options.url {
            let shown = absolute(path);
            match path.try_exists() {
                Ok(true) => {}
                Ok(false) => anyhow::bail!("no database at {}: {SET_UP_FIRST}", shown.display()),
                Err(error) => {
                    anyhow::bail!("cannot look for a database at {}: {error}", shown.display())
                }
            }
        }
        let mut probe = options.probe()?;
        let state = schema_state(&mut probe).with_context(|| {
            format!(
                "cannot read the migrations applied to {}",
                options.url.describe()
            )
        })?;
        drop(probe);
        match state {
            SchemaState::Current => Self::with_pool(settings, options),
            SchemaState::NoTables => anyhow::bail!(
                "{} has no thinhook tables: {SET_UP_FIRST}",
                options.url.describe()
            ),
            SchemaState::Behind { pending } => anyhow::bail!(
                "{} is {} migration{} behind this thinhook (next: {}): run `thinhook migrate` first",
                options.url.describe(),
                pending.len(),
                if pending.len() == 1 { "" } else { "s" },
                pending.first().map_or("?", String::as_str),
            ),
        }
    }

    fn with_pool(settings: &DatabaseSettings, options: ConnectOptions) -> anyhow::Result<Self> {
        let backend = options.url.backend();
        let pool = Pool::builder()
            .max_size(settings.pool_size)
            // No spare connection opened in the background: a process that
            // exits while a pool thread is still opening one over TLS dies
            // with SIGSEGV in OpenSSL's exit-time clean-up. Connections are
            // opened when asked for, and kept while in use.
            .min_idle(Some(0))
            // A broken connection shows as a failed query; a `SELECT 1` on
            // every checkout would cost every request a round trip.
            .test_on_check_out(false)
            .connection_timeout(Duration::from_secs(settings.acquire_timeout_secs))
            .build(Connector {
                options: options.clone(),
            })
            .with_context(|| format!("cannot connect to {}", options.url.describe()))?;
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
    fn a_missing_postgres_database_is_named_with_the_command_that_creates_it() {
        // libpq's message, as `psql` prints it too.
        let message = "connection to server at \"127.0.0.1\", port 5432 failed: FATAL:  database \"thinhook\" does not exist\n";
        assert_eq!(
            explain_postgres_failure("postgres://ops:pw@127.0.0.1:5432/thinhook", message),
            "database `thinhook` does not exist on 127.0.0.1:5432; create it with \
             `createdb -h 127.0.0.1 -p 5432 -U ops thinhook`"
        );
        // No user in the URL: libpq's default user, so no -U.
        assert_eq!(
            explain_postgres_failure("postgres://db.internal/thinhook", message),
            "database `thinhook` does not exist on db.internal:5432; create it with \
             `createdb -h db.internal -p 5432 thinhook`"
        );
    }

    #[test]
    fn a_refused_or_other_postgres_failure_is_one_line_naming_the_server() {
        let refused = "connection to server at \"127.0.0.1\", port 5439 failed: Connection refused\n\
                       \tIs the server running on that host and accepting TCP/IP connections?\n";
        assert_eq!(
            explain_postgres_failure("postgres://postgres@127.0.0.1:5439/x", refused),
            "cannot reach PostgreSQL at 127.0.0.1:5439: connection refused (is the server \
             running and accepting TCP/IP connections?)"
        );
        let role = "connection to server at \"::1\", port 5432 failed: FATAL:  role \"ops\" does not exist\n";
        assert_eq!(
            explain_postgres_failure("postgres://ops@[::1]/x", role),
            "cannot connect to PostgreSQL at [::1]:5432: connection to server at \"::1\", \
             port 5432 failed: FATAL: role \"ops\" does not exist"
        );
    }

    #[test]
    fn a_postgres_url_is_read_as_libpq_reads_it() {
        let target = PostgresTarget::parse("postgres://ops:secret@db.internal:6432/app%20data");
        assert_eq!(
            target,
            PostgresTarget {
                host: Some("db.internal".into()),
                port: 6432,
                user: Some("ops".into()),
                dbname: "app data".into(),
            }
        );
        assert_eq!(
            target.createdb(),
            "createdb -h db.internal -p 6432 -U ops 'app data'"
        );
        // Parameters win over the URL's parts; no host is the local socket.
        let target =
            PostgresTarget::parse("postgres:///?dbname=hooks&user=me&host=/run/pg&port=5433");
        assert_eq!(target.place(), "the socket in /run/pg (port 5433)");
        assert_eq!(target.dbname, "hooks");
        assert_eq!(
            PostgresTarget::parse("postgres:///").place(),
            "the local socket (port 5432)"
        );
        // No database named: libpq uses the user's name.
        assert_eq!(PostgresTarget::parse("postgres://me@h").dbname, "me");
    }

    #[test]
    fn a_shown_url_hides_the_password_wherever_it_is() {
        assert_eq!(
            redacted("postgres://ops:hunter2@db/thinhook"),
            "postgres://ops:***@db/thinhook"
        );
        assert_eq!(
            redacted("postgres://ops@db/thinhook?sslmode=require&password=hunter2"),
            "postgres://ops@db/thinhook?sslmode=require&password=***"
        );
        assert_eq!(
            redacted("postgres://ops@db/thinhook"),
            "postgres://ops@db/thinhook"
        );
        // Not a URL the parser takes (the port is out of range): cut as text.
        assert_eq!(
            redacted("postgres://ops:p@ss@db:99999/thinhook"),
            "postgres://ops:***@db:99999/thinhook"
        );
        assert_eq!(
            redacted("postgres://ops@db:99999/x?password=hunter2&sslmode=require"),
            "postgres://ops@db:99999/x?password=***"
        );
        assert_eq!(
            redacted("sqlite://thinhook.sqlite3"),
            "sqlite://thinhook.sqlite3"
        );
        assert_eq!(
            DatabaseUrl::parse("sqlite:///var/lib/thinhook.db")
                .unwrap()
                .shown(),
            "sqlite:///var/lib/thinhook.db"
        );
        let relative = DatabaseUrl::parse("sqlite://thinhook.sqlite3")
            .unwrap()
            .shown();
        let here = std::env::current_dir().unwrap().join("thinhook.sqlite3");
        assert_eq!(relative, format!("sqlite://{}", here.display()));
    }

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
