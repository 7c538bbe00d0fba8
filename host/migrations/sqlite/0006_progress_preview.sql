-- aihost task store, SQLite schema v6: the latest live preview of the running attempt.
--
-- progress_preview is JSON `{"key", "url", "content_type", "n"}` naming the preview image a
-- plugin last reported (stored under `previews/{task}/{attempt}/`), NULL when there is none.
-- Cleared with the progress at each attempt's start and end.

ALTER TABLE tasks ADD COLUMN progress_preview TEXT;
