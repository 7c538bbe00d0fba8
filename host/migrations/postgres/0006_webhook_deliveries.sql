-- aihost task store, PostgreSQL schema v6: durable webhook deliveries.
--
-- A task with a webhook_url gets one row per message to send. Terminal messages
-- (task.completed, task.failed, task.cancelled) and task.started (when webhook_events asks for
-- it) are written by triggers in the same transaction as the task's state change: a task that
-- reached its terminal state always has its message, across any crash. task.progress rows are
-- inserted by the consumer (throttled). A deliverer in any process claims due rows with a
-- lease (FOR UPDATE SKIP LOCKED), sends them signed, and records each attempt: delivered,
-- retried later (next_at) or dead after webhooks.max_age_secs. Rows go with their task (ON
-- DELETE CASCADE): retention prunes them together.
--
-- webhook_events: the optional events a client asked for, comma-separated
-- (`task.started,task.progress`); NULL for none.

ALTER TABLE tasks ADD COLUMN webhook_events text;

CREATE TABLE webhook_deliveries (
    id              text        NOT NULL PRIMARY KEY,
    task_id         uuid        NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    event           text        NOT NULL,
    url             text        NOT NULL,
    state           text        NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'delivered', 'dead')),
    attempts        integer     NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL,
    window_start    timestamptz NOT NULL,
    next_at         timestamptz NOT NULL,
    lease_until     timestamptz,
    last_attempt_at timestamptz,
    last_status     integer,
    last_error      text,
    delivered_at    timestamptz,
    payload         text
);

CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_at) WHERE state = 'pending';
CREATE INDEX webhook_deliveries_task ON webhook_deliveries (task_id);

CREATE FUNCTION tasks_webhook_delivery() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.webhook_url IS NULL OR OLD.status = NEW.status THEN
        RETURN NULL;
    END IF;
    IF NEW.status IN ('COMPLETED', 'FAILED', 'CANCELLED')
       AND OLD.status NOT IN ('COMPLETED', 'FAILED', 'CANCELLED') THEN
        INSERT INTO webhook_deliveries (id, task_id, event, url, created_at, window_start, next_at)
        VALUES ('msg_' || md5(random()::text || clock_timestamp()::text || NEW.id::text), NEW.id,
                'task.' || lower(NEW.status), NEW.webhook_url, now(), now(), now());
    ELSIF NEW.status = 'PROCESSING' AND OLD.status = 'PENDING'
          AND strpos(COALESCE(NEW.webhook_events, ''), 'task.started') > 0 THEN
        INSERT INTO webhook_deliveries (id, task_id, event, url, created_at, window_start, next_at)
        VALUES ('msg_' || md5(random()::text || clock_timestamp()::text || NEW.id::text), NEW.id, 'task.started',
                NEW.webhook_url, now(), now(), now());
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER tasks_webhook_delivery AFTER UPDATE OF status ON tasks
    FOR EACH ROW EXECUTE FUNCTION tasks_webhook_delivery();
