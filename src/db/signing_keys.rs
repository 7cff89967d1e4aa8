//! Repository functions for the Ed25519 keys that sign access tokens and
//! webhooks (`v1a`): each kind has its own newest key and rotation.

use diesel::prelude::*;
use time::PrimitiveDateTime;

use super::DbConnection;
use super::models::SigningKeyRow;
use super::schema::signing_keys;

/// What a key signs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Tokens,
    Webhooks,
}

impl Purpose {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tokens => "token",
            Self::Webhooks => "webhook",
        }
    }
}

pub fn insert(conn: &mut DbConnection, key: &SigningKeyRow) -> QueryResult<()> {
    diesel::insert_into(signing_keys::table)
        .values(key)
        .execute(conn)
        .map(drop)
}

/// The key that signs now: the newest one of `purpose` not retired.
pub fn active(conn: &mut DbConnection, purpose: Purpose) -> QueryResult<Option<SigningKeyRow>> {
    signing_keys::table
        .filter(signing_keys::purpose.eq(purpose.as_str()))
        .filter(signing_keys::retired_at.is_null())
        .order((signing_keys::created_at.desc(), signing_keys::kid.desc()))
        .select(SigningKeyRow::as_select())
        .first(conn)
        .optional()
}

/// Every key of `purpose`, newest first.
pub fn list(conn: &mut DbConnection, purpose: Purpose) -> QueryResult<Vec<SigningKeyRow>> {
    signing_keys::table
        .filter(signing_keys::purpose.eq(purpose.as_str()))
        .order((signing_keys::created_at.desc(), signing_keys::kid.desc()))
        .select(SigningKeyRow::as_select())
        .load(conn)
}

/// Keys of `purpose` that may still verify: unretired, or retired after `since`.
pub fn verifying(
    conn: &mut DbConnection,
    purpose: Purpose,
    since: PrimitiveDateTime,
) -> QueryResult<Vec<SigningKeyRow>> {
    signing_keys::table
        .filter(signing_keys::purpose.eq(purpose.as_str()))
        .filter(
            signing_keys::retired_at
                .is_null()
                .or(signing_keys::retired_at.gt(since)),
        )
        .order(signing_keys::created_at.desc())
        .select(SigningKeyRow::as_select())
        .load(conn)
}

/// Retires every key of `purpose` still signing; returns how many.
pub fn retire_active(
    conn: &mut DbConnection,
    purpose: Purpose,
    at: PrimitiveDateTime,
) -> QueryResult<usize> {
    diesel::update(
        signing_keys::table
            .filter(signing_keys::purpose.eq(purpose.as_str()))
            .filter(signing_keys::retired_at.is_null()),
    )
    .set(signing_keys::retired_at.eq(at))
    .execute(conn)
}

/// One secret sealed with the secrets key, and what it is bound to: the
/// newest signing key, else any subscription's secret. `None` in a database
/// that holds none yet.
pub fn sealed_sample(conn: &mut DbConnection) -> QueryResult<Option<(String, String)>> {
    use super::schema::subscriptions;
    let key = signing_keys::table
        .order(signing_keys::created_at.desc())
        .select((signing_keys::private_key, signing_keys::kid))
        .first(conn)
        .optional()?;
    if key.is_some() {
        return Ok(key);
    }
    subscriptions::table
        .select((subscriptions::secret, subscriptions::id))
        .first(conn)
        .optional()
}
