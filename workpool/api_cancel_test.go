package workpool_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgworkpool/pgworkpool/workpool"
)

// TestAPICancelPending: pending work that is canceled never runs, ends
// canceled and gets its onComplete with Status Canceled and no attempts.
func TestAPICancelPending(t *testing.T) {
	t.Parallel()
	e := newAPIEnv(t)
	p := e.pool(workpool.Config{MaxParallelism: 1})
	var calls callCounter
	release := make(chan struct{})
	blockerStarted := make(chan struct{}, 1)
	f := mustRegister(t, p, "f", func(ctx context.Context, a num) (int, error) {
		calls.add(a.N)
		if a.N == 0 {
			blockerStarted <- struct{}{}
			<-release
		}
		return a.N, nil
	})
	done := mustOnComplete(t, e, p, "done")
	start(t, p)
	ctx := context.Background()

	blocker := enqueue(t, p, f, num{N: 0}, workpool.OnComplete(done, "blocker"))
	recv(t, blockerStarted, 10*time.Second, "the blocker to start")
	due := enqueue(t, p, f, num{N: 1}, workpool.OnComplete(done, "due")) // waits for the slot
	future := enqueue(t, p, f, num{N: 2}, workpool.RunAfter(time.Hour), workpool.OnComplete(done, "future"))
	plain := enqueue(t, p, f, num{N: 3}, workpool.RunAfter(time.Hour)) // no onComplete
	retried := enqueue(t, p, f, num{N: 4}, workpool.RunAfter(time.Hour),
		workpool.Retry(workpool.RetryBehavior{MaxAttempts: 5, Base: 1}), workpool.OnComplete(done, "retried"))
	for _, id := range []workpool.WorkID{due, future, plain, retried} {
		require.NoError(t, p.Cancel(ctx, id))
	}
	for id, c := range map[workpool.WorkID]string{due: "due", future: "future", retried: "retried"} {
		assert.Equal(t, apiCompletion{Status: "canceled", Value: "0", Context: c, Attempts: 0}, e.waitCompletion(id, 10*time.Second), c)
	}
	waitState(t, p, plain, workpool.StateFinished)

	close(release)
	assert.Equal(t, "success", e.waitCompletion(blocker, 10*time.Second).Status)
	// The slot is free again and the loop has nothing left to start.
	stayFor(t, 300*time.Millisecond, "canceled items not running", func() bool {
		return calls.get(1)+calls.get(2)+calls.get(3)+calls.get(4) == 0
	})
	assert.Equal(t, 0, e.workCount())
	assert.Equal(t, 4, e.completionsCount())

	// Canceling again is a no-op; an id never issued is ErrWorkNotFound.
	require.NoError(t, p.Cancel(ctx, due))
	require.NoError(t, p.Cancel(ctx, blocker))
	assert.ErrorIs(t, p.Cancel(ctx, workpool.WorkID(1<<40)), workpool.ErrWorkNotFound)
	assert.ErrorIs(t, p.Cancel(ctx, workpool.WorkID(0)), workpool.ErrWorkNotFound)
	s, err := p.Stats(ctx)
	require.NoError(t, err)
	assert.Equal(t, int64(4), s.Canceled)
	assert.Equal(t, int64(1), s.Succeeded)
}

// TestAPICancelRunning: canceling running work cancels its handler's
// context; it ends canceled and is not retried, whatever the handler
// returns after that.
func TestAPICancelRunning(t *testing.T) {
	t.Parallel()
	e := newAPIEnv(t)
	p := e.pool(workpool.Config{MaxParallelism: 4})
	var calls callCounter
	started := make(chan int, 10)
	ctxErrs := make(chan error, 10)
	f := mustRegister(t, p, "f", func(ctx context.Context, a num) (int, error) {
		calls.add(a.N)
		started <- a.N
		<-ctx.Done()
		ctxErrs <- ctx.Err()
		if a.N == 0 {
			return 0, ctx.Err()
		}
		return 0, errors.New("some other error after the cancel")
	})
	done := mustOnComplete(t, e, p, "done")
	start(t, p)
	ctx := context.Background()
	retry := workpool.Retry(workpool.RetryBehavior{MaxAttempts: 5, InitialBackoff: time.Millisecond, Base: 1})
	a := enqueue(t, p, f, num{N: 0}, retry, workpool.OnComplete(done, "a"))
	b := enqueue(t, p, f, num{N: 1}, retry, workpool.OnComplete(done, "b"))
	recv(t, started, 10*time.Second, "a handler to start")
	recv(t, started, 10*time.Second, "a handler to start")
	for _, id := range []workpool.WorkID{a, b} {
		st, err := p.Status(ctx, id)
		require.NoError(t, err)
		assert.Equal(t, workpool.StateRunning, st.State)
	}

	require.NoError(t, p.Cancel(ctx, a))
	assert.ErrorIs(t, recv(t, ctxErrs, 10*time.Second, "the handler's context to be canceled"), context.Canceled)
	assert.Equal(t, apiCompletion{Status: "canceled", Value: "0", Context: "a", Attempts: 1}, e.waitCompletion(a, 10*time.Second))
	st, err := p.Status(ctx, b)
	require.NoError(t, err)
	assert.Equal(t, workpool.StateRunning, st.State, "b is still running after a was canceled")

	require.NoError(t, p.Cancel(ctx, b))
	assert.ErrorIs(t, recv(t, ctxErrs, 10*time.Second, "the handler's context to be canceled"), context.Canceled)
	c := e.waitCompletion(b, 10*time.Second)
	assert.Equal(t, "canceled", c.Status)
	assert.Equal(t, 1, c.Attempts)

	stayFor(t, 300*time.Millisecond, "no retry of canceled work", func() bool { return len(started) == 0 })
	assert.Equal(t, 1, calls.get(0))
	assert.Equal(t, 1, calls.get(1))
	assert.Equal(t, 0, e.workCount())
}

// TestAPICancelAll: CancelAll cancels every item of the pool, pending or
// running, and returns how many it canceled; none of the pending ones run.
func TestAPICancelAll(t *testing.T) {
	t.Parallel()
	e := newAPIEnv(t)
	p := e.pool(workpool.Config{MaxParallelism: 2})
	var calls atomic.Int64
	started := make(chan struct{}, 10)
	f := mustRegister(t, p, "f", func(ctx context.Context, a num) (int, error) {
		calls.Add(1)
		if a.N < 0 {
			started <- struct{}{}
			<-ctx.Done()
			return 0, ctx.Err()
		}
		return a.N, nil
	})
	done := mustOnComplete(t, e, p, "done")
	start(t, p)
	ctx := context.Background()

	_, err := p.EnqueueBatch(ctx, f, []num{{N: -1}, {N: -2}}, workpool.OnComplete(done, "running"))
	require.NoError(t, err)
	recv(t, started, 10*time.Second, "a blocker to start")
	recv(t, started, 10*time.Second, "a blocker to start")
	backlog := make([]num, 1500) // more than one CancelAll page
	for i := range backlog {
		backlog[i] = num{N: i}
	}
	_, err = p.EnqueueBatch(ctx, f, backlog, workpool.OnComplete(done, "backlog"))
	require.NoError(t, err)
	_, err = p.EnqueueBatch(ctx, f, backlog[:10], workpool.RunAfter(time.Hour), workpool.OnComplete(done, "future"))
	require.NoError(t, err)

	n, err := p.CancelAll(ctx)
	require.NoError(t, err)
	assert.Equal(t, 2+1500+10, n)
	waitFor(t, 30*time.Second, "every item to end", func() bool { return e.workCount() == 0 })
	assert.Equal(t, 1512, e.count("SELECT count(*) FROM "+e.schema+".completions WHERE status = 'canceled'"))
	assert.Equal(t, 2, e.count("SELECT count(*) FROM "+e.schema+".completions WHERE context = 'running' AND attempts = 1"))
	assert.Equal(t, int64(2), calls.Load(), "canceled pending items ran")

	// Nothing left to cancel; later work runs normally.
	n, err = p.CancelAll(ctx)
	require.NoError(t, err)
	assert.Zero(t, n)
	id := enqueue(t, p, f, num{N: 7}, workpool.OnComplete(done, "after"))
	assert.Equal(t, "success", e.waitCompletion(id, 10*time.Second).Status)
	s, err := p.Stats(ctx)
	require.NoError(t, err)
	assert.Equal(t, int64(1512), s.Canceled)
}

// TestAPICancelRunningInAnotherProcess: a cancel reaches a handler running
// in a process that does not lead the loop (by NOTIFY), and a process that
// never started can cancel.
func TestAPICancelRunningInAnotherProcess(t *testing.T) {
	t.Parallel()
	e := newAPIEnv(t)
	leader := e.pool(workpool.Config{MaxParallelism: 3}) // leads, runs no functions
	start(t, leader)
	worker := e.pool(workpool.Config{})
	started := make(chan struct{}, 1)
	ctxErr := make(chan error, 1)
	mustRegister(t, worker, "f", func(ctx context.Context, a num) (int, error) {
		started <- struct{}{}
		<-ctx.Done()
		ctxErr <- ctx.Err()
		return 0, ctx.Err()
	})
	mustOnComplete(t, e, worker, "done")
	start(t, worker)
	producer := e.pool(workpool.Config{}) // never started
	pf := mustRegister(t, producer, "f", func(ctx context.Context, a num) (int, error) { return 0, nil })
	pd := mustOnComplete(t, e, producer, "done")
	id := enqueue(t, producer, pf, num{}, workpool.Retry(workpool.RetryBehavior{MaxAttempts: 3, Base: 1}), workpool.OnComplete(pd, "remote"))
	recv(t, started, 10*time.Second, "the handler to start in the worker process")
	require.NoError(t, producer.Cancel(context.Background(), id))
	assert.ErrorIs(t, recv(t, ctxErr, 10*time.Second, "the handler's context to be canceled"), context.Canceled)
	assert.Equal(t, apiCompletion{Status: "canceled", Value: "0", Context: "remote", Attempts: 1}, e.waitCompletion(id, 10*time.Second))
	assert.Len(t, started, 0, "canceled work was retried")
}

// TestAPICancelPendingNeverStartsInBusyPool: once Cancel has returned for
// work that has not started, its handler never runs, in a busy pool whose
// loop starts work on most iterations and (on its fast path) leaves its
// cancel phase out. Cancels come from a process that does not run the
// loop, each aimed a few items ahead of the work starting, so that many
// commit just before the loop would start their item.
//
// A handler may still start after Cancel returned when its item was
// started first: Cancel and the start raced and the start won, so the work
// is running and only gets its context canceled. Such a case is told apart
// by the database's own clock: the start statement's timestamp (the
// running row's started_at) is then earlier than a timestamp read after
// Cancel returned.
func TestAPICancelPendingNeverStartsInBusyPool(t *testing.T) {
	t.Parallel()
	e := newAPIEnv(t)
	p := e.pool(workpool.Config{MaxParallelism: 2})
	const n, ahead = 1500, 3
	ctx := context.Background()
	ids := make([]workpool.WorkID, n)
	var canceled [n]atomic.Bool
	var mu sync.Mutex
	startedAt := make(map[int]time.Time) // of canceled items that ran
	var ran atomic.Int64
	front := make(chan int, 1)
	f := mustRegister(t, p, "f", func(_ context.Context, a num) (int, error) {
		ran.Add(1)
		if canceled[a.N].Load() {
			var at time.Time
			err := e.db.QueryRowContext(ctx, "SELECT started_at FROM "+e.schema+".running WHERE work_id = ?", int64(ids[a.N])).Scan(&at)
			assert.NoError(t, err)
			mu.Lock()
			startedAt[a.N] = at
			mu.Unlock()
		}
		select {
		case front <- a.N:
		default:
		}
		time.Sleep(time.Millisecond)
		return a.N, nil
	})
	for i := range n {
		ids[i] = enqueue(t, p, f, num{N: i})
	}
	canceler := e.pool(workpool.Config{}) // never started
	start(t, p)

	canceledAt := make(map[int]time.Time) // the database's clock after Cancel returned
	for last := 0; last < n-1; {
		k := recv(t, front, 30*time.Second, "a handler to start")
		i := min(k+ahead, n-1)
		if i <= last {
			continue
		}
		last = i
		// Marked first, so that no start after Cancel returns goes
		// unrecorded; a start before it is told apart by the clock below.
		canceled[i].Store(true)
		require.NoError(t, canceler.Cancel(ctx, ids[i]))
		var now time.Time
		require.NoError(t, e.db.QueryRowContext(ctx, "SELECT clock_timestamp()").Scan(&now))
		canceledAt[i] = now
	}
	waitFor(t, 60*time.Second, "every item to finish", func() bool { return e.workCount() == 0 })

	require.Less(t, int(ran.Load()), n, "no cancel reached pending work")
	mu.Lock()
	defer mu.Unlock()
	for i, at := range startedAt {
		assert.False(t, at.After(canceledAt[i]), "item %d started at %v, after its Cancel returned (%v)", i, at, canceledAt[i])
	}
}
