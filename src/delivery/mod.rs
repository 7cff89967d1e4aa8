//! Webhook delivery: from an event in the outbox to a signed request at the
//! subscriber's endpoint.
//!
//! The writer's outbox ([`crate::db::outbox`]) records the event and its
//! deliveries in the resource's own transaction, leased to this process →
//! [`dispatcher`] takes them at commit (or claims due ones,
//! [`crate::db::queue`]) and keeps attempts in flight, fairly across
//! subscriptions → [`attempt`] builds the thin body ([`payload`]), signs it
//! ([`signer`]), sends it through the SSRF-safe [`client`] ([`ssrf`]) and
//! decides on a retry ([`retry`]) → the outcomes are recorded in batches,
//! fenced by the lease.
//!
//! A CloudEvents subscription is delivered to only once its receiver has
//! consented in the abuse-protection [`handshake`]; until then its
//! deliveries are held.

pub mod attempt;
pub mod client;
pub mod dispatcher;
pub mod handshake;
pub mod payload;
pub mod retry;
pub mod signer;
pub mod ssrf;
pub mod webhook_keys;
