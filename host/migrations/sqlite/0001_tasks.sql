-- aihost task store, SQLite schema v1.
--
-- Conventions:
-- - ids are UUIDv7 in canonical lowercase hyphenated TEXT form: text order = creation order;
-- - timestamps are INTEGER milliseconds since the Unix epoch (UTC);
-- - JSON values (input, result) are TEXT;
-- - progress and error are stored as two nullable columns each (both set or both NULL).

CREATE TABLE tasks (
    id               TEXT    NOT NULL PRIMARY KEY,
    task_type        TEXT    NOT NULL,
    status           TEXT    NOT NULL
                     CHECK (status IN ('PENDING', 'PROCESSING', 'COMPLETED', 'FAILED', 'CANCELLED')),
    input            TEXT    NOT NULL,
    priority         INTEGER NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    max_attempts     INTEGER NOT NULL CHECK (max_attempts >= 1),
    progress_percent REAL,
    progress_message TEXT,
    result           TEXT,
    error_code       TEXT,
    error_message    TEXT,
    created_at       INTEGER NOT NULL,
    started_at       INTEGER,
    finished_at      INTEGER,
    run_at           INTEGER NOT NULL,
    idempotency_key  TEXT,
    webhook_url      TEXT,
    worker           TEXT,
    lease_until      INTEGER,
    cancel_requested INTEGER NOT NULL DEFAULT 0 CHECK (cancel_requested IN (0, 1))
);

-- Deduplication of client submissions.
CREATE UNIQUE INDEX tasks_idempotency_key ON tasks (idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- Claims: PENDING tasks of one type, highest priority first, then oldest (id). Partial, so it
-- only holds the queue itself; run_at is the last column so the `run_at <= now` filter is
-- checked from the index without reading the row, while the order needs no sort.
-- Also serves pending_by_type (pinned with INDEXED BY in the store).
CREATE INDEX tasks_claim ON tasks (task_type, priority DESC, id, run_at)
    WHERE status = 'PENDING';

-- Listing newest first, filtered by status or by type (the primary key serves no filter).
-- tasks_status_id also serves the stalled-task rescue: PROCESSING rows are few (bounded by
-- worker concurrency), so a lease index would cost every claim and finish for little.
CREATE INDEX tasks_status_id ON tasks (status, id);
CREATE INDEX tasks_type_id ON tasks (task_type, id);
