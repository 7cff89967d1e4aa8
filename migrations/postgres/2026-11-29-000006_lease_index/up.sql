-- Claims count each subscription's live leases (`locked_until > now`): with
-- the lease end in the index, the count reads the index alone.
DROP INDEX deliveries_leased;
CREATE INDEX deliveries_leased ON deliveries (subscription_id, locked_until) WHERE locked_until IS NOT NULL;
