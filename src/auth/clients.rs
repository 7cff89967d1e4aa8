//! Registering API clients and checking their credentials.

use diesel::prelude::*;
use time::OffsetDateTime;

use super::scope::Scopes;
use super::secret::{self, ClientSecret};
use crate::clock::to_db;
use crate::db::models::ClientRow;
use crate::db::{DbConnection, clients};
use crate::domain::ClientId;

/// A client just registered, with the only copy of its secret.
#[derive(Debug)]
pub struct NewClient {
    pub id: ClientId,
    pub name: String,
    pub scopes: Scopes,
    pub secret: ClientSecret,
}

pub fn create(
    conn: &mut DbConnection,
    name: &str,
    scopes: Scopes,
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
        },
    )?;
    Ok(NewClient {
        id,
        name: name.to_owned(),
        scopes,
        secret,
    })
}

/// The client and the scopes it may ask for, if `client_id` names an active
/// client whose secret is `presented`. Takes about as long either way.
pub fn authenticate(
    conn: &mut DbConnection,
    client_id: &str,
    presented: &str,
) -> QueryResult<Option<(ClientId, Scopes)>> {
    let row = match ClientId::parse(client_id) {
        Ok(id) => clients::find(conn, id.as_str())?,
        Err(_) => None,
    };
    let Some(row) = row.filter(|row| row.revoked_at.is_none()) else {
        secret::verify_against_nothing(presented);
        return Ok(None);
    };
    if !secret::verify(presented, &row.secret_hash) {
        return Ok(None);
    }
    let (Ok(id), Ok(scopes)) = (ClientId::parse(&row.id), Scopes::parse(&row.scopes)) else {
        tracing::error!(
            client_id = row.id,
            "stored client has a malformed id or scopes"
        );
        return Ok(None);
    };
    Ok(Some((id, scopes)))
}
