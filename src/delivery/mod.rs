//! Webhook delivery: from an event in the outbox to a signed request at the
//! subscriber's endpoint.
//!
//! [`outbox`] writes the event and its deliveries in the resource's own
//! transaction → [`dispatcher`] claims due deliveries under a lease
//! ([`crate::db::queue`]) → builds the thin body ([`payload`]), signs it
//! ([`signer`]) → sends it through the SSRF-safe [`client`] ([`ssrf`]) →
//! records the attempt and schedules a retry ([`retry`]) or not.

pub mod client;
pub mod dispatcher;
pub mod outbox;
pub mod payload;
pub mod retry;
pub mod signer;
pub mod ssrf;
