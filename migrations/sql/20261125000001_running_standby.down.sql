ALTER TABLE {{.Schema}}.pending_completion DROP COLUMN IF EXISTS successor;
ALTER TABLE {{.Schema}}.running DROP COLUMN IF EXISTS standby;
