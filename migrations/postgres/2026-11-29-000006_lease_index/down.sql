DROP INDEX deliveries_leased;
CREATE INDEX deliveries_leased ON deliveries (subscription_id, locked_by) WHERE locked_until IS NOT NULL;
