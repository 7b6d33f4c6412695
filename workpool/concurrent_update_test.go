package workpool_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgworkpool/pgworkpool/workpool"
)

// TestResultSurvivesConcurrentUpdate: a result must be recorded even when
// another transaction updates its work row at the same moment (the loop
// marking it canceled does). Under READ COMMITTED the update gives the row
// a new version; recordResults once fenced on the old version's ctid, so
// the recheck after the lock wait dropped the valid result as stale and
// left the work claimed and unfinished (found by make soak: 33 items in 10
// minutes, rescued only by the stranded-claim release, which ran them
// twice). The test holds a no-op update of the row open while the result
// arrives, waits until the result's statement waits for that lock, then
// commits.
func TestResultSurvivesConcurrentUpdate(t *testing.T) {
	t.Parallel()
	e := newAPIEnv(t)
	p := e.pool(workpool.Config{MaxParallelism: 2})
	started := make(chan struct{}, 1)
	release := make(chan struct{})
	f := mustRegister(t, p, "f", func(ctx context.Context, a num) (int, error) {
		started <- struct{}{}
		<-release
		return a.N, nil
	})
	done := mustOnComplete(t, e, p, "done")
	start(t, p)
	id := enqueue(t, p, f, num{N: 5}, workpool.OnComplete(done, ""))
	recv(t, started, 10*time.Second, "the handler to start")

	ctx := context.Background()
	tx, err := e.db.DB.BeginTx(ctx, nil)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback() }()
	var pid int
	require.NoError(t, tx.QueryRowContext(ctx, "SELECT pg_backend_pid()").Scan(&pid))
	_, err = tx.ExecContext(ctx, "UPDATE "+e.schema+".work SET label = label WHERE id = $1", int64(id))
	require.NoError(t, err)

	close(release)
	waitFor(t, 10*time.Second, "the result's statement to wait for the row lock", func() bool {
		return e.count("SELECT count(*) FROM pg_stat_activity WHERE ? = ANY(pg_blocking_pids(pid))", pid) > 0
	})
	require.NoError(t, tx.Commit())

	assert.Equal(t, apiCompletion{Status: "success", Value: "5", Attempts: 1}, e.waitCompletion(id, 10*time.Second))
}
