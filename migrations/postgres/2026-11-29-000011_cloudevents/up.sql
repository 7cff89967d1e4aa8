-- What a subscription's webhooks look like: `standard-webhooks` (the thin
-- JSON body), `cloudevents` (a CloudEvent in structured mode) or
-- `cloudevents-binary` (its attributes in `ce-` headers).
ALTER TABLE subscriptions ADD COLUMN format TEXT NOT NULL DEFAULT 'standard-webhooks';
-- The CloudEvents abuse-protection handshake: `not_required` (Standard
-- Webhooks), `pending` (to ask, at verification_due_at), `verified` or
-- `refused`. Deliveries of a pending or refused subscription are held.
ALTER TABLE subscriptions ADD COLUMN verification TEXT NOT NULL DEFAULT 'not_required';
ALTER TABLE subscriptions ADD COLUMN verification_due_at TIMESTAMP;
ALTER TABLE subscriptions ADD COLUMN verification_attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE subscriptions ADD COLUMN verification_error TEXT;
ALTER TABLE subscriptions ADD COLUMN verified_at TIMESTAMP;
-- WebHook-Allowed-Rate, in requests per minute; NULL: no limit.
ALTER TABLE subscriptions ADD COLUMN allowed_rate INTEGER;
CREATE INDEX subscriptions_to_verify ON subscriptions (verification_due_at)
    WHERE verification = 'pending';
