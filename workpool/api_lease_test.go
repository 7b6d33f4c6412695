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

// held is a handler that records each call and blocks until released.
type held struct {
	calls   atomic.Int32
	started chan struct{}
	release chan struct{}
}

// registerHeld registers a held handler as "held" on p.
func registerHeld(t *testing.T, p *workpool.Pool) (*workpool.Func[num, int], *held) {
	h := &held{started: make(chan struct{}, 2), release: make(chan struct{})}
	f := mustRegister(t, p, "held", func(ctx context.Context, a num) (int, error) {
		h.calls.Add(1)
		h.started <- struct{}{}
		<-h.release
		return a.N, nil
	})
	return f, h
}

// recoverThenFinish forces a recovery pass while the attempt of id is held
// in h's handler, checks that the pass left it running, then releases it
// and checks that it succeeds with value, having run once.
func recoverThenFinish(t *testing.T, e *env, p *workpool.Pool, id workpool.WorkID, h *held, value, lostMsg string) {
	t.Helper()
	ctx := context.Background()
	e.forceRecovery(p.Name())
	require.NoError(t, p.SetMaxParallelism(ctx, 3)) // kicks the loop
	waitFor(t, 10*time.Second, "a recovery pass", func() bool {
		return e.count("SELECT count(*) FROM "+e.schema+".internal_state WHERE last_recovery > 0") == 1
	})
	st, err := p.Status(ctx, id)
	require.NoError(t, err)
	assert.Equal(t, workpool.Status{State: workpool.StateRunning}, st, lostMsg)
	close(h.release)
	assert.Equal(t, apiCompletion{Status: "success", Value: value, Attempts: 1}, e.waitCompletion(id, 10*time.Second))
	assert.Equal(t, int32(1), h.calls.Load())
}

// TestAPILeaseKeptByHeartbeat: a handler that runs longer than the lease
// is not declared lost while its process heartbeats: a recovery pass in
// the middle of it leaves it alone and it completes once.
func TestAPILeaseKeptByHeartbeat(t *testing.T) {
	t.Parallel()
	e := newAPIEnv(t)
	p := e.pool(workpool.Config{MaxParallelism: 2, HeartbeatInterval: 100 * time.Millisecond, Lease: 400 * time.Millisecond})
	f, h := registerHeld(t, p)
	done := mustOnComplete(t, e, p, "done")
	start(t, p)
	id := enqueue(t, p, f, num{N: 8}, workpool.Retry(workpool.RetryBehavior{MaxAttempts: 3, Base: 1}), workpool.OnComplete(done, ""))
	recv(t, h.started, 10*time.Second, "the handler to start")
	// Outlive the lease several times over; the process heartbeats meanwhile.
	waitFor(t, 10*time.Second, "the attempt to outlive its lease", func() bool {
		return e.count("SELECT count(*) FROM "+e.schema+".running WHERE claimed_at < now() - interval '1200 milliseconds'") == 1
	})
	recoverThenFinish(t, e, p, id, h, "8", "recovery took a heartbeating attempt")
	assert.Len(t, h.started, 0)
}

// TestAPITimeoutRetried: a timed-out attempt is a failed attempt: retried
// while retries remain, with a fresh deadline each time.
func TestAPITimeoutRetried(t *testing.T) {
	t.Parallel()
	e := newAPIEnv(t)
	p := e.pool(workpool.Config{MaxParallelism: 2})
	var calls atomic.Int32
	f := mustRegister(t, p, "slow-then-fast", func(ctx context.Context, a num) (int, error) {
		if calls.Add(1) < 3 {
			<-ctx.Done()
			if !errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return 0, errors.New("context not timed out")
			}
			return 0, ctx.Err()
		}
		return a.N, nil
	})
	done := mustOnComplete(t, e, p, "done")
	start(t, p)
	id := enqueue(t, p, f, num{N: 3}, workpool.Timeout(100*time.Millisecond),
		workpool.Retry(workpool.RetryBehavior{MaxAttempts: 3, InitialBackoff: 10 * time.Millisecond, Base: 1}), workpool.OnComplete(done, ""))
	assert.Equal(t, apiCompletion{Status: "success", Value: "3", Attempts: 3}, e.waitCompletion(id, 10*time.Second))
	assert.Equal(t, int32(3), calls.Load())
}

// TestAPIClaimAfterIdleRefreshesLease: a process that sat idle for longer
// than the lease refreshes it in the statement that claims its next work,
// even when an iteration that claimed nothing for it came in between, so a
// recovery pass right after the claim leaves the attempt alone.
func TestAPIClaimAfterIdleRefreshesLease(t *testing.T) {
	t.Parallel()
	e := newAPIEnv(t)
	p := e.pool(workpool.Config{MaxParallelism: 2, HeartbeatInterval: time.Second, Lease: 1500 * time.Millisecond})
	f, h := registerHeld(t, p)
	done := mustOnComplete(t, e, p, "done")
	start(t, p)
	waitFor(t, 10*time.Second, "the idle process's heartbeat to age past the lease", func() bool {
		return e.count("SELECT count(*) FROM "+e.schema+".workers WHERE heartbeat_at < now() - interval '1600 milliseconds'") == 1
	})
	// An iteration that claims nothing for this process (the work is not
	// due), then one that claims the second item.
	enqueue(t, p, f, num{N: 1}, workpool.RunAfter(time.Hour))
	id := enqueue(t, p, f, num{N: 2}, workpool.Retry(workpool.RetryBehavior{MaxAttempts: 3, Base: 1}), workpool.OnComplete(done, ""))
	recv(t, h.started, 10*time.Second, "the handler to start")
	recoverThenFinish(t, e, p, id, h, "2", "recovery declared a fresh claim lost")
}

// TestIdleProcessRecreatesItsWorkerRow: recovery removes the workers rows
// of processes that have not heartbeated for a long time, which includes a
// live process that sat idle. Such a process re-creates its row in the
// statement of its next claim, whichever path claims (the leader's start
// statement, a follower's claim statement), so a recovery pass right after
// the claim does not take the attempt for that of a process that is gone.
func TestIdleProcessRecreatesItsWorkerRow(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		follower bool
	}{
		{"the leader claims in the start statement", false},
		{"a follower claims with the claim statement", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newAPIEnv(t)
			cfg := workpool.Config{MaxParallelism: 2, HeartbeatInterval: 100 * time.Millisecond, Lease: 1500 * time.Millisecond}
			if tc.follower {
				leader := e.pool(cfg) // registers nothing, so it claims nothing
				start(t, leader)
				waitFor(t, 10*time.Second, "the first process to lead", func() bool { return workpool.Leads(leader) })
			}
			p := e.pool(cfg)
			f, h := registerHeld(t, p)
			done := mustOnComplete(t, e, p, "done")
			start(t, p)
			wid := workpool.WorkerID(p)
			waitFor(t, 10*time.Second, "the idle process's next heartbeat to be due", func() bool {
				return e.count("SELECT count(*) FROM "+e.schema+".workers WHERE id = ? AND heartbeat_at < now() - interval '200 milliseconds'", wid) == 1
			})
			// What recovery does to the row of a process idle for longer
			// than the retention.
			e.exec("DELETE FROM "+e.schema+".workers WHERE id = $1", wid)

			id := enqueue(t, p, f, num{N: 2}, workpool.Retry(workpool.RetryBehavior{MaxAttempts: 3, Base: 1}), workpool.OnComplete(done, ""))
			recv(t, h.started, 10*time.Second, "the handler to start")
			assert.Equal(t, tc.follower, !workpool.Leads(p))
			assert.Equal(t, 1, e.count("SELECT count(*) FROM "+e.schema+".running WHERE work_id = ? AND claimed_by = ?", int64(id), wid))
			assert.Equal(t, 1, e.count("SELECT count(*) FROM "+e.schema+".workers WHERE id = ?", wid), "the claim re-created the row")

			recoverThenFinish(t, e, p, id, h, "2", "recovery took the claim of a live process for lost")
		})
	}
}
