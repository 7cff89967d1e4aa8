//! Registering API clients and checking their credentials.

use diesel::prelude::*;
use time::OffsetDateTime;

use super::scope::Scopes;
use super::secret::{self, ClientSecret};
use crate::clock::to_db;
use crate::db::models::ClientRow;
use crate::db::{DbConnection, clients};
use crate::domain::{ClientId, WorkspaceId};

/// A client just registered, with the only copy of its secret.
#[derive(Debug)]
pub struct NewClient {
    pub id: ClientId,
    pub name: String,
    pub scopes: Scopes,
    pub secret: ClientSecret,
    pub workspace: WorkspaceId,
}

pub fn create(
    conn: &mut DbConnection,
    name: &str,
    scopes: Scopes,
    workspace: &WorkspaceId,
    now: OffsetDateTime,
) -> QueryResult<NewClient> {
    let id = ClientId::generate();
    let secret = ClientSecret::generate();
    clients::insert(
        conn,
        &ClientRow {
            id: id.to_string(),
            name: name.to_owned(),
            secret_hash: secret.hash(),
            scopes: scopes.to_string(),
            created_at: to_db(now),
            revoked_at: None,
            workspace_id: workspace.to_string(),
        },
    )?;
    Ok(NewClient {
        id,
        name: name.to_owned(),
        scopes,
        secret,
        workspace: workspace.clone(),
    })
}

/// The active client named `client_id`, whose secret is then checked by
/// [`check_secret`] with no connection held.
pub fn find_active(
    conn: &mut DbConnection,
    client_id: &ClientId,
) -> QueryResult<Option<ClientRow>> {
    Ok(clients::find(conn, client_id.as_str())?.filter(|row| row.revoked_at.is_none()))
}

/// A client whose secret was presented: what its tokens may carry.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub id: ClientId,
    /// The scopes it may ask for.
    pub scopes: Scopes,
    pub workspace: WorkspaceId,
}

/// The client's credentials, if `presented` is the secret of `client`. Takes about as long when there is no such client, so
/// response times do not tell which client ids exist. CPU-bound (argon2id):
/// run it off the async workers.
pub fn check_secret(client: Option<&ClientRow>, presented: &str) -> Option<Credentials> {
    let Some(row) = client else {
        secret::verify_against_nothing(presented);
        return None;
    };
    if !secret::verify(presented, &row.secret_hash) {
        return None;
    }
    let (Ok(id), Ok(scopes), Ok(workspace)) = (
        ClientId::parse(&row.id),
        Scopes::parse(&row.scopes),
        WorkspaceId::parse(&row.workspace_id),
    ) else {
        tracing::error!(
            client_id = row.id,
            "stored client has a malformed id, scopes or workspace"
        );
        return None;
    };
    Some(Credentials {
        id,
        scopes,
        workspace,
    })
}
