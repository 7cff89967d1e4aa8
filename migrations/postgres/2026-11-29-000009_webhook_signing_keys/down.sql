ALTER TABLE subscriptions DROP COLUMN signature_scheme;
ALTER TABLE signing_keys DROP COLUMN purpose;
