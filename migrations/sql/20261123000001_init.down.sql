-- Drops every pgworkpool table. The schema itself is kept: it may hold the
-- migrations table that records this rollback, or the host's own objects.
DROP TABLE IF EXISTS {{.Schema}}.workers;
DROP TABLE IF EXISTS {{.Schema}}.config;
DROP TABLE IF EXISTS {{.Schema}}.run_status;
DROP TABLE IF EXISTS {{.Schema}}.internal_state;
DROP TABLE IF EXISTS {{.Schema}}.running;
DROP TABLE IF EXISTS {{.Schema}}.pending_cancelation;
DROP TABLE IF EXISTS {{.Schema}}.pending_completion;
DROP TABLE IF EXISTS {{.Schema}}.pending_start;
DROP TABLE IF EXISTS {{.Schema}}.work;
