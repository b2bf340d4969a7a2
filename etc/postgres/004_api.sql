-- Reads of the HTTP API (gstratum/ops/http.py).

-- A user's workers are the logins USER and USER.*: `worker LIKE 'USER.%'` reads only that user's rollup rows through
-- this index in any database collation (the primary key's collation order keeps a prefix together only under "C").
-- Written once per worker and minute, like the primary key.
CREATE INDEX IF NOT EXISTS worker_minutes_user_idx ON worker_minutes (worker text_pattern_ops, minute);
