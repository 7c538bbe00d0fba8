-- aihost task store, SQLite schema v3: the hash of the request that created a task.
--
-- request_hash is the hex SHA-256 of the submitted task type, input and options (priority,
-- max_attempts, webhook_url), written by the API. A later submission with the same
-- idempotency_key and another hash is refused (`idempotency_conflict`). Rows written before
-- this version have NULL here and keep answering any submission with their key, as they did.

ALTER TABLE tasks ADD COLUMN request_hash TEXT;
