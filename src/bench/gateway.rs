//! The gateway under test, as an outside user runs it: a child process of
//! `--gateway-bin` on a scratch database, configured only through the
//! command line and `THINHOOK_*` variables that older binaries understand
//! too. Its CPU time and peak memory come from `/proc`.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use diesel::{Connection, PgConnection, RunQueryDsl};

use super::BenchDatabase;

/// How long a stopping gateway may take before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// The database the gateway runs on, made for this run and removed after it.
#[derive(Debug)]
pub struct ScratchDatabase {
    url: String,
    /// PostgreSQL: the admin URL and the name of the database to drop.
    postgres: Option<(String, String)>,
}

impl ScratchDatabase {
    /// A file in `dir`, or a fresh `thinhook_bench_<random>` database on the
    /// PostgreSQL server. Blocking.
    pub fn create(database: &BenchDatabase, dir: &Path) -> anyhow::Result<Self> {
        match database {
            BenchDatabase::Sqlite => Ok(Self {
                url: format!("sqlite://{}", dir.join("bench.sqlite3").display()),
                postgres: None,
            }),
            BenchDatabase::Postgres(admin_url) => {
                let mut random = [0_u8; 6];
                getrandom::fill(&mut random)
                    .map_err(|e| anyhow::anyhow!("no random source: {e}"))?;
                let name = format!(
                    "thinhook_bench_{}",
                    random
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect::<String>()
                );
                let mut conn = PgConnection::establish(admin_url)
                    .with_context(|| format!("cannot connect to {}", redact(admin_url)))?;
                diesel::sql_query(format!("CREATE DATABASE \"{name}\""))
                    .execute(&mut conn)
                    .with_context(|| format!("cannot create database {name}"))?;
                let mut url = url::Url::parse(admin_url).context("--database is not a URL")?;
                url.set_path(&name);
                Ok(Self {
                    url: url.to_string(),
                    postgres: Some((admin_url.clone(), name)),
                })
            }
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Drops the PostgreSQL database (FORCE ends connections a killed
    /// gateway may have left). Blocking; also done on drop.
    pub fn remove(mut self) -> anyhow::Result<()> {
        self.drop_postgres()
    }

    fn drop_postgres(&mut self) -> anyhow::Result<()> {
        let Some((admin_url, name)) = self.postgres.take() else {
            return Ok(());
        };
        let mut conn = PgConnection::establish(&admin_url)
            .with_context(|| format!("cannot connect to {} to drop {name}", redact(&admin_url)))?;
        diesel::sql_query(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .execute(&mut conn)
            .with_context(|| format!("cannot drop database {name}"))?;
        Ok(())
    }
}

impl Drop for ScratchDatabase {
    fn drop(&mut self) {
        if let Err(error) = self.drop_postgres() {
            eprintln!("thinhook bench: {error:#}");
        }
    }
}

/// A URL without its password, for messages.
fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("***"));
            }
            parsed.to_string()
        }
        Err(_) => "the --database URL".to_owned(),
    }
}

/// How to start the gateway binary: the same environment for every process
/// of one run (API, worker, `clients create`), so they share the database
/// and the secrets key.
#[derive(Debug)]
pub struct GatewayCommand {
    pub bin: PathBuf,
    dir: PathBuf,
    env: Vec<(String, String)>,
    pub log: PathBuf,
    pub base_url: String,
    /// Clock ticks per second of `/proc/<pid>/stat` times.
    ticks: f64,
}

/// Client credentials printed by `thinhook clients create`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub id: String,
    pub secret: String,
}

/// Whether `bin` is the running binary, so it has this build's settings.
fn is_this_binary(bin: &Path) -> bool {
    let canonical = |path: &Path| std::fs::canonicalize(path).ok();
    std::env::current_exe()
        .ok()
        .is_some_and(|exe| canonical(&exe).is_some() && canonical(&exe) == canonical(bin))
}

impl GatewayCommand {
    pub fn new(
        bin: PathBuf,
        dir: &Path,
        database_url: &str,
        log_level: &str,
        extra_env: &[(String, String)],
    ) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .context("no free port on 127.0.0.1")?
            .port();
        let mut env: Vec<(String, String)> = [
            ("THINHOOK_DATABASE_URL", database_url.to_owned()),
            ("THINHOOK_LISTEN", format!("127.0.0.1:{port}")),
            // The bench's receiver lives on loopback.
            ("THINHOOK_DELIVERY_ALLOW_CIDRS", "127.0.0.0/8".to_owned()),
            (
                "THINHOOK_SECRETS_KEY_FILE",
                dir.join("thinhook.key").display().to_string(),
            ),
            ("THINHOOK_LOG_LEVEL", log_level.to_owned()),
            // One token serves the whole run (--max-secs is at most a day).
            ("THINHOOK_AUTH_TOKEN_TTL_SECS", "86400".to_owned()),
        ]
        .into_iter()
        .map(|(key, value)| (key.to_owned(), value))
        .collect();
        if is_this_binary(&bin) {
            // One client drives the whole load, which the per-client limits
            // exist to stop; the limiter still runs, at a rate no run
            // reaches. (Older binaries have no such settings.)
            for (key, value) in [
                ("THINHOOK_LIMITS_API_PER_SECOND", "10000000"),
                ("THINHOOK_LIMITS_MAX_SUBSCRIPTIONS_PER_CLIENT", "1000"),
            ] {
                env.push((key.to_owned(), value.to_owned()));
            }
        }
        env.extend(extra_env.iter().cloned());
        Ok(Self {
            bin,
            dir: dir.to_owned(),
            env,
            log: dir.join("gateway.log"),
            base_url: format!("http://127.0.0.1:{port}"),
            ticks: clock_ticks(),
        })
    }

    /// The binary with exactly this run's settings: `THINHOOK_*` variables
    /// of the bench's own environment are not passed on.
    fn command(&self) -> Command {
        let mut command = Command::new(&self.bin);
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("THINHOOK_") {
                command.env_remove(name);
            }
        }
        command
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&self.dir)
            .stdin(Stdio::null());
        command
    }

    /// Starts `serve --role <role>`, its log appended to [`Self::log`].
    pub fn spawn(&self, role: &str) -> anyhow::Result<Gateway> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("cannot open {}", self.log.display()))?;
        let child = self
            .command()
            .args(["serve", "--role", role])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", self.bin.display()))?;
        Ok(Gateway {
            child,
            started: Instant::now(),
            ticks: self.ticks,
        })
    }

    /// Registers a client with `clients create`.
    pub async fn create_client(&self) -> anyhow::Result<Credentials> {
        let mut command = self.command();
        command.args(["clients", "create", "--name", "thinhook bench"]);
        let output = tokio::task::spawn_blocking(move || command.output())
            .await
            .context("clients create task failed")?
            .context("cannot run `clients create`")?;
        anyhow::ensure!(
            output.status.success(),
            "`clients create` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
        parse_credentials(&String::from_utf8_lossy(&output.stdout))
    }

    /// The last lines of the gateway's log, for a failed run.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// Reads `client_id:` and `client_secret:` from `clients create` output.
pub fn parse_credentials(stdout: &str) -> anyhow::Result<Credentials> {
    let field = |name: &str| {
        stdout
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .map(|value| value.trim().to_owned())
            .filter(|value| !value.is_empty())
            .with_context(|| format!("`clients create` printed no `{name}` line: {stdout:?}"))
    };
    Ok(Credentials {
        id: field("client_id:")?,
        secret: field("client_secret:")?,
    })
}

/// A running gateway process. Dropping it stops the process (SIGTERM, then
/// SIGKILL), so no error path leaves one behind.
#[derive(Debug)]
pub struct Gateway {
    child: Child,
    pub started: Instant,
    ticks: f64,
}

/// What the process has used so far.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    pub cpu_secs: f64,
    pub peak_rss_mb: f64,
}

impl Gateway {
    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits (bounded) until `GET /readyz` answers 200.
    pub async fn wait_ready(
        &mut self,
        http: &reqwest::Client,
        base_url: &str,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let url = format!("{base_url}/readyz");
        let until = Instant::now() + timeout;
        while Instant::now() < until {
            if let Ok(Some(status)) = self.child.try_wait() {
                anyhow::bail!("the gateway exited during start-up ({status})");
            }
            if let Ok(response) = http.get(&url).send().await
                && response.status().is_success()
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::bail!("the gateway was not ready within {timeout:?}")
    }

    /// CPU seconds (user + system) and peak resident memory, from `/proc`.
    pub fn usage(&self) -> anyhow::Result<Usage> {
        let pid = self.child.id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("cannot read /proc/{pid}/stat"))?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("cannot read /proc/{pid}/status"))?;
        Ok(Usage {
            cpu_secs: parse_cpu_ticks(&stat).context("unexpected /proc/<pid>/stat")? as f64
                / self.ticks,
            peak_rss_mb: parse_vm_hwm_kb(&status).context("no VmHWM in /proc/<pid>/status")? as f64
                / 1024.0,
        })
    }

    /// SIGTERM, then waits (bounded) for the process to exit; kills it if it
    /// does not.
    pub async fn stop(&mut self) -> anyhow::Result<ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        terminate(&self.child);
        let until = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < until {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.child.kill()?;
        self.child.wait()?;
        anyhow::bail!("the gateway did not stop within {STOP_TIMEOUT:?} of SIGTERM; killed")
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        terminate(&self.child);
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// SIGTERM through `kill(1)`: the crate has no `unsafe`, so no libc.
fn terminate(child: &Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// `getconf CLK_TCK`, or the usual 100.
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|output| String::from_utf8(output.stdout).ok())
        .and_then(|text| text.trim().parse::<f64>().ok())
        .filter(|ticks| *ticks > 0.0)
        .unwrap_or(100.0)
}

/// `utime + stime` (fields 14 and 15) of `/proc/<pid>/stat`. The command
/// name (field 2) may hold spaces and parentheses, so fields are counted
/// from the last `)`.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// `VmHWM` (peak resident set) of `/proc/<pid>/status`, in kB.
fn parse_vm_hwm_kb(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_read_from_clients_create_output() {
        let stdout =
            "client_id:     cli_01kb2x\nclient_secret: thcs_s3cr3t\nscopes:        messages:read\n";
        assert_eq!(
            parse_credentials(stdout).unwrap(),
            Credentials {
                id: "cli_01kb2x".into(),
                secret: "thcs_s3cr3t".into()
            }
        );
        assert!(parse_credentials("client_id:     cli_01kb2x\n").is_err());
        assert!(parse_credentials("").is_err());
    }

    #[test]
    fn cpu_ticks_are_counted_after_the_command_name() {
        // Fields 14 and 15 are 250 and 50; the name holds a space and a `)`.
        let stat = "4242 (thin hook) x) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 50 0 0 20 0 9 0 123 456 789";
        assert_eq!(parse_cpu_ticks(stat), Some(300));
        assert_eq!(parse_cpu_ticks("garbage"), None);
    }

    #[test]
    fn peak_rss_is_vm_hwm() {
        let status =
            "Name:\tthinhook\nVmPeak:\t  900000 kB\nVmHWM:\t   51200 kB\nVmRSS:\t   40000 kB\n";
        assert_eq!(parse_vm_hwm_kb(status), Some(51200));
        assert_eq!(parse_vm_hwm_kb("Name:\tx\n"), None);
    }

    #[test]
    fn this_process_has_readable_usage() {
        let pid = std::process::id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        assert!(parse_cpu_ticks(&stat).is_some());
        assert!(parse_vm_hwm_kb(&status).unwrap() > 0);
    }
}
