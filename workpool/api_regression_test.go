package workpool_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/pgworkpool/pgworkpool/workpool"
)

// Regression tests for bugs this suite found.

// TestAPIOtherPoolsIDNotFound: another pool's live work is "not found" to
// Status and Cancel (errors.go: ErrWorkNotFound), and Cancel leaves it be.
func TestAPIOtherPoolsIDNotFound(t *testing.T) {
	t.Parallel()
	e := newAPIEnv(t)
	a := e.pool(workpool.Config{Name: "a"})
	b := e.pool(workpool.Config{Name: "b"})
	fa := mustRegister(t, a, "f", func(ctx context.Context, x num) (int, error) { return 0, nil })
	id := enqueue(t, a, fa, num{}, workpool.RunAfter(time.Hour))
	ctx := context.Background()

	st, err := b.Status(ctx, id)
	assert.ErrorIs(t, err, workpool.ErrWorkNotFound, "b.Status of a's pending item returned %v", st)
	_, err = b.StatusBatch(ctx, []workpool.WorkID{id})
	assert.ErrorIs(t, err, workpool.ErrWorkNotFound)
	assert.ErrorIs(t, b.Cancel(ctx, id), workpool.ErrWorkNotFound)
	st, err = a.Status(ctx, id)
	assert.NoError(t, err)
	assert.Equal(t, workpool.Status{State: workpool.StatePending}, st)
	assert.Equal(t, 0, e.count("SELECT count(*) FROM "+e.schema+".pending_cancelation"))
}

// TestAPIRecoveredWorkRunsOnComplete: when recovery fails the last attempt
// of work whose worker died, the onComplete runs in a process that has it
// (the loop must wake the finishers, which otherwise sleep until a signal).
func TestAPIRecoveredWorkRunsOnComplete(t *testing.T) {
	t.Parallel()
	e := newAPIEnv(t)
	// The started process has the onComplete but not the function, so the
	// item is started and stays unclaimed; we then make it look claimed by
	// a worker that died.
	p := e.pool(workpool.Config{MaxParallelism: 2})
	mustOnComplete(t, e, p, "done")
	mustRegister(t, p, "other", func(ctx context.Context, a num) (int, error) { return 0, nil })
	start(t, p)
	producer := e.pool(workpool.Config{})
	f := mustRegister(t, producer, "f", func(ctx context.Context, a num) (int, error) { return 0, nil })
	done := mustOnComplete(t, e, producer, "done")
	id := enqueue(t, producer, f, num{}, workpool.OnComplete(done, "lost"))
	waitState(t, producer, id, workpool.StateRunning)
	e.exec("UPDATE "+e.schema+".running SET claimed_by = -1, claimed_at = now(), deadline = now() + interval '1 minute' WHERE work_id = $1", int64(id))

	e.forceRecovery(p.Name())
	assert.NoError(t, p.SetMaxParallelism(context.Background(), 3)) // kicks the loop
	c := e.waitCompletion(id, 10*time.Second)
	assert.Equal(t, apiCompletion{Status: "failed", Value: "0", Error: "worker lost", Context: "lost", Attempts: 1}, c)
	waitState(t, producer, id, workpool.StateFinished)
}

// TestAPIRunAfterNeverEarly: an item enqueued late in a 100 ms segment
// does not start before now + d, even when the loop wakes for an earlier
// item due in the same segment.
func TestAPIRunAfterNeverEarly(t *testing.T) {
	t.Parallel()
	e := newAPIEnv(t)
	p := e.pool(workpool.Config{MaxParallelism: 4})
	type start struct {
		n  int
		at time.Time
	}
	started := make(chan start, 2)
	f := mustRegister(t, p, "f", func(ctx context.Context, a num) (int, error) {
		started <- start{a.N, time.Now()}
		return 0, nil
	})
	startPool(t, p)
	const d = 300 * time.Millisecond
	// Two items in the same 100 ms segment (the database runs on this
	// machine's clock): one early in it, which sets the loop's timer, and
	// one late in it.
	for time.Now().UnixMilli()%100 > 10 {
		time.Sleep(time.Millisecond)
	}
	enqueue(t, p, f, num{N: 1}, workpool.RunAfter(d))
	for time.Now().UnixMilli()%100 < 80 {
		time.Sleep(time.Millisecond)
	}
	enqueued := time.Now()
	enqueue(t, p, f, num{N: 2}, workpool.RunAfter(d))
	for range 2 {
		s := recv(t, started, 5*time.Second, "an item to start")
		if s.n == 2 {
			assert.False(t, s.at.Before(enqueued.Add(d)), "started %v after Enqueue, before RunAfter(%v)", s.at.Sub(enqueued), d)
		}
	}
}

// startPool is start under another name, for tests that shadow start.
func startPool(t *testing.T, p *workpool.Pool) { start(t, p) }
