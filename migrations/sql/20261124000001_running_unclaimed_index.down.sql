DROP INDEX IF EXISTS {{.Schema}}.running_unclaimed_idx;
CREATE INDEX IF NOT EXISTS running_pool_claimed_by_idx ON {{.Schema}}.running (pool, claimed_by);
