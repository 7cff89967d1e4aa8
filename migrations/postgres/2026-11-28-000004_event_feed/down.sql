DROP INDEX events_by_created_at;
DROP INDEX events_by_resource;
DROP INDEX events_by_feed_position;
ALTER TABLE events DROP COLUMN feed_position;
DROP TABLE feed_state;
