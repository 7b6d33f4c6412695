package workpool_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgworkpool/pgworkpool/workpool"
)

// TestStandbyHandOff: in a saturated pool of short handlers, a handler that
// ends hands its slot to a standby claimed ahead of it, without waiting for
// the loop, and the global limit still holds: handlers never overlap beyond
// MaxParallelism, each item runs once, and once all is done the loop's
// running count is back at zero with no running row left. With an
// onComplete, the results go through the worker's own transaction, and the
// loop's completion phase hands the slot over instead of its own statement.
func TestStandbyHandOff(t *testing.T) {
	t.Parallel()
	for _, withOnComplete := range []bool{false, true} {
		name := "loop records"
		if withOnComplete {
			name = "onComplete"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			e := newAPIEnv(t)
			const limit, items = 4, 400
			p := e.pool(workpool.Config{MaxParallelism: limit})
			var running concurrency
			var mu sync.Mutex
			runs := map[int]int{}
			f := mustRegister(t, p, "f", func(ctx context.Context, a num) (int, error) {
				running.enter()
				defer running.leave()
				time.Sleep(2 * time.Millisecond) // the work
				mu.Lock()
				runs[a.N]++
				mu.Unlock()
				return a.N, nil
			})
			var opts []workpool.Option
			if withOnComplete {
				opts = append(opts, workpool.OnComplete(mustOnComplete(t, e, p, "rec"), "ctx"))
			}
			args := make([]num, items)
			for i := range args {
				args[i] = num{N: i}
			}
			_, err := p.EnqueueBatch(context.Background(), f, args, opts...)
			require.NoError(t, err)
			start(t, p)

			waitFor(t, 60*time.Second, "every item to finish", func() bool { return e.workCount() == 0 })
			assert.LessOrEqual(t, running.peak.Load(), int32(limit), "handlers running at once")
			assert.Positive(t, workpool.HandOffs(p), "slots handed to standbys")
			mu.Lock()
			assert.Len(t, runs, items)
			for n, c := range runs {
				assert.Equal(t, 1, c, "runs of item %d", n)
			}
			mu.Unlock()
			if withOnComplete {
				assert.Equal(t, items, e.completionsCount())
			}
			waitFor(t, 10*time.Second, "the running rows to go", func() bool {
				return e.count("SELECT count(*) FROM "+e.schema+".running") == 0
			})
			assert.Equal(t, 0, e.count("SELECT running_count FROM "+e.schema+".internal_state"))
		})
	}
}

// standbyScene starts a pool of two slots. Items 0 and 1 start first and
// block until the test lets each end; items 2 and 3 block until release is
// closed (or their context ends); 4 and 5 end at once. When item 0 ends,
// the iteration that records it starts item 2 and claims item 3 as the
// process's one standby; when item 1 ends, it hands its slot to item 3, and
// the iteration that records that claims item 4 as the standby, which no
// slot frees to take while 2 and 3 block.
type standbyScene struct {
	e       *env
	p       *workpool.Pool
	ids     []workpool.WorkID
	end     [2]chan struct{}
	release chan struct{}
	ran     [6]atomic.Int32
	running concurrency
}

func newStandbyScene(t *testing.T, hold time.Duration) *standbyScene {
	s := &standbyScene{e: newAPIEnv(t), release: make(chan struct{}), end: [2]chan struct{}{make(chan struct{}), make(chan struct{})}}
	s.p = s.e.pool(workpool.Config{MaxParallelism: 2})
	workpool.SetStandbyHold(s.p, hold)
	f := mustRegister(t, s.p, "f", func(ctx context.Context, a num) (int, error) {
		s.running.enter()
		defer s.running.leave()
		s.ran[a.N].Add(1)
		var wait <-chan struct{}
		switch a.N {
		case 0, 1:
			wait = s.end[a.N]
		case 2, 3:
			wait = s.release
		}
		if wait != nil { // 4 and 5 end at once
			select {
			case <-wait:
			case <-ctx.Done():
				return 0, ctx.Err()
			}
		}
		return a.N, nil
	})
	var err error
	s.ids, err = s.p.EnqueueBatch(context.Background(), f, []num{{0}, {1}, {2}, {3}, {4}, {5}})
	require.NoError(t, err)
	start(t, s.p)
	waitFor(t, 10*time.Second, "items 0 and 1 to start", func() bool { return s.ran[0].Load() == 1 && s.ran[1].Load() == 1 })
	close(s.end[0])
	waitFor(t, 10*time.Second, "item 3 to be claimed as a standby", func() bool { return s.standbys(s.ids[3]) == 1 })
	close(s.end[1])
	waitFor(t, 10*time.Second, "item 4 to be claimed as a standby", func() bool { return s.standbys(s.ids[4]) == 1 })
	require.Equal(t, int64(1), workpool.HandOffs(s.p), "item 1's slot handed to item 3")
	require.Equal(t, int32(1), s.ran[3].Load())
	return s
}

// standbys counts the running rows that are standbys, by work id.
func (s *standbyScene) standbys(id workpool.WorkID) int {
	return s.e.count("SELECT count(*) FROM "+s.e.schema+".running WHERE work_id = ? AND standby", int64(id))
}

// finish lets the blocked items end and checks that everything did,
// within the limit.
func (s *standbyScene) finish(t *testing.T) {
	close(s.release)
	waitFor(t, 30*time.Second, "every item to finish", func() bool { return s.e.workCount() == 0 })
	assert.LessOrEqual(t, s.running.peak.Load(), int32(2), "handlers running at once")
	waitFor(t, 10*time.Second, "the running rows to go", func() bool {
		return s.e.count("SELECT count(*) FROM "+s.e.schema+".running") == 0
	})
	assert.Equal(t, 0, s.e.count("SELECT running_count FROM "+s.e.schema+".internal_state"))
}

// TestStandbyGivenBack: a standby that no slot takes within its hold goes
// back to pending_start, uncounted all along, and starts later like any
// pending item.
func TestStandbyGivenBack(t *testing.T) {
	t.Parallel()
	s := newStandbyScene(t, 300*time.Millisecond)
	assert.Equal(t, 2, s.e.count("SELECT running_count FROM "+s.e.schema+".internal_state"), "a standby is not counted")
	waitFor(t, 10*time.Second, "item 4 to be given back", func() bool {
		return s.e.count("SELECT count(*) FROM "+s.e.schema+".pending_start WHERE work_id = ?", int64(s.ids[4])) == 1
	})
	assert.Equal(t, 0, s.standbys(s.ids[4]))
	assert.Zero(t, s.ran[4].Load(), "item 4 ran while both slots were busy")
	s.finish(t)
	for n := range s.ran {
		assert.Equal(t, int32(1), s.ran[n].Load(), "runs of item %d", n)
	}
}

// TestStandbyCanceled: a canceled standby ends as canceled without running,
// and frees no slot, as it held none.
func TestStandbyCanceled(t *testing.T) {
	t.Parallel()
	s := newStandbyScene(t, time.Hour)
	ctx := context.Background()
	require.NoError(t, s.p.Cancel(ctx, s.ids[4]))
	waitFor(t, 10*time.Second, "item 4 to end", func() bool {
		st, err := s.p.Status(ctx, s.ids[4])
		require.NoError(t, err)
		return st.State == workpool.StateFinished
	})
	assert.Equal(t, 2, s.e.count("SELECT running_count FROM "+s.e.schema+".internal_state"), "items 2 and 3 still hold the slots")
	assert.Zero(t, s.ran[5].Load(), "item 5 started while both slots were busy")
	s.finish(t)
	assert.Zero(t, s.ran[4].Load(), "the canceled standby ran")
	assert.Equal(t, int32(1), s.ran[5].Load())
}
