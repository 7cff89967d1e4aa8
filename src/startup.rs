//! Builds the application from settings: database, migrations, HTTP server.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::{Server, ServerHandle};
use actix_web::middleware::from_fn;
use actix_web::{App, HttpServer, web};
use anyhow::Context;

use crate::auth::Authenticator;
use crate::auth::keys::{self, KeyRing, SigningKey};
use crate::auth::tokens::TokenPolicy;
use crate::clock::{self, SharedClock};
use crate::config::Settings;
use crate::db::Database;
use crate::http::{self, AppState, Links, request_id};

/// The HTTP API, bound and ready to run.
pub struct Application {
    address: SocketAddr,
    public_base_url: String,
    server: Server,
}

impl Application {
    /// Connects to the database, applies pending migrations and binds the listener.
    pub async fn build(settings: &Settings) -> anyhow::Result<Self> {
        Self::build_with_clock(settings, clock::system()).await
    }

    /// As [`Application::build`], reading time from `clock` (tests move it).
    pub async fn build_with_clock(settings: &Settings, clock: SharedClock) -> anyhow::Result<Self> {
        let database = settings.database.clone();
        let uses_key_file = !settings.auth.signing_key_file.is_empty();
        let now = clock.now_utc();
        let db = tokio::task::spawn_blocking(move || -> anyhow::Result<Database> {
            let db = Database::connect(&database)?;
            for name in db.migrate()? {
                tracing::info!(migration = name, "applied database migration");
            }
            if !uses_key_file {
                keys::ensure_signing_key(&mut *db.get()?, now)?;
            }
            Ok(db)
        })
        .await
        .context("database set-up task failed")??;
        Self::build_with_database(settings, db, clock)
    }

    fn build_with_database(
        settings: &Settings,
        db: Database,
        clock: SharedClock,
    ) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(settings.listen)
            .with_context(|| format!("cannot listen on {}", settings.listen))?;
        let address = listener.local_addr()?;
        let public_base_url = if settings.public_base_url.is_empty() {
            default_base_url(address)
        } else {
            settings.public_base_url.trim_end_matches('/').to_owned()
        };
        let authenticator = web::Data::new(authenticator(settings, &db, &clock, &public_base_url)?);
        let state = web::Data::new(AppState {
            db,
            links: Links::new(&public_base_url),
            clock,
        });
        let max_body_bytes = settings.max_body_bytes;
        let mut server = HttpServer::new(move || {
            App::new()
                .wrap(from_fn(request_id::middleware))
                .app_data(state.clone())
                .app_data(authenticator.clone())
                .configure(http::configure(max_body_bytes))
        })
        // Signals are handled by the caller, which also stops the dispatcher.
        .disable_signals()
        .shutdown_timeout(settings.shutdown_timeout_secs);
        if settings.workers > 0 {
            server = server.workers(settings.workers);
        }
        let server = server.listen(listener)?.run();
        Ok(Self {
            address,
            public_base_url,
            server,
        })
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    pub fn port(&self) -> u16 {
        self.address.port()
    }

    pub fn public_base_url(&self) -> &str {
        &self.public_base_url
    }

    /// Stops the server: gracefully (finishing requests in flight) or not.
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.server.await
    }
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("address", &self.address)
            .field("public_base_url", &self.public_base_url)
            .finish_non_exhaustive()
    }
}

fn authenticator(
    settings: &Settings,
    db: &Database,
    clock: &SharedClock,
    public_base_url: &str,
) -> anyhow::Result<Authenticator> {
    let auth = &settings.auth;
    let policy = TokenPolicy {
        issuer: if auth.issuer.is_empty() {
            public_base_url.to_owned()
        } else {
            auth.issuer.clone()
        },
        audience: auth.audience.clone(),
        lifetime: Duration::from_secs(auth.token_ttl_secs),
        leeway: Duration::from_secs(auth.leeway_secs),
    };
    // A retired key verifies as long as a token it signed can.
    let grace = policy.lifetime + policy.leeway;
    let keys = if auth.signing_key_file.is_empty() {
        KeyRing::from_database(db.clone(), clock.clone(), grace)
    } else {
        let key = SigningKey::from_pem_file(Path::new(&auth.signing_key_file))?;
        KeyRing::from_file(key, clock.clone(), grace)
    };
    Ok(Authenticator {
        keys: Arc::new(keys),
        policy,
        db: db.clone(),
        clock: clock.clone(),
    })
}

fn default_base_url(address: SocketAddr) -> String {
    if address.ip().is_unspecified() {
        format!("http://localhost:{}", address.port())
    } else {
        format!("http://{address}")
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cannot watch SIGTERM; only SIGINT stops the server");
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}
