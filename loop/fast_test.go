package loop_test

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgworkpool/pgworkpool/internal/pgtest"
	"github.com/pgworkpool/pgworkpool/internal/store"
	"github.com/pgworkpool/pgworkpool/loop"
	"github.com/pgworkpool/pgworkpool/stats"
)

// busyHarness is a pool with n items due to start and a batch of 2, so
// that every iteration fills its batch and the loop stays busy.
func busyHarness(t *testing.T, n int) *harness {
	t.Helper()
	h := newHarness(t, harnessOpts{maxParallelism: 100, batchSize: 2})
	h.recoveredNow()
	now := h.now()
	for range n {
		h.pendingStart(h.work(workOpts{}), now)
	}
	return h
}

// mainFast runs an iteration as the driver does, with generation.
func (h *harness) mainFast(generation int64) loop.Outcome {
	h.t.Helper()
	out, err := h.loop.MainFast(h.ctx, generation)
	require.NoError(h.t, err)
	require.False(h.t, out.Stale)
	return out
}

// notifications listens on the pool's channel and returns a function that
// returns the payloads that arrived since the last call.
func (h *harness) notifications() func() []string {
	h.t.Helper()
	conn, err := pgx.Connect(h.ctx, pgtest.Shared(h.t).URL())
	require.NoError(h.t, err)
	h.t.Cleanup(func() { _ = conn.Close(context.Background()) })
	_, err = conn.Exec(h.ctx, "LISTEN "+pgx.Identifier{h.keys.Channel}.Sanitize())
	require.NoError(h.t, err)
	return func() []string {
		h.t.Helper()
		h.exec("SELECT pg_notify(?, 'end')", h.keys.Channel)
		ctx, cancel := context.WithTimeout(h.ctx, 10*time.Second)
		defer cancel()
		var got []string
		for {
			n, err := conn.WaitForNotification(ctx)
			require.NoError(h.t, err, "our own notification did not arrive")
			if n.Payload == "end" {
				return got
			}
			got = append(got, n.Payload)
		}
	}
}

// TestFastIterationWhileBusy: after an iteration that filled its batch,
// the next commits in its first round trip. It moves the generation on,
// keeps running_count in step and still tells other processes' claimers
// about the work it started for them; and a leader that takes over from
// the state it left unwritten misses nothing.
func TestFastIterationWhileBusy(t *testing.T) {
	t.Parallel()
	h := busyHarness(t, 7)
	since := h.notifications()

	first := h.mainFast(h.generation())
	assert.False(t, first.Fast, "the first iteration has no state of its own to go on")
	assert.Equal(t, loop.NextNow, first.Next)
	assert.Equal(t, []string{string(store.SignalStart)}, since())

	second := h.mainFast(first.Generation)
	assert.True(t, second.Fast)
	assert.Equal(t, 2, second.Started)
	assert.Equal(t, second.Generation, h.generation())
	assert.Equal(t, int64(4), h.scalar("SELECT count(*) FROM {s}.running"))
	h.checkRunningCount()
	assert.Equal(t, []string{string(store.SignalStart)}, since(), "the start statement sent it")

	// Another leader, which has only the database's state, starts the
	// rest and goes quiet.
	logger := stats.NewLogger(slog.New(slog.NewTextHandler(h.logs, nil)), pool, stats.LevelDebug)
	successor := loop.New(loop.Config{Pool: pool, Store: h.st, DB: h.sqlDB, Logger: logger, BatchSize: 2})
	generation := second.Generation
	for range 4 {
		out, err := successor.Main(h.ctx, generation)
		require.NoError(t, err)
		generation = out.Generation
		if out.Next != loop.NextNow {
			break
		}
	}
	assert.Equal(t, int64(7), h.scalar("SELECT count(*) FROM {s}.running"))
	assert.Zero(t, h.scalar("SELECT count(*) FROM {s}.pending_start"))
	assert.Equal(t, store.RunScheduled, h.runStatus().State)
	h.checkRunningCount()
}

// TestFastIterationStaleGenerationCommitsNothing: an iteration that would
// commit in its first round trip, called with a stale generation, fails
// in its state lock before anything else runs, and says it could not read
// the generation.
func TestFastIterationStaleGenerationCommitsNothing(t *testing.T) {
	t.Parallel()
	h := busyHarness(t, 6)
	first := h.mainFast(h.generation())
	require.Equal(t, loop.NextNow, first.Next)
	h.exec("UPDATE {s}.internal_state SET generation = generation + 1") // another leader's iteration

	out, err := h.loop.MainFast(h.ctx, first.Generation)
	require.NoError(t, err)
	assert.True(t, out.Stale)
	assert.Equal(t, int64(-1), out.Generation)
	assert.Equal(t, first.Generation+1, h.generation())
	assert.Equal(t, int64(2), h.scalar("SELECT count(*) FROM {s}.running"), "nothing started")
	assert.Equal(t, int64(4), h.scalar("SELECT count(*) FROM {s}.pending_start"))
	h.checkRunningCount()
}

// TestFastIterationKeepsReportCounters: the report counters of the
// results a fast iteration records reach the database although it writes
// no state; a failed result, which may retry, takes the full iteration.
func TestFastIterationKeepsReportCounters(t *testing.T) {
	t.Parallel()
	h := busyHarness(t, 10)
	done := []int64{h.work(workOpts{}), h.work(workOpts{}), h.work(workOpts{})}
	for _, id := range done {
		h.running(id, 0, nil)
	}
	h.exec("UPDATE {s}.internal_state SET running_count = 3")
	src := &resultSource{}
	h.loop.SetLocal(src)
	first := h.mainFast(h.generation())
	require.Equal(t, loop.NextNow, first.Next)

	src.results = []store.Result{{WorkID: done[0], Status: "success"}, {WorkID: done[1], Status: "success"}}
	second := h.mainFast(first.Generation)
	assert.True(t, second.Fast)
	assert.Equal(t, 2, second.Recorded)
	c := h.counters()
	assert.Equal(t, int64(2), c.Completed)
	assert.Equal(t, int64(2), c.Succeeded)
	h.checkRunningCount()

	src.results = []store.Result{{WorkID: done[2], Status: "failed", Error: "boom", NonRetryable: true}}
	third := h.mainFast(second.Generation)
	assert.False(t, third.Fast)
	c = h.counters()
	assert.Equal(t, int64(3), c.Completed)
	assert.Equal(t, int64(2), c.Succeeded)
	assert.Equal(t, int64(1), c.Failed)
	h.checkRunningCount()
}

// TestFastIterationGoingQuietWritesRunStatusNext: a fast iteration that
// finds nothing left does not go quiet, which would need a run status
// written under its own try-lock and re-check; the iteration after it
// does, at once.
func TestFastIterationGoingQuietWritesRunStatusNext(t *testing.T) {
	t.Parallel()
	h := busyHarness(t, 4)
	first := h.mainFast(h.generation())
	second := h.mainFast(first.Generation)
	require.True(t, second.Fast)
	require.Equal(t, loop.NextNow, second.Next, "its batch was full")

	third := h.mainFast(second.Generation)
	assert.True(t, third.Fast)
	assert.Zero(t, third.Started)
	assert.Equal(t, loop.NextNow, third.Next)
	assert.Equal(t, store.RunRunning, h.runStatus().State)

	fourth := h.mainFast(third.Generation)
	assert.False(t, fourth.Fast)
	assert.Equal(t, loop.NextScheduled, fourth.Next, "work runs: until the recovery pass")
	assert.Equal(t, store.RunScheduled, h.runStatus().State)
	assert.Equal(t, fourth.Generation, h.generation())
}
