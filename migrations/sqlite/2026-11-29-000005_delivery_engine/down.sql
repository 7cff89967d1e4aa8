ALTER TABLE feed_state ADD COLUMN pruned_through BIGINT NOT NULL DEFAULT 0;
UPDATE feed_state SET pruned_through = (SELECT pruned_through FROM feed_retention WHERE feed_retention.id = feed_state.id);
DROP TABLE feed_retention;
DROP TABLE workers;
CREATE TABLE events_old (
    id TEXT PRIMARY KEY NOT NULL,
    event_type TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    resource_id TEXT NOT NULL,
    resource_path TEXT NOT NULL,
    message_id TEXT NOT NULL,
    sequence BIGINT NOT NULL,
    created_at TIMESTAMP NOT NULL,
    feed_position BIGINT
);
INSERT INTO events_old SELECT * FROM events;
DROP TABLE events;
ALTER TABLE events_old RENAME TO events;
CREATE UNIQUE INDEX events_by_feed_position ON events (feed_position);
CREATE INDEX events_by_resource ON events (resource_id);
CREATE INDEX events_by_created_at ON events (created_at);
CREATE TABLE deliveries_old (
    id TEXT PRIMARY KEY NOT NULL,
    event_id TEXT NOT NULL REFERENCES events (id),
    subscription_id TEXT NOT NULL REFERENCES subscriptions (id) ON DELETE CASCADE,
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
);
INSERT INTO deliveries_old SELECT * FROM deliveries;
DROP TABLE deliveries;
ALTER TABLE deliveries_old RENAME TO deliveries;
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX deliveries_leased ON deliveries (locked_until) WHERE locked_until IS NOT NULL;
CREATE INDEX deliveries_by_subscription ON deliveries (subscription_id, id);
CREATE INDEX deliveries_by_event ON deliveries (event_id);
CREATE TABLE delivery_attempts_old (
    delivery_id TEXT NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    number INTEGER NOT NULL,
    started_at TIMESTAMP NOT NULL,
    duration_ms BIGINT NOT NULL,
    status_code INTEGER,
    error TEXT,
    response_excerpt TEXT,
    PRIMARY KEY (delivery_id, number)
);
INSERT INTO delivery_attempts_old SELECT * FROM delivery_attempts;
DROP TABLE delivery_attempts;
ALTER TABLE delivery_attempts_old RENAME TO delivery_attempts;
