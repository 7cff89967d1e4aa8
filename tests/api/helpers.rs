//! `spawn_app()` and the `TestApp` driver shared by every API test.

use std::sync::Arc;

use diesel::{Connection, PgConnection, RunQueryDsl};
use reqwest::{Response, StatusCode};
use serde_json::Value;
use thinhook::auth::{self, Scopes};
use thinhook::clock::{Clock, ManualClock};
use thinhook::config::Settings;
use thinhook::db::Database;
use thinhook::db::writer::Writer;
use thinhook::delivery::dispatcher::Dispatcher;
use thinhook::delivery::ssrf::Resolver;
use thinhook::domain::RequestId;
use thinhook::startup::{Application, Overrides, Role};
use time::OffsetDateTime;

/// Names an admin database URL on a PostgreSQL server; each test creates and
/// drops its own database there. Unset when the tests are built (see
/// `build.rs`): the PostgreSQL tests are `#[ignore]`d, and `cargo test`
/// lists each as ignored with the reason. Every PostgreSQL test carries
/// `#[cfg_attr(not(postgres_tests), ignore = "set TEST_POSTGRES_URL to run the PostgreSQL tests")]`.
pub const POSTGRES_URL_VAR: &str = "TEST_POSTGRES_URL";

#[derive(Debug, Clone, Copy)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Declares tests that run once per backend:
/// `backend_tests! { async fn name(app: &TestApp) { … } }` makes
/// `sqlite::name` and `postgres::name`.
macro_rules! backend_tests {
    ($($(#[$meta:meta])* async fn $name:ident($app:ident: &TestApp) $body:block)*) => {
        $($(#[$meta])* async fn $name($app: &$crate::helpers::TestApp) $body)*

        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    let app = $crate::helpers::spawn_app($crate::helpers::Backend::Sqlite).await;
                    super::$name(&app).await;
                }
            )*
        }

        mod postgres {
            $(
                #[tokio::test]
                #[cfg_attr(not(postgres_tests), ignore = "set TEST_POSTGRES_URL to run the PostgreSQL tests")]
                async fn $name() {
                    let app = $crate::helpers::spawn_app($crate::helpers::Backend::Postgres).await;
                    super::$name(&app).await;
                }
            )*
        }
    };
}

/// Like `backend_tests!`, for tests that start their own app(s):
/// `backend_tests_with_backend! { async fn name(backend: Backend) { … } }`.
macro_rules! backend_tests_with_backend {
    ($($(#[$meta:meta])* async fn $name:ident($backend:ident: Backend) $body:block)*) => {
        $($(#[$meta])* async fn $name($backend: $crate::helpers::Backend) $body)*

        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::helpers::Backend::Sqlite).await;
                }
            )*
        }

        mod postgres {
            $(
                #[tokio::test]
                #[cfg_attr(not(postgres_tests), ignore = "set TEST_POSTGRES_URL to run the PostgreSQL tests")]
                async fn $name() {
                    super::$name($crate::helpers::Backend::Postgres).await;
                }
            )*
        }
    };
}

/// The database a test owns; removed when the test ends.
enum TestDatabase {
    Sqlite(#[expect(dead_code, reason = "held to delete the directory on drop")] tempfile::TempDir),
    Postgres { admin_url: String, name: String },
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let Self::Postgres { admin_url, name } = self {
            // FORCE ends the server's pooled connections, which outlive the test.
            let dropped = PgConnection::establish(admin_url).and_then(|mut conn| {
                diesel::sql_query(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .execute(&mut conn)
                    .map_err(|e| diesel::ConnectionError::BadConnection(e.to_string()))
            });
            if let Err(error) = dropped {
                eprintln!("could not drop test database {name}: {error}");
            }
        }
    }
}

/// An API client registered for a test, with a token for all its scopes.
pub struct TestClient {
    pub id: String,
    pub secret: String,
    pub token: String,
    pub workspace: thinhook::domain::WorkspaceId,
}

impl TestClient {
    /// The client as the storage layer scopes its subscriptions.
    pub fn owner(&self) -> thinhook::db::subscriptions::Owner {
        thinhook::db::subscriptions::Owner {
            workspace: self.workspace.clone(),
            client: thinhook::domain::ClientId::parse(&self.id).expect("a client id"),
        }
    }
}

pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    /// The server's clock; tests move it instead of sleeping.
    pub clock: Arc<ManualClock>,
    /// A second pool on the server's database, for arranging and inspecting state.
    pub db: Database,
    pub settings: Settings,
    /// A client holding every scope; `get`/`post_json` act as it.
    pub user: TestClient,
    /// The server's dispatcher; tests run it step by step.
    pub dispatcher: Arc<Dispatcher>,
    /// The server's writer.
    pub writer: Writer,
    /// The API's token checks and limits.
    pub authenticator: Option<actix_web::web::Data<thinhook::auth::Authenticator>>,
    /// Answers name lookups for the server; tests set what names resolve to.
    pub resolver: Arc<TestResolver>,
    /// `http://…` of `/metrics` when `metrics.listen` gave it its own address.
    pub metrics_address: Option<String>,
    _database: TestDatabase,
}

/// A resolver answering from a table the test controls; other names fail,
/// so no test ever looks up a real host.
#[derive(Debug, Default)]
pub struct TestResolver(std::sync::Mutex<std::collections::HashMap<String, Vec<std::net::IpAddr>>>);

impl TestResolver {
    pub fn set(&self, host: &str, ips: &[&str]) {
        let ips = ips.iter().map(|ip| ip.parse().unwrap()).collect();
        self.0.lock().unwrap().insert(host.to_owned(), ips);
    }
}

impl Resolver for TestResolver {
    fn resolve(
        &self,
        host: &str,
        port: u16,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = std::io::Result<Vec<std::net::SocketAddr>>> + Send>,
    > {
        let found = self.0.lock().unwrap().get(host).cloned();
        Box::pin(async move {
            found
                .map(|ips| {
                    ips.into_iter()
                        .map(|ip| std::net::SocketAddr::new(ip, port))
                        .collect()
                })
                .ok_or_else(|| std::io::Error::other("no such host (test resolver)"))
        })
    }
}

/// The admin URL of the PostgreSQL server the tests use.
pub fn postgres_url() -> String {
    std::env::var(POSTGRES_URL_VAR).unwrap_or_else(|_| {
        panic!("{POSTGRES_URL_VAR} was set when the tests were built but is unset now: run them with it")
    })
}

/// In CI the PostgreSQL tests must run: ignored, they would pass unseen.
#[cfg(not(postgres_tests))]
#[test]
fn ci_builds_the_tests_with_postgres() {
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true but {POSTGRES_URL_VAR} was unset when the tests were built: the PostgreSQL tests are ignored"
    );
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, Role::Api, |_| {}).await
}

/// Starts the real server on a random port with a fresh database; `adjust`
/// changes settings before start.
pub async fn spawn_app_with(
    backend: Backend,
    role: Role,
    adjust: impl FnOnce(&mut Settings),
) -> TestApp {
    let (database, url) = match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().expect("temporary directory");
            let url = format!("sqlite://{}", dir.path().join("test.sqlite3").display());
            (TestDatabase::Sqlite(dir), url)
        }
        Backend::Postgres => create_postgres_database(),
    };
    let mut settings = Settings {
        listen: "127.0.0.1:0".parse().expect("socket address"),
        workers: 1,
        ..Settings::default()
    };
    settings.database.url = url;
    settings.database.pool_size = 4;
    // Webhook receivers in tests live on loopback.
    settings.delivery.allow_cidrs = vec!["127.0.0.0/8".into()];
    // Revocations are read often, so tests need not wait long for one.
    settings.auth.revocation_refresh_ms = 50;
    // Tests ask for many tokens from one address, and some post thousands of
    // comments as one client; the limits' own tests set them low.
    settings.limits.token_burst = 10_000;
    settings.limits.api_burst = 100_000;
    settings.secrets.encryption_key = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=".into();
    adjust(&mut settings);

    let clock = Arc::new(ManualClock::new(OffsetDateTime::now_utc()));
    let resolver = Arc::new(TestResolver::default());
    let overrides = Overrides {
        clock: clock.clone(),
        resolver: resolver.clone(),
    };
    let app = Application::build_with(&settings, role, overrides)
        .await
        .expect("application builds");
    let address = format!("http://{}", app.address().expect("the API listens"));
    let (dispatcher, writer, authenticator) = (app.dispatcher(), app.writer(), app.authenticator());
    let metrics_address = app.metrics_address().map(|a| format!("http://{a}"));
    tokio::spawn(app.run_until_stopped(std::future::pending()));
    let db = Database::connect(&settings.database).expect("test pool connects");
    let mut app = TestApp {
        address,
        client: reqwest::Client::new(),
        clock,
        db,
        settings,
        user: TestClient {
            id: String::new(),
            secret: String::new(),
            token: String::new(),
            workspace: thinhook::domain::WorkspaceId::default_workspace(),
        },
        dispatcher,
        writer,
        authenticator,
        resolver,
        metrics_address,
        _database: database,
    };
    app.user = app.register_client("test user", Scopes::all()).await;
    app
}

fn create_postgres_database() -> (TestDatabase, String) {
    let admin_url = postgres_url();
    let name = format!("thinhook_test_{}", &RequestId::generate().as_str()[4..]);
    let mut conn = PgConnection::establish(&admin_url)
        .unwrap_or_else(|e| panic!("cannot connect to {POSTGRES_URL_VAR}: {e}"));
    diesel::sql_query(format!("CREATE DATABASE \"{name}\""))
        .execute(&mut conn)
        .expect("create test database");
    let mut url = url::Url::parse(&admin_url).expect("TEST_POSTGRES_URL is a URL");
    url.set_path(&name);
    // No TLS on loopback. The apps a test starts are never stopped, so
    // their LISTEN threads are still in libpq when the test binary exits;
    // with TLS, OpenSSL's exit-time clean-up pulls its state from under
    // them and the binary dies with SIGSEGV after every test has passed.
    if !url.query_pairs().any(|(key, _)| key == "sslmode") {
        url.query_pairs_mut().append_pair("sslmode", "disable");
    }
    (TestDatabase::Postgres { admin_url, name }, url.to_string())
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    /// Registers a client directly in the database and gets it a token.
    pub async fn register_client(&self, name: &str, scopes: Scopes) -> TestClient {
        self.register_client_in(
            name,
            scopes,
            &thinhook::domain::WorkspaceId::default_workspace(),
        )
        .await
    }

    /// Registers a client of `workspace` and gets it a token.
    pub async fn register_client_in(
        &self,
        name: &str,
        scopes: Scopes,
        workspace: &thinhook::domain::WorkspaceId,
    ) -> TestClient {
        let (db, name, now) = (self.db.clone(), name.to_owned(), self.clock.now_utc());
        let (workspace, in_workspace) = (workspace.clone(), workspace.clone());
        let created = tokio::task::spawn_blocking(move || {
            auth::clients::create(
                &mut db.get().expect("connection"),
                &name,
                scopes,
                &workspace,
                now,
            )
        })
        .await
        .expect("task")
        .expect("client created");
        let id = created.id.to_string();
        let secret = created.secret.expose().to_owned();
        let token = self.token_for(&id, &secret, None).await;
        TestClient {
            id,
            secret,
            token,
            workspace: in_workspace,
        }
    }

    /// A token from `POST /oauth/token` (HTTP Basic), optionally for fewer scopes.
    pub async fn token_for(&self, id: &str, secret: &str, scope: Option<&str>) -> String {
        let mut form = vec![("grant_type", "client_credentials")];
        form.extend(scope.map(|scope| ("scope", scope)));
        let response = self
            .client
            .post(self.url("/oauth/token"))
            .basic_auth(id, Some(secret))
            .form(&form)
            .send()
            .await
            .expect("request sent");
        assert_eq!(response.status(), StatusCode::OK, "token request failed");
        let body: Value = response.json().await.expect("token JSON");
        body["access_token"]
            .as_str()
            .expect("access_token")
            .to_owned()
    }

    /// GET as the test user.
    pub async fn get(&self, path: &str) -> Response {
        self.get_with_token(path, &self.user.token).await
    }

    pub async fn get_with_token(&self, path: &str, token: &str) -> Response {
        self.client
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("request sent")
    }

    /// POST JSON as the test user.
    pub async fn post_json(&self, path: &str, body: &Value) -> Response {
        self.client
            .post(self.url(path))
            .bearer_auth(&self.user.token)
            .json(body)
            .send()
            .await
            .expect("request sent")
    }

    /// POSTs raw bytes with the given content type, as the test user.
    pub async fn post_raw(
        &self,
        path: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> Response {
        self.client
            .post(self.url(path))
            .bearer_auth(&self.user.token)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("request sent")
    }

    /// Moves the server's clock and gets the test user a token valid at the new time.
    pub async fn advance(&mut self, by: std::time::Duration) {
        self.clock.advance(by);
        self.user.token = self.token_for(&self.user.id, &self.user.secret, None).await;
    }

    /// The application of a second process, a worker, on the same database.
    pub async fn worker(
        &self,
        adjust: impl FnOnce(&mut thinhook::config::Settings),
    ) -> thinhook::startup::Application {
        let mut settings = self.settings.clone();
        adjust(&mut settings);
        let overrides = thinhook::startup::Overrides {
            clock: self.clock.clone(),
            resolver: self.resolver.clone(),
        };
        thinhook::startup::Application::build_with(&settings, Role::Worker, overrides)
            .await
            .unwrap()
    }

    /// A second API process on the same database, with its own writer;
    /// returns its address. It accepts the test user's token: it shares the
    /// signing keys, and is told this process's issuer.
    pub async fn second_api(&self) -> String {
        let mut settings = self.settings.clone();
        settings.auth.issuer = self.address.clone();
        let overrides = thinhook::startup::Overrides {
            clock: self.clock.clone(),
            resolver: self.resolver.clone(),
        };
        let api = thinhook::startup::Application::build_with(&settings, Role::Api, overrides)
            .await
            .unwrap();
        let address = format!("http://{}", api.address().expect("the API listens"));
        tokio::spawn(api.run_until_stopped(std::future::pending()));
        address
    }

    /// A worker's dispatcher, to drive step by step.
    pub async fn second_dispatcher(
        &self,
    ) -> std::sync::Arc<thinhook::delivery::dispatcher::Dispatcher> {
        self.worker(|_| {}).await.dispatcher()
    }

    /// Runs a worker in the background; send on the switch to stop it.
    pub async fn start_worker(
        &self,
        adjust: impl FnOnce(&mut thinhook::config::Settings),
    ) -> (
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<anyhow::Result<()>>,
    ) {
        let worker = self.worker(adjust).await;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn(worker.run_until_stopped(async {
            let _ = stopped.await;
        }));
        (stop, running)
    }

    /// `thinhook serve ARGS` on this app's database and secrets key, with
    /// loopback receivers allowed and a short poll; only `PATH` of the
    /// test's own environment is passed on.
    pub fn serve_process(&self, args: &[&str]) -> std::process::Command {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_thinhook"));
        command
            .arg("serve")
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("THINHOOK_DATABASE_URL", &self.settings.database.url)
            .env(
                "THINHOOK_SECRETS_ENCRYPTION_KEY",
                &self.settings.secrets.encryption_key,
            )
            .env("THINHOOK_DELIVERY_ALLOW_CIDRS", "127.0.0.0/8")
            .env("THINHOOK_DELIVERY_POLL_INTERVAL_MS", "50")
            .stdout(std::process::Stdio::null());
        command
    }

    pub fn clock_now(&self) -> time::OffsetDateTime {
        use thinhook::clock::Clock;
        self.clock.now_utc()
    }

    /// Waits until the server's writer has committed everything sent to it
    /// so far (it writes in order), such as fetch marks recorded in the background.
    pub async fn writes_committed(&self) {
        self.writer.run(|_| Ok(())).await.expect("the writer runs");
    }

    /// Claims due deliveries for `worker` through the server's writer, as a
    /// dispatcher would, with a 60 s lease; never more than `per_subscription`
    /// leases of one subscription, even for its only holder.
    pub async fn claim_as(
        &self,
        worker: &str,
        per_subscription: i64,
        batch: i64,
    ) -> Vec<thinhook::db::deliveries::Leased> {
        let now = self.clock.now_utc();
        let (worker, now, until) = (
            worker.to_owned(),
            thinhook::clock::to_db(now),
            thinhook::clock::to_db(now + std::time::Duration::from_secs(60)),
        );
        let limits = thinhook::db::queue::ClaimLimits {
            batch,
            per_subscription,
            sole_holder: per_subscription,
            window: 100,
        };
        self.writer
            .run(move |conn| thinhook::db::queue::claim(conn, &worker, now, until, limits, ""))
            .await
            .expect("claim")
            .leased
    }

    /// Runs the dispatcher until nothing is due; returns how many attempts it made.
    pub async fn dispatch_all_pending(&self) -> usize {
        self.dispatcher
            .dispatch_all_pending()
            .await
            .expect("dispatch")
    }

    pub async fn create_message(&self, text: &str) -> Value {
        let response = self
            .post_json("/messages", &serde_json::json!({ "text": text }))
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
        response.json().await.expect("message JSON")
    }

    pub async fn create_comment(&self, message_id: &str, text: &str) -> Value {
        let response = self
            .post_json(
                &format!("/messages/{message_id}/comments"),
                &serde_json::json!({ "text": text }),
            )
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
        response.json().await.expect("comment JSON")
    }
}

/// Asserts that `response` is an RFC 9457 problem document with this status
/// and stable code; returns the document.
pub async fn assert_problem(response: Response, status: StatusCode, code: &str) -> Value {
    assert_eq!(response.status(), status, "status");
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert_eq!(content_type, "application/problem+json");
    let problem: Value = response.json().await.expect("problem JSON");
    assert_eq!(problem["type"], format!("/problems/{code}"), "{problem}");
    assert_eq!(problem["status"], status.as_u16(), "{problem}");
    assert!(
        problem["title"].as_str().is_some_and(|t| !t.is_empty()),
        "{problem}"
    );
    assert!(
        problem["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{problem}"
    );
    problem
}
