//! thinhook: a notification-only ("thin") webhook gateway with a pull API.
//!
//! When something happens (a comment is posted on a message) thinhook tells
//! the subscribers' webhook URLs *that* it happened — event id, type, time and
//! a link — never *what* was written. Receivers fetch the resource through the
//! authenticated API, or catch up from the event feed.
//!
//! # Map
//!
//! - [`cli`] and `main.rs`: the `thinhook` binary and its subcommands.
//! - [`config`]: settings from defaults, a TOML file and `THINHOOK_*` variables.
//! - [`startup`]: builds the [`startup::Application`] (database, migrations, HTTP server).
//! - [`http`]: routes, one module per resource; extractor errors become
//!   problem documents ([`error`]).
//! - [`auth`]: OAuth 2.0 clients, EdDSA-signed JWT access tokens, the
//!   `Caller<Scope>` extractor every protected route takes.
//! - [`domain`]: values valid by construction — typed ids, text, cursors, URLs.
//! - [`db`]: one diesel code path over SQLite and PostgreSQL; repository
//!   functions take a connection so they compose in one transaction.
//! - [`delivery`]: where a delivery goes — outbox, dispatcher, signer,
//!   retry policy, the SSRF-safe client.
//! - [`listen`]: `thinhook listen`, a local receiver for development.
//! - [`bench`]: `thinhook bench`, a load generator with its own receiver
//!   that measures a gateway binary from the outside.
//! - [`telemetry`]: structured logs with a request id per request;
//!   [`metrics`]: what `GET /metrics` shows; [`trace`]: the W3C trace
//!   context an event carries from its request to its webhooks.
//!
//! # The path of one comment
//!
//! `POST /messages/{id}/comments` → the `Caller<MessagesWrite>` extractor
//! verifies the bearer token ([`auth`]) → [`http::messages`] parses the body
//! into domain types → a blocking task takes a pooled [`db::DbConnection`] and, in
//! one transaction, checks the message and inserts the comment
//! ([`db::messages`]) → `201 Created` with a `Location` that is the fetch URL
//! a webhook will later carry.

pub mod auth;
pub mod bench;
pub mod cli;
pub mod clock;
pub mod config;
pub mod db;
pub mod delivery;
pub mod domain;
pub mod error;
pub mod healthcheck;
pub mod http;
pub mod listen;
pub mod metrics;
#[cfg(feature = "otlp")]
pub mod otlp;
pub mod rate_limit;
pub mod retention;
pub mod secret_box;
pub mod startup;
pub mod telemetry;
pub mod trace;
