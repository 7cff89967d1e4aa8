DROP FUNCTION thinhook_record_outcomes;
ALTER TABLE feed_state ADD COLUMN pruned_through BIGINT NOT NULL DEFAULT 0;
UPDATE feed_state SET pruned_through = (SELECT pruned_through FROM feed_retention WHERE feed_retention.id = feed_state.id);
DROP TABLE feed_retention;
DROP TABLE workers;
CREATE INDEX events_by_created_at ON events (created_at);
ALTER TABLE delivery_attempts ADD CONSTRAINT delivery_attempts_delivery_id_fkey
    FOREIGN KEY (delivery_id) REFERENCES deliveries (id) ON DELETE CASCADE;
ALTER TABLE deliveries ADD CONSTRAINT deliveries_subscription_id_fkey
    FOREIGN KEY (subscription_id) REFERENCES subscriptions (id) ON DELETE CASCADE;
ALTER TABLE deliveries ADD CONSTRAINT deliveries_event_id_fkey
    FOREIGN KEY (event_id) REFERENCES events (id);
DROP INDEX deliveries_leased;
CREATE INDEX deliveries_leased ON deliveries (locked_until) WHERE locked_until IS NOT NULL;
DROP INDEX deliveries_due;
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE status = 'pending';
