ALTER TABLE comments DROP COLUMN author_client_id;
ALTER TABLE messages DROP COLUMN author_client_id;
DROP TABLE signing_keys;
DROP TABLE clients;
