DROP INDEX subscriptions_unfiltered;
CREATE INDEX subscriptions_unfiltered ON subscriptions (id) WHERE message_id IS NULL;
DROP INDEX events_feed_of_workspace;
DROP INDEX events_by_message;
CREATE INDEX events_by_message ON events (message_id, feed_position);
ALTER TABLE subscriptions DROP COLUMN workspace_id;
ALTER TABLE events DROP COLUMN workspace_id;
ALTER TABLE comments DROP COLUMN workspace_id;
ALTER TABLE messages DROP COLUMN workspace_id;
ALTER TABLE clients DROP COLUMN workspace_id;
CREATE TABLE feed_retention (
    id INTEGER PRIMARY KEY NOT NULL,
    pruned_through BIGINT NOT NULL
);
INSERT INTO feed_retention (id, pruned_through) SELECT 1, COALESCE(MAX(pruned_through), 0) FROM workspaces;
DROP TABLE workspaces;
