DROP INDEX events_by_message;
DROP INDEX subscriptions_unfiltered;
DROP INDEX subscriptions_by_message;
