package workpool_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgworkpool/pgworkpool/workpool"
)

// TestAPIStatus: Status and StatusBatch report pending, running (with the
// attempts already made), finishing and finished work, in input order, and
// ErrWorkNotFound for ids never issued.
func TestAPIStatus(t *testing.T) {
	t.Parallel()
	e := newAPIEnv(t)
	p := e.pool(workpool.Config{MaxParallelism: 4})
	var calls callCounter
	secondAttempt := make(chan struct{}, 1)
	release := make(chan struct{})
	f := mustRegister(t, p, "f", func(ctx context.Context, a num) (int, error) {
		n := calls.add(a.N)
		if a.N == 1 {
			if n == 1 {
				return 0, errors.New("first attempt fails")
			}
			secondAttempt <- struct{}{}
			<-release
		}
		return a.N, nil
	})
	done := mustOnComplete(t, e, p, "done")
	start(t, p)
	ctx := context.Background()

	pending := enqueue(t, p, f, num{N: 0}, workpool.RunAfter(time.Hour))
	running := enqueue(t, p, f, num{N: 1}, workpool.Retry(workpool.RetryBehavior{MaxAttempts: 3, InitialBackoff: 10 * time.Millisecond, Base: 1}),
		workpool.OnComplete(done, ""))
	finished := enqueue(t, p, f, num{N: 2}, workpool.OnComplete(done, ""))
	recv(t, secondAttempt, 10*time.Second, "the second attempt to start")
	e.waitCompletion(finished, 10*time.Second)

	st, err := p.Status(ctx, pending)
	require.NoError(t, err)
	assert.Equal(t, workpool.Status{State: workpool.StatePending}, st)
	st, err = p.Status(ctx, running)
	require.NoError(t, err)
	assert.Equal(t, workpool.Status{State: workpool.StateRunning, PreviousAttempts: 1}, st)
	st, err = p.Status(ctx, finished)
	require.NoError(t, err)
	assert.Equal(t, workpool.Status{State: workpool.StateFinished}, st)

	batch, err := p.StatusBatch(ctx, []workpool.WorkID{finished, pending, running, pending})
	require.NoError(t, err)
	assert.Equal(t, []workpool.Status{
		{State: workpool.StateFinished},
		{State: workpool.StatePending},
		{State: workpool.StateRunning, PreviousAttempts: 1},
		{State: workpool.StatePending},
	}, batch)
	empty, err := p.StatusBatch(ctx, nil)
	require.NoError(t, err)
	assert.Empty(t, empty)

	for _, id := range []workpool.WorkID{0, -1, 1 << 40} {
		_, err := p.Status(ctx, id)
		assert.ErrorIs(t, err, workpool.ErrWorkNotFound, "id %d", id)
	}
	_, err = p.StatusBatch(ctx, []workpool.WorkID{pending, 1 << 40})
	assert.ErrorIs(t, err, workpool.ErrWorkNotFound)
	canceled, cancel := context.WithCancel(ctx)
	cancel()
	_, err = p.Status(canceled, pending)
	assert.ErrorIs(t, err, context.Canceled)

	close(release)
	c := e.waitCompletion(running, 10*time.Second)
	assert.Equal(t, apiCompletion{Status: "success", Value: "1", Attempts: 2}, c)
	st, err = p.Status(ctx, running)
	require.NoError(t, err)
	assert.Equal(t, workpool.Status{State: workpool.StateFinished}, st)
	assert.Equal(t, "pending", workpool.StatePending.String())
	assert.Equal(t, "finishing", workpool.StateFinishing.String())
}

// TestAPIStatusFinishing: work whose outcome is decided but whose
// onComplete no started process has is finishing; a process that registers
// the handler runs it when it starts.
func TestAPIStatusFinishing(t *testing.T) {
	t.Parallel()
	e := newAPIEnv(t)
	runner := e.pool(workpool.Config{MaxParallelism: 2}) // runs f, lacks the onComplete
	mustRegister(t, runner, "f", func(ctx context.Context, a num) (int, error) { return a.N + 1, nil })
	start(t, runner)

	finisher := e.pool(workpool.Config{MaxParallelism: 2}) // same pool, another "process"
	fin := mustRegister(t, finisher, "f", func(ctx context.Context, a num) (int, error) { return a.N + 1, nil })
	done := mustOnComplete(t, e, finisher, "done")
	id, err := finisher.Enqueue(context.Background(), fin, num{N: 41}, workpool.OnComplete(done, "later"))
	require.NoError(t, err)

	waitState(t, runner, id, workpool.StateFinishing)
	st, err := finisher.Status(context.Background(), id)
	require.NoError(t, err)
	assert.Equal(t, workpool.Status{State: workpool.StateFinishing, PreviousAttempts: 1}, st)
	s, err := runner.Stats(context.Background())
	require.NoError(t, err)
	assert.Equal(t, int64(1), s.Finishing)
	_, ok := e.completion(id)
	assert.False(t, ok)

	start(t, finisher)
	assert.Equal(t, apiCompletion{Status: "success", Value: "42", Context: "later", Attempts: 1}, e.waitCompletion(id, 10*time.Second))
	waitState(t, runner, id, workpool.StateFinished)
}
