//! `thinhook listen`: a local webhook receiver for development. It checks
//! each notification's signature, fetches the linked resource with a token
//! (as a real receiver would), prints both, and can forward the original
//! request to the developer's own endpoint.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use anyhow::Context;
use aws_lc_rs::signature::{ED25519, UnparsedPublicKey};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::Value;
use tokio::sync::Mutex;
use url::Url;

use crate::delivery::signer;
use crate::domain::SigningSecret;

/// Notifications older or newer than this are refused (replay protection).
const TOLERANCE_SECS: i64 = 5 * 60;

/// The environment variables `listen` reads its secrets and client id from.
/// They are the command's, not settings: [`crate::config`] must not take
/// them for misspelt `THINHOOK_*` settings.
pub const ENV_VARS: [&str; 4] = [
    WEBHOOK_SECRET_VAR,
    CLIENT_ID_VAR,
    CLIENT_SECRET_VAR,
    GATEWAY_VAR,
];
const GATEWAY_VAR: &str = "THINHOOK_LISTEN_GATEWAY";
const WEBHOOK_SECRET_VAR: &str = "THINHOOK_LISTEN_WEBHOOK_SECRET";
const CLIENT_ID_VAR: &str = "THINHOOK_LISTEN_CLIENT_ID";
const CLIENT_SECRET_VAR: &str = "THINHOOK_LISTEN_CLIENT_SECRET";

/// Secrets come from the environment or a file, so that they stay out of
/// `ps` and shell history; the flags that take them inline remain for a
/// quick try.
#[derive(Debug, Clone, clap::Args)]
pub struct ListenArgs {
    /// Port to listen on (127.0.0.1).
    #[arg(long, default_value_t = 9000)]
    pub port: u16,
    /// The subscription's signing secret (`whsec_…`). On the command line
    /// every user of the machine can read it in `ps`: prefer the environment
    /// variable or --secret-file.
    #[arg(
        long,
        env = WEBHOOK_SECRET_VAR,
        hide_env_values = true,
        value_name = "WHSEC",
        required_unless_present_any = ["secret_file", "gateway"]
    )]
    pub secret: Option<String>,
    /// A file holding the subscription's signing secret (surrounding
    /// white space is ignored); it wins over --secret and the environment.
    #[arg(long, value_name = "PATH")]
    pub secret_file: Option<PathBuf>,
    /// The id of the client (`cli_…`) whose token fetches the linked resources.
    #[arg(long, env = CLIENT_ID_VAR, value_name = "ID")]
    pub client_id: String,
    /// That client's secret (`thcs_…`). On the command line every user of
    /// the machine can read it in `ps`: prefer the environment variable or
    /// --client-secret-file.
    #[arg(
        long,
        env = CLIENT_SECRET_VAR,
        hide_env_values = true,
        value_name = "SECRET",
        required_unless_present = "client_secret_file"
    )]
    pub client_secret: Option<String>,
    /// A file holding the client's secret (surrounding white space is
    /// ignored); it wins over --client-secret and the environment.
    #[arg(long, value_name = "PATH")]
    pub client_secret_file: Option<PathBuf>,
    /// The gateway's public base URL, whose published keys
    /// (`/.well-known/webhook-keys.json`) verify `v1a` signatures: needed
    /// for a subscription whose `signature_scheme` is `v1a`. Given here,
    /// never taken from a notification, which could name any server.
    #[arg(long, env = GATEWAY_VAR, value_name = "URL")]
    pub gateway: Option<String>,
    /// Also send each verified request, unchanged, to this URL.
    #[arg(long, value_name = "URL")]
    pub forward: Option<String>,
}

/// A secret given in a file or inline (flag or environment). The file wins:
/// it is always named on the command line, while an inline value may be a
/// variable left in the environment.
fn secret_from(inline: Option<String>, file: Option<&Path>, flag: &str) -> anyhow::Result<String> {
    let secret = match (file, inline) {
        (Some(path), _) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {flag}-file {}", path.display()))?,
        (None, Some(secret)) => secret,
        (None, None) => anyhow::bail!("{flag} or {flag}-file is required"),
    };
    let secret = secret.trim();
    anyhow::ensure!(!secret.is_empty(), "{flag}: the secret is empty");
    Ok(secret.to_owned())
}

struct Listener {
    secret: Option<SigningSecret>,
    /// Where the `v1a` keys are published, and those read so far by kid.
    gateway_keys: Option<Url>,
    keys: Mutex<HashMap<String, Vec<u8>>>,
    client_id: String,
    client_secret: String,
    forward: Option<Url>,
    http: reqwest::Client,
    /// The access token and when to fetch a new one.
    token: Mutex<Option<(String, Instant)>>,
}

pub async fn run(
    args: ListenArgs,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let webhook_secret = match (&args.secret, &args.secret_file, &args.gateway) {
        (None, None, Some(_)) => None,
        _ => Some(secret_from(
            args.secret,
            args.secret_file.as_deref(),
            "--secret",
        )?),
    };
    let client_secret = secret_from(
        args.client_secret,
        args.client_secret_file.as_deref(),
        "--client-secret",
    )?;
    let listener = Arc::new(Listener {
        secret: webhook_secret
            .as_deref()
            .map(SigningSecret::parse)
            .transpose()
            .context("--secret")?,
        gateway_keys: args
            .gateway
            .as_deref()
            .map(|base| Url::parse(base)?.join("/.well-known/webhook-keys.json"))
            .transpose()
            .context("--gateway")?,
        keys: Mutex::default(),
        forward: args
            .forward
            .as_deref()
            .map(Url::parse)
            .transpose()
            .context("--forward")?,
        client_id: args.client_id,
        client_secret,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .build()?,
        token: Mutex::new(None),
    });
    let data = web::Data::from(listener);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .app_data(web::PayloadConfig::new(1 << 20))
            .default_service(web::to(receive))
    })
    .workers(1)
    .disable_signals()
    .bind(("127.0.0.1", args.port))
    .with_context(|| format!("cannot listen on 127.0.0.1:{}", args.port))?
    .run();
    println!("listening on http://127.0.0.1:{}/", args.port);
    let handle = server.handle();
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => result?,
        () = shutdown => {
            tokio::join!(handle.stop(true), &mut server).1?;
        }
    }
    Ok(())
}

/// Why a request is not a genuine notification: it must be recent and carry
/// a `v1` signature made with `secret` or a `v1a` signature made with the
/// published key it names (`key`, once looked up).
fn verify(
    secret: Option<&SigningSecret>,
    key: Option<&[u8]>,
    req: &HttpRequest,
    body: &[u8],
    now: i64,
) -> Result<(), String> {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| format!("missing {name}"))
    };
    let id = header("webhook-id")?;
    let timestamp: i64 = header("webhook-timestamp")?
        .parse()
        .map_err(|_| "malformed webhook-timestamp".to_owned())?;
    if (now - timestamp).abs() > TOLERANCE_SECS {
        return Err("webhook-timestamp is outside the 5 minute tolerance".into());
    }
    let signatures = header("webhook-signature")?;
    let v1 = secret.is_some_and(|secret| {
        let expected = signer::sign(secret, id, timestamp, body);
        signatures.split(' ').any(|candidate| {
            aws_lc_rs::constant_time::verify_slices_are_equal(
                candidate.as_bytes(),
                expected.as_bytes(),
            )
            .is_ok()
        })
    });
    let v1a = key.is_some_and(|public| {
        let signed = signer::signed_content(id, timestamp, body);
        signatures
            .split(' ')
            .filter_map(|candidate| candidate.strip_prefix("v1a,"))
            .filter_map(|signature| STANDARD.decode(signature).ok())
            .any(|signature| {
                UnparsedPublicKey::new(&ED25519, public)
                    .verify(&signed, &signature)
                    .is_ok()
            })
    });
    if v1 || v1a {
        Ok(())
    } else {
        Err("no signature matches the secret or a published key".into())
    }
}

async fn receive(
    req: HttpRequest,
    body: web::Bytes,
    listener: web::Data<Listener>,
) -> HttpResponse {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let kid = req
        .headers()
        .get("webhook-key-id")
        .and_then(|v| v.to_str().ok());
    let key = match kid {
        Some(kid) => listener.published_key(kid).await,
        None => None,
    };
    if let Err(reason) = verify(listener.secret.as_ref(), key.as_deref(), &req, &body, now) {
        println!("rejected {} {}: {reason}", req.method(), req.path());
        return HttpResponse::Unauthorized().body(reason);
    }
    let event: Value = serde_json::from_slice(&body).unwrap_or_default();
    println!(
        "event {} {} sequence={} at {}",
        event["id"].as_str().unwrap_or("?"),
        event["type"].as_str().unwrap_or("?"),
        event["data"]["sequence"],
        event["timestamp"].as_str().unwrap_or("?"),
    );
    match event["data"]["resource"]["url"].as_str() {
        Some(url) => match listener.fetch(url).await {
            Ok((status, resource)) => println!("GET {url} → {status}\n{resource}"),
            Err(error) => println!("GET {url} failed: {error:#}"),
        },
        None => println!("the event links to no resource"),
    }
    if let Some(target) = &listener.forward {
        match listener.forward(target, &req, body.clone()).await {
            Ok(status) => println!("forwarded to {target} → {status}"),
            Err(error) => println!("forwarding to {target} failed: {error:#}"),
        }
    }
    HttpResponse::build(StatusCode::NO_CONTENT).finish()
}

impl Listener {
    /// The gateway's published key `kid`: read again when unknown, so a
    /// rotation is picked up.
    async fn published_key(&self, kid: &str) -> Option<Vec<u8>> {
        let url = self.gateway_keys.as_ref()?;
        let mut keys = self.keys.lock().await;
        if !keys.contains_key(kid) {
            match self.read_keys(url).await {
                Ok(read) => *keys = read,
                Err(error) => println!("cannot read {url}: {error:#}"),
            }
        }
        keys.get(kid).cloned()
    }

    async fn read_keys(&self, url: &Url) -> anyhow::Result<HashMap<String, Vec<u8>>> {
        let body = self
            .http
            .get(url.clone())
            .send()
            .await?
            .error_for_status()?
            .bytes()
            .await?;
        let set: Value = serde_json::from_slice(&body)?;
        let keys = set["keys"].as_array().context("no `keys` array")?;
        Ok(keys
            .iter()
            .filter(|key| key["kty"] == "OKP" && key["crv"] == "Ed25519")
            .filter_map(|key| {
                let x = URL_SAFE_NO_PAD.decode(key["x"].as_str()?).ok()?;
                Some((key["kid"].as_str()?.to_owned(), x))
            })
            .collect())
    }

    async fn fetch(&self, url: &str) -> anyhow::Result<(u16, String)> {
        let url = Url::parse(url)?;
        let token = self.token(&url).await?;
        let response = self.http.get(url).bearer_auth(token).send().await?;
        let status = response.status().as_u16();
        let text = response.text().await?;
        let pretty = serde_json::from_str::<Value>(&text)
            .and_then(|v| serde_json::to_string_pretty(&v))
            .unwrap_or(text);
        Ok((status, pretty))
    }

    /// A token from the resource's own gateway, reused until shortly before it expires.
    async fn token(&self, resource: &Url) -> anyhow::Result<String> {
        let mut cached = self.token.lock().await;
        if let Some((token, renew_at)) = cached.as_ref()
            && Instant::now() < *renew_at
        {
            return Ok(token.clone());
        }
        let endpoint = resource.join("/oauth/token")?;
        let response = self
            .http
            .post(endpoint)
            .basic_auth(&self.client_id, Some(&self.client_secret))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("grant_type=client_credentials")
            .send()
            .await?;
        let status = response.status();
        let body: Value = serde_json::from_str(&response.text().await?).unwrap_or_default();
        let token = body["access_token"]
            .as_str()
            .with_context(|| format!("token request answered {status}: {body}"))?
            .to_owned();
        let lifetime = body["expires_in"].as_u64().unwrap_or(60);
        let renew_at = Instant::now() + Duration::from_secs(lifetime.saturating_sub(30).max(1));
        *cached = Some((token.clone(), renew_at));
        Ok(token)
    }

    async fn forward(
        &self,
        target: &Url,
        req: &HttpRequest,
        body: web::Bytes,
    ) -> anyhow::Result<u16> {
        let mut request = self.http.post(target.clone()).body(body.to_vec());
        for name in [
            "content-type",
            "webhook-id",
            "webhook-timestamp",
            "webhook-signature",
        ] {
            if let Some(value) = req.headers().get(name).and_then(|v| v.to_str().ok()) {
                request = request.header(name, value);
            }
        }
        Ok(request.send().await?.status().as_u16())
    }
}

#[cfg(test)]
mod tests {
    use actix_web::test::TestRequest;

    use super::*;

    #[test]
    fn a_secret_comes_inline_or_from_a_file_trimmed_and_never_empty() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, "whsec_abc\n").unwrap();
        assert_eq!(
            secret_from(Some("inline".into()), None, "--secret").unwrap(),
            "inline"
        );
        assert_eq!(
            secret_from(None, Some(&file), "--secret").unwrap(),
            "whsec_abc"
        );
        assert_eq!(
            secret_from(Some("from the environment".into()), Some(&file), "--secret").unwrap(),
            "whsec_abc"
        );
        std::fs::write(&file, " \n").unwrap();
        let empty = secret_from(None, Some(&file), "--secret").unwrap_err();
        assert!(empty.to_string().contains("empty"), "{empty}");
        let missing = secret_from(None, Some(&dir.path().join("nope")), "--client-secret")
            .unwrap_err()
            .to_string();
        assert!(
            missing.contains("--client-secret-file") && missing.contains("nope"),
            "{missing}"
        );
    }

    #[test]
    fn only_a_fresh_request_signed_with_the_secret_is_accepted() {
        let secret = SigningSecret::generate();
        let body = br#"{"id":"evt_1"}"#;
        let request = |timestamp: i64, signature: &str| {
            TestRequest::post()
                .insert_header(("webhook-id", "evt_1"))
                .insert_header(("webhook-timestamp", timestamp.to_string()))
                .insert_header(("webhook-signature", signature))
                .to_http_request()
        };
        let now = 1_800_000_000;
        let good = signer::sign(&secret, "evt_1", now, body);
        assert_eq!(
            verify(Some(&secret), None, &request(now, &good), body, now),
            Ok(())
        );
        let rotated = format!("v1,bm90IGl0 {good}");
        assert_eq!(
            verify(Some(&secret), None, &request(now, &rotated), body, now),
            Ok(())
        );
        assert!(verify(Some(&secret), None, &request(now, &good), b"tampered", now).is_err());
        assert!(
            verify(
                Some(&SigningSecret::generate()),
                None,
                &request(now, &good),
                body,
                now
            )
            .is_err()
        );
        let stale = signer::sign(&secret, "evt_1", now - 600, body);
        assert!(verify(Some(&secret), None, &request(now - 600, &stale), body, now).is_err());
        assert!(
            verify(
                Some(&secret),
                None,
                &TestRequest::post().to_http_request(),
                body,
                now
            )
            .is_err()
        );
    }

    #[test]
    fn a_v1a_signature_verifies_with_the_published_key_it_names() {
        use aws_lc_rs::rand::SystemRandom;
        use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};

        let generate = || {
            let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
            Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap()
        };
        let pair = generate();
        let public = pair.public_key().as_ref().to_vec();
        let key = crate::delivery::webhook_keys::WebhookKey::from_pair(pair);
        let other = generate().public_key().as_ref().to_vec();
        let body = br#"{"id":"evt_1"}"#;
        let now = 1_800_000_000;
        let request = TestRequest::post()
            .insert_header(("webhook-id", "evt_1"))
            .insert_header(("webhook-timestamp", now.to_string()))
            .insert_header(("webhook-signature", key.sign("evt_1", now, body)))
            .to_http_request();
        assert_eq!(verify(None, Some(&public), &request, body, now), Ok(()));
        assert!(verify(None, Some(&other), &request, body, now).is_err());
        assert!(verify(None, Some(&public), &request, b"tampered", now).is_err());
        assert!(verify(None, None, &request, body, now).is_err());
    }
}
