//! `thinhook bench` end to end through the real binary: a tiny run must
//! deliver every accepted event once to every subscription. Correctness
//! only; the figures are the bench's business, not the tests'.

use std::process::Command;

use serde_json::Value;

use crate::helpers::postgres_url;

/// Runs `thinhook bench` with `args` and a JSON file; returns its report.
fn bench(database: &str, args: &[&str]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.jsonl");
    let output = Command::new(env!("CARGO_BIN_EXE_thinhook"))
        .args(["bench", "--database", database, "--label", "test"])
        .args([
            "--settle-ms",
            "300",
            "--drain-timeout",
            "60",
            "--max-secs",
            "120",
        ])
        .args(args)
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "bench failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    let printed: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let appended: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(printed, appended);
    printed
}

fn assert_every_event_delivered_once(report: &Value, events: u64, fan_out: u64) {
    assert_eq!(report["label"], "test", "{report}");
    assert_eq!(report["accepted"], events, "{report}");
    assert_eq!(report["expected_deliveries"], events * fan_out, "{report}");
    assert_eq!(
        report["delivered"], report["expected_deliveries"],
        "{report}"
    );
    assert_eq!(report["duplicates"], 0, "{report}");
    assert_eq!(report["post_500"], 0, "{report}");
    assert_eq!(report["passed"], true, "{report}");
}

const NOTIFY_AND_FETCH: &[&str] = &[
    "--events",
    "200",
    "--fan-out",
    "2",
    "--concurrency",
    "4",
    "--fetch",
];

#[test]
fn bench_delivers_every_event_once_to_every_subscription_and_fetches_it_on_sqlite() {
    let report = bench("sqlite", NOTIFY_AND_FETCH);
    assert_every_event_delivered_once(&report, 200, 2);
    assert_eq!(report["backend"], "sqlite");
    assert_eq!(report["fetch_failures"], 0, "{report}");
}

#[test]
#[cfg_attr(
    not(postgres_tests),
    ignore = "set TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
fn bench_delivers_every_event_once_to_every_subscription_and_fetches_it_on_postgres() {
    let report = bench(&postgres_url(), NOTIFY_AND_FETCH);
    assert_every_event_delivered_once(&report, 200, 2);
    assert_eq!(report["backend"], "postgres");
    assert_eq!(report["fetch_failures"], 0, "{report}");
}

#[test]
fn bench_backlog_is_drained_by_a_worker_started_afterwards() {
    let report = bench(
        "sqlite",
        &[
            "--scenario",
            "backlog",
            "--events",
            "100",
            "--fan-out",
            "2",
            "--rate",
            "500",
        ],
    );
    assert_every_event_delivered_once(&report, 100, 2);
    assert_eq!(report["scenario"], "backlog");
}
