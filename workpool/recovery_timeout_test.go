package workpool_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgworkpool/pgworkpool/recovery"
	"github.com/pgworkpool/pgworkpool/workpool"
)

// TestTimeoutOfHandlerIgnoringContext runs handlers that never return on
// their own (they ignore their context) with a 1 s Timeout: the attempt
// fails as "timed out", final without retries, retried with them, and the
// onComplete runs exactly once either way. The abandoned handler returning
// later changes nothing.
func TestTimeoutOfHandlerIgnoringContext(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		opt  workpool.Option
		// hangs says which attempts (1-based) ignore their context.
		hangs    func(attempt int) bool
		cfg      workpool.Config
		want     rkCompletion // WorkID and Context filled in below
		attempts int          // handler calls
		events   []string
	}{
		{
			name:     "NoRetry",
			opt:      workpool.NoRetry(),
			hangs:    func(int) bool { return true },
			want:     rkCompletion{Status: "failed", Error: recovery.ReasonTimedOut, Attempts: 1},
			attempts: 1,
			events:   []string{"failed/1/timed out"},
		},
		{
			name:     "RetryThenSuccess",
			opt:      workpool.Retry(workpool.RetryBehavior{MaxAttempts: 3, InitialBackoff: 10 * time.Millisecond, Base: 1}),
			hangs:    func(a int) bool { return a == 1 },
			want:     rkCompletion{Status: "success", Value: 2, Attempts: 2},
			attempts: 2,
			events:   []string{"retrying/1/timed out", "success/2/"},
		},
		{
			name:     "RetriesExhausted",
			opt:      workpool.Retry(workpool.RetryBehavior{MaxAttempts: 2, InitialBackoff: 10 * time.Millisecond, Base: 1}),
			hangs:    func(int) bool { return true },
			want:     rkCompletion{Status: "failed", Error: recovery.ReasonTimedOut, Attempts: 2},
			attempts: 2,
			events:   []string{"retrying/1/timed out", "failed/2/timed out"},
		},
		{
			// Recovery's grace is shorter than the worker's own abandon
			// delay (1 s): recovery and the worker race to report the
			// timeout, and only one of them may count.
			name:     "RecoveryRacesWorker",
			opt:      workpool.Retry(workpool.RetryBehavior{MaxAttempts: 3, InitialBackoff: 10 * time.Millisecond, Base: 1}),
			hangs:    func(a int) bool { return a == 1 },
			cfg:      workpool.Config{TimeoutGrace: 50 * time.Millisecond, RecoveryPeriod: 100 * time.Millisecond},
			want:     rkCompletion{Status: "success", Value: 2, Attempts: 2},
			attempts: 2,
			events:   []string{"retrying/1/timed out", "success/2/"},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			rkCompletionTable(e)
			logs := &slogCapture{}
			cfg := tc.cfg
			cfg.MaxParallelism, cfg.LogLevel, cfg.Logger = 4, workpool.LogInfo, logs.logger()
			p := e.pool(cfg)
			hung := make(chan struct{}) // closed at the end: the abandoned handlers return
			var calls atomic.Int64
			var returned atomic.Int64
			fn, err := workpool.Register(p, "sleepy", func(ctx context.Context, _ int) (int, error) {
				a := int(calls.Add(1))
				if tc.hangs(a) {
					<-hung // ignores ctx
					returned.Add(1)
					return -1, nil // a success nobody may record
				}
				return a, nil
			})
			require.NoError(t, err)
			var onCompleteCalls atomic.Int64
			rec, err := workpool.RegisterOnComplete(p, "record", rkRecordCompletion(e.schema, &onCompleteCalls))
			require.NoError(t, err)
			ctx := context.Background()
			require.NoError(t, p.Start(ctx))

			began := time.Now()
			id, err := p.Enqueue(ctx, fn, 0, tc.opt, workpool.Timeout(time.Second), workpool.OnComplete(rec, tc.name))
			require.NoError(t, err)
			waitFor(t, 30*time.Second, "the onComplete", func() bool {
				return e.count("SELECT count(*) FROM "+e.schema+".kill_completions") > 0
			})
			took := time.Since(began)
			t.Logf("ended after %v", took)
			hungAttempts := 0
			for a := 1; a <= tc.attempts; a++ {
				if tc.hangs(a) {
					hungAttempts++
				}
			}
			assert.GreaterOrEqual(t, took, time.Duration(hungAttempts)*time.Second, "every hung attempt ran its full timeout")

			// The abandoned handlers return now; their results must be dropped.
			close(hung)
			waitFor(t, 5*time.Second, "the abandoned handlers to return", func() bool {
				return returned.Load() == int64(hungAttempts)
			})
			waitFor(t, 10*time.Second, "the loop to settle", func() bool {
				return e.count("SELECT count(*) FROM "+e.schema+".running") == 0 &&
					e.count("SELECT count(*) FROM "+e.schema+".pending_completion") == 0
			})
			time.Sleep(300 * time.Millisecond)

			want := tc.want
			want.WorkID, want.Context = int64(id), tc.name
			assert.Equal(t, []rkCompletion{want}, rkCompletions(e), "exactly one onComplete")
			assert.EqualValues(t, 1, onCompleteCalls.Load())
			assert.EqualValues(t, tc.attempts, calls.Load())
			assert.Zero(t, e.count("SELECT count(*) FROM "+e.schema+".work"))
			st, err := p.Status(ctx, id)
			require.NoError(t, err)
			assert.Equal(t, workpool.StateFinished, st.State)

			var got []string
			for _, r := range logs.msgs("completed") {
				if r.int("work_id") == int64(id) {
					got = append(got, fmt.Sprintf("%s/%d/%s", r.str("status"), r.int("attempts"), r.str("error")))
				}
			}
			assert.Equal(t, tc.events, got)
		})
	}
}

// TestTimeoutOfHandlerHonoringContext: a handler that returns when its
// context ends fails as "timed out" right at the deadline, not a second
// later.
func TestTimeoutOfHandlerHonoringContext(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	rkCompletionTable(e)
	p := e.pool(workpool.Config{MaxParallelism: 2})
	fn, err := workpool.Register(p, "patient", func(ctx context.Context, _ int) (int, error) {
		<-ctx.Done()
		return 0, ctx.Err()
	})
	require.NoError(t, err)
	var onCompleteCalls atomic.Int64
	rec, err := workpool.RegisterOnComplete(p, "record", rkRecordCompletion(e.schema, &onCompleteCalls))
	require.NoError(t, err)
	ctx := context.Background()
	require.NoError(t, p.Start(ctx))
	began := time.Now()
	id, err := p.Enqueue(ctx, fn, 0, workpool.NoRetry(), workpool.Timeout(500*time.Millisecond), workpool.OnComplete(rec, "c"))
	require.NoError(t, err)
	waitFor(t, 30*time.Second, "the onComplete", func() bool {
		return e.count("SELECT count(*) FROM "+e.schema+".kill_completions") > 0
	})
	took := time.Since(began)
	assert.GreaterOrEqual(t, took, 500*time.Millisecond)
	assert.Less(t, took, 1400*time.Millisecond, "reported at the deadline, before the abandon delay")
	time.Sleep(200 * time.Millisecond)
	assert.Equal(t, []rkCompletion{{WorkID: int64(id), Status: "failed", Error: recovery.ReasonTimedOut, Context: "c", Attempts: 1}}, rkCompletions(e))
	assert.EqualValues(t, 1, onCompleteCalls.Load())
}
