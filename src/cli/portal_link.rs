//! `thinhook portal-link`: a single-use, expiring sign-in to the subscriber
//! portal for one client, for the operator to hand over (as Svix's magic
//! links). The link is exchanged at `POST /oauth/token` for a token that
//! manages the client's subscriptions, in its workspace.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::auth::portal_links;
use crate::auth::{Scope, Scopes};
use crate::clock::{SharedClock, SystemClock};
use crate::config::Settings;
use crate::db::Database;
use crate::domain::{ClientId, WorkspaceId};

#[derive(Debug, clap::Args)]
pub struct PortalLinkArgs {
    /// The client (`cli_…`) the link signs in as.
    #[arg(long, value_name = "ID", value_parser = ClientId::parse)]
    client: ClientId,
    /// How long the link may be used, in minutes (once), 1 to 1440.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=1440))]
    minutes: u64,
}

pub fn run(db: &Database, settings: &Settings, args: &PortalLinkArgs) -> anyhow::Result<()> {
    let mut conn = db.get()?;
    let client = crate::db::clients::find(&mut conn, args.client.as_str())?
        .with_context(|| format!("no client `{}`", args.client))?;
    anyhow::ensure!(
        client.revoked_at.is_none(),
        "client `{}` is revoked",
        args.client
    );
    let manages = Scopes::parse(&client.scopes)
        .is_ok_and(|scopes| scopes.contains(Scope::SubscriptionsManage));
    anyhow::ensure!(
        manages,
        "client `{}` may not manage subscriptions (scope subscriptions:manage), which is all the portal does",
        args.client
    );
    let workspace = WorkspaceId::parse(&client.workspace_id)?;

    let base = crate::startup::configured_base_url(settings);
    let policy = crate::startup::token_policy(settings, &base);
    let secrets = Arc::new(crate::startup::open_secrets(db, &settings.secrets)?);
    let clock: SharedClock = Arc::new(SystemClock);
    let keys = crate::startup::key_ring(settings, db, &secrets, &clock, &policy)?;
    let key = keys.signing_key(&mut conn)?;
    let now = clock.now_utc();
    let lifetime = Duration::from_secs(args.minutes * 60);
    let (link, claims) =
        portal_links::issue(&key, &policy, &args.client, &workspace, now, lifetime)?;
    println!("{base}/portal/#link={link}");
    let expires = time::OffsetDateTime::from_unix_timestamp(claims.exp)?
        .format(&time::format_description::well_known::Rfc3339)?;
    eprintln!(
        "signs in as {} (workspace {workspace}) once, until {expires}",
        args.client
    );
    Ok(())
}
