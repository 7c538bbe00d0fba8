-- aihost task store, PostgreSQL schema v2: the submitting request's trace context.
--
-- trace_parent is W3C `traceparent` text (`00-{trace id}-{span id}-{flags}`), set when the
-- service exports traces (log.otlp_endpoint), NULL otherwise. The store never reads it; the
-- consumer that claims the task makes it the parent of the attempt's span.

ALTER TABLE tasks ADD COLUMN trace_parent text;
