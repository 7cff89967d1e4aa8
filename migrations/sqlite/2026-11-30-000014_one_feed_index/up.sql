-- The feed is read per workspace (events_feed_of_workspace), so the global
-- index on feed_position only cost every event insert one more index
-- entry. Positions stay unique without it: one counter hands them out,
-- under a row lock held to commit.
DROP INDEX events_by_feed_position;
