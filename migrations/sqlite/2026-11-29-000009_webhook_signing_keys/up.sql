-- Ed25519 keys also sign webhooks (Standard Webhooks `v1a`): one table of
-- keys, told apart by what they sign. Their public halves are published at
-- /.well-known/webhook-keys.json.
ALTER TABLE signing_keys ADD COLUMN purpose TEXT NOT NULL DEFAULT 'token';
-- How a subscription's webhooks are signed: `v1` (HMAC with its secret),
-- `v1a` (Ed25519 with the gateway's webhook key) or `v1 v1a` (both).
ALTER TABLE subscriptions ADD COLUMN signature_scheme TEXT NOT NULL DEFAULT 'v1';
