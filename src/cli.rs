//! The command line: one binary, one subcommand per job.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::auth::{self, Scopes};
use crate::clock::{self, Clock};
use crate::config::Settings;
use crate::db::signing_keys::Purpose;
use crate::db::{self, Database};
use crate::domain::WorkspaceId;
use crate::startup::{Application, Role, shutdown_signal};

mod deliveries;
mod portal_link;

pub use deliveries::DeliveriesCommand;
pub use portal_link::PortalLinkArgs;

#[derive(Debug, Parser)]
#[command(
    name = "thinhook",
    version,
    about = "A thin webhook gateway with a pull API"
)]
pub struct Cli {
    /// TOML configuration file; `THINHOOK_*` environment variables override it.
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway (creates a missing SQLite file and applies pending
    /// migrations first).
    Serve {
        /// `all`: API and dispatcher; `api`: HTTP only; `worker`: deliveries only.
        #[arg(long, value_enum, default_value = "all")]
        role: Role,
    },
    /// Prepare the database as `serve` would, then exit: create its tables
    /// (a missing SQLite file too) or apply pending migrations, open the
    /// secrets key (creating its file on first use) and make a token signing
    /// key.
    ///
    /// Every command but `serve` needs this done, or `serve` started, first.
    /// Run it once before starting several processes on a new database.
    Migrate,
    /// Manage API clients (OAuth 2.0 client credentials).
    #[command(subcommand)]
    Clients(ClientsCommand),
    /// Manage workspaces: tenants, each with its own clients and data.
    #[command(subcommand)]
    Workspaces(WorkspacesCommand),
    /// Manage the keys that sign access tokens.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Inspect and resend webhook deliveries, across every client.
    #[command(subcommand)]
    Deliveries(DeliveriesCommand),
    /// Print a sign-in link to the subscriber portal for a client: it works
    /// once, for `--minutes` (15), and manages only that client's
    /// subscriptions. Give it to the client's owner over a private channel.
    PortalLink(PortalLinkArgs),
    /// Receive webhooks locally: verify, fetch the resource, print, forward.
    Listen(crate::listen::ListenArgs),
    /// Measure a gateway: start it, load it, receive its webhooks, report.
    Bench(crate::bench::BenchArgs),
    /// Print the effective configuration (defaults, file, environment) as
    /// TOML, with passwords and keys redacted.
    Config,
    /// Exit 0 if this gateway's `/readyz` (on `listen`, loopback when it
    /// listens on every interface) answers 200 within 3 s, else 1: the
    /// container image's health check. Opens no database.
    Healthcheck,
}

#[derive(Debug, Subcommand)]
pub enum ClientsCommand {
    /// Register a client; prints its id and secret (the secret only this once).
    Create {
        /// A name to tell the client by in `clients list` (1 to 200 characters).
        #[arg(long)]
        name: String,
        /// Space-separated scopes the client may ask for.
        #[arg(
            long,
            default_value = "messages:read messages:write subscriptions:manage events:read"
        )]
        scopes: String,
        /// The workspace (`wsp_…`) the client reads, writes and subscribes
        /// in; the default workspace when omitted.
        #[arg(long)]
        workspace: Option<String>,
    },
    /// List clients (never their secrets).
    List,
    /// Revoke a client: its tokens stop working at once.
    Revoke {
        /// The client's id (`cli_…`), as `clients list` shows it.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum WorkspacesCommand {
    /// Create a workspace; prints its id.
    Create {
        /// A unique name to tell it by (1 to 200 characters).
        #[arg(long)]
        name: String,
        #[command(flatten)]
        limits: WorkspaceLimits,
    },
    /// Set a workspace's own limits; `default` goes back to the configured one.
    Update {
        /// The workspace's id (`wsp_…`), as `workspaces list` shows it.
        id: String,
        #[command(flatten)]
        limits: WorkspaceLimits,
    },
    /// List workspaces with their limits.
    List,
}

/// A workspace's own limits; unset: the configured defaults
/// (`limits.max_subscriptions_per_workspace`, `limits.workspace_api_*`,
/// `events.retention_days`).
#[derive(Debug, clap::Args)]
pub struct WorkspaceLimits {
    /// Subscriptions its clients may have together (a number, or `default`).
    #[arg(long, value_parser = limit_value)]
    max_subscriptions: Option<Limit>,
    /// API requests per second its clients may make together (a number, 0
    /// for none, or `default`).
    #[arg(long, value_parser = limit_value)]
    api_per_second: Option<Limit>,
    /// Requests its clients may make at once beyond that rate (a number, or `default`).
    #[arg(long, value_parser = limit_value)]
    api_burst: Option<Limit>,
    /// Days its events (and their delivery logs) are kept (at least 1, or `default`).
    #[arg(long, value_parser = limit_value)]
    retention_days: Option<Limit>,
}

/// A limit as given on the command line.
#[derive(Debug, Clone, Copy)]
enum Limit {
    Default,
    Value(i32),
}

fn limit_value(text: &str) -> Result<Limit, String> {
    match text {
        "default" => Ok(Limit::Default),
        number => number
            .parse::<u32>()
            .ok()
            .and_then(|n| i32::try_from(n).ok())
            .map(Limit::Value)
            .ok_or_else(|| format!("`{number}` is neither a whole number nor `default`")),
    }
}

impl WorkspaceLimits {
    /// Writes the limits given into `row`.
    fn apply(&self, row: &mut db::models::WorkspaceRow) -> anyhow::Result<()> {
        anyhow::ensure!(
            !matches!(self.retention_days, Some(Limit::Value(0))),
            "--retention-days must be at least 1"
        );
        let set = |limit: Option<Limit>, column: &mut Option<i32>| match limit {
            Some(Limit::Default) => *column = None,
            Some(Limit::Value(n)) => *column = Some(n),
            None => {}
        };
        set(self.max_subscriptions, &mut row.max_subscriptions);
        set(self.api_per_second, &mut row.api_per_second);
        set(self.api_burst, &mut row.api_burst);
        set(self.retention_days, &mut row.retention_days);
        Ok(())
    }
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Make a new signing key active; the old one keeps verifying until its
    /// tokens expire (a webhook key: stays published for
    /// `delivery.secret_overlap_secs`).
    Rotate {
        /// The key that signs `v1a` webhooks, not the one that signs access tokens.
        #[arg(long)]
        webhooks: bool,
    },
    /// List signing keys: which one signs, which still verify.
    List {
        /// The keys that sign `v1a` webhooks, not those that sign access tokens.
        #[arg(long)]
        webhooks: bool,
    },
}

impl KeysCommand {
    fn purpose(&self) -> Purpose {
        match self {
            Self::Rotate { webhooks: true } | Self::List { webhooks: true } => Purpose::Webhooks,
            _ => Purpose::Tokens,
        }
    }
}

pub async fn run(command: Command, settings: Settings) -> anyhow::Result<()> {
    match command {
        Command::Serve { role } => serve(settings, role).await,
        Command::Migrate => migrate(settings).await,
        Command::Clients(command) => with_database(settings, move |db| clients(db, command)).await,
        Command::Workspaces(command) => {
            with_database(settings, move |db| workspaces(db, command)).await
        }
        Command::Deliveries(command) => {
            with_database(settings, move |db| deliveries::run(db, command)).await
        }
        Command::PortalLink(args) => {
            let for_link = settings.clone();
            with_database(settings, move |db| portal_link::run(db, &for_link, &args)).await
        }
        Command::Listen(args) => crate::listen::run(args, shutdown_signal()).await,
        Command::Bench(args) => crate::bench::run(args).await,
        Command::Config => {
            print!("{}", effective_config(&settings)?);
            Ok(())
        }
        Command::Healthcheck => crate::healthcheck::run(&settings).await,
        Command::Keys(command) => {
            if command.purpose() == Purpose::Tokens && !settings.auth.signing_key_file.is_empty() {
                anyhow::bail!(
                    "the signing key comes from auth.signing_key_file; rotate it by replacing that file"
                );
            }
            let secrets_settings = settings.secrets.clone();
            with_database(settings, move |db| {
                let secrets = crate::startup::open_secrets(db, &secrets_settings)?;
                keys(db, &secrets, command)
            })
            .await
        }
    }
}

/// Runs blocking database work for a command on a database that `migrate`
/// or `serve` has set up; never creates or migrates one. Says on stderr
/// which database it is, so a command run with the wrong configuration
/// (or in the wrong directory) is noticed.
async fn with_database(
    settings: Settings,
    work: impl FnOnce(&Database) -> anyhow::Result<()> + Send + 'static,
) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(move || {
        let db = Database::connect_existing(&settings.database)?;
        eprintln!("database: {}", db.url().shown());
        work(&db)
    })
    .await?
}

fn clients(db: &Database, command: ClientsCommand) -> anyhow::Result<()> {
    let now = clock::SystemClock.now_utc();
    let mut conn = db.get()?;
    match command {
        ClientsCommand::Create {
            name,
            scopes,
            workspace,
        } => {
            let name = checked_name(&name)?;
            let scopes = Scopes::parse(&scopes)?;
            anyhow::ensure!(!scopes.is_empty(), "--scopes must name at least one scope");
            let workspace = match workspace {
                Some(id) => {
                    let id = WorkspaceId::parse(&id)?;
                    anyhow::ensure!(
                        db::workspaces::find(&mut conn, id.as_str())?.is_some(),
                        "no workspace `{id}`: `thinhook workspaces list` shows them"
                    );
                    id
                }
                None => WorkspaceId::default_workspace(),
            };
            let client = auth::clients::create(&mut conn, name, scopes, &workspace, now)?;
            println!("client_id:     {}", client.id);
            println!("client_secret: {}", client.secret.expose());
            println!("scopes:        {}", client.scopes);
            println!("workspace:     {}", client.workspace);
            eprintln!("Store the secret now: it is not kept and cannot be shown again.");
        }
        ClientsCommand::List => {
            println!(
                "{:<30}  {:<8}  {:<27}  {:<30}  {:<24}  SCOPES",
                "ID", "STATUS", "CREATED", "WORKSPACE", "NAME"
            );
            for client in db::clients::list(&mut conn)? {
                let status = if client.revoked_at.is_some() {
                    "revoked"
                } else {
                    "active"
                };
                println!(
                    "{:<30}  {:<8}  {:<27}  {:<30}  {:<24}  {}",
                    client.id,
                    status,
                    client
                        .created_at
                        .assume_utc()
                        .format(&time::format_description::well_known::Rfc3339)?,
                    client.workspace_id,
                    client.name,
                    client.scopes
                );
            }
        }
        ClientsCommand::Revoke { id } => {
            if db::clients::revoke(&mut conn, &id, clock::to_db(now))? {
                println!("revoked {id}");
            } else {
                anyhow::bail!("no active client `{id}`");
            }
        }
    }
    Ok(())
}

/// A name for a client or a workspace: 1 to 200 characters, trimmed.
fn checked_name(name: &str) -> anyhow::Result<&str> {
    let name = name.trim();
    anyhow::ensure!(
        !name.is_empty() && name.len() <= 200,
        "--name must be 1 to 200 characters"
    );
    Ok(name)
}

fn workspaces(db: &Database, command: WorkspacesCommand) -> anyhow::Result<()> {
    let mut conn = db.get()?;
    match command {
        WorkspacesCommand::Create { name, limits } => {
            let name = checked_name(&name)?;
            let id = WorkspaceId::generate();
            let mut row = db::models::WorkspaceRow {
                id: id.to_string(),
                name: name.to_owned(),
                created_at: clock::to_db(clock::SystemClock.now_utc()),
                max_subscriptions: None,
                api_per_second: None,
                api_burst: None,
                retention_days: None,
                pruned_through: 0,
            };
            limits.apply(&mut row)?;
            db::workspaces::insert(&mut conn, &row).map_err(|error| match error {
                diesel::result::Error::DatabaseError(
                    diesel::result::DatabaseErrorKind::UniqueViolation,
                    _,
                ) => anyhow::anyhow!("a workspace is already named `{name}`"),
                other => other.into(),
            })?;
            println!("workspace_id: {id}");
            println!("name:         {name}");
        }
        WorkspacesCommand::Update { id, limits } => {
            let id = WorkspaceId::parse(&id)?;
            let mut row = db::workspaces::find(&mut conn, id.as_str())?.ok_or_else(|| {
                anyhow::anyhow!("no workspace `{id}`: `thinhook workspaces list` shows them")
            })?;
            limits.apply(&mut row)?;
            db::workspaces::set_limits(&mut conn, &row)?;
            println!(
                "updated {id}; API processes apply new rates within auth.revocation_refresh_ms"
            );
        }
        WorkspacesCommand::List => {
            let shown = |limit: Option<i32>| limit.map_or("default".to_owned(), |n| n.to_string());
            println!(
                "{:<30}  {:<27}  {:<13}  {:<10}  {:<9}  {:<14}  NAME",
                "ID", "CREATED", "SUBSCRIPTIONS", "API RATE", "API BURST", "RETENTION DAYS"
            );
            for workspace in db::workspaces::list(&mut conn)? {
                println!(
                    "{:<30}  {:<27}  {:<13}  {:<10}  {:<9}  {:<14}  {}",
                    workspace.id,
                    workspace
                        .created_at
                        .assume_utc()
                        .format(&time::format_description::well_known::Rfc3339)?,
                    shown(workspace.max_subscriptions),
                    shown(workspace.api_per_second),
                    shown(workspace.api_burst),
                    shown(workspace.retention_days),
                    workspace.name
                );
            }
        }
    }
    Ok(())
}

fn keys(
    db: &Database,
    secrets: &crate::secret_box::SecretBox,
    command: KeysCommand,
) -> anyhow::Result<()> {
    let purpose = command.purpose();
    match command {
        KeysCommand::Rotate { .. } => {
            let now = clock::SystemClock.now_utc();
            let kid = auth::keys::rotate(&mut *db.get()?, now, secrets, purpose)?;
            println!("new signing key: {kid}");
        }
        KeysCommand::List { .. } => {
            let rfc3339 = |at: time::PrimitiveDateTime| {
                at.assume_utc()
                    .format(&time::format_description::well_known::Rfc3339)
            };
            println!("{:<24}  {:<8}  {:<27}  RETIRED", "KID", "STATUS", "CREATED");
            let mut signing = true;
            for key in db::signing_keys::list(&mut *db.get()?, purpose)? {
                // The newest key not retired signs; retired ones verify until
                // the tokens they signed expire.
                let status = match key.retired_at {
                    None if signing => {
                        signing = false;
                        "signing"
                    }
                    None => "verifies",
                    Some(_) => "retired",
                };
                println!(
                    "{:<24}  {:<8}  {:<27}  {}",
                    key.kid,
                    status,
                    rfc3339(key.created_at)?,
                    key.retired_at.map(rfc3339).transpose()?.unwrap_or_default()
                );
            }
        }
    }
    Ok(())
}

async fn serve(settings: Settings, role: Role) -> anyhow::Result<()> {
    let shutdown = shutdown_signal();
    let app = Application::build(&settings, role).await?;
    let role_name = match role {
        Role::All => "all",
        Role::Api => "api",
        Role::Worker => "worker",
    };
    let key = if settings.secrets.encryption_key.is_empty() {
        settings.secrets.key_file.clone()
    } else {
        "secrets.encryption_key".to_owned()
    };
    tracing::info!(
        role = role_name,
        database = db::redacted(&settings.database.url),
        secrets_key = key,
        address = app.address().map(|a| a.to_string()),
        public_base_url = app.public_base_url(),
        allow_cidrs = settings.delivery.allow_cidrs.join(","),
        "thinhook is running"
    );
    if app.address().is_some() && !app.has_clients().await {
        tracing::info!(
            "no API client exists yet: create one with `thinhook clients create --name NAME`"
        );
    }
    app.run_until_stopped(shutdown).await?;
    tracing::info!("thinhook stopped");
    Ok(())
}

/// The settings as TOML, passwords and keys replaced by `***`.
fn effective_config(settings: &Settings) -> anyhow::Result<String> {
    let mut shown = settings.clone();
    shown.database.url = db::redacted(&shown.database.url);
    if !shown.secrets.encryption_key.is_empty() {
        shown.secrets.encryption_key = "***".into();
    }
    Ok(toml::to_string(&shown)?)
}

/// What `serve` does before it serves, and nothing more: run it once before
/// starting several processes on a new database, so that they do not race
/// to migrate it or to create its keys.
async fn migrate(settings: Settings) -> anyhow::Result<()> {
    let applied = tokio::task::spawn_blocking(move || {
        let now = clock::SystemClock.now_utc();
        let (db, _, applied) = crate::startup::prepare_database(&settings, now)?;
        eprintln!("database: {}", db.url().shown());
        Ok::<_, anyhow::Error>(applied)
    })
    .await??;
    if applied.is_empty() {
        println!("the database schema is up to date");
    }
    for name in applied {
        println!("applied {name}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    /// Every argument of every subcommand, as `command path: --arg`, that
    /// `--help` would show without a word of explanation.
    fn arguments_without_help(command: &clap::Command, path: &str, found: &mut Vec<String>) {
        for arg in command.get_arguments() {
            let builtin = matches!(arg.get_id().as_str(), "help" | "version");
            if !builtin && arg.get_help().is_none() && arg.get_long_help().is_none() {
                found.push(format!("{path}: {}", arg.get_id()));
            }
        }
        for sub in command.get_subcommands() {
            arguments_without_help(sub, &format!("{path} {}", sub.get_name()), found);
        }
    }

    #[test]
    fn every_argument_has_help_text() {
        let mut command = Cli::command();
        // Builds the tree as parsing would: global arguments propagate to
        // subcommands, and built-in ones are added.
        command.build();
        let mut found = Vec::new();
        arguments_without_help(&command, "thinhook", &mut found);
        assert!(found.is_empty(), "arguments without help: {found:#?}");
    }

    #[test]
    fn the_help_check_sees_an_argument_without_help() {
        let command = clap::Command::new("t")
            .subcommand(clap::Command::new("sub").arg(clap::Arg::new("bare").long("bare")));
        let mut found = Vec::new();
        arguments_without_help(&command, "t", &mut found);
        assert_eq!(found, ["t sub: bare"]);
    }
}
