DROP TABLE portal_link_uses;
ALTER TABLE subscriptions DROP COLUMN last_success_at;
