ALTER TABLE {{.Schema}}.pending_start DROP COLUMN IF EXISTS work_ctid;
