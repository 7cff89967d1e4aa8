-- The W3C traceparent of the request that created the event; each webhook
-- attempt sends it on, with a span of its own.
ALTER TABLE events ADD COLUMN traceparent TEXT;
