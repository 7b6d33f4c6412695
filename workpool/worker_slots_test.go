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

// TestLocalSlotsNeverOversubscribed: a process holds at most Workers
// attempts at once, even though two parts of it take work for its free
// slots: the claimer, woken when a slot frees, and the loop's iteration,
// kicked by the same attempt's result, in its start statement. Both counted
// the same free slot when the claimer read it before the loop reserved it,
// and the extra attempt then waited, claimed and unrun, in the handlers'
// queue (TestStrandedClaimReleased failed on it now and then: the process
// claimed the item the test meant to claim). The process logs an error
// when it holds more attempts than Workers. The global limit is set far
// above Workers so that only the local bound holds the count.
func TestLocalSlotsNeverOversubscribed(t *testing.T) {
	t.Parallel()
	e := newAPIEnv(t)
	const workers, items = 2, 600
	logs := &logCapture{}
	p := e.pool(workpool.Config{MaxParallelism: 40, Workers: workers, Logger: logs.logger()})
	var running concurrency
	var runs atomic.Int32
	done := make(chan struct{})
	f := mustRegister(t, p, "f", func(ctx context.Context, a num) (int, error) {
		running.enter()
		time.Sleep(time.Duration(a.N%3) * 200 * time.Microsecond) // the work
		running.leave()
		if runs.Add(1) == items {
			close(done)
		}
		return a.N, nil
	})
	start(t, p)

	args := make([]num, items)
	for i := range args {
		args[i] = num{N: i}
	}
	// Small batches, so that start signals keep waking the claimer while
	// the loop also starts work for this process.
	for i := 0; i < items; i += 10 {
		_, err := p.EnqueueBatch(context.Background(), f, args[i:i+10])
		require.NoError(t, err)
	}
	recv(t, done, 60*time.Second, "every item to run")
	assert.LessOrEqual(t, running.peak.Load(), int32(workers), "handlers running at once in one process")
	assert.Empty(t, logs.lines("worker: more attempts in flight than Workers"))
	assert.Equal(t, int32(items), runs.Load())
}
