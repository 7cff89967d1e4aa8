-- The pipelined engine claims per subscription (round robin, fairly) and
-- counts the leases each subscription holds: index both by subscription.
DROP INDEX deliveries_due;
CREATE INDEX deliveries_due ON deliveries (subscription_id, next_attempt_at, id) WHERE status = 'pending';
DROP INDEX deliveries_leased;
CREATE INDEX deliveries_leased ON deliveries (subscription_id, locked_by) WHERE locked_until IS NOT NULL;

-- Dispatching processes. On PostgreSQL each holds a session advisory lock on
-- its `lock_key` while it lives: a worker whose key can be locked by another
-- is dead, and its leases are taken back at once. (SQLite has one
-- dispatching process, which releases every lease when it starts.)
CREATE TABLE workers (
    id TEXT PRIMARY KEY NOT NULL,
    lock_key BIGINT NOT NULL,
    started_at TIMESTAMP NOT NULL
);

-- Retention's mark lives apart from the feed counter, so that pruning never
-- holds the counter row, which event writers take last and hold to commit.
CREATE TABLE feed_retention (
    id INTEGER PRIMARY KEY NOT NULL,
    pruned_through BIGINT NOT NULL
);
INSERT INTO feed_retention (id, pruned_through) SELECT id, pruned_through FROM feed_state;
ALTER TABLE feed_state DROP COLUMN pruned_through;
