package loop_test

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgworkpool/pgworkpool/internal/store"
	"github.com/pgworkpool/pgworkpool/loop"
	"github.com/pgworkpool/pgworkpool/stats"
)

// resultSource is a loop.LocalWorkers with no slots that hands the loop a
// fixed set of results once, as the workers of the leading process do. The
// test calls Loop.Main itself, so every method runs on the test's goroutine.
type resultSource struct {
	// arriving makes ResultsWaiting report results that arrive while an
	// iteration runs.
	arriving bool
	results  []store.Result
	recorded []store.Recorded
	returned []store.Result
}

func (r *resultSource) Reserve(int) store.LocalClaim                           { return store.LocalClaim{} }
func (r *resultSource) Deliver(store.LocalClaim, []store.Start)                {}
func (r *resultSource) Unreserve(store.LocalClaim)                             {}
func (r *resultSource) ReturnResults(taken []store.Result)                     { r.returned = append(r.returned, taken...) }
func (r *resultSource) ResultsRecorded(_ []store.Result, rec []store.Recorded) { r.recorded = rec }

func (r *resultSource) ResultsWaiting() bool { return len(r.results) > 0 || r.arriving }

func (r *resultSource) TakeResults(limit int) []store.Result {
	n := min(limit, len(r.results))
	taken := r.results[:n]
	r.results = r.results[n:]
	return taken
}

// TestLocalResults: results of the leading process's own workers are
// recorded in the iteration's transaction with the workers' fence, and the
// terminal ones free their slots there, without a pending_completion row;
// retries still pass through one and are scheduled by the completion phase.
func TestLocalResults(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOpts{})
	h.recoveredNow()
	success := h.runningWork(workOpts{})
	retry := h.runningWork(workOpts{maxAttempts: 3, backoffMs: 1000, base: 2})
	final := h.runningWork(workOpts{maxAttempts: 3, backoffMs: 1000, base: 2})
	stale := h.runningWork(workOpts{attempts: 1, maxAttempts: 3})

	src := &resultSource{results: []store.Result{
		{WorkID: success, Attempt: 0, Status: "success", Value: `"ok"`, RunMs: 7, Fn: "fn", Label: "first"},
		{WorkID: retry, Attempt: 0, Status: "failed", Error: "boom", RunMs: 3, Fn: "fn"},
		{WorkID: final, Attempt: 0, Status: "failed", Error: "bad input", NonRetryable: true, RunMs: 4, Fn: "fn", Label: "last"},
		{WorkID: stale, Attempt: 0, Status: "success", RunMs: 1}, // an attempt that recovery already replaced
	}}
	h.loop.SetLocal(src)
	out := h.main()

	assert.Equal(t, 3, out.Recorded, "the stale attempt is fenced off")
	assert.Equal(t, 3, out.Completions)
	assert.Equal(t, 1, out.Retried)
	var recorded []int64
	for _, r := range src.recorded {
		recorded = append(recorded, r.WorkID)
	}
	assert.ElementsMatch(t, []int64{success, retry, final}, recorded)
	assert.Empty(t, src.returned)

	assert.Equal(t, composite{}, h.observe(success), "terminal: work and slot gone, no completion row")
	assert.Equal(t, composite{}, h.observe(final))
	got := h.observe(retry)
	// Observed a moment after the iteration: a segment boundary may pass.
	assert.InDelta(t, 10, got.StartDelay, 2, "1000 ms x 2^0 x 1.0")
	got.StartDelay = 0
	assert.Equal(t, composite{Work: true, Attempts: 1, PendingStart: 1}, got)
	assert.Equal(t, composite{Work: true, Attempts: 1, Running: 1}, h.observe(stale), "untouched")
	assert.Zero(t, h.scalar("SELECT count(*) FROM {s}.pending_completion"))
	h.checkRunningCount()

	// The slots freed are matched to the results sent, which name the
	// function and label of each completion event.
	logs := h.logs.String()
	assert.Contains(t, logs, fmt.Sprintf("work_id=%d fn=fn label=first status=success attempts=1", success))
	assert.Contains(t, logs, fmt.Sprintf("work_id=%d fn=fn label=last status=failed attempts=1", final))

	c := h.counters()
	assert.Equal(t, int64(3), c.Completed)
	assert.Equal(t, int64(1), c.Succeeded)
	assert.Equal(t, int64(1), c.Failed)
	assert.Equal(t, int64(1), c.Retries)
	assert.NotContains(t, h.logs.String(), "level=ERROR")
}

// TestLocalSuccesses: a batch of successes only, as a busy pool records,
// takes the leaner statement, with the same fence, slots, counters and
// events as TestLocalResults.
func TestLocalSuccesses(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOpts{})
	h.recoveredNow()
	first := h.runningWork(workOpts{})
	second := h.runningWork(workOpts{attempts: 1, maxAttempts: 3})
	stale := h.runningWork(workOpts{attempts: 1, maxAttempts: 3})

	src := &resultSource{results: []store.Result{
		{WorkID: first, Attempt: 0, Status: "success", RunMs: 7, Fn: "fn", Label: "one"},
		{WorkID: second, Attempt: 1, Status: "success", RunMs: 2, Fn: "fn"},
		{WorkID: stale, Attempt: 0, Status: "success", RunMs: 1, Fn: "fn"}, // recovery already replaced it
	}}
	h.loop.SetLocal(src)
	out := h.main()

	assert.Equal(t, 2, out.Recorded, "the stale attempt is fenced off")
	assert.Equal(t, 2, out.Completions)
	assert.ElementsMatch(t, []store.Recorded{
		{WorkID: first, Attempts: 1, Status: "success"},
		{WorkID: second, Attempts: 2, Status: "success"},
	}, src.recorded)
	assert.Equal(t, composite{}, h.observe(first))
	assert.Equal(t, composite{}, h.observe(second))
	assert.Equal(t, composite{Work: true, Attempts: 1, Running: 1}, h.observe(stale), "untouched")
	h.checkRunningCount()

	logs := h.logs.String()
	assert.Contains(t, logs, fmt.Sprintf("work_id=%d fn=fn label=one status=success attempts=1 run_time_ms=7", first))
	assert.Contains(t, logs, fmt.Sprintf("work_id=%d fn=fn status=success attempts=2 run_time_ms=2", second))
	assert.NotContains(t, logs, "level=ERROR")
	c := h.counters()
	assert.Equal(t, int64(2), c.Completed)
	assert.Equal(t, int64(2), c.Succeeded)
}

// TestResultsArrivingKeepTheLoopRunning: when results of the process's own
// workers arrived while an iteration ran, the iteration stays running for
// the next one, which their kick would start at once, instead of writing
// run_status away from running and back again.
func TestResultsArrivingKeepTheLoopRunning(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOpts{})
	h.recoveredNow()
	src := &resultSource{arriving: true}
	h.loop.SetLocal(src)
	assert.Equal(t, loop.NextNow, h.main().Next)
	assert.Equal(t, store.RunRunning, h.runStatus().State)

	src.arriving = false
	assert.Equal(t, loop.NextIdle, h.main().Next)
	assert.Equal(t, store.RunIdle, h.runStatus().State)
}

// TestKickAnsweredByTheIterationAfterIt: a kick that came before an
// iteration began is answered by that iteration, which takes the results
// that caused it, and does not wake another one with nothing to do.
func TestKickAnsweredByTheIterationAfterIt(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOpts{})
	h.recoveredNow()
	id := h.runningWork(workOpts{})
	src := &resultSource{results: []store.Result{{WorkID: id, Status: "success"}}}
	h.loop.SetLocal(src)
	logger := stats.NewLogger(slog.New(slog.NewTextHandler(h.logs, nil)), pool, stats.LevelWarn)
	d := loop.NewDriver(loop.DriverConfig{Loop: h.loop, Logger: logger})
	d.KickForResults()

	assert.False(t, d.RunKicked(h.ctx), "the kick was answered")
	require.Len(t, src.recorded, 1)
	assert.Equal(t, id, src.recorded[0].WorkID)
	assert.Equal(t, composite{}, h.observe(id))
}

// slotSource is a loop.LocalWorkers with free slots for the function "fn"
// that records which work each iteration delivered to it.
type slotSource struct {
	claim     store.LocalClaim
	delivered [][]int64
}

func (s *slotSource) Reserve(int) store.LocalClaim                     { return s.claim }
func (s *slotSource) Unreserve(store.LocalClaim)                       {}
func (s *slotSource) TakeResults(int) []store.Result                   { return nil }
func (s *slotSource) ResultsRecorded([]store.Result, []store.Recorded) {}
func (s *slotSource) ResultsWaiting() bool                             { return false }
func (s *slotSource) ReturnResults([]store.Result)                     {}

func (s *slotSource) Deliver(_ store.LocalClaim, starts []store.Start) {
	ids := []int64{}
	for _, st := range starts {
		ids = append(ids, st.WorkID)
	}
	s.delivered = append(s.delivered, ids)
}

// TestLocalShareCountsProcesses: the leading process's workers take only
// their share of a batch, the batch divided by the pool's started processes
// (their LISTEN connections, stood in for here by connections that carry
// the pool's application_name). The count is taken again only once the
// last one is older than ProcessCountMaxAge, so a process that left keeps
// its share until then.
func TestLocalShareCountsProcesses(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		maxAge time.Duration
		want   []int // work delivered locally by the first and second iteration
	}{
		{"count kept", time.Hour, []int{5, 5}},
		{"count expired", time.Nanosecond, []int{5, 10}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			// Each iteration may start 10: the batch that is divided.
			h := newHarness(t, harnessOpts{maxParallelism: 10, processCountMaxAge: tc.maxAge})
			h.recoveredNow()
			src := &slotSource{claim: store.LocalClaim{Worker: store.Worker{ID: 1}, Fns: []string{"fn"}, Slots: 10, Listeners: h.keys.Channel}}
			h.loop.SetLocal(src)
			var procs []*sql.Conn
			for range 2 {
				c, err := h.sqlDB.Conn(h.ctx)
				require.NoError(t, err)
				t.Cleanup(func() {
					_, _ = c.ExecContext(context.Background(), "RESET application_name")
					_ = c.Close()
				})
				_, err = c.ExecContext(h.ctx, "SELECT set_config('application_name', $1, false)", h.keys.Channel)
				require.NoError(t, err)
				procs = append(procs, c)
			}
			startDue := func() {
				for range 10 {
					h.pendingStart(h.work(workOpts{}), h.now())
				}
			}

			startDue()
			out := h.main()
			assert.Equal(t, 10, out.Started)
			_, err := procs[1].ExecContext(h.ctx, "SELECT set_config('application_name', '', false)")
			require.NoError(t, err)
			h.exec("UPDATE {s}.config SET max_parallelism = 20")
			startDue()
			out = h.main()
			assert.Equal(t, 10, out.Started)

			require.Len(t, src.delivered, 2)
			assert.Len(t, src.delivered[0], tc.want[0], "two processes: half of the batch")
			assert.Len(t, src.delivered[1], tc.want[1])
			assert.Equal(t, int64(20-tc.want[0]-tc.want[1]), h.scalar("SELECT count(*) FROM {s}.running WHERE claimed_by IS NULL"),
				"the rest waits for other processes to claim it")
			h.checkRunningCount()
		})
	}
}
