-- Matching an event to its subscriptions reads the unfiltered ones and
-- those of the event's message, each by its own index; so do the quotas.
CREATE INDEX subscriptions_by_message ON subscriptions (message_id, id) WHERE message_id IS NOT NULL;
CREATE INDEX subscriptions_unfiltered ON subscriptions (id) WHERE message_id IS NULL;
-- The feed of one message.
CREATE INDEX events_by_message ON events (message_id, feed_position);
