-- Where the work row was when its pending_start row was written, so that the
-- start statement reads the work's arguments with one heap visit instead of
-- a descent of work's primary key, whose depth grows with the backlog. A
-- hint only: a row updated or moved since no longer matches (the statement
-- checks the id too, and falls back to the key).
ALTER TABLE {{.Schema}}.pending_start ADD COLUMN IF NOT EXISTS work_ctid tid;
