//! The command line: one binary, one subcommand per job.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::Settings;
use crate::db::Database;
use crate::startup::{Application, shutdown_signal};

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
    /// Run the gateway (applies pending migrations first).
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
}

pub async fn run(command: Command, settings: Settings) -> anyhow::Result<()> {
    match command {
        Command::Serve => serve(settings).await,
        Command::Migrate => migrate(settings).await,
    }
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let app = Application::build(&settings).await?;
    tracing::info!(
        address = %app.address(),
        public_base_url = app.public_base_url(),
        "thinhook is listening"
    );
    let handle = app.handle();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutdown requested; finishing requests in flight");
        handle.stop(true).await;
    });
    app.run_until_stopped()
        .await
        .context("HTTP server failed")?;
    tracing::info!("thinhook stopped");
    Ok(())
}

async fn migrate(settings: Settings) -> anyhow::Result<()> {
    let applied = tokio::task::spawn_blocking(move || {
        let db = Database::connect(&settings.database)?;
        db.migrate()
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
}
