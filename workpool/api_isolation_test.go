package workpool_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgworkpool/pgworkpool/workpool"
)

// isolatedPool is one of the two pools of TestAPITwoPoolsIsolated. Both
// register the same function and onComplete names.
type isolatedPool struct {
	p              *workpool.Pool
	f              *workpool.Func[num, int]
	done           *workpool.OnCompleteHandler[string, int]
	running        concurrency
	calls          atomic.Int32
	blockerStarted chan struct{}
	release        chan struct{}
}

func newIsolatedPool(t *testing.T, e *env, name string, limit int) *isolatedPool {
	ip := &isolatedPool{blockerStarted: make(chan struct{}, 1), release: make(chan struct{})}
	ip.p = e.pool(workpool.Config{Name: name, MaxParallelism: limit, Workers: 10})
	ip.f = mustRegister(t, ip.p, "f", func(ctx context.Context, a num) (int, error) {
		ip.calls.Add(1)
		if a.N < 0 { // a blocker
			ip.blockerStarted <- struct{}{}
			<-ip.release
			return a.N, nil
		}
		ip.running.enter()
		time.Sleep(10 * time.Millisecond) // the work
		ip.running.leave()
		return a.N, nil
	})
	ip.done = mustOnComplete(t, e, ip.p, "done")
	return ip
}

func (ip *isolatedPool) batch(t *testing.T, n int, kind string, opts ...workpool.Option) []workpool.WorkID {
	t.Helper()
	args := make([]num, n)
	for i := range args {
		args[i] = num{N: i}
	}
	ids, err := ip.p.EnqueueBatch(context.Background(), ip.f, args, append(opts, workpool.OnComplete(ip.done, kind))...)
	require.NoError(t, err)
	return ids
}

func (e *env) completionsWhere(kind string) int {
	return e.count("SELECT count(*) FROM "+e.schema+".completions WHERE context = ?", kind)
}

// TestAPITwoPoolsIsolated: two pools in one schema, with the same function
// names, keep separate limits, counters, pauses, cancels and recovery.
func TestAPITwoPoolsIsolated(t *testing.T) {
	t.Parallel()
	e := newAPIEnv(t)
	a := newIsolatedPool(t, e, "a", 1)
	b := newIsolatedPool(t, e, "b", 3)
	start(t, a.p)
	start(t, b.p)
	ctx := context.Background()

	// Separate limits and counters.
	a.batch(t, 12, "a run")
	b.batch(t, 20, "b run")
	waitFor(t, 30*time.Second, "both runs to complete", func() bool {
		return e.completionsWhere("a run") == 12 && e.completionsWhere("b run") == 20
	})
	t.Logf("peak concurrency: a %d (limit 1), b %d (limit 3)", a.running.peak.Load(), b.running.peak.Load())
	assert.LessOrEqual(t, a.running.peak.Load(), int32(1))
	assert.LessOrEqual(t, b.running.peak.Load(), int32(3))
	waitFor(t, 10*time.Second, "the counters", func() bool {
		sa, err := a.p.Stats(ctx)
		require.NoError(t, err)
		sb, err := b.p.Stats(ctx)
		require.NoError(t, err)
		return sa.Succeeded == 12 && sb.Succeeded == 20
	})
	sa, err := a.p.Stats(ctx)
	require.NoError(t, err)
	assert.Equal(t, int64(12), sa.Completed)

	// Recovery of one pool leaves the other's running work alone: both
	// pools have a claimed item whose worker looks lost, and only a runs a
	// recovery pass.
	aBlocker := enqueue(t, a.p, a.f, num{N: -1}) // no onComplete: a failure deletes the row
	bBlocker := enqueue(t, b.p, b.f, num{N: -1}, workpool.OnComplete(b.done, "b blocker"))
	recv(t, a.blockerStarted, 10*time.Second, "a's blocker to start")
	recv(t, b.blockerStarted, 10*time.Second, "b's blocker to start")
	e.exec("UPDATE " + e.schema + ".workers SET heartbeat_at = now() - interval '1 hour'")
	e.forceRecovery("a")
	require.NoError(t, a.p.SetMaxParallelism(ctx, 2)) // kicks a's loop
	waitState(t, a.p, aBlocker, workpool.StateFinished)
	st, err := b.p.Status(ctx, bBlocker)
	require.NoError(t, err)
	assert.Equal(t, workpool.Status{State: workpool.StateRunning}, st, "a's recovery touched b's work")
	close(a.release) // its late result is fenced off
	close(b.release)
	assert.Equal(t, apiCompletion{Status: "success", Value: "-1", Context: "b blocker", Attempts: 1}, e.waitCompletion(bBlocker, 10*time.Second))
	waitFor(t, 10*time.Second, "a's recovered failure and b's success to be counted", func() bool {
		sa, err := a.p.Stats(ctx)
		require.NoError(t, err)
		sb, err := b.p.Stats(ctx)
		require.NoError(t, err)
		return sa.Failed == 1 && sb.Succeeded == 21
	})
	sb, err := b.p.Stats(ctx)
	require.NoError(t, err)
	assert.Equal(t, int64(0), sb.Failed)
	sa, err = a.p.Stats(ctx)
	require.NoError(t, err)
	assert.Equal(t, int64(12), sa.Succeeded)

	// Pausing one pool does not pause the other.
	require.NoError(t, a.p.SetMaxParallelism(ctx, 0))
	aPaused := a.batch(t, 5, "a paused")
	b.batch(t, 5, "b while a paused")
	waitFor(t, 10*time.Second, "b's items to complete", func() bool { return e.completionsWhere("b while a paused") == 5 })
	statuses, err := a.p.StatusBatch(ctx, aPaused)
	require.NoError(t, err)
	for _, s := range statuses {
		assert.Equal(t, workpool.StatePending, s.State)
	}

	// CancelAll of one pool cancels only its own work.
	bFuture := b.batch(t, 7, "b future", workpool.RunAfter(time.Hour))
	n, err := a.p.CancelAll(ctx)
	require.NoError(t, err)
	assert.Equal(t, 5, n)
	waitFor(t, 10*time.Second, "a's paused items to be canceled", func() bool {
		return e.count("SELECT count(*) FROM "+e.schema+".completions WHERE context = 'a paused' AND status = 'canceled'") == 5
	})
	statuses, err = b.p.StatusBatch(ctx, bFuture)
	require.NoError(t, err)
	for _, s := range statuses {
		assert.Equal(t, workpool.StatePending, s.State, "a's CancelAll canceled b's work")
	}
	assert.Equal(t, 0, e.completionsWhere("b future"))
	assert.Equal(t, 7, e.count("SELECT count(*) FROM "+e.schema+".work WHERE pool = 'b' AND NOT canceled"))
	assert.Equal(t, int32(12+1), a.calls.Load())
	assert.Equal(t, int32(20+1+5), b.calls.Load())
}
