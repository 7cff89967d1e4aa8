//! Rows as stored. Ids are kept as the strings the domain types produced;
//! timestamps are UTC.

use diesel::prelude::*;
use time::PrimitiveDateTime;

use super::schema::{comments, messages};

#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = messages)]
pub struct MessageRow {
    pub id: String,
    pub text: String,
    pub created_at: PrimitiveDateTime,
}

#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = comments)]
pub struct CommentRow {
    pub id: String,
    pub message_id: String,
    pub text: String,
    pub created_at: PrimitiveDateTime,
}
