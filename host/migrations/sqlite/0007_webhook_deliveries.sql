-- aihost task store, SQLite schema v7: durable webhook deliveries.
--
-- A task with a webhook_url gets one row per message to send. Terminal messages
-- (task.completed, task.failed, task.cancelled) and task.started (when webhook_events asks for
-- it) are written by triggers in the same statement, hence the same transaction, as the task's
-- state change: a task that reached its terminal state always has its message, across any
-- crash. task.progress rows are inserted by the consumer (throttled). A deliverer in any
-- process claims due rows with a lease (through the one writer), sends them signed, and
-- records each attempt: delivered, retried later (next_at) or dead after webhooks.max_age_secs.
-- Rows go with their task (ON DELETE CASCADE): retention prunes them together.
--
-- webhook_events: the optional events a client asked for, comma-separated
-- (`task.started,task.progress`); NULL for none.

ALTER TABLE tasks ADD COLUMN webhook_events TEXT;

CREATE TABLE webhook_deliveries (
    id              TEXT    NOT NULL PRIMARY KEY,   -- the message id, `msg_` + 32 hex
    task_id         TEXT    NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    event           TEXT    NOT NULL,
    url             TEXT    NOT NULL,
    state           TEXT    NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'delivered', 'dead')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    created_at      INTEGER NOT NULL,
    window_start    INTEGER NOT NULL,               -- creation or last redelivery
    next_at         INTEGER NOT NULL,
    lease_until     INTEGER,
    last_attempt_at INTEGER,
    last_status     INTEGER,
    last_error      TEXT,
    delivered_at    INTEGER,
    payload         TEXT                            -- frozen at the first attempt
);

CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_at) WHERE state = 'pending';
CREATE INDEX webhook_deliveries_task ON webhook_deliveries (task_id);

CREATE TRIGGER tasks_webhook_terminal AFTER UPDATE OF status ON tasks
WHEN NEW.webhook_url IS NOT NULL
     AND OLD.status NOT IN ('COMPLETED', 'FAILED', 'CANCELLED')
     AND NEW.status IN ('COMPLETED', 'FAILED', 'CANCELLED')
BEGIN
    INSERT INTO webhook_deliveries (id, task_id, event, url, created_at, window_start, next_at)
    VALUES ('msg_' || lower(hex(randomblob(16))), NEW.id, 'task.' || lower(NEW.status),
            NEW.webhook_url, COALESCE(NEW.finished_at, 0), COALESCE(NEW.finished_at, 0),
            COALESCE(NEW.finished_at, 0));
END;

CREATE TRIGGER tasks_webhook_started AFTER UPDATE OF status ON tasks
WHEN NEW.webhook_url IS NOT NULL AND NEW.webhook_events IS NOT NULL
     AND OLD.status = 'PENDING' AND NEW.status = 'PROCESSING'
     AND instr(NEW.webhook_events, 'task.started') > 0
BEGIN
    INSERT INTO webhook_deliveries (id, task_id, event, url, created_at, window_start, next_at)
    VALUES ('msg_' || lower(hex(randomblob(16))), NEW.id, 'task.started', NEW.webhook_url,
            COALESCE(NEW.started_at, 0), COALESCE(NEW.started_at, 0), COALESCE(NEW.started_at, 0));
END;
