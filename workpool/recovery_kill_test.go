package workpool_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/uptrace/bun"

	"github.com/pgworkpool/pgworkpool/internal/pgtest"
	"github.com/pgworkpool/pgworkpool/internal/store"
	"github.com/pgworkpool/pgworkpool/recovery"
	"github.com/pgworkpool/pgworkpool/workpool"
)

// Environment of the worker process that TestRecoveryAfterSIGKILL starts
// from this test binary.
const (
	killChildEnv  = "PGWORKPOOL_KILL_CHILD"
	killSchemaEnv = "PGWORKPOOL_KILL_SCHEMA"
	killPoolEnv   = "PGWORKPOOL_KILL_POOL"
)

// Timing of both processes: a short lease and recovery period so that lost
// work comes back within seconds.
const (
	killLease     = 2 * time.Second
	killHeartbeat = 500 * time.Millisecond
	killRecovery  = time.Second
)

// rkCompletion is a recorded onComplete call. Its table has no unique
// key, so a second call for an item would show up as a second row.
type rkCompletion struct {
	WorkID   int64
	Status   string
	Value    int
	Error    string
	Context  string
	Attempts int
}

func rkRecordCompletion(schema string, calls *atomic.Int64) func(ctx context.Context, tx bun.Tx, c workpool.Completion[string, int]) error {
	return func(ctx context.Context, tx bun.Tx, c workpool.Completion[string, int]) error {
		calls.Add(1)
		_, err := tx.ExecContext(ctx, "INSERT INTO "+schema+".kill_completions (work_id, status, value, error, context, attempts) VALUES (?, ?, ?, ?, ?, ?)",
			int64(c.WorkID), string(c.Status), c.Value, c.Error, c.Context, c.Attempts)
		return err
	}
}

// rkCompletionTable creates the table rkRecordCompletion writes to.
func rkCompletionTable(e *env) {
	e.t.Helper()
	_, err := e.db.ExecContext(context.Background(), "CREATE TABLE "+e.schema+".kill_completions "+
		"(work_id bigint NOT NULL, status text NOT NULL, value int, error text, context text, attempts int)")
	require.NoError(e.t, err)
}

func rkCompletions(e *env) []rkCompletion {
	e.t.Helper()
	var out []rkCompletion
	rows, err := e.db.QueryContext(context.Background(),
		"SELECT work_id, status, value, error, context, attempts FROM "+e.schema+".kill_completions ORDER BY work_id")
	require.NoError(e.t, err)
	defer rows.Close()
	for rows.Next() {
		var c rkCompletion
		require.NoError(e.t, rows.Scan(&c.WorkID, &c.Status, &c.Value, &c.Error, &c.Context, &c.Attempts))
		out = append(out, c)
	}
	require.NoError(e.t, rows.Err())
	return out
}

// TestRecoveryWorkerProcess is the worker process of
// TestRecoveryAfterSIGKILL; it is skipped unless that test started it. It
// starts the pool and claims work whose handler never returns, records that
// it holds each item, and waits to be killed.
func TestRecoveryWorkerProcess(t *testing.T) {
	if os.Getenv(killChildEnv) != "1" {
		t.Skip("the worker process of TestRecoveryAfterSIGKILL")
	}
	schema, name := os.Getenv(killSchemaEnv), os.Getenv(killPoolEnv)
	db := pgtest.OpenBun(t, pgtest.Shared(t).URL())
	p, err := workpool.New(db, workpool.Config{
		Name: name, Schema: schema, MaxParallelism: 10,
		Lease: killLease, HeartbeatInterval: killHeartbeat, RecoveryPeriod: killRecovery,
		Logger: testLogger(t),
	})
	require.NoError(t, err)
	_, err = workpool.Register(p, "block", func(ctx context.Context, n int) (int, error) {
		_, err := db.ExecContext(context.Background(), "INSERT INTO "+schema+".held (work_id, pid) VALUES (?, ?)", n, os.Getpid())
		if err != nil {
			return 0, err
		}
		time.Sleep(time.Hour) // ignores its context: only SIGKILL ends it
		return n, nil
	})
	require.NoError(t, err)
	require.NoError(t, p.Start(context.Background()))
	fmt.Println("WORKER STARTED")
	time.Sleep(time.Hour)
}

// TestRecoveryAfterSIGKILL kills a worker process that holds work and
// checks that this process's pool retries the work after the lease and
// completes every item exactly once, even when the killed worker's result
// shows up afterwards.
func TestRecoveryAfterSIGKILL(t *testing.T) {
	if os.Getenv(killChildEnv) == "1" {
		t.Skip("in the worker process")
	}
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	rkCompletionTable(e)
	const name = "killed"
	logs := &slogCapture{}
	p := e.pool(workpool.Config{
		Name: name, MaxParallelism: 10,
		Lease: killLease, HeartbeatInterval: killHeartbeat, RecoveryPeriod: killRecovery,
		HealthcheckInterval: 200 * time.Millisecond,
		LogLevel:            workpool.LogInfo,
		Logger:              logs.logger(),
	})
	// This process runs the retries: each blocks until the killed worker's
	// stale result has been replayed.
	var calls atomic.Int64
	started := make(chan int64, 16)
	release := make(chan struct{})
	block, err := workpool.Register(p, "block", func(ctx context.Context, n int) (int, error) {
		calls.Add(1)
		started <- int64(n)
		select {
		case <-release:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
		return n * 10, nil
	})
	require.NoError(t, err)
	var onCompleteCalls atomic.Int64
	record, err := workpool.RegisterOnComplete(p, "record", rkRecordCompletion(e.schema, &onCompleteCalls))
	require.NoError(t, err)

	// Enqueue before anything runs; the worker process will lead and claim.
	const n = 3
	retry := workpool.Retry(workpool.RetryBehavior{MaxAttempts: 3, InitialBackoff: 20 * time.Millisecond, Base: 1})
	ids := make([]workpool.WorkID, n)
	for i := range ids {
		// The handler's argument is the work id, so both processes can
		// say which item they hold; enqueue first, then patch the args.
		ids[i], err = p.Enqueue(ctx, block, 0, retry, workpool.OnComplete(record, fmt.Sprintf("item-%d", i)))
		require.NoError(t, err)
		_, err = e.db.ExecContext(ctx, "UPDATE "+e.schema+".work SET args = to_jsonb(id) WHERE id = ?", int64(ids[i]))
		require.NoError(t, err)
	}

	killedAt := rkKillWorkerHolding(t, e, name, rkIDs(ids))
	assert.Zero(t, calls.Load(), "this process had not started yet, so it ran nothing")

	require.NoError(t, p.Start(ctx))
	// Every item is retried here once the lease expired.
	retried := map[int64]bool{}
	deadline := time.After(killLease + killRecovery + 30*time.Second)
	for len(retried) < n {
		select {
		case id := <-started:
			retried[id] = true
		case <-deadline:
			t.Fatalf("only %d of %d items were retried", len(retried), n)
		}
	}
	recoveredIn := time.Since(killedAt)
	t.Logf("lost work restarted %v after the kill (lease %v, recovery period %v, heartbeat %v)", recoveredIn, killLease, killRecovery, killHeartbeat)
	// The lease counts from the last heartbeat, which is at most one
	// heartbeat interval before the kill; allow a few seconds for -race.
	assert.Less(t, recoveredIn, killLease+killRecovery+3*time.Second)
	assert.GreaterOrEqual(t, recoveredIn, killLease-killHeartbeat, "recovered before the lease could expire")

	for _, id := range ids {
		st, err := p.Status(ctx, id)
		require.NoError(t, err)
		assert.Equal(t, workpool.Status{State: workpool.StateRunning, PreviousAttempts: 1}, st)
	}
	// The killed worker's results arrive while the retries run: stale.
	kickLock := store.KeysFor(e.schema, name).KickLock
	replay := make([]store.Result, n)
	for i, id := range ids {
		replay[i] = store.Result{WorkID: int64(id), Attempt: 0, Status: "success", Value: "7", RunMs: 1}
	}
	recs, err := store.New(e.schema).RecordResults(ctx, e.db.DB, name, replay, kickLock)
	require.NoError(t, err)
	assert.Empty(t, recs, "a result of the killed worker must be fenced out")
	assert.Zero(t, e.count("SELECT count(*) FROM "+e.schema+".pending_completion"))
	assert.Equal(t, n, e.count("SELECT count(*) FROM "+e.schema+".work WHERE attempts = 1 AND result IS NULL"))
	close(release)

	waitFor(t, 30*time.Second, "every onComplete", func() bool {
		return e.count("SELECT count(*) FROM "+e.schema+".kill_completions") >= n
	})
	// Replay again, after the end: the old attempt and the new one.
	for _, attempt := range []int{0, 1} {
		for i := range replay {
			replay[i].Attempt = attempt
		}
		recs, err = store.New(e.schema).RecordResults(ctx, e.db.DB, name, replay, kickLock)
		require.NoError(t, err)
		assert.Empty(t, recs, "attempt %d replayed after the end", attempt)
	}
	waitFor(t, 10*time.Second, "the loop to consume every completion", func() bool {
		return e.count("SELECT count(*) FROM "+e.schema+".running") == 0 &&
			e.count("SELECT count(*) FROM "+e.schema+".pending_completion") == 0
	})
	time.Sleep(300 * time.Millisecond) // a second onComplete would need a moment

	got := rkCompletions(e)
	require.Len(t, got, n, "one onComplete per item")
	for i, c := range got {
		assert.Equal(t, rkCompletion{WorkID: int64(ids[i]), Status: "success", Value: int(ids[i]) * 10,
			Context: fmt.Sprintf("item-%d", i), Attempts: 2}, c)
	}
	assert.EqualValues(t, n, onCompleteCalls.Load())
	assert.EqualValues(t, n, calls.Load(), "each item ran once here")
	assert.Zero(t, e.count("SELECT count(*) FROM "+e.schema+".work"))
	assert.Zero(t, e.count("SELECT count(*) FROM "+e.schema+".pending_start"))

	// The log tells the story: one lost attempt per item, then success.
	byID := map[int64][]string{}
	for _, r := range logs.msgs("completed") {
		byID[r.int("work_id")] = append(byID[r.int("work_id")], fmt.Sprintf("%s/%d/%s", r.str("status"), r.int("attempts"), r.str("error")))
	}
	for _, id := range ids {
		assert.Equal(t, []string{"retrying/1/" + recovery.ReasonWorkerLost, "success/2/"}, byID[int64(id)], "work %d", id)
	}
	assert.Equal(t, n, logs.count("recovery: attempt failed"))
	// The lost attempts count as failed attempts that were retried.
	st, err := p.Stats(ctx)
	require.NoError(t, err)
	assert.Equal(t, [6]int64{2 * n, n, 0, n, 0, 0}, [6]int64{st.Completed, st.Succeeded, st.Failed, st.Retries, st.Canceled, st.Running},
		"completed succeeded failed retries canceled running")
	assert.Equal(t, 0.5, st.FailureRate)
	assert.Equal(t, 0.0, st.PermanentFailureRate)
}

// rkKillWorkerHolding starts the worker process (TestRecoveryWorkerProcess)
// on pool name of e's schema, waits until it has claimed every one of ids
// and its handlers hold them, SIGKILLs it and returns when.
func rkKillWorkerHolding(t *testing.T, e *env, name string, ids []int64) time.Time {
	t.Helper()
	ctx := context.Background()
	_, err := e.db.ExecContext(ctx, "CREATE TABLE IF NOT EXISTS "+e.schema+".held (work_id bigint NOT NULL, pid int NOT NULL)")
	require.NoError(t, err)
	var out bytes.Buffer
	cmd := exec.Command(os.Args[0], "-test.run=^TestRecoveryWorkerProcess$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(),
		killChildEnv+"=1",
		"DATABASE_URL="+pgtest.Shared(t).URL(),
		killSchemaEnv+"="+e.schema,
		killPoolEnv+"="+name,
	)
	cmd.Stdout, cmd.Stderr = &rkSyncWriter{w: &out}, &rkSyncWriter{w: &out}
	require.NoError(t, cmd.Start())
	killed := false
	t.Cleanup(func() {
		if !killed {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
		if t.Failed() {
			t.Logf("worker process output:\n%s", out.String())
		}
	})
	n := len(ids)
	waitFor(t, 60*time.Second, "the worker process to hold every item", func() bool {
		return e.count("SELECT count(DISTINCT work_id) FROM "+e.schema+".held WHERE work_id IN (?)", bun.List(ids)) == n &&
			e.count("SELECT count(*) FROM "+e.schema+".running r JOIN "+e.schema+".workers w ON w.id = r.claimed_by "+
				"WHERE w.pid = ? AND r.work_id IN (?)", cmd.Process.Pid, bun.List(ids)) == n
	})
	require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
	killedAt := time.Now()
	_ = cmd.Wait()
	killed = true
	return killedAt
}

func rkIDs(ids []workpool.WorkID) []int64 {
	out := make([]int64, len(ids))
	for i, id := range ids {
		out[i] = int64(id)
	}
	return out
}

// rkSyncWriter serializes writes of the child's stdout and stderr.
type rkSyncWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (s *rkSyncWriter) Write(b []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(b)
}
