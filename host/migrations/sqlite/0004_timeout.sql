-- aihost task store, SQLite schema v4: the task's own time limit.
--
-- timeout_secs is the `timeout_secs` of the submitted envelope (seconds one attempt may run),
-- NULL when the client set none; the consumer then applies the configured or plugin default.

ALTER TABLE tasks ADD COLUMN timeout_secs INTEGER;
