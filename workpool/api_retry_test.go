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

	"github.com/pgworkpool/pgworkpool/workpool"
)

// callCounter counts handler calls per argument.
type callCounter struct {
	mu sync.Mutex
	n  map[int]int
}

func (c *callCounter) add(k int) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n == nil {
		c.n = map[int]int{}
	}
	c.n[k]++
	return c.n[k]
}

func (c *callCounter) get(k int) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[k]
}

// TestAPIRetryOptions: Retry, NoRetry and Config.RetryByDefault decide how
// many attempts a failing item gets; Retry with a zero behavior means the
// pool's DefaultRetry.
func TestAPIRetryOptions(t *testing.T) {
	t.Parallel()
	e := newAPIEnv(t)
	defaultRetry := workpool.RetryBehavior{MaxAttempts: 3, InitialBackoff: 10 * time.Millisecond, Base: 1}
	byDefault := e.pool(workpool.Config{Name: "by-default", MaxParallelism: 10, RetryByDefault: true, DefaultRetry: defaultRetry})
	optIn := e.pool(workpool.Config{Name: "opt-in", MaxParallelism: 10, DefaultRetry: defaultRetry})
	var calls callCounter
	fail := func(ctx context.Context, a num) (int, error) {
		calls.add(a.N)
		return 0, fmt.Errorf("attempt %d of item %d failed", calls.get(a.N), a.N)
	}
	fd := mustRegister(t, byDefault, "fail", fail)
	fo := mustRegister(t, optIn, "fail", fail)
	dd := mustOnComplete(t, e, byDefault, "done")
	do := mustOnComplete(t, e, optIn, "done")
	start(t, byDefault)
	start(t, optIn)

	cases := []struct {
		name     string
		p        *workpool.Pool
		fn       workpool.Handle
		opts     []workpool.Option
		attempts int
	}{
		{"RetryByDefault, no option", byDefault, fd, []workpool.Option{workpool.OnComplete(dd, "")}, 3},
		{"RetryByDefault, NoRetry", byDefault, fd, []workpool.Option{workpool.NoRetry(), workpool.OnComplete(dd, "")}, 1},
		{"RetryByDefault, explicit Retry", byDefault, fd, []workpool.Option{workpool.Retry(workpool.RetryBehavior{MaxAttempts: 2, InitialBackoff: time.Millisecond, Base: 2}), workpool.OnComplete(dd, "")}, 2},
		{"no option", optIn, fo, []workpool.Option{workpool.OnComplete(do, "")}, 1},
		{"Retry(zero) means DefaultRetry", optIn, fo, []workpool.Option{workpool.Retry(workpool.RetryBehavior{}), workpool.OnComplete(do, "")}, 3},
		{"NoRetry after Retry", optIn, fo, []workpool.Option{workpool.Retry(workpool.RetryBehavior{}), workpool.NoRetry(), workpool.OnComplete(do, "")}, 1},
		{"Retry after NoRetry", optIn, fo, []workpool.Option{workpool.NoRetry(), workpool.Retry(workpool.RetryBehavior{MaxAttempts: 4, Base: 1}), workpool.OnComplete(do, "")}, 4},
	}
	ids := make([]workpool.WorkID, len(cases))
	for i, c := range cases {
		ids[i] = enqueue(t, c.p, c.fn, num{N: i}, c.opts...)
	}
	for i, c := range cases {
		comp := e.waitCompletion(ids[i], 20*time.Second)
		assert.Equal(t, "failed", comp.Status, c.name)
		assert.Equal(t, c.attempts, comp.Attempts, c.name)
		assert.Equal(t, fmt.Sprintf("attempt %d of item %d failed", c.attempts, i), comp.Error, c.name)
		assert.Equal(t, c.attempts, calls.get(i), c.name)
	}
}

// TestAPINonRetryable: NonRetryable ends the item at once, even wrapped
// with %w, whatever retries remain; a later success ends it as succeeded.
func TestAPINonRetryable(t *testing.T) {
	t.Parallel()
	e := newAPIEnv(t)
	p := e.pool(workpool.Config{MaxParallelism: 5})
	var calls callCounter
	f := mustRegister(t, p, "f", func(ctx context.Context, a num) (int, error) {
		n := calls.add(a.N)
		switch a.N {
		case 0:
			return 0, workpool.NonRetryable(errors.New("bad input"))
		case 1:
			return 0, fmt.Errorf("wrapped: %w", workpool.NonRetryable(errors.New("bad input")))
		case 2: // fails twice, then succeeds
			if n < 3 {
				return 0, errors.New("transient")
			}
			return n, nil
		}
		return 0, errors.New("always")
	})
	done := mustOnComplete(t, e, p, "done")
	start(t, p)
	retry := workpool.Retry(workpool.RetryBehavior{MaxAttempts: 5, InitialBackoff: 10 * time.Millisecond, Base: 1})
	ids := make([]workpool.WorkID, 4)
	for i := range ids {
		ids[i] = enqueue(t, p, f, num{N: i}, retry, workpool.OnComplete(done, ""))
	}
	assert.Equal(t, apiCompletion{Status: "failed", Value: "0", Error: "bad input", Attempts: 1}, e.waitCompletion(ids[0], 10*time.Second))
	assert.Equal(t, apiCompletion{Status: "failed", Value: "0", Error: "wrapped: bad input", Attempts: 1}, e.waitCompletion(ids[1], 10*time.Second))
	assert.Equal(t, apiCompletion{Status: "success", Value: "3", Attempts: 3}, e.waitCompletion(ids[2], 10*time.Second))
	assert.Equal(t, apiCompletion{Status: "failed", Value: "0", Error: "always", Attempts: 5}, e.waitCompletion(ids[3], 10*time.Second))
	assert.Equal(t, []int{1, 1, 3, 5}, []int{calls.get(0), calls.get(1), calls.get(2), calls.get(3)})

	assert.NoError(t, workpool.NonRetryable(nil))
	assert.True(t, workpool.IsNonRetryable(fmt.Errorf("x: %w", workpool.NonRetryable(errors.New("y")))))
	assert.False(t, workpool.IsNonRetryable(errors.New("y")))
}

// TestAPIPanic: a panicking handler is a failed attempt ("panic: ..."),
// retried if retries remain, and the worker keeps going.
func TestAPIPanic(t *testing.T) {
	t.Parallel()
	e := newAPIEnv(t)
	p := e.pool(workpool.Config{MaxParallelism: 3})
	var calls callCounter
	f := mustRegister(t, p, "f", func(ctx context.Context, a num) (int, error) {
		if n := calls.add(a.N); a.N == 0 || n == 1 {
			panic(fmt.Sprintf("boom %d", a.N))
		}
		return a.N, nil
	})
	done := mustOnComplete(t, e, p, "done")
	start(t, p)
	noRetry := enqueue(t, p, f, num{N: 0}, workpool.OnComplete(done, ""))
	retried := enqueue(t, p, f, num{N: 1}, workpool.Retry(workpool.RetryBehavior{MaxAttempts: 3, InitialBackoff: 10 * time.Millisecond, Base: 1}),
		workpool.OnComplete(done, ""))
	assert.Equal(t, apiCompletion{Status: "failed", Value: "0", Error: "panic: boom 0", Attempts: 1}, e.waitCompletion(noRetry, 10*time.Second))
	assert.Equal(t, apiCompletion{Status: "success", Value: "1", Attempts: 2}, e.waitCompletion(retried, 10*time.Second))
	assert.Equal(t, 1, calls.get(0))
	assert.Equal(t, 2, calls.get(1))
	// The pool still works after the panics.
	after := enqueue(t, p, f, num{N: 2}, workpool.Retry(workpool.RetryBehavior{MaxAttempts: 2, Base: 1}), workpool.OnComplete(done, ""))
	assert.Equal(t, "success", e.waitCompletion(after, 10*time.Second).Status)
}

// TestAPIRetryBackoff: retries are spaced by InitialBackoff × Base^(n-1) ×
// a factor in [0.5, 1.5).
//
// Tolerance: a retry is scheduled in 100 ms segments, at the segment of the
// loop's "now" plus the backoff rounded up; the loop's now is floored to
// its segment, so a retry may start up to 100 ms before failure + backoff
// (−100 ms). Late side: recording the result, the loop iteration, the
// timer, the claim and the -race scheduler on a loaded machine (+250 ms).
func TestAPIRetryBackoff(t *testing.T) {
	t.Parallel()
	e := newAPIEnv(t)
	p := e.pool(workpool.Config{MaxParallelism: 2})
	var mu sync.Mutex
	var starts []time.Time
	f := mustRegister(t, p, "flaky", func(ctx context.Context, a num) (int, error) {
		mu.Lock()
		defer mu.Unlock()
		starts = append(starts, time.Now())
		if len(starts) < 4 {
			return 0, errors.New("not yet")
		}
		return len(starts), nil
	})
	done := mustOnComplete(t, e, p, "done")
	start(t, p)
	id := enqueue(t, p, f, num{}, workpool.Retry(workpool.RetryBehavior{MaxAttempts: 4, InitialBackoff: 200 * time.Millisecond, Base: 2}),
		workpool.OnComplete(done, ""))
	assert.Equal(t, apiCompletion{Status: "success", Value: "4", Attempts: 4}, e.waitCompletion(id, 20*time.Second))

	const early, late = 100 * time.Millisecond, 250 * time.Millisecond
	mu.Lock()
	defer mu.Unlock()
	require.Len(t, starts, 4)
	for i, backoff := range []time.Duration{200 * time.Millisecond, 400 * time.Millisecond, 800 * time.Millisecond} {
		gap := starts[i+1].Sub(starts[i])
		lo, hi := backoff/2-early, backoff*3/2+late
		t.Logf("gap %d: %v (backoff %v, allowed [%v, %v])", i+1, gap, backoff, lo, hi)
		assert.True(t, gap >= lo && gap <= hi, "gap %d is %v, want within [%v, %v]", i+1, gap, lo, hi)
	}
}

// TestAPIRetryCountsInStatus: between attempts an item is pending with its
// previous attempts counted.
func TestAPIRetryCountsInStatus(t *testing.T) {
	t.Parallel()
	e := newAPIEnv(t)
	p := e.pool(workpool.Config{MaxParallelism: 2})
	var calls atomic.Int32
	f := mustRegister(t, p, "f", func(ctx context.Context, a num) (int, error) {
		calls.Add(1)
		return 0, errors.New("fail")
	})
	start(t, p)
	id := enqueue(t, p, f, num{}, workpool.Retry(workpool.RetryBehavior{MaxAttempts: 2, InitialBackoff: time.Hour, Base: 1}))
	waitFor(t, 10*time.Second, "the first attempt to be recorded", func() bool {
		st, err := p.Status(context.Background(), id)
		require.NoError(t, err)
		return st.PreviousAttempts == 1
	})
	st, err := p.Status(context.Background(), id)
	require.NoError(t, err)
	assert.Equal(t, workpool.Status{State: workpool.StatePending, PreviousAttempts: 1}, st)
	waitFor(t, 10*time.Second, "the retry to be scheduled", func() bool {
		s, err := p.Stats(context.Background())
		require.NoError(t, err)
		return s.Future == 1
	})
	assert.Equal(t, int32(1), calls.Load())
}
