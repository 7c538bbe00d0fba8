-- aihost task store, PostgreSQL schema v1.
--
-- Conventions (the same values as the SQLite schema, in native types):
-- - ids are UUIDv7 (uuid order = creation order);
-- - timestamps are timestamptz, always written from the database's clock (now()), so the
--   clocks of many API and consumer machines never disagree about a lease;
-- - JSON values (input, result) are TEXT holding JSON: kept byte for byte (a JSON `null`
--   result stays distinct from no result), cast with `::json` to query them;
-- - progress and error are stored as two nullable columns each (both set or both NULL);
-- - updated_at changes with every write: a process whose LISTEN connection dropped re-reads
--   the tasks changed while it was away.

CREATE TABLE tasks (
    id               uuid             NOT NULL PRIMARY KEY,
    task_type        text             NOT NULL,
    status           text             NOT NULL
                     CHECK (status IN ('PENDING', 'PROCESSING', 'COMPLETED', 'FAILED', 'CANCELLED')),
    input            text             NOT NULL,
    priority         integer          NOT NULL,
    attempts         integer          NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    max_attempts     integer          NOT NULL CHECK (max_attempts >= 1),
    progress_percent double precision,
    progress_message text,
    result           text,
    error_code       text,
    error_message    text,
    created_at       timestamptz      NOT NULL,
    started_at       timestamptz,
    finished_at      timestamptz,
    run_at           timestamptz      NOT NULL,
    idempotency_key  text,
    webhook_url      text,
    worker           text,
    lease_until      timestamptz,
    cancel_requested boolean          NOT NULL DEFAULT false,
    updated_at       timestamptz      NOT NULL
);

-- Deduplication of client submissions.
CREATE UNIQUE INDEX tasks_idempotency_key ON tasks (idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- Claims: PENDING tasks of one type, highest priority first, then oldest. Partial, so it only
-- holds the queue itself. Also serves pending_by_type.
CREATE INDEX tasks_claim ON tasks (task_type, priority DESC, id) WHERE status = 'PENDING';

-- Stalled-task rescue: only PROCESSING rows, by lease expiry.
CREATE INDEX tasks_lease ON tasks (lease_until) WHERE status = 'PROCESSING';

-- Listing newest first, filtered by status or by type.
CREATE INDEX tasks_status_id ON tasks (status, id);
CREATE INDEX tasks_type_id ON tasks (task_type, id);

-- Consumers announce themselves and the task types they serve, and beat every few seconds.
CREATE TABLE consumers (
    worker        text        NOT NULL PRIMARY KEY,
    hostname      text        NOT NULL,
    pid           bigint      NOT NULL,
    version       text        NOT NULL,
    task_types    text[]      NOT NULL,
    started_at    timestamptz NOT NULL,
    heartbeat_at  timestamptz NOT NULL
);
