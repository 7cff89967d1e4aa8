DROP TABLE delivery_attempts;
DROP TABLE deliveries;
DROP TABLE events;
DROP TABLE subscriptions;
ALTER TABLE messages DROP COLUMN last_sequence;
