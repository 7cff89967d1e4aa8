//! `thinhook listen` end to end: the gateway delivers to it, it verifies,
//! fetches the comment with a token, prints it and forwards the request.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::TestApp;
use crate::receiver::Receiver;

/// Kills the listener when the test ends, however it ends.
pub struct Running(pub Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Lines the listener prints, as they come.
fn lines_of(child: &mut Child) -> mpsc::Receiver<String> {
    let (send, lines) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if send.send(line).is_err() {
                return;
            }
        }
    });
    lines
}

/// Collects printed lines until one contains `needle` (bounded wait).
fn wait_for(lines: &mpsc::Receiver<String>, needle: &str) -> String {
    let mut seen = String::new();
    while let Ok(line) = lines.recv_timeout(Duration::from_secs(20)) {
        seen.push_str(&line);
        seen.push('\n');
        if line.contains(needle) {
            return seen;
        }
    }
    panic!("`{needle}` never printed; got:\n{seen}");
}

/// How `listen` is given its secrets.
#[derive(Debug, Clone, Copy)]
enum SecretsVia {
    Flags,
    Environment,
    Files,
    /// No webhook secret: a `v1a` subscription, verified with the keys the
    /// gateway publishes.
    PublishedKeys,
}

/// A running `thinhook listen`, the lines it prints, and its secret files.
struct Listening {
    lines: mpsc::Receiver<String>,
    port: u16,
    _child: Running,
    _files: tempfile::TempDir,
}

/// Subscribes a new `thinhook listen` to comments and starts it, its
/// secrets (the subscription's and the app user's) passed `via`.
async fn start_listen(app: &TestApp, via: SecretsVia, extra: &[&str]) -> Listening {
    let port = free_port();
    let scheme = match via {
        SecretsVia::PublishedKeys => "v1a",
        _ => "v1",
    };
    let created: Value = app
        .post_json("/subscriptions", &json!({"url": format!("http://127.0.0.1:{port}/"), "event_types": ["comment.created"], "signature_scheme": scheme}))
        .await
        .json()
        .await
        .unwrap();
    let secret = created["secret"].as_str().unwrap();
    let files = tempfile::tempdir().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_thinhook"));
    command
        .args(["listen", "--port", &port.to_string()])
        .args(extra)
        .env_clear()
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    match via {
        SecretsVia::Flags => {
            command.args(["--secret", secret, "--client-id", &app.user.id]);
            command.args(["--client-secret", &app.user.secret]);
        }
        SecretsVia::Environment => {
            command
                .env("THINHOOK_LISTEN_WEBHOOK_SECRET", secret)
                .env("THINHOOK_LISTEN_CLIENT_ID", &app.user.id)
                .env("THINHOOK_LISTEN_CLIENT_SECRET", &app.user.secret);
        }
        SecretsVia::Files => {
            let (webhook, client) = (files.path().join("webhook"), files.path().join("client"));
            std::fs::write(&webhook, format!("{secret}\n")).unwrap();
            std::fs::write(&client, format!("{}\n", app.user.secret)).unwrap();
            command.args(["--client-id", &app.user.id]);
            command.arg("--secret-file").arg(&webhook);
            command.arg("--client-secret-file").arg(&client);
        }
        SecretsVia::PublishedKeys => {
            command.args(["--gateway", &app.address, "--client-id", &app.user.id]);
            command.args(["--client-secret", &app.user.secret]);
        }
    }
    let mut child = command.spawn().unwrap();
    let lines = lines_of(&mut child);
    let listening = Listening {
        lines,
        port,
        _child: Running(child),
        _files: files,
    };
    wait_for(&listening.lines, "listening on");
    listening
}

/// Posts a comment, has the gateway deliver it, and checks that the
/// listener verified the notification and fetched the comment with a token;
/// returns the comment and what the listener printed up to `until`.
async fn deliver_one(app: &TestApp, listening: &Listening, until: &str) -> (Value, String) {
    let message = app.create_message("m").await;
    let comment = app
        .create_comment(message["id"].as_str().unwrap(), "fetched by listen")
        .await;
    assert_eq!(app.dispatch_all_pending().await, 1);
    let printed = wait_for(&listening.lines, until);
    assert!(printed.contains("comment.created"), "{printed}");
    assert!(
        printed.contains(comment["id"].as_str().unwrap()),
        "{printed}"
    );
    assert!(printed.contains("→ 200"), "{printed}");
    assert!(
        printed.contains("fetched by listen"),
        "the resource was not fetched: {printed}"
    );
    (comment, printed)
}

backend_tests! {
    async fn listen_verifies_fetches_prints_and_forwards(app: &TestApp) {
        let forward = Receiver::start().await;
        let listening = start_listen(app, SecretsVia::Flags, &["--forward", &forward.url("/mine")]).await;

        let (comment, _) = deliver_one(app, &listening, "forwarded to").await;

        let forwarded = forward.received_on("/mine");
        assert_eq!(forwarded.len(), 1);
        assert!(forwarded[0].header("webhook-signature").starts_with("v1,"));
        assert_eq!(forwarded[0].json()["data"]["resource"]["id"], comment["id"]);

        // A request that is not signed with the secret is turned away.
        let forged = app.client.post(format!("http://127.0.0.1:{}/", listening.port))
            .header("webhook-id", "evt_x").header("webhook-timestamp", "1").header("webhook-signature", "v1,AAAA")
            .body("{}").send().await.unwrap();
        assert_eq!(forged.status(), reqwest::StatusCode::UNAUTHORIZED);
        wait_for(&listening.lines, "rejected");
        assert_eq!(forward.received().len(), 1);
    }

    async fn listen_takes_its_secrets_from_the_environment(app: &TestApp) {
        let listening = start_listen(app, SecretsVia::Environment, &[]).await;
        deliver_one(app, &listening, "fetched by listen").await;
    }

    async fn listen_takes_its_secrets_from_files(app: &TestApp) {
        let listening = start_listen(app, SecretsVia::Files, &[]).await;
        deliver_one(app, &listening, "fetched by listen").await;
    }

    async fn listen_verifies_v1a_with_the_gateways_published_keys(app: &TestApp) {
        let listening = start_listen(app, SecretsVia::PublishedKeys, &[]).await;
        deliver_one(app, &listening, "fetched by listen").await;
    }
}

#[test]
fn listen_help_names_the_variables_but_never_shows_their_values() {
    let output = Command::new(env!("CARGO_BIN_EXE_thinhook"))
        .args(["listen", "--help"])
        .env_clear()
        .env(
            "THINHOOK_LISTEN_WEBHOOK_SECRET",
            "whsec_c2VjcmV0LXZhbHVlLW5vdC10by1zaG93",
        )
        .env("THINHOOK_LISTEN_CLIENT_SECRET", "thcs_never-shown")
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let help = String::from_utf8(output.stdout).unwrap();
    for name in [
        "THINHOOK_LISTEN_WEBHOOK_SECRET",
        "THINHOOK_LISTEN_CLIENT_SECRET",
        "--secret-file",
        "--client-secret-file",
    ] {
        assert!(help.contains(name), "{name} missing from:\n{help}");
    }
    assert!(
        !help.contains("c2VjcmV0") && !help.contains("never-shown"),
        "{help}"
    );
}

#[test]
fn listen_refuses_to_start_without_a_webhook_secret() {
    let output = Command::new(env!("CARGO_BIN_EXE_thinhook"))
        .args(["listen", "--client-id", "cli_x", "--client-secret", "x"])
        .env_clear()
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("--secret"), "{stderr}");
}
