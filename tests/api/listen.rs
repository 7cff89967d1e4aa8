//! `thinhook listen` end to end: the gateway delivers to it, it verifies,
//! fetches the comment with a token, prints it and forwards the request.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::receiver::Receiver;

/// Kills the listener when the test ends, however it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
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

backend_tests! {
    async fn listen_verifies_fetches_prints_and_forwards(app: &TestApp) {
        let forward = Receiver::start().await;
        let port = free_port();
        let created: Value = app
            .post_json("/subscriptions", &json!({"url": format!("http://127.0.0.1:{port}/"), "event_types": ["comment.created"]}))
            .await
            .json()
            .await
            .unwrap();
        let secret = created["secret"].as_str().unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_thinhook"))
            .args(["listen", "--port", &port.to_string(), "--secret", secret])
            .args(["--client-id", &app.user.id, "--client-secret", &app.user.secret])
            .args(["--forward", &forward.url("/mine")])
            .env_clear()
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let lines = lines_of(&mut child);
        let _running = Running(child);
        wait_for(&lines, "listening on");

        let message = app.create_message("m").await;
        let comment = app.create_comment(message["id"].as_str().unwrap(), "fetched by listen").await;
        assert_eq!(app.dispatch_all_pending().await, 1);

        let printed = wait_for(&lines, "forwarded to");
        assert!(printed.contains("comment.created"), "{printed}");
        assert!(printed.contains(comment["id"].as_str().unwrap()), "{printed}");
        assert!(printed.contains("→ 200"), "{printed}");
        assert!(printed.contains("fetched by listen"), "the resource was not fetched: {printed}");
        let forwarded = forward.received_on("/mine");
        assert_eq!(forwarded.len(), 1);
        assert!(forwarded[0].header("webhook-signature").starts_with("v1,"));
        assert_eq!(forwarded[0].json()["data"]["resource"]["id"], comment["id"]);

        // A request that is not signed with the secret is turned away.
        let forged = app.client.post(format!("http://127.0.0.1:{port}/"))
            .header("webhook-id", "evt_x").header("webhook-timestamp", "1").header("webhook-signature", "v1,AAAA")
            .body("{}").send().await.unwrap();
        assert_eq!(forged.status(), reqwest::StatusCode::UNAUTHORIZED);
        wait_for(&lines, "rejected");
        assert_eq!(forward.received().len(), 1);
    }
}
