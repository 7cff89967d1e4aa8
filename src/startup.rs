//! Builds the application from settings: database, migrations, keys, the
//! HTTP server and the dispatcher, and runs them until shutdown.

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::middleware::from_fn;
use actix_web::{App, HttpServer, web};
use anyhow::Context;
use tokio::sync::{Notify, mpsc, watch};

use crate::auth::Authenticator;
use crate::auth::keys::{self, KeyRing, SigningKey};
use crate::auth::revocations::{self, Revocations};
use crate::auth::tokens::TokenPolicy;
use crate::clock::{self, SharedClock};
use crate::config::Settings;
use crate::db::presence::{Listeners, Presence, Worker};
use crate::db::queue::{self, Capacity, Handoff};
use crate::db::signing_keys::Purpose;
use crate::db::writer::{Writer, WriterSettings};
use crate::db::{Database, DatabaseUrl};
use crate::delivery::attempt::Attempter;
use crate::delivery::client::{ClientSettings, WebhookClient};
use crate::delivery::dispatcher::{self, DispatchSettings, Dispatcher};
use crate::delivery::handshake::Handshaker;
use crate::delivery::retry::RetryPolicy;
use crate::delivery::ssrf::{Cidr, EgressPolicy, Guard, Resolver, SystemResolver};
use crate::delivery::webhook_keys::WebhookKeys;
use crate::error::ApiError;
use crate::http::metrics::Exporter;
use crate::http::{self, AppState, Links, Webhooks, request_id};
use crate::metrics::Metrics;
use crate::secret_box::SecretBox;

/// What this process does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// The HTTP API and the dispatcher.
    All,
    /// Only the HTTP API; deliveries are made by workers.
    Api,
    /// Only the dispatcher.
    Worker,
}

/// The things tests replace.
#[derive(Debug, Clone)]
pub struct Overrides {
    pub clock: SharedClock,
    pub resolver: Arc<dyn Resolver>,
}

impl Default for Overrides {
    fn default() -> Self {
        Self {
            clock: clock::system(),
            resolver: Arc::new(SystemResolver),
        }
    }
}

/// The gateway, bound and ready to run.
pub struct Application {
    role: Role,
    address: Option<SocketAddr>,
    public_base_url: String,
    server: Option<Server>,
    /// `/metrics` on an address of its own (`metrics.listen`).
    metrics_server: Option<(Server, SocketAddr)>,
    metrics: Arc<Metrics>,
    dispatcher: Arc<Dispatcher>,
    db: Database,
    writer: Writer,
    wake: Arc<Notify>,
    /// Kept fresh while the API runs.
    revocations: Option<(Arc<Revocations>, Duration)>,
    /// The API's token checks and limits (none for a worker).
    authenticator: Option<web::Data<Authenticator>>,
    shutdown_grace: Duration,
    clock: SharedClock,
    retention: Duration,
    prune_interval: Duration,
    /// SQLite: held while this process dispatches, so that only one does.
    _dispatch_lock: Option<std::fs::File>,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("role", &self.role)
            .field("address", &self.address)
            .field("public_base_url", &self.public_base_url)
            .finish_non_exhaustive()
    }
}

impl Role {
    fn dispatches(self) -> bool {
        matches!(self, Self::All | Self::Worker)
    }
}

impl Application {
    /// Connects to the database, applies pending migrations and binds the listener.
    pub async fn build(settings: &Settings, role: Role) -> anyhow::Result<Self> {
        Self::build_with(settings, role, Overrides::default()).await
    }

    pub async fn build_with(
        settings: &Settings,
        role: Role,
        overrides: Overrides,
    ) -> anyhow::Result<Self> {
        let clock = overrides.clock;
        let (db, secrets, applied) = {
            let (settings, now) = (settings.clone(), clock.now_utc());
            tokio::task::spawn_blocking(move || prepare_database(&settings, now))
                .await
                .context("database set-up task failed")??
        };
        for name in applied {
            tracing::info!(migration = name, "applied database migration");
        }
        let secrets = Arc::new(secrets);
        let dispatch_lock = match db.url() {
            DatabaseUrl::Sqlite(path) if role.dispatches() => Some(lock_dispatching(path)?),
            _ => None,
        };

        let listener = match role {
            Role::Worker => None,
            Role::All | Role::Api => Some(
                TcpListener::bind(settings.listen)
                    .with_context(|| format!("cannot listen on {}", settings.listen))?,
            ),
        };
        let address = listener.as_ref().map(TcpListener::local_addr).transpose()?;
        let public_base_url = match (settings.public_base_url.as_str(), address) {
            ("", Some(address)) => default_base_url(address),
            _ => configured_base_url(settings),
        };

        let delivery = &settings.delivery;
        let guard = Guard::new(
            EgressPolicy {
                allow: delivery
                    .allow_cidrs
                    .iter()
                    .map(|c| c.parse::<Cidr>().map_err(anyhow::Error::msg))
                    .collect::<anyhow::Result<_>>()?,
                https_only: delivery.https_only,
            },
            overrides.resolver,
        );
        let client = WebhookClient::new(
            guard.clone(),
            &ClientSettings {
                connect_timeout: Duration::from_secs(delivery.connect_timeout_secs),
                timeout: Duration::from_secs(delivery.timeout_secs),
                max_response_bytes: delivery.max_response_bytes,
            },
        )?;
        let wake = Arc::new(Notify::new());
        let shutdown_grace = Duration::from_secs(settings.shutdown_timeout_secs);
        let lease = Duration::from_secs(delivery.lease_secs);
        let worker_id = dispatcher::new_worker_id();
        let capacity = Arc::new(Capacity::new(delivery.max_held as usize));
        let (handoff, handoffs) = mpsc::unbounded_channel();
        let handoff = role.dispatches().then(|| Handoff {
            worker: worker_id.clone(),
            lease,
            clock: clock.clone(),
            per_subscription: i64::from(delivery.max_in_flight_per_subscription),
            capacity: capacity.clone(),
            sender: handoff,
            wake: wake.clone(),
        });
        let metrics = Arc::new(Metrics::new());
        let exporter = Exporter {
            metrics: metrics.clone(),
            db: db.clone(),
            clock: clock.clone(),
        };
        let metrics_server = match (settings.metrics.enabled, settings.metrics.address()) {
            (true, Ok(Some(address))) => Some(metrics_server(address, exporter.clone())?),
            _ => None,
        };
        let writer = Writer::start(
            db.connect_options(),
            WriterSettings {
                queue: settings.database.writer_queue,
                max_batch: settings.database.writer_batch,
                metrics: metrics.clone(),
            },
            handoff,
        )?;
        let webhook_keys = Arc::new(WebhookKeys::new(
            db.clone(),
            secrets.clone(),
            clock.clone(),
            Duration::from_secs(delivery.secret_overlap_secs),
        ));
        let handshaker = Arc::new(Handshaker::new(
            client.clone(),
            &public_base_url,
            (delivery.handshake_request_rate > 0).then_some(delivery.handshake_request_rate),
            lease,
        ));
        let attempter = Attempter {
            client,
            secrets: secrets.clone(),
            public_base_url: public_base_url.clone(),
            retry: RetryPolicy {
                delays: delivery
                    .retry_schedule_secs
                    .iter()
                    .map(|s| Duration::from_secs(*s))
                    .collect(),
                max_retry_after: Duration::from_secs(delivery.max_retry_after_secs),
            },
            clock: clock.clone(),
            endpoints: Arc::default(),
            metrics: metrics.clone(),
            webhook_keys: webhook_keys.clone(),
            origin: handshaker.origin().into(),
        };
        let dispatcher = Arc::new(Dispatcher::new(dispatcher::Parts {
            writer: writer.clone(),
            attempter: attempter.clone(),
            backend: db.backend(),
            settings: DispatchSettings {
                lease,
                batch: delivery.batch_size,
                max_in_flight: delivery.max_in_flight,
                per_subscription: delivery.max_in_flight_per_subscription,
                per_host: delivery.max_in_flight_per_host,
                claim_window: CLAIM_WINDOW,
                poll_interval: Duration::from_millis(delivery.poll_interval_ms),
                disable_after: Duration::from_secs(delivery.disable_after_secs),
                shutdown_grace,
            },
            worker_id,
            wake: wake.clone(),
            capacity,
            handoffs,
            handshaker: handshaker.clone(),
        }));

        let (server, revocations, authenticator) = match listener {
            None => (None, None, None),
            Some(listener) => {
                let revocations = Arc::new(Revocations::load(db.clone()).await?);
                let authenticator = web::Data::new(authenticator(
                    settings,
                    &db,
                    &secrets,
                    &clock,
                    &public_base_url,
                    revocations.clone(),
                )?);
                let state = web::Data::new(AppState {
                    db: db.clone(),
                    writer: writer.clone(),
                    links: Links::new(&public_base_url),
                    clock: clock.clone(),
                    webhooks: Webhooks {
                        guard,
                        secrets,
                        wake: wake.clone(),
                        secret_overlap: Duration::from_secs(delivery.secret_overlap_secs),
                        quota: crate::db::subscriptions::Quota {
                            per_client: settings.limits.max_subscriptions_per_client,
                            per_workspace: settings.limits.max_subscriptions_per_workspace,
                            per_event: settings.limits.max_subscriptions_per_event,
                        },
                        keys: webhook_keys,
                        handshaker,
                        attempter: Arc::new(attempter),
                    },
                    in_flight: Arc::default(),
                });
                let max_body_bytes = settings.max_body_bytes;
                let authenticator_data = authenticator.clone();
                let with_metrics = settings.metrics.enabled && metrics_server.is_none();
                let portal = settings
                    .portal
                    .enabled
                    .then(|| http::portal::PortalHeaders::new(&settings.portal.frame_ancestors));
                let counters = web::Data::from(metrics.clone());
                let exporter = web::Data::new(exporter);
                let mut server = HttpServer::new(move || {
                    App::new()
                        .wrap(from_fn(http::limits::middleware))
                        .wrap(from_fn(request_id::middleware))
                        .wrap(from_fn(http::metrics::middleware))
                        .app_data(state.clone())
                        .app_data(authenticator.clone())
                        .app_data(counters.clone())
                        .app_data(exporter.clone())
                        .configure(http::configure(
                            max_body_bytes,
                            with_metrics,
                            portal.clone(),
                        ))
                })
                // Signals are handled by `run_until_stopped`, which also stops the dispatcher.
                .disable_signals()
                .shutdown_timeout(settings.shutdown_timeout_secs);
                if settings.workers > 0 {
                    server = server.workers(settings.workers);
                }
                let refresh = Duration::from_millis(settings.auth.revocation_refresh_ms);
                (
                    Some(server.listen(listener)?.run()),
                    Some((revocations, refresh)),
                    Some(authenticator_data),
                )
            }
        };
        Ok(Self {
            role,
            address,
            public_base_url,
            server,
            metrics_server,
            metrics,
            dispatcher,
            db,
            writer,
            wake,
            revocations,
            authenticator,
            shutdown_grace,
            clock,
            retention: Duration::from_secs(settings.events.retention_days * 86_400),
            prune_interval: Duration::from_secs(settings.events.prune_interval_secs),
            _dispatch_lock: dispatch_lock,
        })
    }

    /// The bound HTTP address (none for a worker).
    pub fn address(&self) -> Option<SocketAddr> {
        self.address
    }

    pub fn public_base_url(&self) -> &str {
        &self.public_base_url
    }

    /// Where `/metrics` is served on an address of its own (`metrics.listen`).
    pub fn metrics_address(&self) -> Option<SocketAddr> {
        self.metrics_server.as_ref().map(|(_, address)| *address)
    }

    /// This process's metrics.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// The dispatcher; tests drive it with `dispatch_all_pending`.
    pub fn dispatcher(&self) -> Arc<Dispatcher> {
        self.dispatcher.clone()
    }

    /// The API's token checks and limits (none for a worker).
    pub fn authenticator(&self) -> Option<web::Data<Authenticator>> {
        self.authenticator.clone()
    }

    /// Whether any API client is registered (for the start-up hint).
    pub async fn has_clients(&self) -> bool {
        self.db.run(crate::db::clients::any).await.unwrap_or(true)
    }

    /// This process's writer.
    pub fn writer(&self) -> Writer {
        self.writer.clone()
    }

    /// Runs the HTTP server and/or the dispatcher until `shutdown` resolves
    /// or the server stops; then stops gracefully: the server first (no new
    /// work), then the dispatcher (attempts in flight finish or are released).
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let (stop, stopped) = watch::channel(false);
        let presence = match self.db.postgres_url() {
            Some(url) => {
                let (worker, listeners) = self.presence();
                Some(Presence::start(url, worker, listeners).await)
            }
            None => None,
        };
        if let Some((revocations, every)) = &self.revocations {
            tokio::spawn(revocations.clone().run(*every, stopped.clone()));
        }
        let dispatcher = self.role.dispatches().then(|| {
            tokio::spawn(crate::retention::run(
                self.writer.clone(),
                self.clock.clone(),
                self.retention,
                self.prune_interval,
                stopped.clone(),
            ));
            tokio::spawn(self.dispatcher.clone().run(stopped))
        });
        let metrics_server = self.metrics_server.map(|(server, _)| {
            let handle = server.handle();
            tokio::spawn(server);
            handle
        });
        let handle = self.server.as_ref().map(Server::handle);
        let server = async {
            match self.server {
                Some(server) => server.await.context("HTTP server failed"),
                None => std::future::pending().await,
            }
        };
        tokio::pin!(server);
        let result = tokio::select! {
            () = shutdown => {
                tracing::info!("shutdown requested; finishing work in flight");
                match &handle {
                    // The server future must go on being polled for its stop to complete.
                    Some(handle) => tokio::join!(handle.stop(true), &mut server).1,
                    None => Ok(()),
                }
            }
            result = &mut server => {
                tracing::warn!(?result, "HTTP server stopped by itself");
                result
            }
        };
        let _ = stop.send(true);
        if let Some(dispatcher) = dispatcher {
            let grace = self.shutdown_grace + Duration::from_secs(5);
            if tokio::time::timeout(grace, dispatcher).await.is_err() {
                tracing::warn!("dispatcher did not stop in time");
            }
        }
        if let Some(presence) = presence {
            presence.stop().await;
        }
        // Scrapes are answered until the gateway has drained.
        if let Some(metrics_server) = metrics_server {
            metrics_server.stop(true).await;
        }
        result
    }

    /// PostgreSQL: what the session that hears other processes listens for,
    /// and for a dispatching process, the worker it proves alive.
    fn presence(&self) -> (Option<Worker>, Listeners) {
        let mut listeners = Listeners::default();
        if self.role.dispatches() {
            listeners.channels.push((queue::CHANNEL, self.wake.clone()));
        }
        if let Some((revocations, _)) = &self.revocations {
            listeners
                .channels
                .push((revocations::CHANNEL, revocations.changed.clone()));
        }
        let worker = self
            .role
            .dispatches()
            .then(|| Worker::new(self.dispatcher.worker_id()));
        (worker, listeners)
    }
}

/// Opens the database and makes it ready to serve: pending migrations
/// applied, the secrets key opened (its file created on first use), a
/// token signing key and a webhook signing key in place. Blocking. Also
/// returns the names of the migrations applied.
pub fn prepare_database(
    settings: &Settings,
    now: time::OffsetDateTime,
) -> anyhow::Result<(Database, SecretBox, Vec<String>)> {
    let db = Database::connect(&settings.database)?;
    let applied = db.migrate()?;
    let secrets = open_secrets(&db, &settings.secrets)?;
    let mut conn = db.get()?;
    if settings.auth.signing_key_file.is_empty() {
        keys::ensure_signing_key(&mut conn, now, &secrets, Purpose::Tokens)?;
    }
    keys::ensure_signing_key(&mut conn, now, &secrets, Purpose::Webhooks)?;
    drop(conn);
    Ok((db, secrets, applied))
}

/// The secrets key of the settings, checked against what the database
/// already holds (see [`SecretBox::for_database`]). Blocking.
pub fn open_secrets(
    db: &Database,
    settings: &crate::config::SecretsSettings,
) -> anyhow::Result<SecretBox> {
    let sample = crate::db::signing_keys::sealed_sample(&mut *db.get()?)?;
    SecretBox::for_database(settings, sample)
}

/// Subscriptions a claim visits per pass.
const CLAIM_WINDOW: u32 = 1_000;

/// SQLite: takes the lock that makes this the one process dispatching from
/// the database file. Released when the process ends, however it ends.
fn lock_dispatching(database: &Path) -> anyhow::Result<std::fs::File> {
    let path = format!("{}.dispatch-lock", database.display());
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {path}"))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "another thinhook process dispatches deliveries from {}: on SQLite only one may \
             (run the others with --role api, or use PostgreSQL)",
            database.display()
        ),
        Err(std::fs::TryLockError::Error(error)) => {
            Err(error).with_context(|| format!("cannot lock {path}"))
        }
    }
}

/// What this gateway's tokens (and portal links) say and how long they last.
pub fn token_policy(settings: &Settings, public_base_url: &str) -> TokenPolicy {
    let auth = &settings.auth;
    TokenPolicy {
        issuer: if auth.issuer.is_empty() {
            public_base_url.to_owned()
        } else {
            auth.issuer.clone()
        },
        audience: auth.audience.clone(),
        lifetime: Duration::from_secs(auth.token_ttl_secs),
        leeway: Duration::from_secs(auth.leeway_secs),
    }
}

/// The keys that sign and verify tokens: the database's, or the configured
/// file's.
pub fn key_ring(
    settings: &Settings,
    db: &Database,
    secrets: &Arc<SecretBox>,
    clock: &SharedClock,
    policy: &TokenPolicy,
) -> anyhow::Result<KeyRing> {
    let auth = &settings.auth;
    // A retired key verifies as long as a token it signed can.
    let grace = policy.lifetime + policy.leeway;
    Ok(if auth.signing_key_file.is_empty() {
        KeyRing::from_database(db.clone(), secrets.clone(), clock.clone(), grace)
    } else {
        let key = SigningKey::from_pem_file(Path::new(&auth.signing_key_file))?;
        KeyRing::from_file(key, clock.clone(), grace)
    })
}

/// The base URL of the gateway configured by `settings`, as a command that
/// does not listen tells it.
pub fn configured_base_url(settings: &Settings) -> String {
    if settings.public_base_url.is_empty() {
        default_base_url(settings.listen)
    } else {
        settings.public_base_url.trim_end_matches('/').to_owned()
    }
}

fn authenticator(
    settings: &Settings,
    db: &Database,
    secrets: &Arc<SecretBox>,
    clock: &SharedClock,
    public_base_url: &str,
    revocations: Arc<Revocations>,
) -> anyhow::Result<Authenticator> {
    let policy = token_policy(settings, public_base_url);
    let keys = key_ring(settings, db, secrets, clock, &policy)?;
    Ok(Authenticator {
        keys: Arc::new(keys),
        policy,
        db: db.clone(),
        clock: clock.clone(),
        revocations,
        verified: Default::default(),
        limits: crate::auth::Limits::new(&settings.limits),
    })
}

/// `/metrics` alone on `address`, answered by one thread.
fn metrics_server(address: SocketAddr, exporter: Exporter) -> anyhow::Result<(Server, SocketAddr)> {
    let listener = TcpListener::bind(address)
        .with_context(|| format!("cannot listen on {address} (metrics.listen)"))?;
    let address = listener.local_addr()?;
    let exporter = web::Data::new(exporter);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(exporter.clone())
            .configure(http::metrics::routes)
            .default_service(web::to(|| async {
                ApiError::NotFound("only /metrics is served here".into())
            }))
    })
    .workers(1)
    .disable_signals()
    .listen(listener)?
    .run();
    Ok((server, address))
}

fn default_base_url(address: SocketAddr) -> String {
    if address.ip().is_unspecified() {
        format!("http://localhost:{}", address.port())
    } else {
        format!("http://{address}")
    }
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed when this is
/// called, not when first polled, so call it before binding the listener:
/// a signal that arrives during start-up is then a graceful stop too.
pub fn shutdown_signal() -> impl Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let interrupt = signal(SignalKind::interrupt());
        let terminate = signal(SignalKind::terminate());
        async move {
            match (interrupt, terminate) {
                (Ok(mut interrupt), Ok(mut terminate)) => {
                    tokio::select! {
                        _ = interrupt.recv() => {}
                        _ = terminate.recv() => {}
                    }
                }
                _ => {
                    tracing::warn!("cannot watch SIGINT/SIGTERM; falling back to Ctrl-C only");
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}
