//! Workspaces isolate tenants: for every protected route of the server, a
//! client of workspace B asking about workspace A's resources gets `404`
//! (or an empty list), never A's data; A's events fan out only to A's
//! subscriptions; a token acts only in its client's workspace.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use thinhook::auth::{Scopes, tokens};
use thinhook::domain::{ClientId, WorkspaceId};

use crate::auth::{server_policy, server_signing_key};
use crate::helpers::{TestApp, TestClient};
use crate::receiver::Receiver;
use crate::spec::SERVER_ROUTES;
use crate::webhooks::id;
use thinhook::db::deliveries::{self, DeliveriesOf};
use thinhook::db::subscriptions::{self, Owner};

/// Marks a delivery delivered again, as if its attempt had been made.
fn mark_delivered(conn: &mut thinhook::db::DbConnection, delivery: &str) {
    use diesel::prelude::*;
    use thinhook::db::schema::deliveries::dsl;
    diesel::update(dsl::deliveries.find(delivery))
        .set(dsl::status.eq(deliveries::DELIVERED))
        .execute(conn)
        .unwrap();
}

/// Creates a workspace directly in the database.
async fn workspace(app: &TestApp, name: &str) -> WorkspaceId {
    let id = WorkspaceId::generate();
    let row = thinhook::db::models::WorkspaceRow {
        id: id.to_string(),
        name: name.to_owned(),
        created_at: thinhook::clock::to_db(app.clock_now()),
        max_subscriptions: None,
        api_per_second: None,
        api_burst: None,
        retention_days: None,
        pruned_through: 0,
    };
    let db = app.db.clone();
    tokio::task::spawn_blocking(move || {
        thinhook::db::workspaces::insert(&mut db.get().unwrap(), &row)
    })
    .await
    .unwrap()
    .unwrap();
    id
}

async fn send(
    app: &TestApp,
    client: &TestClient,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = app
        .client
        .request(method, app.url(path))
        .bearer_auth(&client.token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// What workspace A holds: one of each resource, ids by path parameter.
struct Holdings {
    message: String,
    comment: String,
    subscription: String,
    delivery: String,
    event: String,
}

async fn fill(app: &TestApp, a: &TestClient, receiver: &Receiver) -> Holdings {
    let (status, message) = send(
        app,
        a,
        Method::POST,
        "/messages",
        Some(json!({"text": "A's secret"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let message = id(&message);
    let (status, subscription) = send(
        app,
        a,
        Method::POST,
        "/subscriptions",
        Some(json!({"url": receiver.url("/a"), "event_types": ["comment.created"]})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let subscription = id(&subscription);
    let (status, comment) = send(
        app,
        a,
        Method::POST,
        &format!("/messages/{message}/comments"),
        Some(json!({"text": "A's comment"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    app.dispatch_all_pending().await;
    let (_, delivery) = send(
        app,
        a,
        Method::GET,
        &format!("/subscriptions/{subscription}/deliveries"),
        None,
    )
    .await;
    let delivery = &delivery["data"][0];
    Holdings {
        message,
        comment: id(&comment),
        subscription,
        delivery: delivery["id"].as_str().unwrap().to_owned(),
        event: delivery["event_id"].as_str().unwrap().to_owned(),
    }
}

fn concrete(path: &str, a: &Holdings) -> String {
    path.replace("{messageId}", &a.message)
        .replace("{commentId}", &a.comment)
        .replace("{subscriptionId}", &a.subscription)
        .replace("{deliveryId}", &a.delivery)
        .replace("{eventId}", &a.event)
}

/// Whether the answer to `method template` (sent as `path`) shows nothing
/// of A: `404`, an empty page, or (for a create that names A's message) the
/// refusal a missing message gets; and no A id but those the request named.
fn shows_nothing_of(
    a: &Holdings,
    (method, template, path): (&str, &str, &str),
    status: StatusCode,
    body: &Value,
) -> bool {
    let text = body.to_string();
    let leaks = [
        &a.message,
        &a.comment,
        &a.subscription,
        &a.delivery,
        &a.event,
    ]
    .iter()
    .any(|id| text.contains(id.as_str()) && !path.contains(id.as_str()))
        || text.contains("A's");
    match (method, template) {
        // Figures: B's own, which count nothing of A's.
        ("GET", "/deliveries/stats") => {
            status == StatusCode::OK && body["hours"].as_array().is_some_and(Vec::is_empty)
        }
        // Lists: B's own, which hold nothing of A.
        ("GET", "/subscriptions" | "/deliveries" | "/events") => status == StatusCode::OK && !leaks,
        // Creates that name no A resource make B's own.
        ("POST", "/messages") => status == StatusCode::CREATED && !leaks,
        // Names A's message as its filter: like a message that does not exist.
        ("POST", "/subscriptions") => {
            status == StatusCode::UNPROCESSABLE_ENTITY && text.contains("names no existing message")
        }
        _ => status == StatusCode::NOT_FOUND && !leaks,
    }
}

/// The body each route is sent with, naming A's resources where it can.
fn body_for(method: &str, path: &str, a: &Holdings, receiver: &Receiver) -> Option<Value> {
    match (method, path) {
        ("POST", "/messages") => Some(json!({"text": "B's own"})),
        ("POST", "/messages/{messageId}/comments") => Some(json!({"text": "B into A"})),
        ("POST", "/subscriptions") => Some(
            json!({"url": receiver.url("/b"), "event_types": ["comment.created"], "message_id": a.message}),
        ),
        ("PATCH", "/subscriptions/{subscriptionId}") => Some(json!({"enabled": false})),
        ("POST", "/subscriptions/{subscriptionId}/replay") => {
            Some(json!({"since": "2000-01-01T00:00:00Z", "include": "all"}))
        }
        ("POST", _) => Some(json!({})),
        _ => None,
    }
}

backend_tests! {
    async fn a_client_of_another_workspace_sees_nothing_of_a_workspace_on_any_route(app: &TestApp) {
        let (wa, wb) = (workspace(app, "A").await, workspace(app, "B").await);
        let a = app.register_client_in("a", Scopes::all(), &wa).await;
        let b = app.register_client_in("b", Scopes::all(), &wb).await;
        let receiver = Receiver::start().await;
        let held = fill(app, &a, &receiver).await;
        assert_eq!(receiver.received().len(), 1);

        let public = ["/healthz", "/readyz", "/oauth/token", "/.well-known/jwks.json",
            "/.well-known/oauth-authorization-server", "/openapi.yaml", "/metrics",
            "/.well-known/webhook-keys.json"];
        let protected: Vec<_> = SERVER_ROUTES.iter().filter(|(_, path)| !public.contains(path)).collect();
        assert_eq!(protected.len(), 20, "a route was added: give it a body here if it takes one");
        for (method, template) in protected {
            let path = concrete(template, &held);
            let body = body_for(method, template, &held, &receiver);
            let (status, answer) = send(app, &b, Method::from_bytes(method.as_bytes()).unwrap(), &path, body).await;
            assert!(
                shows_nothing_of(&held, (method, template, &path), status, &answer),
                "{method} {template} from workspace B answered {status}: {answer}"
            );
        }

        // A's resources are all still there, untouched, for A.
        for path in [
            format!("/messages/{}", held.message),
            format!("/messages/{}/comments/{}", held.message, held.comment),
            format!("/subscriptions/{}", held.subscription),
            format!("/events/{}", held.event),
        ] {
            let (status, _) = send(app, &a, Method::GET, &path, None).await;
            assert_eq!(status, StatusCode::OK, "{path}");
        }
        let (_, subscription) = send(app, &a, Method::GET, &format!("/subscriptions/{}", held.subscription), None).await;
        assert_eq!(subscription["enabled"], true);
        let (_, feed) = send(app, &a, Method::GET, "/events", None).await;
        assert!(feed["data"].as_array().unwrap().iter().all(|e| !e.to_string().contains("B's own")));
    }

    async fn an_event_fans_out_only_to_its_own_workspace(app: &TestApp) {
        let (wa, wb) = (workspace(app, "A").await, workspace(app, "B").await);
        let a = app.register_client_in("a", Scopes::all(), &wa).await;
        let b = app.register_client_in("b", Scopes::all(), &wb).await;
        let (to_a, to_b) = (Receiver::start().await, Receiver::start().await);
        for (client, receiver) in [(&a, &to_a), (&b, &to_b)] {
            let (status, _) = send(app, client, Method::POST, "/subscriptions",
                Some(json!({"url": receiver.url("/hook"), "event_types": ["message.created", "comment.created"]}))).await;
            assert_eq!(status, StatusCode::CREATED);
        }
        let (_, message) = send(app, &a, Method::POST, "/messages", Some(json!({"text": "in A"}))).await;
        send(app, &a, Method::POST, &format!("/messages/{}/comments", id(&message)), Some(json!({"text": "in A"}))).await;
        app.dispatch_all_pending().await;
        assert_eq!(to_a.received().len(), 2, "A's message and comment");
        assert!(to_b.received().is_empty(), "B's unfiltered subscription gets nothing of A");

        let (_, subscriptions) = send(app, &b, Method::GET, "/subscriptions", None).await;
        let b_subscription = subscriptions["data"][0]["id"].as_str().unwrap().to_owned();
        assert!(deliveries_of_client(app, &b, &b_subscription).await.is_empty());
        // B's feed is empty; A's has both events.
        let (_, feed) = send(app, &b, Method::GET, "/events", None).await;
        assert_eq!(feed["data"].as_array().unwrap().len(), 0);
        let (_, feed) = send(app, &a, Method::GET, "/events", None).await;
        assert_eq!(feed["data"].as_array().unwrap().len(), 2);
    }

    async fn a_token_acts_only_in_its_clients_workspace(app: &TestApp) {
        let wa = workspace(app, "A").await;
        let a = app.register_client_in("a", Scopes::all(), &wa).await;
        let (_, message) = send(app, &a, Method::POST, "/messages", Some(json!({"text": "A"}))).await;
        let path = format!("/messages/{}", id(&message));
        assert_eq!(send(app, &a, Method::GET, &path, None).await.0, StatusCode::OK);
        // The default workspace's client cannot read it either.
        assert_eq!(app.get(&path).await.status(), StatusCode::NOT_FOUND);

        // A token of A's client that claims another workspace is refused.
        let (key, policy) = (server_signing_key(app).await, server_policy(app));
        let client = ClientId::parse(&a.id).unwrap();
        let now = app.clock_now();
        let (other, _) = tokens::issue(&key, &policy, &client, &Scopes::all(), &WorkspaceId::default_workspace(), now).unwrap();
        let response = app.get_with_token(&path, &other).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        // The control: the same forging with A's workspace is accepted.
        let (own, _) = tokens::issue(&key, &policy, &client, &Scopes::all(), &wa, now).unwrap();
        assert_eq!(app.get_with_token(&path, &own).await.status(), StatusCode::OK);
    }

    async fn the_storage_layer_scopes_subscriptions_and_deliveries_by_workspace(app: &TestApp) {
        let (wa, wb) = (workspace(app, "A").await, workspace(app, "B").await);
        let a = app.register_client_in("a", Scopes::all(), &wa).await;
        let receiver = Receiver::start().await;
        let held = fill(app, &a, &receiver).await;
        // A's own client id, but in another workspace: the workspace is in
        // the statements, not just implied by the client.
        let stray = Owner { workspace: wb.clone(), client: ClientId::parse(&a.id).unwrap() };
        let (db, owner, now) = (app.db.clone(), a.owner(), thinhook::clock::to_db(app.clock_now()));
        tokio::task::spawn_blocking(move || {
            let conn = &mut db.get().unwrap();
            let (sub, dlv) = (held.subscription.as_str(), held.delivery.as_str());
            let since = thinhook::clock::to_db(time::OffsetDateTime::UNIX_EPOCH);
            for (who, is_owner) in [(&stray, false), (&owner, true)] {
                assert_eq!(subscriptions::find_owned(conn, sub, who).unwrap().is_some(), is_owner);
                assert_eq!(subscriptions::list_owned(conn, who, None, 10).unwrap().len(), usize::from(is_owner));
                assert_eq!(deliveries::find_owned(conn, dlv, who).unwrap().is_some(), is_owner);
                for of in [DeliveriesOf::Owner(who.clone()), DeliveriesOf::OwnedSubscription(who.clone(), sub.to_owned())] {
                    assert_eq!(deliveries::list(conn, &of, None, None, None, 10).unwrap().len(), usize::from(is_owner));
                }
                let patch = subscriptions::Patch { description: Some(Some("renamed".into())), ..Default::default() };
                assert_eq!(subscriptions::patch_owned(conn, sub, who, &patch, now).unwrap().is_some(), is_owner);
                let current = subscriptions::find(conn, sub).unwrap().unwrap().secret;
                assert_eq!(subscriptions::replace_secret(conn, sub, who, &current, "v1:sealed", now, now).unwrap(), is_owner);
                assert_eq!(deliveries::replay(conn, sub, Some(who), &[deliveries::DELIVERED], since, now).unwrap(), usize::from(is_owner));
                // Queued by the replay (or not): make it finished again for the retry.
                mark_delivered(conn, dlv);
                assert_eq!(deliveries::retry_now(conn, dlv, Some(who), now).unwrap(), is_owner);
            }
            // The operator's view of a workspace.
            for (workspace, count) in [(wa, 1), (wb, 0)] {
                let of = DeliveriesOf::Workspace(workspace);
                assert_eq!(deliveries::list(conn, &of, None, None, None, 10).unwrap().len(), count);
            }
            assert!(!subscriptions::delete_owned(conn, sub, &stray).unwrap());
            assert!(subscriptions::delete_owned(conn, sub, &owner).unwrap());
        })
        .await
        .unwrap();
    }
}

async fn deliveries_of_client(
    app: &TestApp,
    client: &TestClient,
    subscription: &str,
) -> Vec<Value> {
    let (_, page) = send(
        app,
        client,
        Method::GET,
        &format!("/subscriptions/{subscription}/deliveries"),
        None,
    )
    .await;
    page["data"].as_array().cloned().unwrap_or_default()
}

mod upgrade {
    use super::*;
    use crate::helpers::spawn_app;

    backend_tests_with_backend! {
        async fn data_and_tokens_from_before_workspaces_live_on_in_default(backend: Backend) {
            let app = spawn_app(backend).await;
            let message = app.create_message("from before").await;
            let comment = app.create_comment(&id(&message), "also before").await;
            let receiver = Receiver::start().await;
            let (status, subscription) = send(&app, &app.user, Method::POST, "/subscriptions",
                Some(json!({"url": receiver.url("/hook"), "event_types": ["comment.created"]}))).await;
            assert_eq!(status, StatusCode::CREATED);
            // A token as issued before workspaces: no `wsp` claim.
            let (key, policy) = (server_signing_key(&app).await, server_policy(&app));
            let (_, mut claims) = tokens::issue(&key, &policy, &ClientId::parse(&app.user.id).unwrap(),
                &Scopes::all(), &WorkspaceId::default_workspace(), app.clock_now()).unwrap();
            claims.wsp = None;
            let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
            header.typ = Some(tokens::TOKEN_TYPE.to_owned());
            header.kid = Some(key.kid.clone());
            let old_token = jsonwebtoken::encode(&header, &claims, &key.encoding).unwrap();
            assert!(!old_token.is_empty());

            // The database goes back to before workspaces, then up again.
            let db = app.db.clone();
            let reverted = tokio::task::spawn_blocking(move || {
                // Back through the migrations after it, then it.
                let mut reverted = db.revert_last_migration().unwrap();
                for _ in 0..10 {
                    if reverted.contains("000012") {
                        break;
                    }
                    reverted = db.revert_last_migration().unwrap();
                }
                db.migrate().unwrap();
                reverted
            })
            .await
            .unwrap();
            assert!(reverted.contains("000012"), "{reverted}");

            let paths = [
                format!("/messages/{}", id(&message)),
                format!("/messages/{}/comments/{}", id(&message), id(&comment)),
                format!("/subscriptions/{}", id(&subscription)),
            ];
            for path in &paths {
                assert_eq!(app.get_with_token(path, &old_token).await.status(), StatusCode::OK, "{path}");
            }
            // The data is the default workspace's: a new client there sees it,
            // one of another workspace does not.
            let default = app.register_client("new in default", Scopes::all()).await;
            let other = app.register_client_in("elsewhere", Scopes::all(), &workspace(&app, "other").await).await;
            let message_path = &paths[0];
            assert_eq!(app.get_with_token(message_path, &default.token).await.status(), StatusCode::OK);
            assert_eq!(app.get_with_token(message_path, &other.token).await.status(), StatusCode::NOT_FOUND);
            // Events keep flowing to the old subscription.
            app.create_comment(&id(&message), "after").await;
            assert_eq!(app.dispatch_all_pending().await, 1);
            assert_eq!(receiver.received().len(), 1);
        }
    }
}

mod limits {
    use super::*;
    use crate::helpers::{assert_problem, spawn_app_with};
    use thinhook::startup::Role;

    async fn subscribe(app: &TestApp, client: &TestClient, receiver: &Receiver) -> StatusCode {
        let (status, _) = send(
            app,
            client,
            Method::POST,
            "/subscriptions",
            Some(json!({"url": receiver.url("/hook"), "event_types": ["comment.created"]})),
        )
        .await;
        status
    }

    /// Sets `workspace`'s own limits, as `thinhook workspaces update` does.
    async fn set_limits(
        app: &TestApp,
        workspace: &WorkspaceId,
        limits: (Option<i32>, Option<i32>, Option<i32>),
    ) {
        let (db, id) = (app.db.clone(), workspace.to_string());
        tokio::task::spawn_blocking(move || {
            let mut conn = db.get().unwrap();
            let mut row = thinhook::db::workspaces::find(&mut conn, &id)
                .unwrap()
                .unwrap();
            (row.max_subscriptions, row.api_per_second, row.api_burst) = limits;
            thinhook::db::workspaces::set_limits(&mut conn, &row).unwrap();
        })
        .await
        .unwrap();
    }

    backend_tests_with_backend! {
        async fn a_workspace_shares_its_subscription_quota_among_its_clients(backend: Backend) {
            let app = spawn_app_with(backend, Role::Api, |s| s.limits.max_subscriptions_per_workspace = 3).await;
            let receiver = Receiver::start().await;
            let wa = workspace(&app, "A").await;
            let a1 = app.register_client_in("a1", Scopes::all(), &wa).await;
            let a2 = app.register_client_in("a2", Scopes::all(), &wa).await;
            for client in [&a1, &a1, &a2] {
                assert_eq!(subscribe(&app, client, &receiver).await, StatusCode::CREATED);
            }
            let refused = app.client.post(app.url("/subscriptions")).bearer_auth(&a2.token)
                .json(&json!({"url": receiver.url("/hook"), "event_types": ["comment.created"]}))
                .send().await.unwrap();
            let problem = assert_problem(refused, StatusCode::CONFLICT, "quota-exceeded").await;
            assert!(problem["detail"].as_str().unwrap().contains("workspace"), "{problem}");
            // Another workspace has a quota of its own.
            let b = app.register_client_in("b", Scopes::all(), &workspace(&app, "B").await).await;
            assert_eq!(subscribe(&app, &b, &receiver).await, StatusCode::CREATED);
            // A's own limit replaces the default.
            set_limits(&app, &wa, (Some(4), None, None)).await;
            assert_eq!(subscribe(&app, &a2, &receiver).await, StatusCode::CREATED);
            assert_eq!(subscribe(&app, &a1, &receiver).await, StatusCode::CONFLICT);
        }

        async fn a_workspace_shares_its_api_rate_among_its_clients(backend: Backend) {
            let app = spawn_app_with(backend, Role::Api, |_| {}).await;
            let wa = workspace(&app, "A").await;
            let a1 = app.register_client_in("a1", Scopes::all(), &wa).await;
            let a2 = app.register_client_in("a2", Scopes::all(), &wa).await;
            // One a second, three at once, for A's clients together.
            set_limits(&app, &wa, (None, Some(1), Some(3))).await;
            // Every API process reads the limits again within auth.revocation_refresh_ms (50 ms here).
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            let mut statuses = Vec::new();
            for client in [&a1, &a2, &a1, &a2] {
                statuses.push(send(&app, client, Method::GET, "/subscriptions", None).await.0);
            }
            assert_eq!(statuses[..3], [StatusCode::OK; 3], "{statuses:?}");
            assert_eq!(statuses[3], StatusCode::TOO_MANY_REQUESTS, "{statuses:?}");
            // The default workspace's client is not held back by A's limit.
            assert_eq!(app.get("/subscriptions").await.status(), StatusCode::OK);
        }

        async fn a_workspace_keeps_its_events_as_long_as_it_says(backend: Backend) {
            let mut app = spawn_app_with(backend, Role::Api, |_| {}).await;
            let wa = workspace(&app, "A").await;
            let a = app.register_client_in("a", Scopes::all(), &wa).await;
            let (db, workspace_id) = (app.db.clone(), wa.to_string());
            tokio::task::spawn_blocking(move || {
                let mut conn = db.get().unwrap();
                let mut row = thinhook::db::workspaces::find(&mut conn, &workspace_id).unwrap().unwrap();
                row.retention_days = Some(1);
                thinhook::db::workspaces::set_limits(&mut conn, &row).unwrap();
            })
            .await
            .unwrap();
            let (_, message) = send(&app, &a, Method::POST, "/messages", Some(json!({"text": "short-lived"}))).await;
            send(&app, &a, Method::POST, &format!("/messages/{}/comments", id(&message)), Some(json!({"text": "too"}))).await;
            let (_, first) = send(&app, &a, Method::GET, "/events?limit=1", None).await;
            let cursor = first["next_cursor"].as_str().unwrap().to_owned();
            app.create_message("kept for 30 days").await;

            app.advance(std::time::Duration::from_secs(2 * 86_400)).await;
            let clock: thinhook::clock::SharedClock = app.clock.clone();
            let removed = thinhook::retention::prune_expired(&app.writer, &clock, std::time::Duration::from_secs(30 * 86_400))
                .await
                .unwrap();
            assert_eq!(removed, 2, "A's two events, not the default workspace's");
            let a = TestClient { token: app.token_for(&a.id, &a.secret, None).await, ..a };
            let (status, _) = send(&app, &a, Method::GET, &format!("/events?after={cursor}"), None).await;
            assert_eq!(status, StatusCode::GONE, "A's reader missed pruned events");
            let (_, feed) = send(&app, &a, Method::GET, "/events", None).await;
            assert!(feed["data"].as_array().unwrap().is_empty());
            let kept: Value = app.get("/events").await.json().await.unwrap();
            assert_eq!(kept["data"].as_array().unwrap().len(), 1);
        }
    }
}
