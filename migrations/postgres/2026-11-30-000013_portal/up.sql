-- The subscriber portal.
-- A subscription's last successful delivery, for its health. Written at
-- most once a minute per subscription, so a busy one costs no write per
-- delivery.
ALTER TABLE subscriptions ADD COLUMN last_success_at TIMESTAMP;
-- Portal links that were exchanged for a token: each signs in once. A row
-- is kept until its link expires, then pruned.
CREATE TABLE portal_link_uses (
    jti TEXT PRIMARY KEY,
    client_id TEXT NOT NULL,
    used_at TIMESTAMP NOT NULL,
    expires_at TIMESTAMP NOT NULL
);
CREATE INDEX portal_link_uses_by_expiry ON portal_link_uses (expires_at);
