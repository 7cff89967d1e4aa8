//! The operator's commands, run as the binary on a test app's database:
//! `deliveries list|retry|replay` across clients, the line that names the
//! database a command used, and the refusals of a database that is missing,
//! empty, behind, or on a PostgreSQL server that is not there.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use thinhook::startup::Role;

use crate::helpers::{Backend, TestApp, postgres_url, spawn_app, spawn_app_with};
use crate::lifecycle::thinhook;
use crate::listen::{Running, free_port};
use crate::receiver::{Receiver, Reply};
use crate::webhooks::{deliveries_of, id, subscribe};
use thinhook::domain::WorkspaceId;

/// What a command printed, and how it ended.
#[derive(Debug)]
struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Ran {
    fn ok(self) -> Self {
        assert_eq!(self.code, Some(0), "{self:#?}");
        self
    }

    fn failed(self) -> Self {
        assert_eq!(self.code, Some(1), "{self:#?}");
        self
    }

    /// The table's rows: stdout without its header.
    fn rows(&self) -> Vec<&str> {
        self.stdout.lines().skip(1).collect()
    }

    /// The one line a failed command prints (after the line that names
    /// the database, when it got that far).
    fn error_line(&self) -> &str {
        let lines: Vec<&str> = self
            .stderr
            .lines()
            .filter(|line| !line.starts_with("database: "))
            .collect();
        assert_eq!(lines.len(), 1, "not one line: {self:#?}");
        lines[0]
    }
}

/// `thinhook ARGS` in `dir` with `env`, off the async runtime.
async fn run_in(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Ran {
    let mut command = thinhook();
    command
        .args(args)
        .current_dir(dir)
        // A refusal that waited for the pool instead would take a minute.
        .env("THINHOOK_DATABASE_ACQUIRE_TIMEOUT_SECS", "60")
        .env("THINHOOK_LISTEN", "127.0.0.1:0")
        .envs(env.iter().copied());
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .unwrap();
    Ran {
        code: output.status.code(),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

/// `thinhook ARGS` on the database at `url`.
async fn run_on(url: &str, dir: &Path, args: &[&str]) -> Ran {
    run_in(dir, &[("THINHOOK_DATABASE_URL", url)], args).await
}

/// `thinhook ARGS` on the app's database, with its secrets key.
async fn run(app: &TestApp, args: &[&str]) -> Ran {
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("THINHOOK_DATABASE_URL", app.settings.database.url.as_str()),
        (
            "THINHOOK_SECRETS_ENCRYPTION_KEY",
            app.settings.secrets.encryption_key.as_str(),
        ),
    ];
    run_in(dir.path(), &env, args).await
}

fn rfc3339(at: time::OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

/// The cursor `deliveries list` printed for the next page, if any.
fn next_cursor(ran: &Ran) -> Option<String> {
    ran.stderr
        .lines()
        .find_map(|line| line.split("--after ").nth(1))
        .map(|rest| rest.split_whitespace().next().unwrap().to_owned())
}

backend_tests_with_backend! {
    async fn the_operator_lists_retries_and_replays_the_deliveries_of_every_client(backend: Backend) {
        let mut app = spawn_app_with(backend, Role::Api, |s| s.delivery.retry_schedule_secs = vec![0]).await;
        let since = rfc3339(app.clock_now());
        let (failing, healthy) = (Receiver::start().await, Receiver::start().await);
        failing.script((0..3).map(|_| Reply::status(500)));
        let message = id(&app.create_message("m").await);
        let (broken, _) = subscribe(&app, &failing.url("/"), &["comment.created"], None).await;
        let other = app.register_client("other", thinhook::auth::Scopes::all()).await;
        let response = app.client.post(app.url("/subscriptions")).bearer_auth(&other.token)
            .json(&json!({"url": healthy.url("/"), "event_types": ["comment.created"], "message_id": message}))
            .send().await.unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        let theirs = id(&response.json::<Value>().await.unwrap());
        for n in 0..3 {
            app.create_comment(&message, &format!("c{n}")).await;
        }
        assert_eq!(app.dispatch_all_pending().await, 6);

        // Every client's, with the database named on stderr.
        let all = run(&app, &["deliveries", "list"]).await.ok();
        assert_eq!(all.rows().len(), 6, "{all:#?}");
        assert!(all.stderr.starts_with("database: "), "{all:#?}");
        assert_eq!(next_cursor(&all), None);
        let failed = run(&app, &["deliveries", "list", "--status", "failed"]).await.ok();
        assert_eq!(failed.rows().len(), 3, "{failed:#?}");
        assert!(failed.rows().iter().all(|row| row.contains(&broken) && row.ends_with("500")), "{failed:#?}");
        let of_other = run(&app, &["deliveries", "list", "--client", &other.id]).await.ok();
        assert_eq!(of_other.rows().len(), 3, "{of_other:#?}");
        assert!(of_other.rows().iter().all(|row| row.contains(&theirs) && row.contains("delivered")), "{of_other:#?}");
        let later = rfc3339(app.clock_now() + Duration::from_secs(3600));
        assert!(run(&app, &["deliveries", "list", "--since", &later]).await.ok().rows().is_empty());
        let in_default = run(&app, &["deliveries", "list", "--workspace", WorkspaceId::DEFAULT]).await.ok();
        assert_eq!(in_default.rows().len(), 6, "{in_default:#?}");
        let nowhere = run(&app, &["deliveries", "list", "--workspace", "wsp_00000000000000000000000009"]).await.failed();
        assert!(nowhere.error_line().contains("no workspace"), "{nowhere:#?}");

        // Paged: each delivery once.
        let first = run(&app, &["deliveries", "list", "--limit", "4"]).await.ok();
        let cursor = next_cursor(&first).expect("a cursor for the next page");
        let second = run(&app, &["deliveries", "list", "--limit", "4", "--after", &cursor]).await.ok();
        assert_eq!((first.rows().len(), second.rows().len()), (4, 2));
        assert_eq!(next_cursor(&second), None, "{second:#?}");
        let ids: BTreeSet<&str> = first.rows().into_iter().chain(second.rows())
            .map(|row| row.split_whitespace().next().unwrap())
            .collect();
        assert_eq!(ids.len(), 6);

        // An id that names nothing is an error, not an empty list.
        let nobody = "sub_01kb0000000000000000000000";
        let refused = run(&app, &["deliveries", "list", "--subscription", nobody]).await.failed();
        assert_eq!(refused.error_line(), format!("thinhook: no subscription `{nobody}`"));

        // Retry one failed delivery: queued once, then refused while queued.
        let one = failed.rows()[0].split_whitespace().next().unwrap().to_owned();
        let retried = run(&app, &["deliveries", "retry", &one]).await.ok();
        assert!(retried.stdout.starts_with(&format!("queued {one} ")), "{retried:#?}");
        assert!(retried.stdout.contains("it was failed after 1 attempt, last response: 500"), "{retried:#?}");
        let again = run(&app, &["deliveries", "retry", &one]).await.failed();
        assert!(again.error_line().contains("is already queued for its next attempt"), "{again:#?}");
        // The command queued it for its own (the system's) now, ahead of the app's clock.
        app.advance(Duration::from_secs(60)).await;
        assert_eq!(app.dispatch_all_pending().await, 1);
        assert_eq!(failing.received().len(), 4, "3 attempts, then the retry");

        // Replay the other two failed ones; a second replay queues nothing.
        let replay = ["deliveries", "replay", "--subscription", &broken, "--since", &since];
        let replayed = run(&app, &replay).await.ok();
        assert_eq!(replayed.stdout.trim(), format!("requeued 2 failed deliveries of {broken} created since {}Z", &since[..19]));
        assert!(run(&app, &replay).await.ok().stdout.starts_with("requeued 0 "));
        app.advance(Duration::from_secs(60)).await;
        assert_eq!(app.dispatch_all_pending().await, 2);
        let statuses: Vec<String> = deliveries_of(&app, &broken).await.iter().map(|d| d["status"].as_str().unwrap().to_owned()).collect();
        assert_eq!(statuses, ["delivered"; 3]);
        assert!(run(&app, &["deliveries", "list", "--status", "failed"]).await.ok().rows().is_empty());
        let everything = run(&app, &[&replay[..], &["--include", "all"]].concat()).await.ok();
        assert!(everything.stdout.starts_with("requeued 3 finished deliveries"), "{everything:#?}");
    }

    async fn the_operator_makes_workspaces_and_clients_in_them(backend: Backend) {
        let app = spawn_app(backend).await;
        let created = run(&app, &["workspaces", "create", "--name", "acme"]).await.ok();
        let workspace = created.stdout.split("workspace_id:").nth(1).unwrap().split_whitespace().next().unwrap().to_owned();
        assert!(workspace.starts_with("wsp_"), "{created:#?}");
        let listed = run(&app, &["workspaces", "list"]).await.ok();
        let rows = listed.rows();
        assert_eq!(rows.len(), 2, "default and acme: {listed:#?}");
        assert!(rows.iter().any(|row| row.contains(&workspace) && row.ends_with("acme")));
        assert!(rows.iter().any(|row| row.contains(WorkspaceId::DEFAULT) && row.ends_with("default")));
        let again = run(&app, &["workspaces", "create", "--name", "acme"]).await.failed();
        assert!(again.error_line().contains("already named `acme`"), "{again:#?}");
        run(&app, &["workspaces", "update", &workspace, "--max-subscriptions", "5", "--api-per-second", "10", "--api-burst", "20", "--retention-days", "7"]).await.ok();
        let row = |ran: &Ran| ran.rows().iter().find(|row| row.contains(&workspace)).unwrap().split_whitespace().map(str::to_owned).collect::<Vec<_>>();
        let listed = run(&app, &["workspaces", "list"]).await.ok();
        assert_eq!(row(&listed)[2..], ["5", "10", "20", "7", "acme"], "{listed:#?}");
        run(&app, &["workspaces", "update", &workspace, "--max-subscriptions", "default"]).await.ok();
        let listed = run(&app, &["workspaces", "list"]).await.ok();
        assert_eq!(row(&listed)[2..], ["default", "10", "20", "7", "acme"], "{listed:#?}");
        let zero = run(&app, &["workspaces", "update", &workspace, "--retention-days", "0"]).await.failed();
        assert!(zero.error_line().contains("at least 1"), "{zero:#?}");
        let bad = run(&app, &["workspaces", "update", &workspace, "--api-burst", "lots"]).await;
        assert_eq!(bad.code, Some(2), "{bad:#?}");
        let missing = run(&app, &["workspaces", "update", "wsp_00000000000000000000000009", "--api-burst", "1"]).await.failed();
        assert!(missing.error_line().contains("no workspace"), "{missing:#?}");

        let client = run(&app, &["clients", "create", "--name", "acme-bot", "--workspace", &workspace]).await.ok();
        assert!(client.stdout.contains(&format!("workspace:     {workspace}")), "{client:#?}");
        let client_id = client.stdout.split("client_id:").nth(1).unwrap().split_whitespace().next().unwrap().to_owned();
        let secret = client.stdout.split("client_secret:").nth(1).unwrap().split_whitespace().next().unwrap().to_owned();
        let clients = run(&app, &["clients", "list"]).await.ok();
        assert!(clients.rows().iter().any(|row| row.starts_with(&client_id) && row.contains(&workspace)), "{clients:#?}");
        let default = run(&app, &["clients", "create", "--name", "plain"]).await.ok();
        assert!(default.stdout.contains(WorkspaceId::DEFAULT), "{default:#?}");
        for bad in ["wsp_00000000000000000000000001", "acme"] {
            let refused = run(&app, &["clients", "create", "--name", "x", "--workspace", bad]).await.failed();
            assert!(refused.error_line().contains("workspace"), "{refused:#?}");
        }

        // The client's tokens act in its workspace: the default one's data is not there.
        let token = app.token_for(&client_id, &secret, None).await;
        let message = id(&app.create_message("in default").await);
        assert_eq!(app.get_with_token(&format!("/messages/{message}"), &token).await.status(), reqwest::StatusCode::NOT_FOUND);
    }

    async fn a_retry_from_the_command_line_reaches_a_running_gateway(backend: Backend) {
        let app = spawn_app_with(backend, Role::Api, |s| s.delivery.retry_schedule_secs = vec![0]).await;
        let receiver = Receiver::start().await;
        receiver.script([Reply::status(500)]);
        let message = id(&app.create_message("m").await);
        let (sub, _) = subscribe(&app, &receiver.url("/"), &["comment.created"], None).await;
        app.create_comment(&message, "c").await;
        assert_eq!(app.dispatch_all_pending().await, 1);
        let delivery = id(&deliveries_of(&app, &sub).await[0]);

        // A worker process, polling its queue every 50 ms.
        let mut worker = app.serve_process(&["--role", "worker"]).stderr(Stdio::piped()).spawn().unwrap();
        let log = BufReader::new(worker.stderr.take().unwrap());
        let _worker = Running(worker);
        let started = tokio::task::spawn_blocking(move || {
            log.lines().map_while(Result::ok).any(|line| line.contains("dispatcher started"))
        });
        assert!(tokio::time::timeout(Duration::from_secs(30), started).await.unwrap().unwrap(), "the worker did not start");

        run(&app, &["deliveries", "retry", &delivery]).await.ok();

        assert_eq!(receiver.wait_for(2).await, 2, "the running worker did not attempt the retried delivery");
        for _ in 0..200 {
            if deliveries_of(&app, &sub).await[0]["status"] == "delivered" {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the retried delivery was not recorded as delivered");
    }

    async fn a_command_names_its_database_and_refuses_one_that_is_behind_or_empty(backend: Backend) {
        let app = spawn_app(backend).await;
        let url = match backend {
            // With a password, to see it hidden.
            Backend::Postgres => {
                let mut url = url::Url::parse(&app.settings.database.url).unwrap();
                url.set_password(Some("hunter2")).unwrap();
                url.to_string()
            }
            Backend::Sqlite => app.settings.database.url.clone(),
        };
        let dir = tempfile::tempdir().unwrap();
        let listed = run_on(&url, dir.path(), &["clients", "list"]).await.ok();
        let named = listed.stderr.lines().next().unwrap();
        match backend {
            Backend::Postgres => {
                assert!(named.starts_with("database: postgres://postgres:***@"), "{listed:#?}");
                assert!(!listed.stderr.contains("hunter2"), "{listed:#?}");
            }
            Backend::Sqlite => assert_eq!(named, format!("database: {}", app.settings.database.url)),
        }

        let db = app.db.clone();
        let last = tokio::task::spawn_blocking(move || db.revert_last_migration().unwrap()).await.unwrap();
        let behind = run_on(&url, dir.path(), &["clients", "list"]).await.failed();
        let (_, next) = behind.error_line().split_once("is 1 migration behind this thinhook (next: ").expect("behind");
        let (name, rest) = next.split_once(')').unwrap();
        assert_eq!(name.replace('-', "").split('_').next(), Some(last.as_str()), "{behind:#?}");
        assert_eq!(rest, ": run `thinhook migrate` first");

        let db = app.db.clone();
        tokio::task::spawn_blocking(move || while db.revert_last_migration().is_ok() {}).await.unwrap();
        let empty = run_on(&url, dir.path(), &["deliveries", "list"]).await.failed();
        assert!(
            empty.error_line().ends_with("has no thinhook tables: run `thinhook migrate` (or start `thinhook serve`) first"),
            "{empty:#?}"
        );
        // `migrate` is the way out.
        run_on(&url, dir.path(), &["migrate"]).await.ok();
        run_on(&url, dir.path(), &["clients", "list"]).await.ok();
    }
}

#[tokio::test]
async fn a_command_on_a_missing_sqlite_file_says_so_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().canonicalize().unwrap().join("thinhook.sqlite3");
    let url = "sqlite://thinhook.sqlite3";
    for args in [
        &["clients", "list"][..],
        &["clients", "create", "--name", "n"],
        &["keys", "rotate"],
        &["deliveries", "list"],
    ] {
        let refused = run_on(url, dir.path(), args).await.failed();
        assert_eq!(
            refused.error_line(),
            format!(
                "thinhook: no database at {}: run `thinhook migrate` (or start `thinhook serve`) first",
                file.display()
            ),
            "{args:?}"
        );
    }
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "a file was created"
    );

    // An empty file is no database either, and is left as it was.
    std::fs::write(&file, b"").unwrap();
    let empty = run_on(url, dir.path(), &["clients", "list"]).await.failed();
    assert_eq!(
        empty.error_line(),
        format!(
            "thinhook: the database at {} has no thinhook tables: run `thinhook migrate` (or start `thinhook serve`) first",
            file.display()
        )
    );
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 0);

    // `migrate` also logs the keys it makes on a new database.
    let migrated = run_on(url, dir.path(), &["migrate"]).await.ok();
    assert_eq!(
        migrated.stderr.lines().last(),
        Some(format!("database: sqlite://{}", file.display()).as_str())
    );
    run_on(url, dir.path(), &["clients", "create", "--name", "n"])
        .await
        .ok();
}

#[tokio::test]
async fn an_unreachable_postgres_server_is_named_at_once() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("postgres://postgres@127.0.0.1:{port}/thinhook");
    for args in [&["migrate"][..], &["clients", "list"]] {
        let started = Instant::now();
        let refused = run_on(&url, dir.path(), args).await.failed();
        assert_eq!(
            refused.error_line(),
            format!(
                "thinhook: cannot reach PostgreSQL at 127.0.0.1:{port}: connection refused \
                 (is the server running and accepting TCP/IP connections?)"
            )
        );
        // The pool would have waited its 60 s acquire timeout.
        assert!(started.elapsed() < Duration::from_secs(30), "{args:?}");
    }
}

#[tokio::test]
#[cfg_attr(
    not(postgres_tests),
    ignore = "set TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
async fn a_missing_postgres_database_is_named_at_once_with_the_command_that_creates_it() {
    let mut url = url::Url::parse(&postgres_url()).unwrap();
    let name = format!(
        "thinhook_missing_{}",
        &thinhook::domain::RequestId::generate().as_str()[4..]
    );
    url.set_path(&name);
    let place = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap_or(5432));
    let user = match url.username() {
        "" => String::new(),
        user => format!(" -U {user}"),
    };
    let expected = format!(
        "database `{name}` does not exist on {place}; create it with `createdb -h {} -p {}{user} {name}`",
        url.host_str().unwrap(),
        url.port().unwrap_or(5432)
    );
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let refused = run_on(url.as_str(), dir.path(), &["clients", "list"])
        .await
        .failed();
    assert_eq!(refused.error_line(), format!("thinhook: {expected}"));
    assert!(started.elapsed() < Duration::from_secs(30));

    // `serve` says the same, in its log.
    let served = run_on(url.as_str(), dir.path(), &["serve"]).await.failed();
    assert!(served.stderr.contains(&expected), "{served:#?}");
}

/// A command on PostgreSQL over TLS (libpq's default `sslmode=prefer`)
/// used to die with SIGSEGV at exit about one run in ten: the pool was
/// still opening a spare connection (OpenSSL inside libpq) on one of its
/// threads while the process ran OpenSSL's exit-time clean-up.
#[tokio::test]
#[cfg_attr(
    not(postgres_tests),
    ignore = "set TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
async fn commands_on_postgres_exit_cleanly_with_tls_negotiated() {
    let app = spawn_app(Backend::Postgres).await;
    let mut url = url::Url::parse(&app.settings.database.url).unwrap();
    let kept: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(key, _)| key != "sslmode")
        .map(|(key, value)| (key.into_owned(), value.into_owned()))
        .collect();
    url.query_pairs_mut().clear().extend_pairs(kept);
    let url = url.as_str().trim_end_matches('?').to_owned();
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("THINHOOK_DATABASE_URL", url.as_str()),
        (
            "THINHOOK_SECRETS_ENCRYPTION_KEY",
            app.settings.secrets.encryption_key.as_str(),
        ),
    ];
    // Bounded: 60 short runs, enough to see a one-in-ten crash.
    for _ in 0..60 {
        run_in(dir.path(), &env, &["keys", "list"]).await.ok();
    }
}
