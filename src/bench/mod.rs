//! `thinhook bench`: measures a gateway the way an outside user would. It
//! starts `--gateway-bin` as a child process on a scratch database, talks
//! to it only over HTTP on 127.0.0.1, posts comments from keep-alive
//! clients (`driver`), receives the webhooks on its own fast receiver
//! (`receiver`), reads the gateway's CPU time and peak memory from `/proc`
//! (`gateway`), and reports throughput, latency and correctness (`report`). Only settings that older binaries also have are used, so
//! one engine can be compared with another.

mod driver;
mod gateway;
mod receiver;
mod report;

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::value_parser;

use self::driver::{Api, Load};
use self::gateway::{Gateway, GatewayCommand, ScratchDatabase, Usage};
use self::receiver::{Fetcher, Receiver};
use self::report::{Latency, Report};

/// The longest wait for a starting gateway to answer `/readyz`.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Time beyond `--max-secs` for requests in flight and the gateway's stop.
const TEARDOWN: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// The thinhook binary to measure [default: this one, with its
    /// per-client rate limit raised out of reach of one client's load].
    #[arg(long, value_name = "PATH")]
    pub gateway_bin: Option<PathBuf>,
    /// `sqlite` (a fresh file) or a PostgreSQL admin URL, on which a fresh
    /// `thinhook_bench_<random>` database is created and dropped after.
    /// Repeatable: the same loads run on each database in turn.
    #[arg(long, default_value = "sqlite", value_parser = BenchDatabase::parse)]
    pub database: Vec<BenchDatabase>,
    /// Instead of one load, run the loads of BENCHMARKS.md (fan-out 1 and
    /// 10 saturated, paced 600/s at fan-out 1 and 200/s at fan-out 10 with
    /// notify+fetch, a 100,000-event backlog) and end with a summary.
    #[arg(long, conflicts_with_all = ["scenario", "events", "fan_out", "rate", "fetch"])]
    pub suite: bool,
    /// `live`: `serve --role all` under load. `backlog`: post everything to
    /// `serve --role api`, stop it, then time a `serve --role worker` draining it.
    #[arg(long, value_enum, default_value = "live")]
    pub scenario: Scenario,
    /// Comments to post (one event each).
    #[arg(long, default_value_t = 20_000, value_parser = value_parser!(u64).range(1..))]
    pub events: u64,
    /// Subscriptions to the message: deliveries per event.
    #[arg(long, default_value_t = 1, value_parser = value_parser!(u32).range(1..=1000))]
    pub fan_out: u32,
    /// Keep-alive clients posting at once.
    #[arg(long, default_value_t = 32, value_parser = value_parser!(u32).range(1..=4096))]
    pub concurrency: u32,
    /// Events per second on an open-loop schedule (latency counts from each
    /// event's slot); without it, as fast as the clients can.
    #[arg(long, value_parser = parse_rate)]
    pub rate: Option<f64>,
    /// Notify+fetch: the receiver GETs each comment before answering.
    #[arg(long)]
    pub fetch: bool,
    /// After the last POST (backlog: after the worker starts), how long to
    /// wait for every delivery, in seconds.
    #[arg(long, default_value_t = 120, value_name = "SECS")]
    pub drain_timeout: u64,
    /// Then how long to wait for late duplicates, in milliseconds.
    #[arg(long, default_value_t = 2000, value_name = "MS")]
    pub settle_ms: u64,
    /// Cap on the whole run, in seconds.
    #[arg(long, default_value_t = 600, value_name = "SECS",
          value_parser = value_parser!(u64).range(1..=86_400))]
    pub max_secs: u64,
    /// A name for this run in the report.
    #[arg(long)]
    pub label: Option<String>,
    /// Also append the JSON line to this file.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
    /// `THINHOOK_LOG_LEVEL` of the gateway.
    #[arg(long, default_value = "warn", value_name = "LEVEL")]
    pub gateway_log_level: String,
    /// Where the gateway's log goes (appended); by default a scratch file
    /// removed after the run.
    #[arg(long, value_name = "PATH")]
    pub gateway_log: Option<PathBuf>,
    /// Another setting for the gateway (repeatable), e.g.
    /// `THINHOOK_DATABASE_POOL_SIZE=16`.
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_env)]
    pub gateway_env: Vec<(String, String)>,
}

/// Where the gateway keeps its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BenchDatabase {
    Sqlite,
    /// An admin URL on the server.
    Postgres(String),
}

impl BenchDatabase {
    fn parse(value: &str) -> Result<Self, String> {
        if value == "sqlite" {
            Ok(Self::Sqlite)
        } else if value.starts_with("postgres://") || value.starts_with("postgresql://") {
            Ok(Self::Postgres(value.to_owned()))
        } else {
            Err("expected `sqlite` or a postgres:// URL".to_owned())
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres(_) => "postgres",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    Live,
    Backlog,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Self::Live => "live",
            Self::Backlog => "backlog",
        }
    }
}

fn parse_rate(value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        _ => Err("expected a positive number of events per second".to_owned()),
    }
}

fn parse_env(value: &str) -> Result<(String, String), String> {
    match value.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err("expected KEY=VALUE".to_owned()),
    }
}

/// One load of `--suite`.
struct SuiteLoad {
    label: &'static str,
    scenario: Scenario,
    events: u64,
    fan_out: u32,
    rate: Option<f64>,
    fetch: bool,
}

/// The loads BENCHMARKS.md reports, each long enough to reach a steady state.
const SUITE: [SuiteLoad; 5] = [
    SuiteLoad {
        label: "fan-out 1, saturated",
        scenario: Scenario::Live,
        events: 20_000,
        fan_out: 1,
        rate: None,
        fetch: false,
    },
    SuiteLoad {
        label: "fan-out 10, saturated",
        scenario: Scenario::Live,
        events: 6_000,
        fan_out: 10,
        rate: None,
        fetch: false,
    },
    SuiteLoad {
        label: "fan-out 1, 600/s, fetch",
        scenario: Scenario::Live,
        events: 18_000,
        fan_out: 1,
        rate: Some(600.0),
        fetch: true,
    },
    SuiteLoad {
        label: "fan-out 10, 200/s, fetch",
        scenario: Scenario::Live,
        events: 6_000,
        fan_out: 10,
        rate: Some(200.0),
        fetch: true,
    },
    SuiteLoad {
        label: "backlog 100k",
        scenario: Scenario::Backlog,
        events: 100_000,
        fan_out: 1,
        rate: None,
        fetch: false,
    },
];

/// Runs the load (or with `--suite` every load of the suite) on each
/// database, prints each report, and fails unless every run delivered
/// every accepted event to every subscription exactly once without a 500.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let loads: Vec<BenchArgs> = if args.suite {
        SUITE
            .iter()
            .map(|load| BenchArgs {
                scenario: load.scenario,
                events: load.events,
                fan_out: load.fan_out,
                rate: load.rate,
                fetch: load.fetch,
                label: Some(match &args.label {
                    Some(label) => format!("{label}: {}", load.label),
                    None => load.label.to_owned(),
                }),
                ..args.clone()
            })
            .collect()
    } else {
        vec![args.clone()]
    };
    let mut reports = Vec::new();
    for database in &args.database {
        for load in &loads {
            reports.push(run_one(load, database).await?);
        }
    }
    if reports.len() > 1 {
        print!("{}", report::summary(&reports));
    }
    let failed: Vec<String> = reports
        .iter()
        .filter(|report| !report.passed)
        .map(|report| {
            format!(
                "{} {}: {}",
                report.backend,
                report.label.as_deref().unwrap_or(report.scenario),
                report.failures.join("; ")
            )
        })
        .collect();
    anyhow::ensure!(
        failed.is_empty(),
        "the bench failed: {}",
        failed.join(" | ")
    );
    Ok(())
}

/// One load on one database: prints its report and returns it. The
/// gateway is stopped and the database removed however the run ends.
async fn run_one(args: &BenchArgs, database: &BenchDatabase) -> anyhow::Result<Report> {
    anyhow::ensure!(
        !(args.fetch && args.scenario == Scenario::Backlog),
        "--fetch needs the API, which the backlog scenario stops before the drain"
    );
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.max_secs);
    let bin = match &args.gateway_bin {
        Some(bin) => bin.clone(),
        None => std::env::current_exe().context("cannot find this binary")?,
    };
    let dir = tempfile::Builder::new()
        .prefix("thinhook-bench-")
        .tempdir()
        .context("cannot make a scratch directory")?;
    let backend = database.name();
    let database = {
        let (database, path) = (database.clone(), dir.path().to_owned());
        tokio::task::spawn_blocking(move || ScratchDatabase::create(&database, &path)).await??
    };
    let mut gateway = GatewayCommand::new(
        bin,
        dir.path(),
        database.url(),
        &args.gateway_log_level,
        &args.gateway_env,
    )?;
    if let Some(log) = &args.gateway_log {
        gateway.log.clone_from(log);
    }

    let measured = tokio::select! {
        measured = tokio::time::timeout_at(
            (deadline + TEARDOWN).into(),
            measure(args, backend, &gateway, started, deadline),
        ) => measured.unwrap_or_else(|_| Err(anyhow::anyhow!("the run overran --max-secs"))),
        () = crate::startup::shutdown_signal() => Err(anyhow::anyhow!("interrupted")),
    };
    // Every gateway process has stopped by now: `measure` has returned or
    // been dropped, and dropping a `Gateway` stops it.
    let removed = tokio::task::spawn_blocking(move || database.remove())
        .await
        .context("the database clean-up task failed")
        .and_then(|removed| removed);

    let report = match measured {
        Ok(report) => report,
        Err(error) => {
            print_log_tail(&gateway);
            removed?;
            return Err(error);
        }
    };
    print!("{}", report.table());
    println!("{}", report.json_line());
    if let Some(path) = &args.json {
        append_line(path, &report.json_line())?;
    }
    removed?;
    if !report.passed {
        print_log_tail(&gateway);
    }
    Ok(report)
}

fn print_log_tail(gateway: &GatewayCommand) {
    let tail = gateway.log_tail(20);
    if !tail.is_empty() {
        eprintln!("--- the last lines of the gateway's log:\n{tail}\n---");
    }
}

fn append_line(path: &std::path::Path, line: &str) -> anyhow::Result<()> {
    let mut file = std::fs::File::options()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    writeln!(file, "{line}").with_context(|| format!("cannot write {}", path.display()))
}

/// Sets up, loads, waits for the deliveries and reports.
async fn measure(
    args: &BenchArgs,
    backend: &'static str,
    gateway: &GatewayCommand,
    started: Instant,
    deadline: Instant,
) -> anyhow::Result<Report> {
    let backlog = args.scenario == Scenario::Backlog;
    let concurrency = args.concurrency as usize;
    let http = driver::http_client(concurrency)?;

    let mut serving = gateway.spawn(if backlog { "api" } else { "all" })?;
    let ready_within = READY_TIMEOUT.min(deadline.saturating_duration_since(Instant::now()));
    serving
        .wait_ready(&http, &gateway.base_url, ready_within)
        .await?;
    let credentials = gateway.create_client().await?;
    let api = Arc::new(Api::connect(http, &gateway.base_url, &credentials).await?);
    let fetcher = if args.fetch {
        Some(Fetcher {
            http: driver::http_client(concurrency)?,
            token: api.token().to_owned(),
        })
    } else {
        None
    };
    let receiver = Receiver::start(fetcher).await?;
    let message = api.create_message().await?;
    for i in 0..args.fan_out {
        api.subscribe(&message, &receiver.url(i)).await?;
    }

    eprintln!(
        "thinhook bench: {} ready at {}; posting {} events",
        args.scenario.name(),
        gateway.base_url,
        args.events
    );
    let before = serving.usage()?;
    let load = Load {
        events: args.events,
        concurrency,
        rate: args.rate,
        deadline,
    };
    let driven = driver::drive(api, &message, &load).await;
    let answers = report::answers(&driven.sends);
    let accepted = driven
        .sends
        .iter()
        .filter(|s| s.comment_id.is_some())
        .count() as u64;
    let expected = accepted * u64::from(args.fan_out);
    let first_post = driven.sends.iter().map(|s| s.intended).min();
    let last_post = driven.sends.iter().map(|s| s.completed).max();

    // The process whose deliveries, CPU and memory are measured, and when
    // its drain begins.
    let (mut measured, before, drain_from, mut clean_exit) = if backlog {
        let api_exit = serving.stop().await?;
        eprintln!("thinhook bench: API stopped ({api_exit}); starting a worker to drain");
        let worker = gateway.spawn("worker")?;
        let from = worker.started;
        (worker, Usage::default(), from, api_exit.success())
    } else {
        (
            serving,
            before,
            last_post.unwrap_or_else(Instant::now),
            true,
        )
    };
    eprintln!("thinhook bench: waiting for {expected} deliveries");
    let drain_until = deadline.min(drain_from + Duration::from_secs(args.drain_timeout));
    wait_for_deliveries(&receiver, &mut measured, expected, drain_until).await;
    let settle_until = deadline.min(Instant::now() + Duration::from_millis(args.settle_ms));
    tokio::time::sleep_until(settle_until.into()).await;

    let after = measured.usage().unwrap_or_default();
    match measured.stop().await {
        Ok(status) => clean_exit &= status.success(),
        Err(error) => {
            eprintln!("thinhook bench: {error:#}");
            clean_exit = false;
        }
    }
    let mut received = receiver.finish();
    if let Some(error) = &received.first_fetch_error {
        eprintln!("thinhook bench: a fetch failed: {error}");
    }
    let tally = report::tally(&driven.sends, &mut received.arrivals);
    let since = |from: Option<Instant>, to: Option<Instant>| match (from, to) {
        (Some(from), Some(to)) => to.saturating_duration_since(from),
        _ => Duration::ZERO,
    };
    let delivery_start = if backlog {
        Some(drain_from)
    } else {
        first_post
    };
    Ok(Report {
        label: args.label.clone(),
        gateway_bin: gateway.bin.display().to_string(),
        backend,
        scenario: args.scenario.name(),
        fetch: args.fetch,
        fan_out: args.fan_out,
        concurrency,
        events: args.events,
        rate: args.rate,
        sent: driven.sends.len() as u64,
        accepted,
        accepted_per_sec: report::per_sec(accepted, since(first_post, last_post)),
        post_status: answers.by_status,
        post_non_2xx: answers.non_2xx,
        post_500: answers.status_500,
        post_errors: answers.errors,
        expected_deliveries: expected,
        delivered: tally.delivered,
        duplicates: tally.duplicates,
        unexpected_deliveries: tally.unexpected,
        receiver_rejected: received.rejected,
        deliveries_per_sec: report::per_sec(
            tally.delivered,
            since(delivery_start, tally.last_delivery),
        ),
        drain_secs: secs(since(Some(drain_from), tally.last_delivery)),
        post_ms: Latency::of(
            driven
                .sends
                .iter()
                .filter(|s| s.comment_id.is_some())
                .map(|s| s.completed.saturating_duration_since(s.intended))
                .collect(),
        ),
        e2e_ms: Latency::of(tally.e2e),
        fetch_ms: Latency::of(tally.fetch),
        fetch_failures: tally.fetch_failures,
        gateway_cpu_secs: report::round(after.cpu_secs - before.cpu_secs, 2),
        gateway_peak_rss_mb: report::round(after.peak_rss_mb, 1),
        gateway_clean_exit: clean_exit,
        driver_max_lag_ms: driven
            .max_lag
            .map(|lag| report::round(lag.as_secs_f64() * 1e3, 3)),
        elapsed_secs: secs(started.elapsed()),
        passed: false,
        failures: Vec::new(),
    }
    .conclude())
}

/// Seconds to the millisecond.
fn secs(duration: Duration) -> f64 {
    report::round(duration.as_secs_f64(), 3)
}

/// Waits until `expected` unique deliveries arrived, the process died or
/// `until` passed.
async fn wait_for_deliveries(
    receiver: &Receiver,
    process: &mut Gateway,
    expected: u64,
    until: Instant,
) {
    while receiver.unique() < expected && Instant::now() < until && process.is_running() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_is_sqlite_or_a_postgres_url() {
        assert_eq!(BenchDatabase::parse("sqlite"), Ok(BenchDatabase::Sqlite));
        assert_eq!(
            BenchDatabase::parse("postgres://postgres@127.0.0.1:5432/postgres"),
            Ok(BenchDatabase::Postgres(
                "postgres://postgres@127.0.0.1:5432/postgres".into()
            ))
        );
        assert!(BenchDatabase::parse("mysql://x").is_err());
    }

    #[test]
    fn gateway_settings_and_rates_are_checked() {
        assert_eq!(parse_env("A=b=c"), Ok(("A".into(), "b=c".into())));
        assert!(parse_env("=x").is_err());
        assert!(parse_env("nothing").is_err());
        assert_eq!(parse_rate("600"), Ok(600.0));
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("NaN").is_err());
    }
}
