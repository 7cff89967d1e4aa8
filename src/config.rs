//! Configuration: defaults, then an optional TOML file, then `THINHOOK_*`
//! environment variables, validated once at start-up.
//!
//! Every setting has a dotted key (`database.url`) used in the file and an
//! environment variable derived from it (`THINHOOK_DATABASE_URL`). The
//! defaults are the schema: a key that has no default does not exist, and an
//! environment variable is parsed as the type of its default. Errors name the
//! setting and where its value came from, in one line.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use toml::{Table, Value};
use tracing_subscriber::filter::Targets;
use url::Url;

use crate::db::DatabaseUrl;

const ENV_PREFIX: &str = "THINHOOK_";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Address and port the HTTP API listens on.
    pub listen: SocketAddr,
    /// How clients reach this gateway, e.g. `https://hooks.example.com`; resource
    /// links in webhooks and `Location` headers are built from it. Empty: derived
    /// from the address actually listened on.
    pub public_base_url: String,
    /// HTTP worker threads; 0 means one per CPU core.
    pub workers: usize,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// How long a graceful shutdown waits for requests in flight, in seconds.
    pub shutdown_timeout_secs: u64,
    pub database: DatabaseSettings,
    pub auth: AuthSettings,
    pub delivery: DeliverySettings,
    pub events: EventsSettings,
    pub secrets: SecretsSettings,
    pub limits: LimitSettings,
    pub log: LogSettings,
    pub metrics: MetricsSettings,
    pub tracing: TracingSettings,
    pub portal: PortalSettings,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    /// `sqlite://PATH` (embedded) or `postgres://…` (production).
    pub url: String,
    /// Connections kept by the pool.
    pub pool_size: u32,
    /// How long a request waits for a free connection before it gets a 503, in seconds.
    pub acquire_timeout_secs: u64,
    /// Writes that may wait for the writer; beyond, requests get a 503.
    pub writer_queue: usize,
    /// Writes committed together in one transaction, at most.
    pub writer_batch: usize,
    /// SQLite: how durable a commit is (see the README).
    pub sqlite_synchronous: SqliteSynchronous,
}

/// SQLite's `synchronous` in WAL mode: `normal` syncs at checkpoints, so a
/// power loss (not a crash of the process) can lose the last commits;
/// `full` also syncs the WAL at every commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SqliteSynchronous {
    Normal,
    Full,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// The `iss` of issued tokens, and the only one accepted. Empty: the public base URL.
    pub issuer: String,
    /// The `aud` of issued tokens, and the only one accepted.
    pub audience: String,
    /// Lifetime of an access token, in seconds.
    pub token_ttl_secs: u64,
    /// Clock difference tolerated when checking `exp`, `nbf` and `iat`, in seconds.
    pub leeway_secs: u64,
    /// PEM file (PKCS#8 Ed25519) holding the token signing key. Empty: keys
    /// are generated and kept in the database, and `thinhook keys rotate` rotates them.
    pub signing_key_file: String,
    /// How often the revoked clients are read again, in milliseconds (on
    /// PostgreSQL a revocation is also announced at once).
    pub revocation_refresh_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeliverySettings {
    /// Networks webhooks may reach although not public, e.g. `["127.0.0.0/8"]`
    /// for local development. Empty: public addresses only.
    pub allow_cidrs: Vec<String>,
    /// Refuse plain-http webhook URLs.
    pub https_only: bool,
    pub connect_timeout_secs: u64,
    /// Whole-request limit, response body included.
    pub timeout_secs: u64,
    /// Wait before each attempt: the first is normally 0; after the last, a delivery is dead.
    pub retry_schedule_secs: Vec<u64>,
    /// The longest `Retry-After` honoured.
    pub max_retry_after_secs: u64,
    /// A subscription failing this long without a success is disabled.
    pub disable_after_secs: u64,
    /// How long a rotated-out secret keeps signing beside the new one.
    pub secret_overlap_secs: u64,
    /// How long a claimed delivery stays leased to its dispatcher.
    pub lease_secs: u64,
    /// Deliveries claimed at once.
    pub batch_size: u32,
    /// Attempts in flight at once in this process.
    pub max_in_flight: u32,
    /// Attempts in flight at once for one subscription, across all processes.
    pub max_in_flight_per_subscription: u32,
    /// Attempts in flight at once in this process to one host, whatever
    /// the subscriptions.
    pub max_in_flight_per_host: u32,
    /// Deliveries one process holds leased in memory (waiting, in flight or
    /// being recorded); more stay queued in the database.
    pub max_held: u32,
    /// How often the queue is polled when no wake-up arrives.
    pub poll_interval_ms: u64,
    /// Bytes of each response body kept in the delivery log.
    pub max_response_bytes: usize,
    /// Requests per minute asked for in the CloudEvents handshake
    /// (`WebHook-Request-Rate`); 0: none asked, the receiver's rate applies.
    pub handshake_request_rate: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventsSettings {
    /// Events (and their delivery logs) are kept this many days.
    pub retention_days: u64,
    /// How often expired events are pruned.
    pub prune_interval_secs: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecretsSettings {
    /// base64 of 32 bytes: encrypts webhook secrets at rest. Empty: use `key_file`.
    pub encryption_key: String,
    /// Where the key is kept when `encryption_key` is empty; created (mode
    /// 0600) on first start. Every process sharing a database needs the same key.
    pub key_file: String,
}

/// Export of spans to an OpenTelemetry collector (the `otlp` build feature).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TracingSettings {
    /// OTLP/HTTP traces URL, e.g. `http://127.0.0.1:4318/v1/traces`; empty: no export.
    pub otlp_endpoint: String,
    /// `service.name` of the exported spans.
    pub service_name: String,
}

/// The subscriber portal at `/portal/`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PortalSettings {
    pub enabled: bool,
    /// Who may show the portal in a frame: the CSP `frame-ancestors`
    /// sources, e.g. `'self' https://app.example.com`; `'none'`: nobody.
    pub frame_ancestors: String,
}

impl Default for PortalSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            frame_ancestors: "'none'".into(),
        }
    }
}

/// Prometheus metrics at `GET /metrics`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsSettings {
    pub enabled: bool,
    /// Serve `/metrics` on this address (e.g. `127.0.0.1:9100`) instead of the
    /// API's; also how a worker, which has no API, is scraped.
    pub listen: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
    /// `info`, or per-target directives such as `warn,thinhook=debug`.
    pub level: String,
}

/// What one caller may ask of this process. Rates are kept in memory per
/// process; 0 turns a rate limit off.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitSettings {
    /// Requests per second one client may make to the authenticated routes.
    pub api_per_second: f64,
    /// Requests one client may make at once beyond that rate.
    pub api_burst: u32,
    /// `POST /oauth/token` requests per second per source address, and
    /// separately per client id.
    pub token_per_second: f64,
    pub token_burst: u32,
    /// Client secrets checked at once (argon2id, about 20 ms of one core
    /// each); 0: half the CPU cores, at least 1.
    pub concurrent_secret_checks: u32,
    /// Subscriptions one client may have.
    pub max_subscriptions_per_client: u32,
    /// Subscriptions one event may match (each one a delivery to write
    /// while the comment's request waits).
    pub max_subscriptions_per_event: u32,
    /// Subscriptions the clients of one workspace may have together, unless
    /// the workspace sets its own (`thinhook workspaces update`).
    pub max_subscriptions_per_workspace: u32,
    /// Requests per second the clients of one workspace may make together,
    /// unless the workspace sets its own; 0: no workspace-wide limit.
    pub workspace_api_per_second: u32,
    /// Requests the clients of one workspace may make at once beyond that rate.
    pub workspace_api_burst: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            public_base_url: String::new(),
            workers: 0,
            max_body_bytes: 64 * 1024,
            shutdown_timeout_secs: 30,
            database: DatabaseSettings::default(),
            auth: AuthSettings::default(),
            delivery: DeliverySettings::default(),
            events: EventsSettings::default(),
            secrets: SecretsSettings::default(),
            limits: LimitSettings::default(),
            log: LogSettings::default(),
            metrics: MetricsSettings::default(),
            tracing: TracingSettings::default(),
            portal: PortalSettings::default(),
        }
    }
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: "sqlite://thinhook.sqlite3".into(),
            pool_size: 8,
            acquire_timeout_secs: 5,
            writer_queue: 10_000,
            writer_batch: 1_000,
            sqlite_synchronous: SqliteSynchronous::Normal,
        }
    }
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            issuer: String::new(),
            audience: "thinhook".into(),
            token_ttl_secs: 900,
            leeway_secs: 30,
            signing_key_file: String::new(),
            revocation_refresh_ms: 1_000,
        }
    }
}

impl Default for DeliverySettings {
    fn default() -> Self {
        Self {
            allow_cidrs: Vec::new(),
            https_only: false,
            connect_timeout_secs: 5,
            timeout_secs: 15,
            retry_schedule_secs: vec![0, 5, 300, 1800, 7200, 18000, 36000, 36000],
            max_retry_after_secs: 3600,
            disable_after_secs: 5 * 86_400,
            secret_overlap_secs: 86_400,
            lease_secs: 60,
            batch_size: 500,
            max_in_flight: 256,
            max_in_flight_per_subscription: 64,
            max_in_flight_per_host: 128,
            max_held: 20_000,
            poll_interval_ms: 1000,
            max_response_bytes: 4096,
            handshake_request_rate: 0,
        }
    }
}

impl Default for EventsSettings {
    fn default() -> Self {
        Self {
            retention_days: 30,
            prune_interval_secs: 3600,
        }
    }
}

impl Default for SecretsSettings {
    fn default() -> Self {
        Self {
            encryption_key: String::new(),
            key_file: "thinhook.key".into(),
        }
    }
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            api_per_second: 200.0,
            api_burst: 400,
            token_per_second: 1.0,
            token_burst: 10,
            concurrent_secret_checks: 0,
            max_subscriptions_per_client: 100,
            max_subscriptions_per_event: 1000,
            max_subscriptions_per_workspace: 10_000,
            workspace_api_per_second: 0,
            workspace_api_burst: 0,
        }
    }
}

impl Default for TracingSettings {
    fn default() -> Self {
        Self {
            otlp_endpoint: String::new(),
            service_name: "thinhook".into(),
        }
    }
}

impl Default for MetricsSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: String::new(),
        }
    }
}

impl MetricsSettings {
    /// The separate address to serve metrics on, if any.
    pub fn address(&self) -> Result<Option<SocketAddr>, String> {
        if self.listen.is_empty() {
            return Ok(None);
        }
        self.listen
            .parse()
            .map(Some)
            .map_err(|_| format!("`{}` is not an address such as 127.0.0.1:9100", self.listen))
    }
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: LogFormat::Human,
            level: "info".into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("configuration file {path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("unknown setting `{key}` in {origin}")]
    Unknown { key: String, origin: String },
    #[error("invalid setting `{key}` (from {origin}): {reason}")]
    Invalid {
        key: String,
        origin: String,
        reason: String,
    },
}

impl Settings {
    /// Loads the settings from the defaults, an optional file and the given
    /// environment (pass `std::env::vars()`; tests pass their own).
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut layers = Layers::new();
        if let Some(path) = file {
            layers.apply_file(path)?;
        }
        let mut env: Vec<_> = env
            .into_iter()
            .filter(|(name, _)| name.starts_with(ENV_PREFIX))
            .collect();
        env.sort();
        for (name, value) in env {
            layers.apply_env(&name, &value)?;
        }
        layers.finish()
    }

    /// The environment variable that sets `key`.
    pub fn env_var(key: &str) -> String {
        format!("{ENV_PREFIX}{}", key.replace('.', "_").to_uppercase())
    }

    fn validate(&self) -> Result<(), (&'static str, String)> {
        if !self.public_base_url.is_empty() {
            validate_base_url(&self.public_base_url).map_err(|r| ("public_base_url", r))?;
        }
        validate_log_level(&self.log.level).map_err(|reason| ("log.level", reason))?;
        self.metrics
            .address()
            .map_err(|reason| ("metrics.listen", reason))?;
        validate_otlp_endpoint(&self.tracing.otlp_endpoint)
            .map_err(|reason| ("tracing.otlp_endpoint", reason))?;
        validate_frame_ancestors(&self.portal.frame_ancestors)
            .map_err(|reason| ("portal.frame_ancestors", reason))?;
        if self.max_body_bytes < 1024 {
            return Err(("max_body_bytes", "must be at least 1024".into()));
        }
        DatabaseUrl::parse(&self.database.url).map_err(|e| ("database.url", e.to_string()))?;
        if !(1..=1000).contains(&self.database.pool_size) {
            return Err(("database.pool_size", "must be between 1 and 1000".into()));
        }
        if self.database.acquire_timeout_secs == 0 {
            return Err(("database.acquire_timeout_secs", "must be at least 1".into()));
        }
        if !(60..=86_400).contains(&self.auth.token_ttl_secs) {
            return Err(("auth.token_ttl_secs", "must be between 60 and 86400".into()));
        }
        if self.auth.leeway_secs > 300 {
            return Err(("auth.leeway_secs", "must be at most 300".into()));
        }
        if self.auth.audience.trim().is_empty() {
            return Err(("auth.audience", "must not be empty".into()));
        }
        for (key, rate) in [
            ("limits.api_per_second", self.limits.api_per_second),
            ("limits.token_per_second", self.limits.token_per_second),
        ] {
            if !(rate.is_finite() && rate >= 0.0) {
                return Err((key, "must be 0 (no limit) or a positive number".into()));
            }
        }
        let delivery = &self.delivery;
        for cidr in &delivery.allow_cidrs {
            cidr.parse::<crate::delivery::ssrf::Cidr>()
                .map_err(|e| ("delivery.allow_cidrs", e))?;
        }
        if delivery.retry_schedule_secs.is_empty() {
            return Err((
                "delivery.retry_schedule_secs",
                "must name at least one attempt".into(),
            ));
        }
        if delivery.lease_secs <= delivery.timeout_secs {
            return Err((
                "delivery.lease_secs",
                "must be longer than delivery.timeout_secs, or a slow attempt could be made twice"
                    .into(),
            ));
        }
        for (key, value) in [
            (
                "delivery.connect_timeout_secs",
                delivery.connect_timeout_secs,
            ),
            ("delivery.timeout_secs", delivery.timeout_secs),
            ("delivery.batch_size", u64::from(delivery.batch_size)),
            ("delivery.max_in_flight", u64::from(delivery.max_in_flight)),
            (
                "delivery.max_in_flight_per_subscription",
                u64::from(delivery.max_in_flight_per_subscription),
            ),
            ("delivery.max_held", u64::from(delivery.max_held)),
            (
                "delivery.max_in_flight_per_host",
                u64::from(delivery.max_in_flight_per_host),
            ),
            ("delivery.poll_interval_ms", delivery.poll_interval_ms),
            ("database.writer_queue", self.database.writer_queue as u64),
            ("database.writer_batch", self.database.writer_batch as u64),
            (
                "auth.revocation_refresh_ms",
                self.auth.revocation_refresh_ms,
            ),
            ("events.retention_days", self.events.retention_days),
            ("limits.api_burst", u64::from(self.limits.api_burst)),
            ("limits.token_burst", u64::from(self.limits.token_burst)),
            (
                "limits.max_subscriptions_per_client",
                u64::from(self.limits.max_subscriptions_per_client),
            ),
            (
                "limits.max_subscriptions_per_event",
                u64::from(self.limits.max_subscriptions_per_event),
            ),
            (
                "limits.max_subscriptions_per_workspace",
                u64::from(self.limits.max_subscriptions_per_workspace),
            ),
            (
                "events.prune_interval_secs",
                self.events.prune_interval_secs,
            ),
        ] {
            if value == 0 {
                return Err((key, "must be at least 1".into()));
            }
        }
        if self.limits.workspace_api_per_second > 0 && self.limits.workspace_api_burst == 0 {
            return Err((
                "limits.workspace_api_burst",
                "must be at least 1 when limits.workspace_api_per_second is set".into(),
            ));
        }
        if !self.secrets.encryption_key.is_empty() {
            crate::secret_box::SecretBox::from_base64(&self.secrets.encryption_key)
                .map_err(|e| ("secrets.encryption_key", format!("{e:#}")))?;
        } else if self.secrets.key_file.is_empty() {
            return Err((
                "secrets.key_file",
                "must be set when secrets.encryption_key is empty".into(),
            ));
        }
        self.log
            .level
            .parse::<Targets>()
            .map_err(|e| ("log.level", e.to_string()))?;
        Ok(())
    }
}

fn validate_otlp_endpoint(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Ok(());
    }
    if !cfg!(feature = "otlp") {
        return Err(
            "this thinhook was built without OTLP export: build it with \
                    `--features otlp`, or leave the setting empty"
                .into(),
        );
    }
    match url::Url::parse(value) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => Ok(()),
        _ => Err(format!(
            "`{value}` is not an http(s) URL such as http://127.0.0.1:4318/v1/traces"
        )),
    }
}

/// Comma-separated levels and `target=level` directives. (The filter itself would take a misspelt level such as
/// `dbug` for a target name and quietly log nothing.)
/// A CSP `frame-ancestors` source list: `'none'` alone, or `'self'` and
/// origins (`https://app.example.com`, `https://*.example.com:8443`).
fn validate_frame_ancestors(list: &str) -> Result<(), String> {
    let sources: Vec<&str> = list.split_whitespace().collect();
    if sources == ["'none'"] {
        return Ok(());
    }
    if sources.is_empty() {
        return Err(
            "must be `'none'` or a list of sources such as `'self' https://app.example.com`".into(),
        );
    }
    for source in sources {
        let origin = source
            .strip_prefix("https://")
            .or_else(|| source.strip_prefix("http://"));
        let is_origin = origin.is_some_and(|rest| {
            !rest.is_empty()
                && rest
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".-:*".contains(c))
        });
        if source != "'self'" && !is_origin {
            return Err(format!(
                "`{source}` is not `'self'` or an origin such as https://app.example.com \
                 (`'none'` stands alone)"
            ));
        }
    }
    Ok(())
}

fn validate_log_level(value: &str) -> Result<(), String> {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    let is_level = |level: &str| LEVELS.contains(&level.trim().to_ascii_lowercase().as_str());
    for directive in value.split(',') {
        let ok = match directive.split_once('=') {
            Some((target, level)) => !target.trim().is_empty() && is_level(level),
            None => is_level(directive),
        };
        if !ok {
            return Err(format!(
                "`{}` is not a level ({}) or a `target=level` directive",
                directive.trim(),
                LEVELS.join(", ")
            ));
        }
    }
    Ok(())
}

fn validate_base_url(value: &str) -> Result<(), String> {
    let url = Url::parse(value).map_err(|e| format!("not an absolute URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("must be an http or https URL".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("must not have a query or fragment".into());
    }
    Ok(())
}

/// The settings as a TOML table being layered, and where each value came from.
struct Layers {
    table: Table,
    origins: HashMap<String, String>,
}

impl Layers {
    fn new() -> Self {
        let table = Table::try_from(Settings::default())
            .expect("the default settings serialise to a TOML table");
        Self {
            table,
            origins: HashMap::new(),
        }
    }

    fn apply_file(&mut self, path: &Path) -> Result<(), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let file: Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::Syntax {
                path: path.to_owned(),
                message: e.message().to_owned(),
            })?;
        let origin = path.display().to_string();
        merge(&mut self.table, file, "", &origin, &mut self.origins)
    }

    fn apply_env(&mut self, name: &str, value: &str) -> Result<(), ConfigError> {
        let unknown = || ConfigError::Unknown {
            key: name.to_owned(),
            origin: "the environment".into(),
        };
        let key = leaf_keys(&self.table, "")
            .into_iter()
            .find(|key| Settings::env_var(key) == name)
            .ok_or_else(unknown)?;
        let (parent, leaf) = match key.rsplit_once('.') {
            Some((parent, leaf)) => (Some(parent), leaf),
            None => (None, key.as_str()),
        };
        let mut table = &mut self.table;
        for part in parent.into_iter().flat_map(|p| p.split('.')) {
            table = table
                .get_mut(part)
                .and_then(Value::as_table_mut)
                .ok_or_else(unknown)?;
        }
        let default = table.get(leaf).ok_or_else(unknown)?;
        let parsed = parse_like(default, value).map_err(|reason| ConfigError::Invalid {
            key: key.clone(),
            origin: name.to_owned(),
            reason,
        })?;
        table.insert(leaf.to_owned(), parsed);
        self.origins.insert(key, name.to_owned());
        Ok(())
    }

    fn finish(self) -> Result<Settings, ConfigError> {
        let origin_of = |key: &str| {
            self.origins
                .get(key)
                .cloned()
                .unwrap_or_else(|| "the defaults".into())
        };
        let settings: Settings = serde_path_to_error::deserialize(Value::Table(self.table.clone()))
            .map_err(|e| {
                let key = e.path().to_string();
                ConfigError::Invalid {
                    origin: origin_of(&key),
                    reason: e.into_inner().message().to_owned(),
                    key,
                }
            })?;
        settings
            .validate()
            .map_err(|(key, reason)| ConfigError::Invalid {
                key: key.into(),
                origin: origin_of(key),
                reason,
            })?;
        Ok(settings)
    }
}

/// Overlays `layer` on `base`, refusing keys the defaults do not have and
/// values whose type differs from the default's.
fn merge(
    base: &mut Table,
    layer: Table,
    prefix: &str,
    origin: &str,
    origins: &mut HashMap<String, String>,
) -> Result<(), ConfigError> {
    for (name, value) in layer {
        let key = join(prefix, &name);
        let Some(existing) = base.get_mut(&name) else {
            return Err(ConfigError::Unknown {
                key,
                origin: origin.to_owned(),
            });
        };
        match (existing, value) {
            (Value::Table(base), Value::Table(layer)) => {
                merge(base, layer, &key, origin, origins)?;
            }
            (existing, value) if existing.same_type(&value) => {
                *existing = value;
                origins.insert(key, origin.to_owned());
            }
            (existing, value) => {
                return Err(ConfigError::Invalid {
                    reason: format!(
                        "expected {}, found {}",
                        existing.type_str(),
                        value.type_str()
                    ),
                    key,
                    origin: origin.to_owned(),
                });
            }
        }
    }
    Ok(())
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_owned()
    } else {
        format!("{prefix}.{name}")
    }
}

fn leaf_keys(table: &Table, prefix: &str) -> Vec<String> {
    table
        .iter()
        .flat_map(|(name, value)| match value {
            Value::Table(inner) => leaf_keys(inner, &join(prefix, name)),
            _ => vec![join(prefix, name)],
        })
        .collect()
}

/// Parses an environment variable's text as the TOML type of the default.
fn parse_like(default: &Value, text: &str) -> Result<Value, String> {
    let text = text.trim();
    match default {
        Value::String(_) => Ok(Value::String(text.to_owned())),
        Value::Integer(_) => text
            .parse()
            .map(Value::Integer)
            .map_err(|_| format!("expected an integer, found `{text}`")),
        Value::Float(_) => text
            .parse()
            .map(Value::Float)
            .map_err(|_| format!("expected a number, found `{text}`")),
        Value::Boolean(_) => text
            .parse()
            .map(Value::Boolean)
            .map_err(|_| format!("expected true or false, found `{text}`")),
        Value::Array(items) => {
            let element = items
                .first()
                .cloned()
                .unwrap_or(Value::String(String::new()));
            text.split(',')
                .map(str::trim)
                .filter(|item| !item.is_empty())
                .map(|item| parse_like(&element, item))
                .collect::<Result<_, _>>()
                .map(Value::Array)
        }
        Value::Datetime(_) | Value::Table(_) => {
            Err("cannot be set from the environment".to_owned())
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_misspelt_log_level_is_refused() {
        for good in [
            "info",
            "WARN",
            "warn,thinhook=debug",
            "thinhook::db=trace",
            "off",
        ] {
            assert_eq!(validate_log_level(good), Ok(()), "{good}");
        }
        for bad in ["dbug", "warn,thinhook=dbug", "=info", "", "info,"] {
            assert!(validate_log_level(bad).is_err(), "{bad:?}");
        }
    }

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn file(contents: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), contents).unwrap();
        file
    }

    #[test]
    fn no_configuration_gives_local_sqlite_on_port_8080() {
        let settings = Settings::load(None, env(&[])).unwrap();
        assert_eq!(settings, Settings::default());
        assert_eq!(settings.listen.to_string(), "127.0.0.1:8080");
        assert!(settings.database.url.starts_with("sqlite://"));
    }

    #[test]
    fn file_overrides_defaults_and_environment_overrides_file() {
        let file = file(
            r#"
            listen = "0.0.0.0:9000"
            public_base_url = "https://hooks.example.com"
            [database]
            url = "postgres://db.example/thinhook"
            pool_size = 20
            "#,
        );
        let settings = Settings::load(
            Some(file.path()),
            env(&[
                ("THINHOOK_DATABASE_POOL_SIZE", "4"),
                ("THINHOOK_LOG_FORMAT", "json"),
                ("PATH", "/usr/bin"),
            ]),
        )
        .unwrap();
        assert_eq!(settings.listen.to_string(), "0.0.0.0:9000");
        assert_eq!(settings.public_base_url, "https://hooks.example.com");
        assert_eq!(settings.database.url, "postgres://db.example/thinhook");
        assert_eq!(settings.database.pool_size, 4);
        assert_eq!(settings.log.format, LogFormat::Json);
    }

    #[test]
    fn env_var_names_are_derived_from_keys() {
        assert_eq!(Settings::env_var("database.url"), "THINHOOK_DATABASE_URL");
        assert_eq!(Settings::env_var("listen"), "THINHOOK_LISTEN");
    }

    fn load_err(file_text: Option<&str>, vars: &[(&str, &str)]) -> String {
        let file = file_text.map(file);
        Settings::load(file.as_ref().map(|f| f.path()), env(vars))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn errors_name_the_setting_and_its_origin() {
        // (file contents, environment, parts the message must contain)
        type Case<'a> = (Option<&'a str>, &'a [(&'a str, &'a str)], &'a [&'a str]);
        let cases: &[Case] = &[
            (
                None,
                &[("THINHOOK_LISTEN", "nowhere")],
                &["`listen`", "THINHOOK_LISTEN"],
            ),
            (
                None,
                &[("THINHOOK_DATABASE_POOL_SIZE", "many")],
                &["`database.pool_size`", "integer"],
            ),
            (
                None,
                &[("THINHOOK_DATABASE_POOL_SIZE", "0")],
                &["`database.pool_size`", "between"],
            ),
            (
                None,
                &[("THINHOOK_DATABASE_POOL_SIZE", "-1")],
                &["`database.pool_size`"],
            ),
            (
                None,
                &[("THINHOOK_DATABASE_URL", "mysql://x")],
                &["`database.url`"],
            ),
            (
                None,
                &[("THINHOOK_METRICS_LISTEN", "9100")],
                &["`metrics.listen`", "127.0.0.1:9100"],
            ),
            (
                None,
                &[("THINHOOK_LOG_FORMAT", "xml")],
                &["`log.format`", "xml"],
            ),
            (
                None,
                &[("THINHOOK_LOG_LEVEL", "info,=bogus=")],
                &["`log.level`"],
            ),
            (
                None,
                &[("THINHOOK_PUBLIC_BASE_URL", "ftp://x")],
                &["`public_base_url`"],
            ),
            (
                None,
                &[("THINHOOK_DATABSE_URL", "x")],
                &["unknown setting", "THINHOOK_DATABSE_URL"],
            ),
            (Some("lissten = \"x\""), &[], &["unknown setting `lissten`"]),
            (
                Some("[database]\npool_size = \"8\""),
                &[],
                &["`database.pool_size`", "expected integer"],
            ),
            (Some("listen = "), &[], &["not valid TOML"]),
        ];
        for (file_text, vars, expected) in cases {
            let message = load_err(*file_text, vars);
            for part in *expected {
                assert!(message.contains(part), "{message:?} lacks {part:?}");
            }
            assert!(!message.contains('\n'), "not one line: {message:?}");
        }
    }

    #[test]
    fn lists_come_from_the_environment_comma_separated() {
        let settings = Settings::load(
            None,
            env(&[
                ("THINHOOK_DELIVERY_ALLOW_CIDRS", "127.0.0.0/8, ::1/128"),
                ("THINHOOK_DELIVERY_RETRY_SCHEDULE_SECS", "0,1,2"),
            ]),
        )
        .unwrap();
        assert_eq!(settings.delivery.allow_cidrs, ["127.0.0.0/8", "::1/128"]);
        assert_eq!(settings.delivery.retry_schedule_secs, [0, 1, 2]);
        let err = load_err(None, &[("THINHOOK_DELIVERY_ALLOW_CIDRS", "10.0.0.0/99")]);
        assert!(err.contains("`delivery.allow_cidrs`"), "{err}");
    }

    #[test]
    fn an_otlp_endpoint_needs_the_otlp_build_and_an_http_url() {
        let set = |url: &str| Settings::load(None, env(&[("THINHOOK_TRACING_OTLP_ENDPOINT", url)]));
        let endpoint = "http://127.0.0.1:4318/v1/traces";
        if cfg!(feature = "otlp") {
            assert_eq!(set(endpoint).unwrap().tracing.otlp_endpoint, endpoint);
            let err = load_err(
                None,
                &[("THINHOOK_TRACING_OTLP_ENDPOINT", "collector:4318")],
            );
            assert!(err.contains("not an http(s) URL"), "{err}");
        } else {
            let err = load_err(None, &[("THINHOOK_TRACING_OTLP_ENDPOINT", endpoint)]);
            assert!(err.contains("`tracing.otlp_endpoint`"), "{err}");
            assert!(err.contains("--features otlp"), "{err}");
        }
    }

    #[test]
    fn missing_file_is_an_error() {
        let err = Settings::load(Some(Path::new("/nonexistent/thinhook.toml")), env(&[]));
        assert!(matches!(err, Err(ConfigError::Read { .. })));
    }
}
