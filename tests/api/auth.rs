//! Authentication: the token endpoint, the JWKS, and every way a bearer
//! token must be refused.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};
use thinhook::auth::keys::SigningKey;
use thinhook::auth::tokens::{self, TokenPolicy};
use thinhook::auth::{Scopes, keys};
use thinhook::clock::Clock;
use thinhook::db;
use thinhook::domain::ClientId;

use crate::helpers::{TestApp, assert_problem};

/// A protected resource that every test client may read.
async fn protected_path(app: &TestApp) -> String {
    let message = app.create_message("protected").await;
    format!("/messages/{}", message["id"].as_str().unwrap())
}

/// Reads a protected resource with `token`.
async fn read_something(app: &TestApp, token: &str) -> Response {
    let path = protected_path(app).await;
    app.get_with_token(&path, token).await
}

/// The first answer to `token` that is not a 200, waiting at most 5 s:
/// revocations reach the API within its refresh interval.
async fn refused_soon(app: &TestApp, token: &str) -> Response {
    let path = protected_path(app).await;
    for _ in 0..100 {
        let response = app.get_with_token(&path, token).await;
        if response.status() != StatusCode::OK {
            return response;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the token still works 5 s after its client was revoked");
}

/// Asserts a 401 with the RFC 6750 challenge.
async fn assert_invalid_token(response: Response) {
    let challenge = response.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(challenge.starts_with("Bearer "), "{challenge}");
    assert!(
        challenge.contains(r#"error="invalid_token""#),
        "{challenge}"
    );
    assert_problem(response, StatusCode::UNAUTHORIZED, "unauthorized").await;
}

async fn token_request(
    app: &TestApp,
    form: &[(&str, &str)],
    basic: Option<(&str, &str)>,
) -> Response {
    let mut request = app.client.post(app.url("/oauth/token")).form(form);
    if let Some((id, secret)) = basic {
        request = request.basic_auth(id, Some(secret));
    }
    request.send().await.unwrap()
}

async fn assert_oauth_error(response: Response, status: StatusCode, error: &str) {
    assert_eq!(response.status(), status);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], error, "{body}");
    assert!(
        body["error_description"]
            .as_str()
            .is_some_and(|d| !d.is_empty())
    );
}

/// The server's current signing key, read from its database.
pub(crate) async fn server_signing_key(app: &TestApp) -> SigningKey {
    let db = app.db.clone();
    let row = tokio::task::spawn_blocking(move || {
        db::signing_keys::active(
            &mut db.get().unwrap(),
            thinhook::db::signing_keys::Purpose::Tokens,
        )
    })
    .await
    .unwrap()
    .unwrap()
    .unwrap();
    SigningKey::from_row(&row, &app.secrets()).unwrap()
}

pub(crate) fn server_policy(app: &TestApp) -> TokenPolicy {
    TokenPolicy {
        issuer: app.address.clone(),
        audience: app.settings.auth.audience.clone(),
        lifetime: Duration::from_secs(app.settings.auth.token_ttl_secs),
        leeway: Duration::from_secs(app.settings.auth.leeway_secs),
    }
}

fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

async fn jwks(app: &TestApp) -> Vec<Value> {
    let response = app
        .client
        .get(app.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    body["keys"].as_array().unwrap().clone()
}

backend_tests! {
    async fn the_token_endpoint_issues_an_eddsa_at_jwt_for_valid_credentials(app: &TestApp) {
        let response = token_request(app, &[("grant_type", "client_credentials")], Some((&app.user.id, &app.user.secret))).await;

        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["cache-control"], "no-store");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["token_type"], "Bearer");
        assert_eq!(body["expires_in"], 900);
        assert_eq!(body["scope"], "messages:read messages:write subscriptions:manage events:read");
        let token = body["access_token"].as_str().unwrap();
        let header = jsonwebtoken::decode_header(token).unwrap();
        assert_eq!(header.alg, Algorithm::EdDSA);
        assert_eq!(header.typ.as_deref(), Some("at+jwt"));
        let claims = claims_of(token);
        assert_eq!(claims["sub"], app.user.id.as_str());
        assert_eq!(claims["client_id"], app.user.id.as_str());
        assert_eq!(claims["iss"], app.address.as_str());
        assert_eq!(claims["aud"], "thinhook");
        assert_eq!(claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(), 900);
        assert!(claims["jti"].as_str().unwrap().starts_with("tok_"));

        // Anyone can verify it with the published key.
        let keys = jwks(app).await;
        let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(
            keys.iter().find(|k| k["kid"].as_str() == header.kid.as_deref()).unwrap().clone(),
        )
        .unwrap();
        let mut validation = jsonwebtoken::Validation::new(Algorithm::EdDSA);
        validation.set_audience(&["thinhook"]);
        jsonwebtoken::decode::<Value>(token, &jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap(), &validation).unwrap();
    }

    async fn client_credentials_may_also_come_in_the_form(app: &TestApp) {
        let response = token_request(
            app,
            &[("grant_type", "client_credentials"), ("client_id", &app.user.id), ("client_secret", &app.user.secret)],
            None,
        )
        .await;
        assert_eq!(response.status(), StatusCode::OK);
    }

    async fn a_token_may_carry_fewer_scopes_than_the_client_has(app: &TestApp) {
        let token = app.token_for(&app.user.id, &app.user.secret, Some("messages:read")).await;
        assert_eq!(claims_of(&token)["scope"], "messages:read");
        let response = app.client.post(app.url("/messages")).bearer_auth(&token).json(&json!({"text": "x"})).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
    }

    async fn a_wrong_client_secret_is_invalid_client(app: &TestApp) {
        let response = token_request(app, &[("grant_type", "client_credentials")], Some((&app.user.id, "thcs_wrong"))).await;
        assert_eq!(response.headers()["www-authenticate"], r#"Basic realm="thinhook""#);
        assert_oauth_error(response, StatusCode::UNAUTHORIZED, "invalid_client").await;
    }

    async fn an_unknown_client_is_invalid_client(app: &TestApp) {
        let unknown = ClientId::generate().to_string();
        for id in [unknown.as_str(), "not-a-client-id"] {
            let response = token_request(app, &[("grant_type", "client_credentials")], Some((id, &app.user.secret))).await;
            assert_oauth_error(response, StatusCode::UNAUTHORIZED, "invalid_client").await;
        }
        let response = token_request(app, &[("grant_type", "client_credentials")], None).await;
        assert_oauth_error(response, StatusCode::UNAUTHORIZED, "invalid_client").await;
    }

    async fn a_revoked_client_gets_no_token(app: &TestApp) {
        let client = app.register_client("soon revoked", Scopes::all()).await;
        app.revoke(&client.id).await;
        let response = token_request(app, &[("grant_type", "client_credentials")], Some((&client.id, &client.secret))).await;
        assert_oauth_error(response, StatusCode::UNAUTHORIZED, "invalid_client").await;
    }

    async fn other_grant_types_are_unsupported(app: &TestApp) {
        for grant in ["password", "authorization_code", "refresh_token"] {
            let response = token_request(app, &[("grant_type", grant)], Some((&app.user.id, &app.user.secret))).await;
            assert_oauth_error(response, StatusCode::BAD_REQUEST, "unsupported_grant_type").await;
        }
    }

    async fn malformed_token_requests_are_invalid_request(app: &TestApp) {
        let creds = Some((app.user.id.as_str(), app.user.secret.as_str()));
        let missing_grant = token_request(app, &[("scope", "messages:read")], creds).await;
        assert_oauth_error(missing_grant, StatusCode::BAD_REQUEST, "invalid_request").await;
        let repeated = token_request(app, &[("grant_type", "client_credentials"), ("grant_type", "client_credentials")], creds).await;
        assert_oauth_error(repeated, StatusCode::BAD_REQUEST, "invalid_request").await;
        let both = token_request(
            app,
            &[("grant_type", "client_credentials"), ("client_id", &app.user.id), ("client_secret", &app.user.secret)],
            creds,
        )
        .await;
        assert_oauth_error(both, StatusCode::BAD_REQUEST, "invalid_request").await;
        let json_body = app
            .client
            .post(app.url("/oauth/token"))
            .basic_auth(&app.user.id, Some(&app.user.secret))
            .json(&json!({"grant_type": "client_credentials"}))
            .send()
            .await
            .unwrap();
        assert_oauth_error(json_body, StatusCode::BAD_REQUEST, "invalid_request").await;
    }

    async fn scopes_beyond_the_clients_own_are_invalid_scope(app: &TestApp) {
        let reader = app.register_client("reader", Scopes::parse("messages:read").unwrap()).await;
        let creds = Some((reader.id.as_str(), reader.secret.as_str()));
        for scope in ["messages:write", "messages:read admin"] {
            let response = token_request(app, &[("grant_type", "client_credentials"), ("scope", scope)], creds).await;
            assert_oauth_error(response, StatusCode::BAD_REQUEST, "invalid_scope").await;
        }
    }

    async fn a_valid_token_is_accepted(app: &TestApp) {
        let response = read_something(app, &app.user.token).await;
        assert_eq!(response.status(), StatusCode::OK);
    }

    async fn a_request_without_a_token_is_refused(app: &TestApp) {
        let response = app.client.get(app.url("/messages/msg_01jd5x8w3k2m4n6p7q9r0s1t2v")).send().await.unwrap();
        assert_invalid_token(response).await;
        let basic = app.client.post(app.url("/messages")).basic_auth(&app.user.id, Some(&app.user.secret)).json(&json!({"text": "x"})).send().await.unwrap();
        assert_invalid_token(basic).await;
    }

    async fn a_garbage_token_is_refused(app: &TestApp) {
        for garbage in ["garbage", "a.b.c", "eyJhbGciOiJFZERTQSJ9.e30.", &"x".repeat(5000)] {
            assert_invalid_token(read_something(app, garbage).await).await;
        }
    }

    async fn an_unsigned_alg_none_token_is_refused(app: &TestApp) {
        let kid = jsonwebtoken::decode_header(&app.user.token).unwrap().kid.unwrap();
        let header = URL_SAFE_NO_PAD.encode(json!({"alg": "none", "typ": "at+jwt", "kid": kid}).to_string());
        let payload = app.user.token.split('.').nth(1).unwrap();
        assert_invalid_token(read_something(app, &format!("{header}.{payload}.")).await).await;
    }

    async fn an_hs256_token_keyed_with_the_public_key_is_refused(app: &TestApp) {
        let key = server_signing_key(app).await;
        let mut header = Header::new(Algorithm::HS256);
        header.typ = Some("at+jwt".into());
        header.kid = Some(key.kid.clone());
        let claims = claims_of(&app.user.token);
        for secret in [URL_SAFE_NO_PAD.decode(&key.public_x).unwrap(), key.public_x.clone().into_bytes()] {
            let forged = jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(&secret)).unwrap();
            assert_invalid_token(read_something(app, &forged).await).await;
        }
    }

    async fn a_token_with_an_unknown_kid_is_refused(app: &TestApp) {
        let secrets = app.secrets();
        let foreign = SigningKey::from_row(&keys::generate_row(app.clock.now_utc(), &secrets, thinhook::db::signing_keys::Purpose::Tokens).unwrap(), &secrets).unwrap();
        let client = ClientId::parse(&app.user.id).unwrap();
        let (token, _) = tokens::issue(&foreign, &server_policy(app), &client, &Scopes::all(), &thinhook::domain::WorkspaceId::default_workspace(), app.clock.now_utc()).unwrap();
        assert_invalid_token(read_something(app, &token).await).await;
    }

    async fn an_expired_token_is_refused(app: &TestApp) {
        let path = protected_path(app).await;
        app.clock.advance(Duration::from_secs(900 + 30));
        assert_invalid_token(app.get_with_token(&path, &app.user.token).await).await;
    }

    async fn a_token_still_in_its_lifetime_is_accepted_after_time_passes(app: &TestApp) {
        let path = protected_path(app).await;
        app.clock.advance(Duration::from_secs(900 + 29));
        assert_eq!(app.get_with_token(&path, &app.user.token).await.status(), StatusCode::OK);
    }

    async fn a_token_not_yet_valid_is_refused(app: &TestApp) {
        let key = server_signing_key(app).await;
        let client = ClientId::parse(&app.user.id).unwrap();
        let future = app.clock.now_utc() + Duration::from_secs(3600);
        let (token, _) = tokens::issue(&key, &server_policy(app), &client, &Scopes::all(), &thinhook::domain::WorkspaceId::default_workspace(), future).unwrap();
        assert_invalid_token(read_something(app, &token).await).await;
    }

    async fn a_token_for_another_audience_or_from_another_issuer_is_refused(app: &TestApp) {
        let key = server_signing_key(app).await;
        let client = ClientId::parse(&app.user.id).unwrap();
        let now = app.clock.now_utc();
        let wrong_aud = TokenPolicy { audience: "another-api".into(), ..server_policy(app) };
        let wrong_iss = TokenPolicy { issuer: "https://evil.example".into(), ..server_policy(app) };
        for policy in [wrong_aud, wrong_iss] {
            let (token, _) = tokens::issue(&key, &policy, &client, &Scopes::all(), &thinhook::domain::WorkspaceId::default_workspace(), now).unwrap();
            assert_invalid_token(read_something(app, &token).await).await;
        }
        // The control: the same forging with the right policy is accepted.
        let (token, _) = tokens::issue(&key, &server_policy(app), &client, &Scopes::all(), &thinhook::domain::WorkspaceId::default_workspace(), now).unwrap();
        assert_eq!(read_something(app, &token).await.status(), StatusCode::OK);
    }

    async fn a_token_without_sub_or_of_another_type_is_refused(app: &TestApp) {
        let key = server_signing_key(app).await;
        let mut claims = claims_of(&app.user.token);
        claims.as_object_mut().unwrap().remove("sub");
        let mut header = Header::new(Algorithm::EdDSA);
        header.typ = Some("at+jwt".into());
        header.kid = Some(key.kid.clone());
        let no_sub = jsonwebtoken::encode(&header, &claims, &key.encoding).unwrap();
        assert_invalid_token(read_something(app, &no_sub).await).await;

        header.typ = Some("JWT".into());
        let id_token_like = jsonwebtoken::encode(&header, &claims_of(&app.user.token), &key.encoding).unwrap();
        assert_invalid_token(read_something(app, &id_token_like).await).await;
    }

    async fn a_tampered_payload_is_refused(app: &TestApp) {
        let reader = app.register_client("reader", Scopes::parse("messages:read").unwrap()).await;
        let mut claims = claims_of(&reader.token);
        claims["scope"] = json!("messages:read messages:write subscriptions:manage events:read");
        let parts: Vec<&str> = reader.token.split('.').collect();
        let tampered = format!("{}.{}.{}", parts[0], URL_SAFE_NO_PAD.encode(claims.to_string()), parts[2]);
        assert_invalid_token(read_something(app, &tampered).await).await;
    }

    async fn a_revoked_clients_tokens_stop_working_within_the_refresh_interval(app: &TestApp) {
        let client = app.register_client("soon revoked", Scopes::all()).await;
        assert_eq!(read_something(app, &client.token).await.status(), StatusCode::OK);

        app.revoke(&client.id).await;

        assert_invalid_token(refused_soon(app, &client.token).await).await;
    }

    async fn a_token_without_the_routes_scope_gets_403(app: &TestApp) {
        let reader = app.register_client("reader", Scopes::parse("messages:read").unwrap()).await;
        let response = app.client.post(app.url("/messages")).bearer_auth(&reader.token).json(&json!({"text": "x"})).send().await.unwrap();
        let challenge = response.headers()["www-authenticate"].to_str().unwrap().to_owned();
        assert!(challenge.contains(r#"error="insufficient_scope""#), "{challenge}");
        assert!(challenge.contains(r#"scope="messages:write""#), "{challenge}");
        assert_problem(response, StatusCode::FORBIDDEN, "insufficient-scope").await;

        let writer = app.register_client("writer", Scopes::parse("messages:write").unwrap()).await;
        assert_eq!(read_something(app, &writer.token).await.status(), StatusCode::FORBIDDEN);
    }

    async fn messages_and_comments_record_their_author(app: &TestApp) {
        let message = app.create_message("mine").await;
        let comment = app.create_comment(message["id"].as_str().unwrap(), "also mine").await;
        assert_eq!(message["author_client_id"], app.user.id.as_str());
        assert_eq!(comment["author_client_id"], app.user.id.as_str());
    }

    async fn rotation_keeps_old_tokens_valid_until_they_expire(app: &TestApp) {
        let old_token = app.user.token.clone();
        let old_kid = jsonwebtoken::decode_header(&old_token).unwrap().kid.unwrap();

        let new_kid = app.rotate_keys().await;
        let new_token = app.token_for(&app.user.id, &app.user.secret, None).await;

        assert_ne!(new_kid, old_kid);
        assert_eq!(jsonwebtoken::decode_header(&new_token).unwrap().kid.unwrap(), new_kid);
        assert_eq!(read_something(app, &old_token).await.status(), StatusCode::OK);
        assert_eq!(read_something(app, &new_token).await.status(), StatusCode::OK);
        let kids: Vec<_> = jwks(app).await.iter().map(|k| k["kid"].as_str().unwrap().to_owned()).collect();
        assert_eq!(kids, [new_kid.clone(), old_kid.clone()]);

        // Once every token the old key signed has expired, it is dropped.
        let path = protected_path(app).await;
        app.clock.advance(Duration::from_secs(900 + 30));
        let kids: Vec<_> = jwks(app).await.iter().map(|k| k["kid"].as_str().unwrap().to_owned()).collect();
        assert_eq!(kids, [new_kid]);
        assert_invalid_token(app.get_with_token(&path, &old_token).await).await;
    }
}

impl TestApp {
    fn secrets(&self) -> thinhook::secret_box::SecretBox {
        thinhook::secret_box::SecretBox::from_base64(&self.settings.secrets.encryption_key).unwrap()
    }

    pub(crate) async fn revoke(&self, client_id: &str) {
        let (db, id, now) = (self.db.clone(), client_id.to_owned(), self.clock.now_utc());
        let revoked = tokio::task::spawn_blocking(move || {
            db::clients::revoke(&mut db.get().unwrap(), &id, thinhook::clock::to_db(now))
        })
        .await
        .unwrap()
        .unwrap();
        assert!(revoked);
    }

    async fn rotate_keys(&self) -> String {
        let (db, now) = (self.db.clone(), self.clock.now_utc());
        let secrets = self.secrets();
        tokio::task::spawn_blocking(move || {
            keys::rotate(
                &mut db.get().unwrap(),
                now,
                &secrets,
                thinhook::db::signing_keys::Purpose::Tokens,
            )
        })
        .await
        .unwrap()
        .unwrap()
    }
}

/// On PostgreSQL a revocation is announced: API processes need not wait for
/// their next refresh.
#[tokio::test]
#[cfg_attr(
    not(postgres_tests),
    ignore = "set TEST_POSTGRES_URL to run the PostgreSQL tests"
)]
async fn a_revocation_reaches_the_api_at_once_through_notify_on_postgres() {
    let app = crate::helpers::spawn_app_with(
        crate::helpers::Backend::Postgres,
        thinhook::startup::Role::Api,
        |s| {
            s.auth.revocation_refresh_ms = 600_000;
        },
    )
    .await;
    let client = app.register_client("soon revoked", Scopes::all()).await;
    assert_eq!(
        read_something(&app, &client.token).await.status(),
        StatusCode::OK
    );

    app.revoke(&client.id).await;

    assert_invalid_token(refused_soon(&app, &client.token).await).await;
}
