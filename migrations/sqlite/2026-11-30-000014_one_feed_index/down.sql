CREATE UNIQUE INDEX events_by_feed_position ON events (feed_position);
