package workpool_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/uptrace/bun"

	"github.com/pgworkpool/pgworkpool/workpool"
)

type addArgs struct{ A, B int }

// recordCompletion is an onComplete handler that writes each completion to
// the env's completions table, in the terminal transaction.
func recordCompletion(schema string) func(ctx context.Context, tx bun.Tx, c workpool.Completion[string, int]) error {
	return func(ctx context.Context, tx bun.Tx, c workpool.Completion[string, int]) error {
		_, err := tx.ExecContext(ctx, "INSERT INTO "+schema+".completions (work_id, status, value, error, context, attempts) VALUES (?, ?, ?, ?, ?, ?)",
			int64(c.WorkID), string(c.Status), fmt.Sprint(c.Value), c.Error, c.Context, c.Attempts)
		return err
	}
}

func TestEnqueueRunsAndCompletesOnce(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	p := e.pool(workpool.Config{MaxParallelism: 5})
	var calls atomic.Int64
	add, err := workpool.Register(p, "add", func(ctx context.Context, a addArgs) (int, error) {
		calls.Add(1)
		if a.A < 0 {
			return 0, workpool.NonRetryable(errors.New("negative"))
		}
		return a.A + a.B, nil
	})
	require.NoError(t, err)
	done, err := workpool.RegisterOnComplete(p, "record", recordCompletion(e.schema))
	require.NoError(t, err)
	ctx := context.Background()
	require.NoError(t, p.Start(ctx))

	const n = 200
	ids := make([]workpool.WorkID, 0, n)
	for i := range n {
		a := i
		if i%10 == 0 {
			a = -1
		}
		id, err := p.Enqueue(ctx, add, addArgs{A: a, B: 1}, workpool.OnComplete(done, fmt.Sprintf("item-%d", i)))
		require.NoError(t, err)
		ids = append(ids, id)
	}
	waitFor(t, 30*time.Second, "all completions", func() bool {
		return e.count("SELECT count(*) FROM "+e.schema+".completions") == n
	})
	assert.Equal(t, int64(n), calls.Load())
	assert.Equal(t, n/10, e.count("SELECT count(*) FROM "+e.schema+".completions WHERE status = 'failed' AND error = 'negative'"))
	assert.Equal(t, n-n/10, e.count("SELECT count(*) FROM "+e.schema+".completions WHERE status = 'success' AND value::int = split_part(context, '-', 2)::int + 1"))
	assert.Equal(t, 0, e.count("SELECT count(*) FROM "+e.schema+".work"))
	for _, id := range ids[:5] {
		st, err := p.Status(ctx, id)
		require.NoError(t, err)
		assert.Equal(t, workpool.StateFinished, st.State)
	}
	waitFor(t, 10*time.Second, "the loop to go idle", func() bool {
		return e.count("SELECT count(*) FROM "+e.schema+".run_status WHERE state = 'idle'") == 1
	})
	assert.Equal(t, 0, e.count("SELECT count(*) FROM "+e.schema+".running"))
	assert.Equal(t, 0, e.count("SELECT running_count FROM "+e.schema+".internal_state"))
}
