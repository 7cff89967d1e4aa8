//! The `thinhook` binary itself: configuration errors and graceful shutdown.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn thinhook() -> Command {
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
fn serve_stops_gracefully_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
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
