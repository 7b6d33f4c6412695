package workpool_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgworkpool/pgworkpool/workpool"
)

// TestRecoveryRetryBesideAbandonedAttemptCancels: when recovery fails a
// hung attempt before its worker gives up on it (TimeoutGrace shorter than
// the worker's 1 s abandon delay), the same process can claim the retry
// while the hung attempt is still in flight. Abandoning the hung attempt
// must not make the process forget the retry: Cancel still reaches it. (It
// once did not: attempts in flight were keyed by work id only.)
func TestRecoveryRetryBesideAbandonedAttemptCancels(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	logs := &slogCapture{}
	p := e.pool(workpool.Config{MaxParallelism: 4, TimeoutGrace: 50 * time.Millisecond, RecoveryPeriod: 100 * time.Millisecond,
		Logger: logs.logger()})
	hung := make(chan struct{})
	t.Cleanup(func() { close(hung) })
	secondStarted := make(chan struct{})
	secondEnded := make(chan error, 1)
	var attempts atomic.Int64
	fn, err := workpool.Register(p, "hang-then-wait", func(ctx context.Context, _ int) (int, error) {
		if attempts.Add(1) == 1 {
			<-hung // ignores its context
			return 0, nil
		}
		close(secondStarted)
		<-ctx.Done()
		secondEnded <- context.Cause(ctx)
		return 0, ctx.Err()
	})
	require.NoError(t, err)
	ctx := context.Background()
	require.NoError(t, p.Start(ctx))
	id, err := p.Enqueue(ctx, fn, 0, workpool.Timeout(2*time.Second),
		workpool.Retry(workpool.RetryBehavior{MaxAttempts: 3, InitialBackoff: 10 * time.Millisecond, Base: 1}))
	require.NoError(t, err)

	select {
	case <-secondStarted: // recovery failed attempt 1 after deadline + 50 ms
	case <-time.After(15 * time.Second):
		t.Fatal("the retry did not start")
	}
	waitFor(t, 5*time.Second, "the worker to abandon attempt 1", func() bool {
		return logs.count("worker: handler ignored its deadline; reporting a timeout and leaving it running") == 1
	})
	canceledAt := time.Now()
	require.NoError(t, p.Cancel(ctx, id))
	select {
	case cause := <-secondEnded:
		require.False(t, errors.Is(cause, context.DeadlineExceeded),
			"attempt 2 ended by its own deadline %v after Cancel, not by the cancel", time.Since(canceledAt))
	case <-time.After(3 * time.Second):
		t.Fatal("attempt 2 never ended")
	}
}

// TestRecoveryLeaseExpiryOfLiveProcess: a healthy process whose heartbeats
// stall once for longer than the lease (here: its workers row is locked for
// 1.5 s, as a slow database or a long GC pause would) has its attempt
// declared lost, which is fair. It then claims the retry itself while the
// first attempt's handler still runs; when that handler returns, the
// process must keep heartbeating for the retry, which then succeeds. (It
// once forgot the retry, stopped heartbeating, and every later attempt was
// declared "worker lost" too: the item failed for good.)
func TestRecoveryLeaseExpiryOfLiveProcess(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	rkCompletionTable(e)
	ctx := context.Background()
	p := e.pool(workpool.Config{MaxParallelism: 4, Lease: time.Second, HeartbeatInterval: 200 * time.Millisecond,
		RecoveryPeriod: 200 * time.Millisecond})
	var calls atomic.Int64
	fn, err := workpool.Register(p, "slow", func(ctx context.Context, _ int) (int, error) {
		calls.Add(1)
		time.Sleep(2500 * time.Millisecond) // longer than the lease, heartbeats cover it
		return 1, nil
	})
	require.NoError(t, err)
	var onCompleteCalls atomic.Int64
	rec, err := workpool.RegisterOnComplete(p, "record", rkRecordCompletion(e.schema, &onCompleteCalls))
	require.NoError(t, err)
	require.NoError(t, p.Start(ctx))
	_, err = p.Enqueue(ctx, fn, 0, workpool.OnComplete(rec, "slow"),
		workpool.Retry(workpool.RetryBehavior{MaxAttempts: 3, InitialBackoff: 10 * time.Millisecond, Base: 1}))
	require.NoError(t, err)
	waitFor(t, 10*time.Second, "the first attempt to run", func() bool { return calls.Load() == 1 })

	// Stall this process's heartbeats for 1.5 s.
	tx, err := e.db.BeginTx(ctx, nil)
	require.NoError(t, err)
	_, err = tx.ExecContext(ctx, "SELECT 1 FROM "+e.schema+".workers FOR UPDATE")
	require.NoError(t, err)
	time.Sleep(1500 * time.Millisecond)
	require.NoError(t, tx.Commit())

	// Read the outcome from the onComplete, or from the work row while it
	// is finishing.
	var outcome string
	waitFor(t, 30*time.Second, "the outcome", func() bool {
		if len(rkCompletions(e)) > 0 {
			outcome = rkCompletions(e)[0].Status
			return true
		}
		return e.db.QueryRowContext(ctx, "SELECT result->>'status' || '/' || attempts || '/' || COALESCE(result->>'error', '') FROM "+
			e.schema+".work WHERE result IS NOT NULL").Scan(&outcome) == nil
	})
	t.Logf("handler calls %d, outcome %s", calls.Load(), outcome)
	assert.Contains(t, []string{"success", "success/2/"}, outcome, "the retry ran to success in a healthy process")
	assert.EqualValues(t, 2, calls.Load())
}
