-- The pipelined engine claims per subscription (round robin, fairly) and
-- counts the leases each subscription holds: index both by subscription.
DROP INDEX deliveries_due;
CREATE INDEX deliveries_due ON deliveries (subscription_id, next_attempt_at, id) WHERE status = 'pending';
DROP INDEX deliveries_leased;
CREATE INDEX deliveries_leased ON deliveries (subscription_id, locked_by) WHERE locked_until IS NOT NULL;

-- The queue's rows are written many per event and updated once per attempt:
-- the foreign keys that checked each of them against its event,
-- subscription or delivery cost more than the rest of the write. The writer
-- writes an event, its deliveries and their attempts together, and deleting
-- a subscription or pruning events removes what hangs off them explicitly.
ALTER TABLE deliveries DROP CONSTRAINT deliveries_event_id_fkey;
ALTER TABLE deliveries DROP CONSTRAINT deliveries_subscription_id_fkey;
ALTER TABLE delivery_attempts DROP CONSTRAINT delivery_attempts_delivery_id_fkey;
-- Retention walks the feed in order instead.
DROP INDEX events_by_created_at;

-- Dispatching processes. On PostgreSQL each holds a session advisory lock on
-- its `lock_key` while it lives: a worker whose key can be locked by another
-- is dead, and its leases are taken back at once. (SQLite has one
-- dispatching process, which releases every lease when it starts.)
CREATE TABLE workers (
    id TEXT PRIMARY KEY NOT NULL,
    lock_key BIGINT NOT NULL,
    started_at TIMESTAMP NOT NULL
);

-- Retention's mark lives apart from the feed counter, so that pruning never
-- holds the counter row, which event writers take last and hold to commit.
CREATE TABLE feed_retention (
    id INTEGER PRIMARY KEY NOT NULL,
    pruned_through BIGINT NOT NULL
);
INSERT INTO feed_retention (id, pruned_through) SELECT id, pruned_through FROM feed_state;
ALTER TABLE feed_state DROP COLUMN pruned_through;

-- Records a batch of attempt outcomes in one round trip: each delivery still
-- leased to `worker` gets its new state (its lease released) and its
-- attempt row; returns the ids of those recorded. A loop of primary-key
-- updates, so the cost stays proportional to the batch whatever the
-- planner's statistics say (a set-based UPDATE … FROM joined the batch
-- with the queue in quadratic time on a young table).
CREATE FUNCTION thinhook_record_outcomes(
    ids TEXT[], statuses TEXT[], numbers INTEGER[], next_attempts TIMESTAMP[],
    status_codes INTEGER[], errors TEXT[], delivered TIMESTAMP[],
    started TIMESTAMP[], durations BIGINT[], excerpts TEXT[], worker TEXT
) RETURNS SETOF TEXT LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1 .. COALESCE(array_length(ids, 1), 0) LOOP
        UPDATE deliveries SET status = statuses[i], attempts = numbers[i],
            next_attempt_at = next_attempts[i], last_status_code = status_codes[i],
            last_error = errors[i], delivered_at = delivered[i],
            locked_until = NULL, locked_by = NULL
        WHERE id = ids[i] AND locked_by = worker AND status = 'pending';
        IF FOUND THEN
            INSERT INTO delivery_attempts
                (delivery_id, number, started_at, duration_ms, status_code, error, response_excerpt)
            VALUES (ids[i], numbers[i], started[i], durations[i], status_codes[i], errors[i], excerpts[i]);
            RETURN NEXT ids[i];
        END IF;
    END LOOP;
END
$$;
