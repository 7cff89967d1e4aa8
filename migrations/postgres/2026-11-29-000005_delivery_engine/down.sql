ALTER TABLE feed_state ADD COLUMN pruned_through BIGINT NOT NULL DEFAULT 0;
UPDATE feed_state SET pruned_through = (SELECT pruned_through FROM feed_retention WHERE feed_retention.id = feed_state.id);
DROP TABLE feed_retention;
DROP TABLE workers;
DROP INDEX deliveries_leased;
CREATE INDEX deliveries_leased ON deliveries (locked_until) WHERE locked_until IS NOT NULL;
DROP INDEX deliveries_due;
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE status = 'pending';
