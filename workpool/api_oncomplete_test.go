package workpool_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/uptrace/bun"

	"github.com/pgworkpool/pgworkpool/workpool"
)

// TestAPIOnCompleteExactlyOnce: every way an item can end commits its
// onComplete exactly once, with the right status, error and attempts. The
// completions table's primary key is work_id, so a second commit would
// fail the handler and leave the work row behind.
func TestAPIOnCompleteExactlyOnce(t *testing.T) {
	t.Parallel()
	e := newAPIEnv(t)
	p := e.pool(workpool.Config{MaxParallelism: 8})
	var invocations atomic.Int64
	running := make(chan struct{}, 10)
	f := mustRegister(t, p, "f", func(ctx context.Context, a num) (int, error) {
		switch {
		case a.N >= 400: // canceled while running
			running <- struct{}{}
			<-ctx.Done()
			return 0, ctx.Err()
		case a.N >= 300:
			return 0, workpool.NonRetryable(fmt.Errorf("final %d", a.N))
		case a.N >= 200:
			return 0, fmt.Errorf("fails %d", a.N)
		}
		return a.N, nil
	})
	record := apiRecorder(e.schema)
	done, err := workpool.RegisterOnComplete(p, "done", func(ctx context.Context, tx bun.Tx, c workpool.Completion[string, int]) error {
		invocations.Add(1)
		return record(ctx, tx, c)
	})
	require.NoError(t, err)
	start(t, p)
	ctx := context.Background()
	batch := func(from, n int, kind string, opts ...workpool.Option) []workpool.WorkID {
		args := make([]num, n)
		for i := range args {
			args[i] = num{N: from + i}
		}
		ids, err := p.EnqueueBatch(ctx, f, args, append(opts, workpool.OnComplete(done, kind))...)
		require.NoError(t, err)
		return ids
	}
	retry := workpool.Retry(workpool.RetryBehavior{MaxAttempts: 3, InitialBackoff: 5 * time.Millisecond, Base: 1})

	running5 := batch(400, 5, "canceled running", retry)
	for range running5 {
		recv(t, running, 10*time.Second, "a handler to start")
	}
	batch(0, 50, "success", retry)
	batch(200, 10, "failed", retry)
	batch(300, 10, "final", retry)
	pending := batch(500, 10, "canceled pending", workpool.RunAfter(time.Hour))
	for _, id := range append(pending, running5...) {
		require.NoError(t, p.Cancel(ctx, id))
	}
	const total = 5 + 50 + 10 + 10 + 10
	waitFor(t, 30*time.Second, "every item to end", func() bool { return e.workCount() == 0 })
	assert.Equal(t, total, e.completionsCount())
	q := "SELECT count(*) FROM " + e.schema + ".completions WHERE "
	assert.Equal(t, 50, e.count(q+"context = 'success' AND status = 'success' AND attempts = 1 AND value::int BETWEEN 0 AND 49"))
	assert.Equal(t, 10, e.count(q+"context = 'failed' AND status = 'failed' AND attempts = 3 AND error LIKE 'fails %'"))
	assert.Equal(t, 10, e.count(q+"context = 'final' AND status = 'failed' AND attempts = 1 AND error LIKE 'final %'"))
	assert.Equal(t, 10, e.count(q+"context = 'canceled pending' AND status = 'canceled' AND attempts = 0"))
	assert.Equal(t, 5, e.count(q+"context = 'canceled running' AND status = 'canceled' AND attempts = 1"))
	assert.Equal(t, int64(total), invocations.Load(), "onComplete invocations")
	stayFor(t, 300*time.Millisecond, "no further onComplete", func() bool { return invocations.Load() == total })
}

// TestAPIOnCompleteErrors: an onComplete that returns an error (or
// panics) is rolled back and tried again after Config.OnCompleteBackoff;
// after Config.OnCompleteAttempts tries the work row is kept, finishing,
// with the error. Other items of the same batch are not held back.
func TestAPIOnCompleteErrors(t *testing.T) {
	t.Parallel()
	e := newAPIEnv(t)
	p := e.pool(workpool.Config{MaxParallelism: 4, OnCompleteAttempts: 3, OnCompleteBackoff: 20 * time.Millisecond})
	f := mustRegister(t, p, "f", func(ctx context.Context, a num) (int, error) { return a.N, nil })
	var mu sync.Mutex
	tries := map[workpool.WorkID]int{}
	record := apiRecorder(e.schema)
	done, err := workpool.RegisterOnComplete(p, "picky", func(ctx context.Context, tx bun.Tx, c workpool.Completion[string, int]) error {
		mu.Lock()
		tries[c.WorkID]++
		n := tries[c.WorkID]
		mu.Unlock()
		// Written first, so a failure must roll it back.
		if err := record(ctx, tx, c); err != nil {
			return err
		}
		switch c.Context {
		case "broken":
			return fmt.Errorf("broken, try %d", n)
		case "panics":
			panic("onComplete panic")
		case "flaky":
			if n <= 2 {
				return errors.New("flaky")
			}
		}
		return nil
	})
	require.NoError(t, err)
	start(t, p)
	ctx := context.Background()

	ids := map[string]workpool.WorkID{}
	for _, kind := range []string{"ok", "flaky", "broken", "panics"} {
		ids[kind] = enqueue(t, p, f, num{N: len(kind)}, workpool.OnComplete(done, kind))
	}
	assert.Equal(t, apiCompletion{Status: "success", Value: "2", Context: "ok", Attempts: 1}, e.waitCompletion(ids["ok"], 10*time.Second))
	assert.Equal(t, apiCompletion{Status: "success", Value: "5", Context: "flaky", Attempts: 1}, e.waitCompletion(ids["flaky"], 10*time.Second))

	for _, kind := range []string{"broken", "panics"} {
		id := ids[kind]
		waitFor(t, 10*time.Second, kind+" to be given up", func() bool {
			return e.count("SELECT count(*) FROM "+e.schema+".work WHERE id = ? AND finish_attempts = 3 AND finish_after IS NULL", int64(id)) == 1
		})
		var result, finishErr string
		require.NoError(t, e.db.DB.QueryRowContext(ctx, "SELECT result->>'status', finish_error FROM "+e.schema+".work WHERE id = $1", int64(id)).
			Scan(&result, &finishErr))
		assert.Equal(t, "success", result, kind)
		if kind == "broken" {
			assert.Regexp(t, `^broken, try \d+$`, finishErr)
		} else {
			assert.Contains(t, finishErr, "onComplete panic")
		}
		st, err := p.Status(ctx, id)
		require.NoError(t, err)
		assert.Equal(t, workpool.Status{State: workpool.StateFinishing, PreviousAttempts: 1}, st, kind)
		_, ok := e.completion(id)
		assert.False(t, ok, "the writes of a failed onComplete were committed (%s)", kind)
	}
	stayFor(t, 300*time.Millisecond, "no tries after giving up", func() bool {
		return e.count("SELECT count(*) FROM "+e.schema+".work WHERE finish_attempts = 3 AND finish_after IS NULL") == 2
	})
	s, err := p.Stats(ctx)
	require.NoError(t, err)
	assert.Equal(t, int64(2), s.Finishing)
	assert.Equal(t, 2, e.workCount())
	mu.Lock()
	defer mu.Unlock()
	assert.GreaterOrEqual(t, tries[ids["broken"]], 3)
}

// TestAPIOnCompleteMayEnqueue: an onComplete runs in a transaction that
// holds its work row, and may enqueue. The enqueue must not wait for an
// iteration of the loop that itself waits for that row: here a cancel of
// the same work, queued without a kick, which the iteration that would
// carry the enqueue consumes first (Driver.RunInIteration). With the
// onComplete's own context the enqueue commits by itself; with another,
// the iteration carrying it gives up waiting for the row after its lock
// timeout, and the enqueue then commits by itself.
func TestAPIOnCompleteMayEnqueue(t *testing.T) {
	t.Parallel()
	t.Run("own context", func(t *testing.T) {
		t.Parallel()
		logs := onCompleteEnqueues(t, func(ctx context.Context) context.Context { return ctx })
		assert.Empty(t, logs.lines("loop: iteration failed, retrying"), "an iteration waited for the onComplete's row")
	})
	t.Run("another context", func(t *testing.T) {
		t.Parallel()
		onCompleteEnqueues(t, func(context.Context) context.Context { return context.Background() })
	})
}

// onCompleteEnqueues runs the scenario of TestAPIOnCompleteMayEnqueue,
// the onComplete enqueuing with the context that use returns, and returns
// the pool's logs.
func onCompleteEnqueues(t *testing.T, use func(context.Context) context.Context) *logCapture {
	e := newAPIEnv(t)
	logs := &logCapture{}
	p := e.pool(workpool.Config{MaxParallelism: 4, Logger: logs.logger()})
	f := mustRegister(t, p, "f", func(context.Context, num) (int, error) { return 1, nil })
	next := make(chan num, 1)
	g := mustRegister(t, p, "g", func(_ context.Context, a num) (int, error) {
		next <- a
		return 0, nil
	})
	enqueued := make(chan error, 1)
	record := apiRecorder(e.schema)
	done, err := workpool.RegisterOnComplete(p, "done", func(ctx context.Context, tx bun.Tx, c workpool.Completion[string, int]) error {
		if err := record(ctx, tx, c); err != nil {
			return err
		}
		// Committed at once, from outside this transaction, and no kick:
		// the loop finds it in its next iteration.
		if _, err := e.db.DB.ExecContext(ctx, "INSERT INTO "+e.schema+".pending_cancelation (pool, segment, work_id) "+
			"SELECT pool, floor(extract(epoch FROM now()) * 10), id FROM "+e.schema+".work WHERE id = $1", int64(c.WorkID)); err != nil {
			return err
		}
		_, err := p.Enqueue(use(ctx), g, num{N: 7})
		enqueued <- err
		return err
	})
	require.NoError(t, err)
	start(t, p)

	id := enqueue(t, p, f, num{N: 1}, workpool.OnComplete(done, "x"))
	require.NoError(t, recv(t, enqueued, 20*time.Second, "the enqueue made by the onComplete (stuck behind its own work row?)"))
	assert.Equal(t, 7, recv(t, next, 10*time.Second, "the enqueued work to run").N)
	c := e.waitCompletion(id, 10*time.Second)
	assert.Equal(t, "success", c.Status)
	waitFor(t, 10*time.Second, "every item to end", func() bool { return e.workCount() == 0 })
	assert.Equal(t, 1, e.completionsCount())
	return logs
}
