//! The `thinhook` binary itself: configuration errors and graceful shutdown.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The binary with an empty environment but `PATH`.
pub fn thinhook() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_thinhook"));
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    command
}

#[test]
fn an_invalid_setting_stops_start_up_with_one_line_naming_it() {
    let output = thinhook()
        .arg("serve")
        .env("THINHOOK_DATABASE_POOL_SIZE", "lots")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("database.pool_size"), "{stderr}");
}

#[test]
fn a_misspelt_log_level_stops_start_up_instead_of_logging_nothing() {
    let output = thinhook()
        .arg("serve")
        .env("THINHOOK_LOG_LEVEL", "dbug")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("log.level") && stderr.contains("dbug"),
        "{stderr}"
    );
}

#[test]
fn the_start_up_log_names_what_the_gateway_runs_on_and_hints_at_the_first_client() {
    let dir = tempfile::tempdir().unwrap();
    let port = crate::listen::free_port();
    let mut child = thinhook()
        .arg("serve")
        .current_dir(dir.path())
        .env("THINHOOK_LISTEN", format!("127.0.0.1:{port}"))
        .env("THINHOOK_LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let lines = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut seen = Vec::new();
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let hint = line.contains("no API client exists yet");
            seen.push(line);
            if hint {
                break;
            }
        }
        seen
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while !lines.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    let lines = lines.join().unwrap();
    assert!(
        lines.iter().any(|l| l.contains("thinhook clients create")),
        "no hint to create the first client: {lines:?}"
    );
    let running = lines
        .iter()
        .find(|l| l.contains("thinhook is running"))
        .expect("a start-up line");
    let running: serde_json::Value = serde_json::from_str(running).unwrap();
    let fields = &running["fields"];
    assert_eq!(fields["role"], "all");
    assert_eq!(fields["database"], "sqlite://thinhook.sqlite3");
    assert_eq!(fields["secrets_key"], "thinhook.key");
    assert_eq!(
        fields["public_base_url"],
        format!("http://127.0.0.1:{port}")
    );
}

#[test]
fn serve_stops_gracefully_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let port = crate::listen::free_port();
    let mut child = thinhook()
        .arg("serve")
        .current_dir(dir.path())
        .env("THINHOOK_LISTEN", format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    // Bounded wait for the health check to answer.
    let started = Instant::now();
    let mut up = false;
    while started.elapsed() < Duration::from_secs(30) {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            up = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(up, "the server did not start");

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let stopping = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if stopping.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let status = status.expect("the server did not stop within 20 s of SIGTERM");
    assert!(status.success(), "{status}");
    assert!(dir.path().join("thinhook.sqlite3").exists());
}

#[test]
fn config_prints_the_effective_settings_without_passwords_or_keys() {
    let key = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
    let output = thinhook()
        .arg("config")
        .env(
            "THINHOOK_DATABASE_URL",
            "postgres://thinhook:hunter2@db.internal/thinhook",
        )
        .env("THINHOOK_SECRETS_ENCRYPTION_KEY", key)
        .env("THINHOOK_LIMITS_API_PER_SECOND", "50")
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let printed = String::from_utf8(output.stdout).unwrap();
    let config: toml::Table = printed.parse().unwrap();
    assert_eq!(
        config["database"]["url"].as_str(),
        Some("postgres://thinhook:***@db.internal/thinhook")
    );
    assert_eq!(config["secrets"]["encryption_key"].as_str(), Some("***"));
    assert_eq!(config["limits"]["api_per_second"].as_float(), Some(50.0));
    assert!(
        !printed.contains("hunter2") && !printed.contains(key),
        "{printed}"
    );
}

#[test]
fn keys_list_shows_which_key_signs() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let output = thinhook()
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(output.status.success(), "{args:?}: {output:?}");
        String::from_utf8(output.stdout).unwrap()
    };
    let statuses = || {
        let listed = run(&["keys", "list"]);
        listed
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().nth(1).unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    // `migrate` prepares what `serve` would: the secrets key and a first
    // signing key, so that processes started next do not race to make them.
    run(&["migrate"]);
    assert!(dir.path().join("thinhook.key").exists());
    assert_eq!(statuses(), ["signing"]);
    run(&["keys", "rotate"]);
    run(&["keys", "rotate"]);
    assert_eq!(statuses(), ["signing", "retired", "retired"]);
}

#[tokio::test]
async fn healthcheck_asks_the_gateways_readyz() {
    let app = crate::helpers::spawn_app(crate::helpers::Backend::Sqlite).await;
    let check = |listen: String| async move {
        tokio::task::spawn_blocking(move || {
            thinhook()
                .arg("healthcheck")
                .env_clear()
                .env("THINHOOK_LISTEN", listen)
                .output()
                .unwrap()
        })
        .await
        .unwrap()
    };
    let ready = check(app.address.trim_start_matches("http://").to_owned()).await;
    assert!(ready.status.success(), "{ready:?}");
    // Nothing listens on the port of a socket just closed.
    let port = crate::listen::free_port();
    let down = check(format!("0.0.0.0:{port}")).await;
    assert_eq!(down.status.code(), Some(1), "{down:?}");
    let stderr = String::from_utf8(down.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&format!("http://127.0.0.1:{port}/readyz")),
        "{stderr}"
    );
}

#[test]
fn a_failing_command_says_why_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let migrated = thinhook()
        .arg("migrate")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(migrated.status.success(), "{migrated:?}");
    let output = thinhook()
        .args(["clients", "revoke", "cli_nope"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("cli_nope")).collect();
    assert_eq!(
        errors,
        ["thinhook: no active client `cli_nope`"],
        "{stderr}"
    );
}
