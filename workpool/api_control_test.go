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

// TestAPIParallelismLimit: a process with more workers than the limit
// never runs more than MaxParallelism handlers at once.
func TestAPIParallelismLimit(t *testing.T) {
	t.Parallel()
	e := newAPIEnv(t)
	p := e.pool(workpool.Config{MaxParallelism: 3, Workers: 12})
	var running concurrency
	f := mustRegister(t, p, "f", func(ctx context.Context, a num) (int, error) {
		running.enter()
		time.Sleep(15 * time.Millisecond) // the work
		running.leave()
		return a.N, nil
	})
	done := mustOnComplete(t, e, p, "done")
	start(t, p)
	args := make([]num, 60)
	for i := range args {
		args[i] = num{N: i}
	}
	_, err := p.EnqueueBatch(context.Background(), f, args, workpool.OnComplete(done, ""))
	require.NoError(t, err)
	waitFor(t, 30*time.Second, "60 completions", func() bool { return e.completionsCount() == 60 })
	t.Logf("peak concurrency %d", running.peak.Load())
	assert.LessOrEqual(t, running.peak.Load(), int32(3))
	assert.GreaterOrEqual(t, running.peak.Load(), int32(1))
}

// TestAPISetMaxParallelism: 0 pauses the pool (running work finishes and is
// recorded, nothing new starts); raising the limit resumes it promptly.
func TestAPISetMaxParallelism(t *testing.T) {
	t.Parallel()
	e := newAPIEnv(t)
	p := e.pool(workpool.Config{MaxParallelism: 2, Workers: 10})
	started := make(chan struct{}, 2)
	release := make(chan struct{})
	var quick atomic.Int32
	f := mustRegister(t, p, "f", func(ctx context.Context, a num) (int, error) {
		if a.N < 0 {
			started <- struct{}{}
			<-release
			return a.N, nil
		}
		quick.Add(1)
		return a.N, nil
	})
	done := mustOnComplete(t, e, p, "done")
	start(t, p)
	ctx := context.Background()

	blockers, err := p.EnqueueBatch(ctx, f, []num{{N: -1}, {N: -2}}, workpool.OnComplete(done, "blocker"))
	require.NoError(t, err)
	recv(t, started, 10*time.Second, "a blocker to start")
	recv(t, started, 10*time.Second, "a blocker to start")
	require.NoError(t, p.SetMaxParallelism(ctx, 0))
	assert.Equal(t, 0, e.count("SELECT max_parallelism FROM "+e.schema+".config WHERE pool = ?", p.Name()))
	args := make([]num, 5)
	for i := range args {
		args[i] = num{N: i}
	}
	queued, err := p.EnqueueBatch(ctx, f, args, workpool.OnComplete(done, "queued"))
	require.NoError(t, err)
	close(release)
	for _, id := range blockers {
		assert.Equal(t, "success", e.waitCompletion(id, 10*time.Second).Status)
	}
	waitFor(t, 10*time.Second, "the loop to free the blockers' slots", func() bool {
		s, err := p.Stats(ctx)
		require.NoError(t, err)
		return s.Running == 0
	})
	stayFor(t, 500*time.Millisecond, "the paused pool starting nothing", func() bool {
		s, err := p.Stats(ctx)
		require.NoError(t, err)
		if quick.Load() != 0 || s.Running != 0 || s.Backlog != 5 {
			t.Logf("paused pool: %d handler calls, running %d, backlog %d", quick.Load(), s.Running, s.Backlog)
			return false
		}
		return true
	})

	resumed := time.Now()
	require.NoError(t, p.SetMaxParallelism(ctx, 3))
	waitFor(t, 10*time.Second, "the queued items to complete", func() bool {
		return e.count("SELECT count(*) FROM "+e.schema+".completions WHERE context = 'queued'") == len(queued)
	})
	took := time.Since(resumed)
	t.Logf("resumed 5 items in %v", took)
	assert.Less(t, took, 3*time.Second, "raising the limit did not wake the loop promptly")
	assert.Equal(t, int32(5), quick.Load())

	assert.ErrorIs(t, p.SetMaxParallelism(ctx, -1), workpool.ErrInvalidConfig)
	assert.ErrorIs(t, p.SetMaxParallelism(ctx, workpool.MaxParallelismLimit+1), workpool.ErrInvalidConfig)
	assert.Equal(t, 3, e.count("SELECT max_parallelism FROM "+e.schema+".config WHERE pool = ?", p.Name()))
}

// TestAPISetLogLevel: the level decides whether per-item events are
// logged; SetLogLevel changes it at runtime, for every process.
func TestAPISetLogLevel(t *testing.T) {
	t.Parallel()
	e := newAPIEnv(t)
	logs, otherLogs := &logCapture{}, &logCapture{}
	p := e.pool(workpool.Config{MaxParallelism: 2, Logger: logs.logger()})
	other := e.pool(workpool.Config{Logger: otherLogs.logger()}) // same pool, another "process"
	f := mustRegister(t, p, "f", func(ctx context.Context, a num) (int, error) { return a.N, nil })
	g := mustRegister(t, other, "g", func(ctx context.Context, a num) (int, error) { return a.N, nil })
	done := mustOnComplete(t, e, p, "done")
	start(t, p)
	start(t, other)
	ctx := context.Background()

	quiet := enqueue(t, p, f, num{N: 1}, workpool.OnComplete(done, ""))
	e.waitCompletion(quiet, 10*time.Second)
	assert.Empty(t, logs.events("enqueued", quiet), "LogReport (the default) logged an event")

	require.NoError(t, p.SetLogLevel(ctx, workpool.LogInfo))
	assert.Equal(t, "info", scanString(t, e, "SELECT log_level FROM "+e.schema+".config WHERE pool = $1", p.Name()))
	loud := enqueue(t, p, f, num{N: 2}, workpool.OnComplete(done, ""))
	e.waitCompletion(loud, 10*time.Second)
	assert.Len(t, logs.events("enqueued", loud), 1)
	// started and completed are logged by whichever process leads.
	waitFor(t, 10*time.Second, "the completed event of either process", func() bool {
		return len(logs.events("completed", loud))+len(otherLogs.events("completed", loud)) == 1
	})
	// The other process follows the stored level too (it is told by NOTIFY).
	waitFor(t, 10*time.Second, "the other process to log events", func() bool {
		id := enqueue(t, other, g, num{N: 3}, workpool.RunAfter(time.Hour))
		return len(otherLogs.events("enqueued", id)) == 1
	})

	// Let the loop settle first: an iteration in flight while the level
	// changes can put the old level back (bug_setloglevel_race_test.go).
	waitFor(t, 10*time.Second, "the loop to settle", func() bool {
		return e.count("SELECT count(*) FROM "+e.schema+".run_status WHERE state <> 'running'") == 1
	})
	require.NoError(t, p.SetLogLevel(ctx, workpool.LogError))
	quietAgain := enqueue(t, p, f, num{N: 4}, workpool.OnComplete(done, ""))
	e.waitCompletion(quietAgain, 10*time.Second)
	assert.Empty(t, logs.events("enqueued", quietAgain))
	assert.Empty(t, logs.events("completed", quietAgain))
	assert.ErrorIs(t, p.SetLogLevel(ctx, workpool.LogLevel(0)), workpool.ErrInvalidConfig)
	assert.ErrorIs(t, p.SetLogLevel(ctx, workpool.LogLevel(9)), workpool.ErrInvalidConfig)
}

// TestAPIStats: Stats reports the counters since the last report and the
// pool's current sizes.
func TestAPIStats(t *testing.T) {
	t.Parallel()
	e := newAPIEnv(t)
	p := e.pool(workpool.Config{MaxParallelism: 3})
	var calls callCounter
	started := make(chan struct{}, 1)
	release := make(chan struct{})
	f := mustRegister(t, p, "f", func(ctx context.Context, a num) (int, error) {
		n := calls.add(a.N)
		switch a.N {
		case 10: // fails for good
			return 0, workpool.NonRetryable(errors.New("no"))
		case 11: // retried once
			if n == 1 {
				return 0, errors.New("again")
			}
		case 12:
			time.Sleep(50 * time.Millisecond) // the work
		case 13: // still running when we look
			started <- struct{}{}
			<-release
		}
		return a.N, nil
	})
	done := mustOnComplete(t, e, p, "done")
	start(t, p)
	ctx := context.Background()
	retry := workpool.Retry(workpool.RetryBehavior{MaxAttempts: 3, InitialBackoff: 10 * time.Millisecond, Base: 1})

	var ids []workpool.WorkID
	for _, n := range []int{0, 1, 10, 11, 12} {
		ids = append(ids, enqueue(t, p, f, num{N: n}, retry, workpool.OnComplete(done, "")))
	}
	canceled := enqueue(t, p, f, num{N: 20}, workpool.RunAfter(time.Hour), workpool.OnComplete(done, ""))
	require.NoError(t, p.Cancel(ctx, canceled))
	enqueue(t, p, f, num{N: 21}, workpool.RunAfter(time.Hour))
	enqueue(t, p, f, num{N: 22}, workpool.RunAfter(time.Hour))
	enqueue(t, p, f, num{N: 13})
	recv(t, started, 10*time.Second, "the long item to start")
	for _, id := range append(ids, canceled) {
		e.waitCompletion(id, 10*time.Second)
	}
	var s struct {
		Completed, Succeeded, Failed, Retries, Canceled, Running, Backlog, Future, Unclaimed, Finishing int64
	}
	waitFor(t, 10*time.Second, "the loop to count every completion", func() bool {
		r, err := p.Stats(ctx)
		require.NoError(t, err)
		s.Completed, s.Succeeded, s.Failed, s.Retries, s.Canceled = r.Completed, r.Succeeded, r.Failed, r.Retries, r.Canceled
		s.Running, s.Backlog, s.Future, s.Unclaimed, s.Finishing = r.Running, r.Backlog, r.Future, r.Unclaimed, r.Finishing
		return r.Completed == 6
	})
	assert.Equal(t, struct {
		Completed, Succeeded, Failed, Retries, Canceled, Running, Backlog, Future, Unclaimed, Finishing int64
	}{Completed: 6, Succeeded: 4, Failed: 1, Retries: 1, Canceled: 1, Running: 1, Future: 2}, s)
	r, err := p.Stats(ctx)
	require.NoError(t, err)
	assert.InDelta(t, 2.0/6, r.FailureRate, 0.001)
	assert.InDelta(t, 1.0/5, r.PermanentFailureRate, 0.001)
	assert.GreaterOrEqual(t, r.RunTime.P99, 50*time.Millisecond, "run-time percentiles of the leading process")
	assert.False(t, r.IntervalStart.IsZero())
	close(release)
}

// TestAPIStopWaitsForHandlers: Stop lets running handlers finish while its
// context lasts and records their results before it returns; afterwards
// the pool refuses calls with ErrPoolClosed.
func TestAPIStopWaitsForHandlers(t *testing.T) {
	t.Parallel()
	e := newAPIEnv(t)
	p := e.pool(workpool.Config{MaxParallelism: 2})
	started := make(chan struct{}, 1)
	release := make(chan struct{})
	f := mustRegister(t, p, "f", func(ctx context.Context, a num) (int, error) {
		started <- struct{}{}
		<-release
		return a.N, ctx.Err()
	})
	done := mustOnComplete(t, e, p, "done")
	start(t, p)
	ctx := context.Background()
	id := enqueue(t, p, f, num{N: 5}, workpool.OnComplete(done, ""))
	recv(t, started, 10*time.Second, "the handler to start")

	stopped := make(chan error, 1)
	go func() { stopped <- p.Stop(ctx) }()
	select {
	case err := <-stopped:
		t.Fatalf("Stop returned %v while a handler was running", err)
	case <-time.After(200 * time.Millisecond):
	}
	_, err := p.Enqueue(ctx, f, num{N: 6})
	assert.ErrorIs(t, err, workpool.ErrPoolClosed, "Enqueue while stopping")
	close(release)
	require.NoError(t, recv(t, stopped, 10*time.Second, "Stop to return"))
	c, ok := e.completion(id)
	require.True(t, ok, "Stop returned before recording the result")
	assert.Equal(t, apiCompletion{Status: "success", Value: "5", Attempts: 1}, c)
	assert.Equal(t, 0, e.count("SELECT count(*) FROM "+e.schema+".workers"), "Stop left its worker row")

	_, err = p.Enqueue(ctx, f, num{N: 7})
	assert.ErrorIs(t, err, workpool.ErrPoolClosed)
	_, err = p.EnqueueBatch(ctx, f, []num{{N: 8}})
	assert.ErrorIs(t, err, workpool.ErrPoolClosed)
	_, err = p.EnqueueTx(ctx, e.db, f, num{N: 9})
	assert.ErrorIs(t, err, workpool.ErrPoolClosed)
	assert.ErrorIs(t, p.Cancel(ctx, id), workpool.ErrPoolClosed)
	assert.ErrorIs(t, p.SetMaxParallelism(ctx, 3), workpool.ErrPoolClosed)
	assert.ErrorIs(t, p.SetLogLevel(ctx, workpool.LogInfo), workpool.ErrPoolClosed)
	assert.ErrorIs(t, p.Start(ctx), workpool.ErrPoolClosed)
	assert.NoError(t, p.Stop(ctx), "a second Stop")
	assert.Equal(t, 0, e.workCount())

	never := e.pool(workpool.Config{Name: "never-started"})
	h := mustRegister(t, never, "h", func(ctx context.Context, a num) (int, error) { return 0, nil })
	require.NoError(t, never.Stop(ctx))
	_, err = never.Enqueue(ctx, h, num{})
	assert.ErrorIs(t, err, workpool.ErrPoolClosed)
}

// TestAPIStopNoNewClaims: a stopped process claims nothing, even work of
// its functions that another process's loop starts afterwards.
func TestAPIStopNoNewClaims(t *testing.T) {
	t.Parallel()
	e := newAPIEnv(t)
	stopped := e.pool(workpool.Config{MaxParallelism: 2})
	var calls atomic.Int32
	mustRegister(t, stopped, "f", func(ctx context.Context, a num) (int, error) {
		calls.Add(1)
		return a.N, nil
	})
	leader := e.pool(workpool.Config{MaxParallelism: 2}) // runs the loop, lacks f
	mustRegister(t, leader, "g", func(ctx context.Context, a num) (int, error) { return a.N, nil })
	producer := e.pool(workpool.Config{}) // never started
	f := mustRegister(t, producer, "f", func(ctx context.Context, a num) (int, error) { return a.N, nil })
	start(t, stopped)
	start(t, leader)
	ctx := context.Background()
	require.NoError(t, stopped.Stop(ctx))

	id := enqueue(t, producer, f, num{N: 1})
	waitState(t, producer, id, workpool.StateRunning) // started by the leader's loop
	stayFor(t, 500*time.Millisecond, "the started item unclaimed", func() bool {
		return e.count("SELECT count(*) FROM "+e.schema+".running WHERE claimed_by IS NULL") == 1
	})
	assert.Equal(t, int32(0), calls.Load())
	s, err := leader.Stats(ctx)
	require.NoError(t, err)
	assert.Equal(t, int64(1), s.Unclaimed)
}

// TestAPIStopReleasesWork: when Stop's context ends while a handler runs,
// the handler's context is canceled and its work is given back; another
// process claims it at once (not after the 30 s lease) and completes it.
func TestAPIStopReleasesWork(t *testing.T) {
	for _, honours := range []bool{true, false} {
		name := "handler honours its context"
		if !honours {
			name = "handler ignores its context"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			e := newAPIEnv(t)
			first := e.pool(workpool.Config{MaxParallelism: 2})
			started := make(chan struct{}, 1)
			canceled := make(chan error, 1)
			stuck := make(chan struct{})
			t.Cleanup(func() { close(stuck) })
			f := mustRegister(t, first, "f", func(ctx context.Context, a num) (int, error) {
				started <- struct{}{}
				if honours {
					<-ctx.Done()
					canceled <- ctx.Err()
					return 0, ctx.Err()
				}
				<-stuck
				return -1, nil
			})
			done := mustOnComplete(t, e, first, "done")
			start(t, first)
			id := enqueue(t, first, f, num{N: 3}, workpool.OnComplete(done, "released"))
			recv(t, started, 10*time.Second, "the first process's handler to start")

			second := e.pool(workpool.Config{MaxParallelism: 2})
			ran := make(chan struct{}, 1)
			mustRegister(t, second, "f", func(ctx context.Context, a num) (int, error) {
				ran <- struct{}{}
				return a.N * 10, nil
			})
			mustOnComplete(t, e, second, "done")
			start(t, second)

			stopCtx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			defer cancel()
			err := first.Stop(stopCtx)
			stoppedAt := time.Now()
			assert.ErrorIs(t, err, context.DeadlineExceeded)
			if honours {
				assert.ErrorIs(t, recv(t, canceled, time.Second, "the handler's context to be canceled"), context.Canceled)
			}
			recv(t, ran, 10*time.Second, "the second process to run the released work")
			c := e.waitCompletion(id, 10*time.Second)
			took := time.Since(stoppedAt)
			t.Logf("the second process completed the released work %v after Stop returned", took)
			assert.Less(t, took, 5*time.Second)
			assert.Equal(t, apiCompletion{Status: "success", Value: "30", Context: "released", Attempts: 1}, c)
		})
	}
}
