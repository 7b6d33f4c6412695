package workpool

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestCombinerRegroupsProducersThatComeBack: producers that enqueue in a
// loop end up sharing every commit. Without the regroup wait, the calls a
// commit released missed the next commit, which had left with the calls
// queued meanwhile, and the producers split into two groups that took
// turns: about two commits per round of calls instead of one. The commits
// here are a stand-in for the database (this tests the queue, not its
// writes), each taking a millisecond as a shared commit about does.
func TestCombinerRegroupsProducersThatComeBack(t *testing.T) {
	t.Parallel()
	const producers, rounds = 4, 50
	c := &combiner{regroupWait: 200 * time.Millisecond} // long enough for any scheduler; spent in full once, at the end
	var mu sync.Mutex
	var groups []int
	var next WorkID
	c.write = func(ctx context.Context, calls []*enqueueCall) {
		mu.Lock()
		first := len(groups) == 0
		groups = append(groups, len(calls))
		for _, call := range calls {
			next++
			call.ids = []WorkID{next}
		}
		mu.Unlock()
		if first {
			// Hold the first commit until every other producer queued
			// behind it, so that the groups start as they would under a
			// steady load.
			deadline := time.Now().Add(10 * time.Second)
			for c.queued() < producers-1 && time.Now().Before(deadline) {
				time.Sleep(100 * time.Microsecond)
			}
		}
		time.Sleep(time.Millisecond) // the commit's time on the database
	}

	ids := make(chan WorkID, producers*rounds)
	var wg sync.WaitGroup
	for range producers {
		wg.Go(func() {
			for range rounds {
				call := &enqueueCall{}
				if !c.do(context.Background(), call) {
					t.Error("a call was not written")
					return
				}
				if assert.Len(t, call.ids, 1) {
					ids <- call.ids[0]
				}
			}
		})
	}
	wg.Wait()
	close(ids)

	seen := map[WorkID]bool{}
	for id := range ids {
		seen[id] = true
	}
	require.Len(t, seen, producers*rounds, "every call has its own outcome")
	mu.Lock()
	defer mu.Unlock()
	// The first commit holds one call and the second the others; after
	// that, each waits for at least the calls the one before released.
	maxCommits := 2 + (producers*rounds-producers+producers-2)/(producers-1)
	assert.LessOrEqual(t, len(groups), maxCommits, "commits (group sizes %v)", groups)
}

// queued reports how many calls wait for a commit.
func (c *combiner) queued() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.queue)
}

// TestCombinerRegroupWaitRunsOutAndBacksOff: the wait ends as soon as
// enough calls are queued; one that runs out instead spares the next
// regroupBackoff groups the wait, which would otherwise add its time to
// every group when callers do not come back.
func TestCombinerRegroupWaitRunsOutAndBacksOff(t *testing.T) {
	t.Parallel()
	c := &combiner{regroupWait: time.Hour}
	c.queue = []*enqueueCall{{}, {}}
	c.regroup(2) // would not return for an hour if it waited regardless
	assert.Zero(t, c.noRegroup, "a wait that was answered does not back off")

	c.queue, c.regroupWait = nil, time.Millisecond
	c.regroup(2)
	require.Equal(t, regroupBackoff, c.noRegroup, "a wait that ran out backs off")
	c.regroupWait = time.Hour // from here, a group that waited would hang the test
	for left := regroupBackoff - 1; left >= 0; left-- {
		c.regroup(2)
		assert.Equal(t, left, c.noRegroup)
	}
}
