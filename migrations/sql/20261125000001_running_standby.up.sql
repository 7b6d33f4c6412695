ALTER TABLE {{.Schema}}.running ADD COLUMN IF NOT EXISTS standby boolean NOT NULL DEFAULT false;
ALTER TABLE {{.Schema}}.pending_completion ADD COLUMN IF NOT EXISTS successor bigint;
