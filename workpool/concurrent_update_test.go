package workpool_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
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

	commit := holdRowUpdate(t, e, "label = label", id)
	close(release)
	commit()

	assert.Equal(t, apiCompletion{Status: "success", Value: "5", Attempts: 1}, e.waitCompletion(id, 10*time.Second))
}

// TestFailureSurvivesConcurrentCancel: a retryable failure arrives while
// another transaction marks its work canceled (as the loop's cancel phase
// does). The result's statement decides on the version it read, where the
// failure would retry, and then, after the lock wait, rechecks the canceled
// version, where it no longer does: neither branch matched and the result
// was dropped as stale, leaving the attempt claimed until a heartbeat
// released it. The worker now records such results again in a statement of
// its own, which decides on the new version: the work ends canceled at
// once. The heartbeat is set far beyond the test's wait, so that only the
// second recording can finish the work in time.
func TestFailureSurvivesConcurrentCancel(t *testing.T) {
	t.Parallel()
	e := newAPIEnv(t)
	// The result must come from a process that does not lead: the leader
	// records its own workers' results in the loop's transaction, which
	// is also where cancels mark work, so they cannot race there.
	leader := e.pool(workpool.Config{MaxParallelism: 2, HeartbeatInterval: time.Minute, Lease: 5 * time.Minute})
	start(t, leader)
	waitFor(t, 10*time.Second, "the first process to lead", func() bool { return workpool.Leads(leader) })
	logs := &rkSyncWriter{w: &bytes.Buffer{}}
	p := e.pool(workpool.Config{
		HeartbeatInterval: time.Minute, Lease: 5 * time.Minute,
		Logger: slog.New(slog.NewTextHandler(logs, nil)),
	})
	started := make(chan struct{}, 1)
	release := make(chan struct{})
	f := mustRegister(t, p, "f", func(ctx context.Context, a num) (int, error) {
		started <- struct{}{}
		<-release
		return 0, errors.New("transient")
	})
	start(t, p)
	id := enqueue(t, p, f, num{N: 1}, workpool.Retry(workpool.RetryBehavior{MaxAttempts: 3, InitialBackoff: time.Millisecond, Base: 2}))
	recv(t, started, 10*time.Second, "the handler to start")

	commit := holdRowUpdate(t, e, "canceled = true", id)
	close(release)
	commit()
	ctx := context.Background()

	waitFor(t, 10*time.Second, "the canceled work to end and free its slot", func() bool {
		return e.count("SELECT count(*) FROM "+e.schema+".work WHERE id = ?", int64(id)) == 0 &&
			e.count("SELECT count(*) FROM "+e.schema+".running WHERE work_id = ?", int64(id)) == 0
	})
	assert.False(t, workpool.Leads(p), "the result came from the process that does not lead")
	st, err := p.Status(ctx, id)
	require.NoError(t, err)
	assert.Equal(t, workpool.StateFinished, st.State)
	logs.mu.Lock()
	defer logs.mu.Unlock()
	assert.NotContains(t, logs.w.String(), "stale attempt", "the result is recorded, not dropped")
}

// holdRowUpdate updates the work row of id with set in a transaction it
// leaves open. The returned function waits until another statement waits
// for that row's lock (the result being recorded), then commits.
func holdRowUpdate(t *testing.T, e *env, set string, id workpool.WorkID) (commit func()) {
	t.Helper()
	ctx := context.Background()
	tx, err := e.db.DB.BeginTx(ctx, nil)
	require.NoError(t, err)
	t.Cleanup(func() { _ = tx.Rollback() })
	var pid int
	require.NoError(t, tx.QueryRowContext(ctx, "SELECT pg_backend_pid()").Scan(&pid))
	_, err = tx.ExecContext(ctx, "UPDATE "+e.schema+".work SET "+set+" WHERE id = $1", int64(id))
	require.NoError(t, err)
	return func() {
		t.Helper()
		waitFor(t, 10*time.Second, "the result's statement to wait for the row lock", func() bool {
			return e.count("SELECT count(*) FROM pg_stat_activity WHERE ? = ANY(pg_blocking_pids(pid))", pid) > 0
		})
		require.NoError(t, tx.Commit())
	}
}
