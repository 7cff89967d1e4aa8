-- The pipelined engine claims per subscription (round robin, fairly) and
-- counts the leases each subscription holds: both indexes lead with the
-- subscription (made below, where the table is rebuilt).

-- The queue's rows are written many per event and updated once per attempt:
-- the foreign keys that checked each of them against its event,
-- subscription or delivery cost more than the rest of the write. The writer
-- writes an event, its deliveries and their attempts together, and deleting
-- a subscription or pruning events removes what hangs off them explicitly.
-- SQLite drops a constraint by rebuilding the table: the child first, so
-- that dropping the parent deletes nothing through it. The rebuilt tables
-- (and events) are WITHOUT ROWID: keyed by their text ids, a table and its
-- primary-key index are one B-tree instead of two, one page fewer to write
-- per row in every commit.
CREATE TABLE delivery_attempts_new (
    delivery_id TEXT NOT NULL,
    number INTEGER NOT NULL,
    started_at TIMESTAMP NOT NULL,
    duration_ms BIGINT NOT NULL,
    status_code INTEGER,
    error TEXT,
    response_excerpt TEXT,
    PRIMARY KEY (delivery_id, number)
) WITHOUT ROWID;
INSERT INTO delivery_attempts_new SELECT * FROM delivery_attempts;
DROP TABLE delivery_attempts;
ALTER TABLE delivery_attempts_new RENAME TO delivery_attempts;

CREATE TABLE deliveries_new (
    id TEXT PRIMARY KEY NOT NULL,
    event_id TEXT NOT NULL,
    subscription_id TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    next_attempt_at TIMESTAMP NOT NULL,
    locked_until TIMESTAMP,
    locked_by TEXT,
    last_status_code INTEGER,
    last_error TEXT,
    delivered_at TIMESTAMP,
    fetched_at TIMESTAMP,
    created_at TIMESTAMP NOT NULL
) WITHOUT ROWID;
INSERT INTO deliveries_new SELECT id, event_id, subscription_id, status, attempts, next_attempt_at,
    locked_until, locked_by, last_status_code, last_error, delivered_at, fetched_at, created_at
    FROM deliveries;
DROP TABLE deliveries;
ALTER TABLE deliveries_new RENAME TO deliveries;
CREATE INDEX deliveries_due ON deliveries (subscription_id, next_attempt_at, id) WHERE status = 'pending';
CREATE INDEX deliveries_leased ON deliveries (subscription_id, locked_by) WHERE locked_until IS NOT NULL;
CREATE INDEX deliveries_by_subscription ON deliveries (subscription_id, id);
CREATE INDEX deliveries_by_event ON deliveries (event_id);
CREATE TABLE events_new (
    id TEXT PRIMARY KEY NOT NULL,
    event_type TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    resource_id TEXT NOT NULL,
    resource_path TEXT NOT NULL,
    message_id TEXT NOT NULL,
    sequence BIGINT NOT NULL,
    created_at TIMESTAMP NOT NULL,
    feed_position BIGINT
) WITHOUT ROWID;
INSERT INTO events_new SELECT id, event_type, resource_type, resource_id, resource_path,
    message_id, sequence, created_at, feed_position FROM events;
DROP TABLE events;
ALTER TABLE events_new RENAME TO events;
CREATE UNIQUE INDEX events_by_feed_position ON events (feed_position);
CREATE INDEX events_by_resource ON events (resource_id);
-- (Retention walks the feed in order: events need no created_at index.)

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
