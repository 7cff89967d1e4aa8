-- Workspaces isolate tenants: a client, and everything it writes or
-- subscribes to, belongs to one. Existing data goes to `default`.
-- Its limits; NULL: the configured default (limits.*_per_workspace,
-- events.retention_days). `pruned_through`: its events up to this feed
-- position have been pruned (the mark that was feed_retention's, now kept
-- per workspace since each prunes on its own schedule).
CREATE TABLE workspaces (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_at TIMESTAMP NOT NULL,
    max_subscriptions INTEGER,
    api_per_second INTEGER,
    api_burst INTEGER,
    retention_days INTEGER,
    pruned_through BIGINT NOT NULL DEFAULT 0
);
INSERT INTO workspaces (id, name, created_at, pruned_through)
    SELECT 'wsp_00000000000000000000000000', 'default', CURRENT_TIMESTAMP, pruned_through
    FROM feed_retention WHERE id = 1;
DROP TABLE feed_retention;

ALTER TABLE clients ADD COLUMN workspace_id TEXT NOT NULL DEFAULT 'wsp_00000000000000000000000000';
ALTER TABLE messages ADD COLUMN workspace_id TEXT NOT NULL DEFAULT 'wsp_00000000000000000000000000';
ALTER TABLE comments ADD COLUMN workspace_id TEXT NOT NULL DEFAULT 'wsp_00000000000000000000000000';
ALTER TABLE events ADD COLUMN workspace_id TEXT NOT NULL DEFAULT 'wsp_00000000000000000000000000';
ALTER TABLE subscriptions ADD COLUMN workspace_id TEXT NOT NULL DEFAULT 'wsp_00000000000000000000000000';

-- The hot queries read one workspace: its feed (or one message's part of
-- it), and its unfiltered subscriptions matching an event.
CREATE INDEX events_feed_of_workspace ON events (workspace_id, feed_position);
DROP INDEX events_by_message;
CREATE INDEX events_by_message ON events (workspace_id, message_id, feed_position);
DROP INDEX subscriptions_unfiltered;
CREATE INDEX subscriptions_unfiltered ON subscriptions (workspace_id, id) WHERE message_id IS NULL;
