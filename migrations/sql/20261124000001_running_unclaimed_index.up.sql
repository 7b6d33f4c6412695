-- running kept an index on (pool, claimed_by) for claims and heartbeats. The
-- leading process claims its own work in the statement that inserts the
-- running row, so almost every key in that index was the same (pool, leader
-- worker id), and maintaining it was a measurable share of starting an item
-- (examples/bench drain: about 10% of throughput). Claims by other processes
-- only look for unclaimed rows, which a partial index covers while staying
-- empty on the common path; heartbeats, releases and the recovery pass read
-- the pool's running rows, which MaxParallelism bounds.
DROP INDEX IF EXISTS {{.Schema}}.running_pool_claimed_by_idx;
CREATE INDEX IF NOT EXISTS running_unclaimed_idx ON {{.Schema}}.running (pool) WHERE claimed_by IS NULL;
