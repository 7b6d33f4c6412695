package loop_test

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgworkpool/pgworkpool/internal/store"
	"github.com/pgworkpool/pgworkpool/loop"
)

// The state-machine test, modelled on Convex's stateMachine.test.ts: each
// case puts one work item in a composite state (its rows in work,
// pending_start, running, pending_completion and pending_cancelation),
// applies actions (a loop iteration, a worker's result, a cancel), and
// checks the composite state it ends in, plus what the loop reported.

// state describes the rows of the item under test. Segment offsets are
// relative to the current segment.
type state struct {
	work         *workOpts
	start        *int64 // pending_start segment offset
	running      *int   // attempt of the running row
	claimedBy    *int64 // workers.id of the claim (nil: unclaimed)
	completion   *completionSpec
	cancelations []int64 // pending_cancelation segment offsets
}

type completionSpec struct {
	attempt int
	status  string
	retry   bool
	offset  int64
}

type observed struct {
	outs    []loop.Outcome
	records [][]store.Recorded
	cancels [][]int64
}

type action func(h *harness, id int64, o *observed)

func iterate(h *harness, _ int64, o *observed) { o.outs = append(o.outs, h.main()) }

func result(attempt int, status string, nonRetryable bool) action {
	return func(h *harness, id int64, o *observed) {
		o.records = append(o.records, h.complete(store.Result{WorkID: id, Attempt: attempt, Status: status,
			Error: map[bool]string{true: "boom"}[status == "failed"], NonRetryable: nonRetryable, Value: `1`, RunMs: 3}))
	}
}

func cancelAction(h *harness, id int64, o *observed) { o.cancels = append(o.cancels, h.cancel(id)) }

func ptr[T any](v T) *T { return &v }

type smCase struct {
	name  string
	opts  harnessOpts
	given state
	// others sets up rows of other work items (to use capacity, etc.).
	others func(h *harness)
	act    []action
	want   composite
	check  func(t *testing.T, h *harness, id int64, o *observed)
}

func TestStateMachine(t *testing.T) {
	plain := &workOpts{}
	retrying := &workOpts{attempts: 1, maxAttempts: 3, backoffMs: 1000, base: 2}
	cases := []smCase{
		// --- the loop's own transitions ---
		{
			name:  "S1 enqueued: starts when a slot is free",
			given: state{work: plain, start: ptr(int64(0))}, act: []action{iterate},
			want: composite{Work: true, Running: 1},
			check: func(t *testing.T, h *harness, id int64, o *observed) {
				assert.Equal(t, 1, o.outs[0].Started)
				assert.Contains(t, o.outs[0].Signals, "s", "workers are signaled once")
				// Nothing else is due, so the working iteration decides for
				// itself instead of leaving it to an empty one: scheduled
				// for the recovery pass, since work runs.
				assert.Equal(t, loop.NextScheduled, o.outs[0].Next)
				rs := h.runStatus()
				assert.Equal(t, store.RunScheduled, rs.State)
				assert.False(t, rs.Saturated)
				assert.LessOrEqual(t, rs.Segment-rs.NowSegment, int64(600), "no later than the next recovery pass")
				// Nothing ran before this iteration, so no attempt can be
				// lost yet: the recovery clock starts now, rather than the
				// next iteration spending a pass on work it just started.
				assert.InDelta(t, 60_000, o.outs[0].Delay.Milliseconds(), 300)
				assert.InDelta(t, h.now(), h.scalar("SELECT last_recovery FROM {s}.internal_state"), 1)
			},
		},
		{
			name: "S1 enqueued, paused pool: stays pending and the loop idles",
			opts: harnessOpts{paused: true}, given: state{work: plain, start: ptr(int64(0))}, act: []action{iterate},
			want: composite{Work: true, PendingStart: 1},
			check: func(t *testing.T, h *harness, id int64, o *observed) {
				assert.Equal(t, loop.NextIdle, o.outs[0].Next)
				assert.Equal(t, store.RunIdle, h.runStatus().State)
			},
		},
		{
			name: "S1 enqueued, saturated: waits and the loop is scheduled saturated",
			opts: harnessOpts{maxParallelism: 1}, given: state{work: plain, start: ptr(int64(0))},
			others: func(h *harness) { h.running(h.work(workOpts{}), 0, nil) },
			act:    []action{iterate},
			want:   composite{Work: true, PendingStart: 1},
			check: func(t *testing.T, h *harness, id int64, o *observed) {
				rs := h.runStatus()
				assert.Equal(t, loop.NextScheduled, o.outs[0].Next)
				assert.Equal(t, store.RunScheduled, rs.State)
				assert.True(t, rs.Saturated)
			},
		},
		{
			name:  "future start: not started; scheduled for its segment, not saturated",
			given: state{work: plain, start: ptr(int64(50))}, act: []action{iterate},
			want: composite{Work: true, PendingStart: 1, StartDelay: 50},
			check: func(t *testing.T, h *harness, id int64, o *observed) {
				rs := h.runStatus()
				assert.Equal(t, loop.NextScheduled, o.outs[0].Next)
				assert.False(t, rs.Saturated)
				// The loop wakes at the row's own segment. Read from the
				// row, not from the clock, which a loaded machine moves on
				// between set-up and this check.
				assert.Equal(t, h.scalar("SELECT segment FROM {s}.pending_start WHERE work_id = ?", id), rs.Segment)
				assert.InDelta(t, 5000, o.outs[0].Delay.Milliseconds(), 1000)
			},
		},
		{
			name:  "S3 completing, success: slot freed and counted",
			given: state{work: nil, running: ptr(0), completion: &completionSpec{attempt: 0, status: "success"}},
			act:   []action{iterate},
			want:  composite{},
			check: func(t *testing.T, h *harness, id int64, o *observed) {
				c := h.counters()
				assert.Equal(t, int64(1), c.Completed)
				assert.Equal(t, int64(1), c.Succeeded)
			},
		},
		{
			name:  "S3 completing, final failure: slot freed, counted failed",
			given: state{work: nil, running: ptr(2), completion: &completionSpec{attempt: 2, status: "failed"}},
			act:   []action{iterate},
			want:  composite{},
			check: func(t *testing.T, h *harness, id int64, o *observed) {
				assert.Equal(t, int64(1), h.counters().Failed)
			},
		},
		{
			name:  "S5 completing, will retry: rescheduled after the backoff (1000 ms x 2^0 x 1.0)",
			given: state{work: retrying, running: ptr(0), completion: &completionSpec{attempt: 0, status: "failed", retry: true}},
			act:   []action{iterate},
			want:  composite{Work: true, Attempts: 1, PendingStart: 1, StartDelay: 10},
			check: func(t *testing.T, h *harness, id int64, o *observed) {
				assert.Equal(t, int64(1), h.counters().Retries)
				assert.Equal(t, 1, o.outs[0].Retried)
				// The iteration goes quiet by itself, woken for the retry,
				// which it scheduled after its re-check ran.
				assert.Equal(t, loop.NextScheduled, o.outs[0].Next)
				rs := h.runStatus()
				assert.Equal(t, store.RunScheduled, rs.State)
				assert.InDelta(t, 10, rs.Segment-rs.NowSegment, 2)
			},
		},
		{
			name:  "retry backoff grows with attempts (1000 ms x 2^2) and with the jitter draw (x1.4)",
			opts:  harnessOpts{jitter: 0.9},
			given: state{work: &workOpts{attempts: 3, maxAttempts: 5, backoffMs: 1000, base: 2}, running: ptr(2), completion: &completionSpec{attempt: 2, status: "failed", retry: true}},
			act:   []action{iterate},
			want:  composite{Work: true, Attempts: 3, PendingStart: 1, StartDelay: 56},
		},
		{
			name:  "large backoff is not started in the same pass",
			given: state{work: &workOpts{attempts: 1, maxAttempts: 3, backoffMs: 60000, base: 2}, running: ptr(0), completion: &completionSpec{attempt: 0, status: "failed", retry: true}},
			act:   []action{iterate, iterate},
			want:  composite{Work: true, Attempts: 1, PendingStart: 1, StartDelay: 600},
			check: func(t *testing.T, h *harness, id int64, o *observed) {
				assert.Equal(t, loop.NextScheduled, o.outs[1].Next)
			},
		},
		{
			name:  "S9 canceled while retrying: ends canceled, no retry",
			given: state{work: &workOpts{attempts: 1, maxAttempts: 3, backoffMs: 100, canceled: true}, running: ptr(0), completion: &completionSpec{attempt: 0, status: "failed", retry: true}},
			act:   []action{iterate},
			want:  composite{},
			check: func(t *testing.T, h *harness, id int64, o *observed) {
				c := h.counters()
				assert.Equal(t, int64(1), c.Canceled)
				assert.Equal(t, int64(0), c.Retries)
			},
		},
		{
			name:  "S9 with onComplete: left finishing as canceled for a worker to run the handler",
			given: state{work: &workOpts{attempts: 1, maxAttempts: 3, backoffMs: 100, canceled: true, onComplete: true}, running: ptr(0), completion: &completionSpec{attempt: 0, status: "failed", retry: true}},
			act:   []action{iterate},
			want:  composite{Work: true, Attempts: 1, Canceled: true, Result: "canceled"},
			check: func(t *testing.T, h *harness, id int64, o *observed) {
				assert.Contains(t, o.outs[0].Signals, "f")
			},
		},
		{
			name:  "retry with a cancel pending: the cancel wins (completions before cancelations)",
			given: state{work: retrying, running: ptr(0), completion: &completionSpec{attempt: 0, status: "failed", retry: true}, cancelations: []int64{0}},
			act:   []action{iterate},
			want:  composite{},
			check: func(t *testing.T, h *harness, id int64, o *observed) {
				assert.Equal(t, int64(1), h.counters().Canceled)
			},
		},
		{
			name:  "S7 cancel of pending work: never starts, ends canceled",
			given: state{work: plain, start: ptr(int64(0)), cancelations: []int64{0}},
			act:   []action{iterate},
			want:  composite{},
			check: func(t *testing.T, h *harness, id int64, o *observed) {
				assert.Equal(t, 0, o.outs[0].Started)
				assert.Equal(t, int64(1), h.counters().Canceled)
			},
		},
		{
			name:  "S7 cancel of pending work with onComplete: finishing canceled",
			given: state{work: &workOpts{onComplete: true}, start: ptr(int64(0)), cancelations: []int64{0}},
			act:   []action{iterate},
			want:  composite{Work: true, Canceled: true, Result: "canceled"},
		},
		{
			name:  "S7 cancel of future work: the pending start goes too",
			given: state{work: plain, start: ptr(int64(600)), cancelations: []int64{0}},
			act:   []action{iterate},
			want:  composite{},
		},
		{
			name:  "S8 cancel of running work: marked canceled, its worker is signaled, the slot stays",
			given: state{work: plain, running: ptr(0), cancelations: []int64{0}},
			act:   []action{iterate},
			want:  composite{Work: true, Canceled: true, Running: 1},
			check: func(t *testing.T, h *harness, id int64, o *observed) {
				assert.Contains(t, o.outs[0].Signals, "c")
			},
		},
		{
			name:  "S12 canceled running work reports canceled: ends canceled, slot freed",
			given: state{work: &workOpts{maxAttempts: 3, canceled: true}, running: ptr(0)},
			act:   []action{result(0, "canceled", false), iterate},
			want:  composite{},
			check: func(t *testing.T, h *harness, id int64, o *observed) {
				assert.Equal(t, int64(1), h.counters().Canceled)
			},
		},
		{
			name:  "canceled running work that fails with retries left: ends canceled, not retried",
			given: state{work: &workOpts{maxAttempts: 3, canceled: true}, running: ptr(0)},
			act:   []action{result(0, "failed", false), iterate},
			want:  composite{},
			check: func(t *testing.T, h *harness, id int64, o *observed) {
				assert.Equal(t, "canceled", o.records[0][0].Status)
				assert.False(t, o.records[0][0].Retry)
			},
		},
		{
			name:  "canceled running work that succeeds anyway: ends succeeded",
			given: state{work: &workOpts{maxAttempts: 3, canceled: true}, running: ptr(0)},
			act:   []action{result(0, "success", false), iterate},
			want:  composite{},
			check: func(t *testing.T, h *harness, id int64, o *observed) {
				assert.Equal(t, int64(1), h.counters().Succeeded)
			},
		},
		{
			name:  "cancel of finished work: consumed, nothing else",
			given: state{cancelations: []int64{0}},
			act:   []action{iterate},
			want:  composite{},
			check: func(t *testing.T, h *harness, id int64, o *observed) {
				assert.Equal(t, 1, o.outs[0].Cancelations)
				assert.Equal(t, int64(0), h.counters().Canceled)
			},
		},
		{
			name:  "duplicate cancelations of pending work: canceled once",
			given: state{work: plain, start: ptr(int64(0)), cancelations: []int64{0, 0}},
			act:   []action{iterate},
			want:  composite{},
			check: func(t *testing.T, h *harness, id int64, o *observed) {
				assert.Equal(t, 2, o.outs[0].Cancelations)
				assert.Equal(t, int64(1), h.counters().Canceled)
				assert.True(t, h.logs.contains("duplicate cancelation"))
			},
		},
		{
			name:  "duplicate cancelations of running work: marked once, slot kept",
			given: state{work: plain, running: ptr(0), cancelations: []int64{0, 0}},
			act:   []action{iterate},
			want:  composite{Work: true, Canceled: true, Running: 1},
		},
		{
			name:  "cancel of finishing work: too late, consumed",
			given: state{work: &workOpts{onComplete: true, finishing: true}, cancelations: []int64{0}},
			act:   []action{iterate},
			want:  composite{Work: true, Result: "success"},
		},
		{
			name:  "completion of an unknown item (not running): consumed, running count untouched",
			given: state{work: nil, completion: &completionSpec{attempt: 0, status: "success"}},
			others: func(h *harness) {
				h.running(h.work(workOpts{}), 0, nil)
			},
			act:  []action{iterate},
			want: composite{},
			check: func(t *testing.T, h *harness, id int64, o *observed) {
				assert.Equal(t, int64(1), h.scalar("SELECT running_count FROM {s}.internal_state"))
				assert.True(t, h.logs.contains("completion of work that is not running"))
			},
		},
		{
			name:  "completion of an unknown item that asks for a retry: still retried, never lost",
			given: state{work: retrying, completion: &completionSpec{attempt: 0, status: "failed", retry: true}},
			act:   []action{iterate},
			want:  composite{Work: true, Attempts: 1, PendingStart: 1, StartDelay: 10},
		},
		{
			name:   "late commit behind the cursor: found by the re-check, cursor moved back, started",
			given:  state{work: plain, start: ptr(int64(-3000))},
			others: func(h *harness) { h.cursorsAtNow() },
			act:    []action{iterate, iterate},
			want:   composite{Work: true, Running: 1},
			check: func(t *testing.T, h *harness, id int64, o *observed) {
				assert.Equal(t, 0, o.outs[0].Started, "the first pass scans from its cursor only")
				assert.Equal(t, loop.NextNow, o.outs[0].Next, "the re-check sees the late row")
				assert.Equal(t, 1, o.outs[1].Started)
			},
		},
		{
			name:   "late completion behind the cursor: found and consumed",
			given:  state{work: nil, running: ptr(0), completion: &completionSpec{attempt: 0, status: "success", offset: -3000}},
			others: func(h *harness) { h.cursorsAtNow(); h.recoveredNow() },
			act:    []action{iterate, iterate},
			want:   composite{},
			check: func(t *testing.T, h *harness, id int64, o *observed) {
				assert.Equal(t, 0, o.outs[0].Completions, "the first pass scans from its cursor only")
				assert.Equal(t, 1, o.outs[1].Completions)
			},
		},
		{
			name:   "recovery pass rescans from segment 0: a late row is found at once",
			given:  state{work: plain, start: ptr(int64(-3000))},
			others: func(h *harness) { h.cursorsAtNow(); h.running(h.work(workOpts{}), 0, nil) },
			act:    []action{iterate},
			want:   composite{Work: true, Running: 1},
		},
		{
			name:   "commit within the cursor buffer: started in the first pass",
			given:  state{work: plain, start: ptr(int64(-100))},
			others: func(h *harness) { h.cursorsAtNow() },
			act:    []action{iterate},
			want:   composite{Work: true, Running: 1},
		},
		{
			name:  "paused pool still drains completions (Convex does not)",
			opts:  harnessOpts{paused: true},
			given: state{work: nil, running: ptr(0), completion: &completionSpec{attempt: 0, status: "success"}},
			act:   []action{iterate},
			want:  composite{},
			check: func(t *testing.T, h *harness, id int64, o *observed) {
				assert.Equal(t, int64(1), h.counters().Completed)
			},
		},
		{
			name:  "freed slot reused in the same pass: completion plus start with one slot",
			opts:  harnessOpts{maxParallelism: 1},
			given: state{work: plain, start: ptr(int64(0))},
			others: func(h *harness) {
				other := h.work(workOpts{})
				h.running(other, 0, nil)
				h.exec("DELETE FROM {s}.work WHERE id = ?", other)
				h.pendingCompletion(other, 0, "success", false, 0)
			},
			act:  []action{iterate},
			want: composite{Work: true, Running: 1},
		},
		{
			name:  "pending start of work that is gone (invalid state): started, then removed by recovery",
			given: state{start: ptr(int64(0))},
			act: []action{iterate, func(h *harness, id int64, o *observed) {
				// Make the next pass a recovery pass; the new generation
				// (as if another process had led meanwhile) makes the loop
				// read the state rather than trust what it wrote.
				h.exec("UPDATE {s}.internal_state SET last_recovery = 0, generation = generation + 1")
			}, iterate},
			want: composite{},
			check: func(t *testing.T, h *harness, id int64, o *observed) {
				assert.Equal(t, 1, o.outs[0].Started)
				assert.Equal(t, 1, o.outs[1].Recovered)
				assert.True(t, h.logs.contains("removed a running row whose work already ended"))
			},
		},
		{
			// The plain start statement fails on running's primary key; the
			// loop runs the iteration again with the checked one, which
			// leaves the start out, and keeps checking.
			name:  "pending start of work already running (invalid state): dropped, logged",
			given: state{work: plain, start: ptr(int64(0)), running: ptr(0)},
			act:   []action{iterate},
			want:  composite{Work: true, Running: 1},
			check: func(t *testing.T, h *harness, id int64, o *observed) {
				assert.True(t, h.logs.contains("checking every start from now on"))
				assert.True(t, h.logs.contains("already running were dropped"))
				assert.Equal(t, 0, o.outs[0].Started)
			},
		},
		{
			name:  "nothing at all: idle",
			given: state{},
			act:   []action{iterate},
			want:  composite{},
			check: func(t *testing.T, h *harness, id int64, o *observed) {
				assert.Equal(t, loop.NextIdle, o.outs[0].Next)
				assert.Equal(t, store.RunIdle, h.runStatus().State)
			},
		},
		{
			name:  "work running and nothing else: scheduled at the next recovery",
			given: state{work: plain, running: ptr(0)},
			act:   []action{iterate},
			want:  composite{Work: true, Running: 1},
			check: func(t *testing.T, h *harness, id int64, o *observed) {
				assert.Equal(t, loop.NextScheduled, o.outs[0].Next)
				assert.InDelta(t, 60_000, o.outs[0].Delay.Milliseconds(), 300)
			},
		},
		{
			name:  "batch bound: one pass starts at most BatchSize",
			opts:  harnessOpts{batchSize: 2},
			given: state{work: plain, start: ptr(int64(0))},
			others: func(h *harness) {
				for range 4 {
					h.pendingStart(h.work(workOpts{}), h.now()-5) // due before ours
				}
			},
			act: []action{iterate},
			check: func(t *testing.T, h *harness, id int64, o *observed) {
				assert.Equal(t, 2, o.outs[0].Started)
				assert.Equal(t, loop.NextNow, o.outs[0].Next)
			},
			want: composite{Work: true, PendingStart: 1},
		},
		// --- results recorded by workers (complete) ---
		{
			name:  "worker success: work deleted, completion queued",
			given: state{work: plain, running: ptr(0)},
			act:   []action{result(0, "success", false)},
			want:  composite{Running: 1, Completions: 1},
		},
		{
			name:  "worker failure with retries left: attempts bumped, retry queued",
			given: state{work: &workOpts{maxAttempts: 3}, running: ptr(0)},
			act:   []action{result(0, "failed", false)},
			want:  composite{Work: true, Attempts: 1, Running: 1, Completions: 1},
			check: func(t *testing.T, h *harness, id int64, o *observed) {
				assert.True(t, o.records[0][0].Retry)
				assert.Empty(t, o.records[0][0].OnComplete, "a retry is not terminal")
			},
		},
		{
			name:  "worker non-retryable failure: terminal despite retries left",
			given: state{work: &workOpts{maxAttempts: 3}, running: ptr(0)},
			act:   []action{result(0, "failed", true)},
			want:  composite{Running: 1, Completions: 1},
		},
		{
			name:  "worker result for a stale attempt: ignored",
			given: state{work: &workOpts{attempts: 2, maxAttempts: 5}, running: ptr(2)},
			act:   []action{result(1, "success", false)},
			want:  composite{Work: true, Attempts: 2, Running: 1},
			check: func(t *testing.T, h *harness, id int64, o *observed) {
				assert.Empty(t, o.records[0])
			},
		},
		{
			name:  "duplicate worker result for one attempt: the second is ignored",
			given: state{work: &workOpts{maxAttempts: 3}, running: ptr(0)},
			act:   []action{result(0, "failed", false), result(0, "failed", false)},
			want:  composite{Work: true, Attempts: 1, Running: 1, Completions: 1},
			check: func(t *testing.T, h *harness, id int64, o *observed) {
				assert.Len(t, o.records[0], 1)
				assert.Empty(t, o.records[1])
			},
		},
		{
			name:  "worker success with onComplete: finishing until the handler commits",
			given: state{work: &workOpts{onComplete: true}, running: ptr(0)},
			act:   []action{result(0, "success", false)},
			want:  composite{Work: true, Attempts: 1, Result: "success", Running: 1, Completions: 1},
			check: func(t *testing.T, h *harness, id int64, o *observed) {
				assert.Equal(t, "done", o.records[0][0].OnComplete)
			},
		},
		{
			name:  "full cycle: fail, retry, succeed",
			given: state{work: &workOpts{maxAttempts: 3, backoffMs: 0}, start: ptr(int64(0))},
			act:   []action{iterate, result(0, "failed", false), iterate, iterate, result(1, "success", false), iterate},
			want:  composite{},
			check: func(t *testing.T, h *harness, id int64, o *observed) {
				c := h.counters()
				assert.Equal(t, int64(2), c.Completed)
				assert.Equal(t, int64(1), c.Retries)
				assert.Equal(t, int64(1), c.Succeeded)
			},
		},
		// --- cancel requests (producer side) ---
		{
			name:  "cancel request: recorded once",
			given: state{work: plain, start: ptr(int64(0))},
			act:   []action{cancelAction, cancelAction},
			want:  composite{Work: true, PendingStart: 1, Cancelations: 1},
			check: func(t *testing.T, h *harness, id int64, o *observed) {
				assert.Len(t, o.cancels[0], 1)
				assert.Empty(t, o.cancels[1], "a second cancel while one is pending is a no-op")
			},
		},
		{
			name:  "cancel request for canceled running work: no-op",
			given: state{work: &workOpts{canceled: true}, running: ptr(0)},
			act:   []action{cancelAction},
			want:  composite{Work: true, Canceled: true, Running: 1},
		},
		{
			name:  "cancel request for finished work: no-op",
			given: state{},
			act:   []action{cancelAction},
			want:  composite{},
		},
		{
			name:  "cancel then iterate then worker reports canceled: ends canceled once",
			given: state{work: &workOpts{maxAttempts: 3}, running: ptr(0)},
			act:   []action{cancelAction, iterate, result(0, "canceled", false), iterate},
			want:  composite{},
			check: func(t *testing.T, h *harness, id int64, o *observed) {
				assert.Equal(t, int64(1), h.counters().Canceled)
				assert.Equal(t, int64(1), h.counters().Completed)
			},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, c.opts)
			id := h.setUp(c.given)
			if c.others != nil {
				c.others(h)
			}
			o := &observed{}
			for _, a := range c.act {
				a(h, id, o)
			}
			got := h.observe(id)
			if c.want.PendingStart != 1 {
				got.StartDelay = 0
			} else {
				// A segment or two may pass between the action and the look.
				if d := got.StartDelay - c.want.StartDelay; d <= 0 && d >= -3 {
					got.StartDelay = c.want.StartDelay
				}
			}
			assert.Equal(t, c.want, got, "composite state; loop log:\n%s", h.logs)
			h.checkRunningCount()
			if c.check != nil {
				c.check(t, h, id, o)
			}
		})
	}
}

// setUp writes the rows of the item under test and returns its id. Without
// a work row it still reserves an id so that the other rows refer to
// something that does not exist.
func (h *harness) setUp(s state) int64 {
	h.t.Helper()
	var id int64
	if s.work != nil {
		id = h.work(*s.work)
	} else {
		id = h.work(workOpts{})
		h.exec("DELETE FROM {s}.work WHERE id = ?", id)
	}
	now := h.now()
	if s.start != nil {
		h.pendingStart(id, now+*s.start)
	}
	if s.running != nil {
		h.running(id, *s.running, s.claimedBy)
	}
	if c := s.completion; c != nil {
		h.pendingCompletion(id, c.attempt, c.status, c.retry, now+c.offset)
	}
	for _, off := range s.cancelations {
		h.pendingCancel(id, now+off)
	}
	return id
}

// TestWorkingIterationWithProducerInFlight: an iteration that did work
// while a producer holds the kick lock cannot go quiet; it says to run again
// at once (not to back off, as an empty one would) and leaves run_status
// running, and the next one, after the producer finished, goes scheduled.
func TestWorkingIterationWithProducerInFlight(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOpts{})
	h.recoveredNow()
	h.pendingStart(h.work(workOpts{}), h.now())

	tx, err := h.sqlDB.BeginTx(h.ctx, nil)
	require.NoError(t, err)
	defer tx.Rollback()
	_, err = tx.ExecContext(h.ctx, "SELECT pg_advisory_xact_lock_shared($1)", h.keys.KickLock)
	require.NoError(t, err)

	out := h.main()
	assert.Equal(t, 1, out.Started)
	assert.Equal(t, loop.NextNow, out.Next)
	assert.Equal(t, store.RunRunning, h.runStatus().State)

	require.NoError(t, tx.Rollback())
	out = h.main()
	assert.Zero(t, out.Started)
	assert.Equal(t, loop.NextScheduled, out.Next)
	assert.Equal(t, store.RunScheduled, h.runStatus().State)
}

// TestSaturatedPoolLeavesRunStatusAlone: a pool at its limit is scheduled
// saturated, and an iteration that hands a freed slot on and is at the
// limit again leaves that row as it is: it neither marks it running when it
// wakes nor writes it back (a pool at its limit paid both writes for every
// slot). Meanwhile the row still tells producers the truth they act on: an
// enqueue need not kick, a cancel must; and once slots stay free the loop
// writes what it does.
func TestSaturatedPoolLeavesRunStatusAlone(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOpts{maxParallelism: 1})
	h.recoveredNow()
	first, second, third := h.work(workOpts{}), h.work(workOpts{}), h.work(workOpts{})
	for _, id := range []int64{first, second, third} {
		h.pendingStart(id, h.now())
	}
	out := h.main()
	require.Equal(t, 1, out.Started)
	require.Equal(t, loop.NextScheduled, out.Next)
	held := h.runStatus()
	require.Equal(t, store.RunScheduled, held.State)
	require.True(t, held.Saturated)
	version := func() int64 { return h.scalar("SELECT xmin::text::bigint FROM {s}.run_status") }
	written := version()

	h.complete(store.Result{WorkID: first, Status: "success"})
	out = h.main()
	assert.Equal(t, 1, out.Completions)
	assert.Equal(t, 1, out.Started, "the freed slot goes to the next item")
	assert.Equal(t, loop.NextScheduled, out.Next)
	assert.True(t, out.Saturated)
	assert.Equal(t, written, version(), "run_status was written by an iteration that left it as it was")
	rs := h.runStatus()
	assert.Equal(t, held.Segment, rs.Segment)
	assert.True(t, rs.Saturated)

	assert.False(t, h.kick(store.KickSource{Due: h.now(), StartsOnly: true}), "an enqueue cannot start while the pool is at its limit")
	assert.True(t, h.kick(store.KickSource{Due: h.now()}), "a cancel or a result must wake the loop")

	// The last item is canceled while it waits and the running one ends:
	// nothing is left to run, and the loop says so.
	h.cancel(third)
	h.complete(store.Result{WorkID: second, Status: "success"})
	out = h.main()
	assert.Equal(t, 1, out.Completions)
	assert.Equal(t, 1, out.Cancelations)
	assert.Zero(t, out.Started)
	assert.Equal(t, loop.NextIdle, out.Next)
	assert.Equal(t, store.RunIdle, h.runStatus().State)
	h.checkRunningCount()
}

// TestLeadingProducerKicksOnlyAnIdleLoop: a producer in the leading
// process, which wakes its driver itself (store.KickSource.Leading),
// notifies only an idle loop, for the followers, which stop checking on the
// leader while it is idle; any other producer also wakes a loop scheduled
// later than its row is due.
func TestLeadingProducerKicksOnlyAnIdleLoop(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOpts{})
	h.recoveredNow()
	require.Equal(t, loop.NextIdle, h.main().Next)
	leading := store.KickSource{Due: h.now(), StartsOnly: true, Origin: "1", Leading: true}
	assert.True(t, h.kick(leading), "an idle loop")

	h.running(h.work(workOpts{}), 0, nil)
	require.Equal(t, loop.NextScheduled, h.main().Next)
	leading.Due = h.now()
	assert.False(t, h.kick(leading), "a scheduled loop, by an enqueue")
	cancel := leading
	cancel.StartsOnly = false
	assert.False(t, h.kick(cancel), "a scheduled loop, by a cancel or a result")
	other := leading
	other.Leading = false
	assert.True(t, h.kick(other), "a scheduled loop, by another process")
}
