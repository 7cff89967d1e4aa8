-- The event feed's order. Positions are taken from one counter row as the
-- last step of the transaction that records an event, so they are handed out
-- in commit order: once a reader sees position p, every position below p has
-- committed. A serial id or a timestamp alone would let a reader skip an
-- event whose transaction committed after a later-numbered one.
CREATE TABLE feed_state (
    id INTEGER PRIMARY KEY NOT NULL,
    last_position BIGINT NOT NULL,
    -- events up to here were removed by retention; older cursors are gone
    pruned_through BIGINT NOT NULL
);
INSERT INTO feed_state (id, last_position, pruned_through) VALUES (1, 0, 0);

ALTER TABLE events ADD COLUMN feed_position BIGINT;
UPDATE events SET feed_position = (
    SELECT COUNT(*) FROM events earlier
    WHERE earlier.created_at < events.created_at
       OR (earlier.created_at = events.created_at AND earlier.id <= events.id)
);
UPDATE feed_state SET last_position = (SELECT COALESCE(MAX(feed_position), 0) FROM events);
CREATE UNIQUE INDEX events_by_feed_position ON events (feed_position);
-- Finds the deliveries of a fetched resource.
CREATE INDEX events_by_resource ON events (resource_id);
CREATE INDEX events_by_created_at ON events (created_at);
