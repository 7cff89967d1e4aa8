//! The API tests: one binary, the real server on a real database.
//! Every test in a `backend_tests!` block runs on SQLite and on PostgreSQL.

#![expect(
    clippy::unwrap_used,
    reason = "a test should stop at the first surprise"
)]

#[macro_use]
mod helpers;
mod indexes;

mod auth;
mod auth_first;
mod bench;
mod chaos;
mod cli;
mod cloudevents;
mod comments;
mod engine;
mod errors;
mod events;
mod fetch;
mod health;
mod idempotency;
mod lifecycle;
mod limits;
mod listen;
mod messages;
mod observability;
#[cfg(feature = "otlp")]
mod otlp;
mod portal;
mod races;
mod receiver;
mod signatures;
mod spec;
mod stored_text;
mod subscriptions;
mod webhooks;
mod workspaces;
