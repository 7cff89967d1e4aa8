//! The `thinhook` binary: parse the command line, load settings, start
//! logging, dispatch. Everything else lives in the library.

use std::process::ExitCode;

use clap::Parser;
use thinhook::cli::{self, Cli};
use thinhook::config::Settings;
use thinhook::telemetry;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Variables that are not valid UTF-8 cannot be settings; skip them, and
    // those `listen` reads itself (its secrets), which are no settings either.
    let env = std::env::vars_os()
        .filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?)))
        .filter(|(name, _)| !thinhook::listen::ENV_VARS.contains(&name.as_str()));
    let settings = match Settings::load(cli.config.as_deref(), env) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("thinhook: {error}");
            return ExitCode::from(2);
        }
    };
    let telemetry = match telemetry::init(&settings.log, &settings.tracing) {
        Ok(telemetry) => telemetry,
        Err(error) => {
            eprintln!("thinhook: cannot start logging: {error:#}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("thinhook: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    // A server's failure belongs in its log (JSON when configured); a
    // command's in one plain line. Never both.
    let serving = matches!(cli.command, cli::Command::Serve { .. });
    let code = match runtime.block_on(cli::run(cli.command, settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if serving => {
            tracing::error!(error = format!("{error:#}"), "thinhook failed");
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("thinhook: {error:#}");
            ExitCode::FAILURE
        }
    };
    telemetry.shutdown();
    code
}
