-- Timestamps are UTC, microsecond precision.
CREATE TABLE messages (
    id TEXT PRIMARY KEY NOT NULL,
    text TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL
);

CREATE TABLE comments (
    id TEXT PRIMARY KEY NOT NULL,
    message_id TEXT NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    text TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL
);

-- Serves the cursor page: comments of one message in id order.
CREATE INDEX comments_by_message ON comments (message_id, id);
