-- aihost task store, SQLite schema v5: the change log other processes read task events from.
--
-- Several processes may share one SQLite file on one machine (`aihost api` and `aihost
-- consumer`). Each publishes its own changes in process; this log lets the others publish them
-- too. Every process's writer connection holds TEMP triggers (installed at open, not part of
-- the schema) that append one row per event-producing change of `tasks`: the task, the event
-- kind (`created`, `started`, `progress`, `retrying`, `cancel_requested`, `completed`,
-- `failed`, `cancelled`) and the writing process's origin (a random number per open store).
-- Each process polls `PRAGMA data_version` on a connection of its own and reads the rows of
-- other origins after the last one it saw. Rows are pruned after about a minute.
--
-- change_seq is the rowid: appended at the end of the b-tree, never reused while the newest row
-- stays (pruning never deletes it).

CREATE TABLE task_changes (
    change_seq    INTEGER NOT NULL PRIMARY KEY,
    change_task   TEXT    NOT NULL,
    change_kind   TEXT    NOT NULL,
    change_origin INTEGER NOT NULL
);
