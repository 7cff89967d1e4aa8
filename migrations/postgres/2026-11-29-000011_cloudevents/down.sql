DROP INDEX subscriptions_to_verify;
ALTER TABLE subscriptions DROP COLUMN allowed_rate;
ALTER TABLE subscriptions DROP COLUMN verified_at;
ALTER TABLE subscriptions DROP COLUMN verification_error;
ALTER TABLE subscriptions DROP COLUMN verification_attempts;
ALTER TABLE subscriptions DROP COLUMN verification_due_at;
ALTER TABLE subscriptions DROP COLUMN verification;
ALTER TABLE subscriptions DROP COLUMN format;
