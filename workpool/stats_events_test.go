package workpool_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"sort"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/uptrace/bun"

	"github.com/pgworkpool/pgworkpool/stats"
	"github.com/pgworkpool/pgworkpool/workpool"
)

const stPool = "stats"

// stItem is one work item of the known workload.
type stItem struct {
	key   string
	fn    string
	label string
	id    workpool.WorkID
	// What its events must say.
	started   []int    // attempt numbers
	completed []string // status/attempts/error, in order
	runAt     time.Duration
}

// stWorkload is a small workload with one item per outcome, run on a pool
// with the given config, that ends in a known steady state:
//
//	A, B   "ok"     succeed at once (B without label)
//	C      "flaky"  fails once (retrying), then succeeds
//	D      "bad"    fails with a non-retryable error, despite Retry
//	I      "ok"     succeeds, but its onComplete always fails: it stays finishing
//	E      "wait"   canceled while it runs
//	F      "ok"     scheduled an hour ahead and canceled before it starts
//
// then, with MaxParallelism lowered to 3:
//
//	N1-N4  "nobody" a function no started process registered: 3 start and
//	                stay unclaimed, 1 waits in the backlog
//	H      "ok"     scheduled an hour ahead (future)
//
// Counters: completed 7 (A B C C D I E), succeeded 4, failed 1, retries 1,
// canceled 2 (E F). Gauges at the end: running 3, backlog 1, future 1,
// unclaimed 3, finishing 1.
type stWorkload struct {
	p, producer *workpool.Pool
	logs        *slogCapture
	items       map[string]*stItem
	byID        map[int64]*stItem
	enqStart    time.Time
	enqEnd      time.Time
}

var stWorkloadTotals = stats.Report{Completed: 7, Succeeded: 4, Failed: 1, Retries: 1, Canceled: 2,
	Running: 3, Backlog: 1, Future: 1, Unclaimed: 3, Finishing: 1}

func stRun(t *testing.T, e *env, cfg workpool.Config) *stWorkload {
	t.Helper()
	ctx := context.Background()
	w := &stWorkload{logs: &slogCapture{}, items: map[string]*stItem{}, byID: map[int64]*stItem{}}
	cfg.Name, cfg.MaxParallelism, cfg.LogLevel, cfg.Logger = stPool, 10, workpool.LogInfo, w.logs.logger()
	cfg.OnCompleteAttempts = 1
	w.p = e.pool(cfg)
	// The producer of the "nobody" items: a second, never started Pool
	// value, so that no started process has the function.
	w.producer = e.pool(workpool.Config{Name: stPool, LogLevel: workpool.LogInfo, Logger: w.logs.logger()})

	ok, err := workpool.Register(w.p, "ok", func(ctx context.Context, n int) (int, error) { return n + 1, nil })
	require.NoError(t, err)
	var flakyCalls atomic.Int64
	flaky, err := workpool.Register(w.p, "flaky", func(ctx context.Context, n int) (int, error) {
		if c := flakyCalls.Add(1); c == 1 {
			time.Sleep(5 * time.Millisecond)
			return 0, fmt.Errorf("flaky %d", c)
		}
		return n, nil
	})
	require.NoError(t, err)
	bad, err := workpool.Register(w.p, "bad", func(ctx context.Context, n int) (int, error) {
		return 0, workpool.NonRetryable(errors.New("bad input"))
	})
	require.NoError(t, err)
	waiting := make(chan struct{})
	wait, err := workpool.Register(w.p, "wait", func(ctx context.Context, n int) (int, error) {
		close(waiting)
		<-ctx.Done()
		return 0, ctx.Err()
	})
	require.NoError(t, err)
	nobody, err := workpool.Register(w.producer, "nobody", func(ctx context.Context, n int) (int, error) { return n, nil })
	require.NoError(t, err)
	failing, err := workpool.RegisterOnComplete(w.p, "failing", func(ctx context.Context, tx bun.Tx, c workpool.Completion[string, int]) error {
		return errors.New("onComplete refuses")
	})
	require.NoError(t, err)
	require.NoError(t, w.p.Start(ctx))

	retry := workpool.Retry(workpool.RetryBehavior{MaxAttempts: 3, InitialBackoff: 20 * time.Millisecond, Base: 1})
	enqueue := func(p *workpool.Pool, key string, fn workpool.Handle, fnName, label string, started []int, completed []string, opts ...workpool.Option) {
		t.Helper()
		if label != "" {
			opts = append(opts, workpool.Label(label))
		}
		id, err := p.Enqueue(ctx, fn, 1, opts...)
		require.NoError(t, err)
		it := &stItem{key: key, fn: fnName, label: label, id: id, started: started, completed: completed}
		w.items[key], w.byID[int64(id)] = it, it
	}
	w.enqStart = time.Now()
	enqueue(w.p, "A", ok, "ok", "label-a", []int{1}, []string{"success/1/"})
	enqueue(w.p, "B", ok, "ok", "", []int{1}, []string{"success/1/"})
	enqueue(w.p, "C", flaky, "flaky", "label-c", []int{1, 2}, []string{"retrying/1/flaky 1", "success/2/"}, retry)
	enqueue(w.p, "D", bad, "bad", "label-d", []int{1}, []string{"failed/1/bad input"}, retry)
	enqueue(w.p, "I", ok, "ok", "label-i", []int{1}, []string{"success/1/"}, workpool.OnComplete(failing, "i"))
	enqueue(w.p, "E", wait, "wait", "label-e", []int{1}, []string{"canceled/1/"})
	enqueue(w.p, "F", ok, "ok", "label-f", nil, []string{"canceled/0/"}, workpool.RunAfter(time.Hour))
	w.items["F"].runAt = time.Hour
	w.enqEnd = time.Now()
	select {
	case <-waiting:
	case <-time.After(20 * time.Second):
		t.Fatal("E did not start")
	}
	require.NoError(t, w.p.Cancel(ctx, w.items["E"].id))
	require.NoError(t, w.p.Cancel(ctx, w.items["F"].id))
	waitFor(t, 30*time.Second, "the first stage to end", func() bool {
		return w.logs.count("completed") == 8 &&
			e.count("SELECT count(*) FROM "+e.schema+".running") == 0 &&
			e.count("SELECT count(*) FROM "+e.schema+".pending_completion") == 0 &&
			e.count("SELECT count(*) FROM "+e.schema+".work WHERE result IS NOT NULL AND finish_after IS NULL") == 1
	})

	require.NoError(t, w.p.SetMaxParallelism(ctx, 3))
	for i := 1; i <= 4; i++ {
		started := []int{1}
		if i == 4 {
			started = nil // waits in the backlog
		}
		enqueue(w.producer, fmt.Sprintf("N%d", i), nobody, "nobody", "label-n", started, nil)
	}
	enqueue(w.p, "H", ok, "ok", "label-h", nil, nil, workpool.RunAfter(time.Hour))
	w.items["H"].runAt = time.Hour
	w.enqEnd = time.Now()
	waitFor(t, 30*time.Second, "the steady state", func() bool {
		return e.count("SELECT count(*) FROM "+e.schema+".running") == 3 && w.logs.count("started") == 10
	})
	return w
}

// checkEvents checks every field of every enqueued, started and completed
// event against the workload.
func (w *stWorkload) checkEvents(t *testing.T) {
	t.Helper()
	var enqueued, started, completed []string
	for _, r := range w.logs.msgs("enqueued", "started", "completed") {
		assert.Equal(t, slog.LevelInfo, r.Level, "%s", r.Msg)
		assert.Equal(t, stPool, r.str("pool"))
		assert.Equal(t, r.Msg, r.str("event"))
		it := w.byID[r.int("work_id")]
		if !assert.NotNil(t, it, "%s of unknown work %d", r.Msg, r.int("work_id")) {
			continue
		}
		// fn and label even once the work row is gone (they once were
		// blank in completed events of finished work).
		assert.Equal(t, it.fn, r.str("fn"), "%s of %s", r.Msg, it.key)
		assert.Equal(t, it.label != "", r.has("label"), "%s of %s: label present iff set", r.Msg, it.key)
		assert.Equal(t, it.label, r.str("label"), "%s of %s", r.Msg, it.key)
		keys := []string{"pool", "event", "work_id", "fn"}
		if r.has("label") {
			keys = append(keys, "label")
		}
		switch r.Msg {
		case "enqueued":
			keys = append(keys, "run_at")
			enqueued = append(enqueued, it.key)
			require.Equal(t, slog.KindTime, r.Attrs["run_at"].Kind())
			runAt := r.Attrs["run_at"].Time()
			assert.Zero(t, runAt.UnixNano()%int64(100*time.Millisecond), "run_at is a segment boundary")
			// run_at is the due segment on the database clock (same host).
			lo, hi := w.enqStart.Add(it.runAt-time.Second), w.enqEnd.Add(it.runAt+time.Second)
			assert.True(t, !runAt.Before(lo) && !runAt.After(hi), "run_at of %s: %v not in [%v, %v]", it.key, runAt, lo, hi)
		case "started":
			keys = append(keys, "attempt", "start_lag_ms")
			started = append(started, fmt.Sprintf("%s/%d", it.key, r.int("attempt")))
			require.Equal(t, slog.KindFloat64, r.Attrs["start_lag_ms"].Kind())
			lag := r.f64("start_lag_ms")
			assert.True(t, lag >= 0 && lag < 10_000, "start lag of %s: %v ms", it.key, lag)
		case "completed":
			keys = append(keys, "status", "attempts", "run_time_ms")
			if r.has("error") {
				keys = append(keys, "error")
				assert.NotEqual(t, "success", r.str("status"), "a success carries no error")
			}
			completed = append(completed, fmt.Sprintf("%s/%s/%d/%s", it.key, r.str("status"), r.int("attempts"), r.str("error")))
			require.Equal(t, slog.KindFloat64, r.Attrs["run_time_ms"].Kind())
			rt := r.f64("run_time_ms")
			assert.True(t, rt >= 0 && rt < 10_000 && rt == math.Trunc(rt), "run time of %s: %v ms (whole ms)", it.key, rt)
			if r.int("attempts") == 0 {
				assert.Zero(t, rt, "never ran")
			}
		}
		assert.Equal(t, keys, r.Keys, "%s of %s: attributes", r.Msg, it.key)
	}
	var wantEnq, wantStarted, wantCompleted []string
	for key, it := range w.items {
		wantEnq = append(wantEnq, key)
		for _, a := range it.started {
			wantStarted = append(wantStarted, fmt.Sprintf("%s/%d", key, a))
		}
		for _, c := range it.completed {
			wantCompleted = append(wantCompleted, key+"/"+c)
		}
	}
	assert.ElementsMatch(t, wantEnq, enqueued, "enqueued events")
	assert.ElementsMatch(t, wantStarted, started, "started events")
	assert.ElementsMatch(t, wantCompleted, completed, "completed events")
	// Per item, the completed events come in attempt order.
	c := w.items["C"]
	var cSeq []string
	for _, r := range w.logs.msgs("completed") {
		if r.int("work_id") == int64(c.id) {
			cSeq = append(cSeq, r.str("status"))
		}
	}
	assert.Equal(t, []string{"retrying", "success"}, cSeq)
}

// stSamples returns the start lags of the started events and the run times
// of the completed events of attempts that ran (the loop samples exactly
// those), among recs.
func stSamples(recs []slogRec) (startLag, runTime []float64) {
	for _, r := range recs {
		switch {
		case r.Msg == "started":
			startLag = append(startLag, r.f64("start_lag_ms"))
		case r.Msg == "completed" && r.int("attempts") > 0:
			runTime = append(runTime, r.f64("run_time_ms"))
		}
	}
	return startLag, runTime
}

// stNearestRank is the p-th percentile of xs by the nearest-rank method,
// 0 for no samples.
func stNearestRank(xs []float64, p int) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	sort.Float64s(s)
	rank := int(math.Ceil(float64(p) / 100 * float64(len(s))))
	rank = max(1, min(rank, len(s)))
	return s[rank-1]
}

func stMs(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// stCheckPercentiles checks a report's percentiles (in ms) against samples.
func stCheckPercentiles(t *testing.T, what string, got [3]float64, samples []float64) {
	t.Helper()
	want := [3]float64{stNearestRank(samples, 50), stNearestRank(samples, 95), stNearestRank(samples, 99)}
	assert.Equal(t, want, got, "%s p50/p95/p99 over %d samples %v", what, len(samples), samples)
}

func stRound4(x float64) float64 { return math.Round(x*1e4) / 1e4 }

// TestStatsEventsAndStatsAtInfo runs the workload at LogInfo with a report
// interval too long to elapse, checks every event, and checks that
// pool.Stats reports the workload's counters, gauges, rates and the
// percentiles of the events' start lags and run times.
func TestStatsEventsAndStatsAtInfo(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	w := stRun(t, e, workpool.Config{ReportInterval: time.Hour})
	w.checkEvents(t)
	assert.Zero(t, w.logs.count("report"), "no report within the hour")
	assert.Equal(t, 1, w.logs.count("onComplete failed for good; the work row keeps its result and error"))

	r, err := w.p.Stats(context.Background())
	require.NoError(t, err)
	want := stWorkloadTotals
	assert.Equal(t, [10]int64{want.Completed, want.Succeeded, want.Failed, want.Retries, want.Canceled,
		want.Running, want.Backlog, want.Future, want.Unclaimed, want.Finishing},
		[10]int64{r.Completed, r.Succeeded, r.Failed, r.Retries, r.Canceled, r.Running, r.Backlog, r.Future, r.Unclaimed, r.Finishing},
		"completed succeeded failed retries canceled | running backlog future unclaimed finishing")
	assert.Equal(t, 0.2857, r.FailureRate, "(failed 1 + retries 1) / completed 7")
	assert.Equal(t, 0.1667, r.PermanentFailureRate, "failed 1 / (completed 7 - retries 1)")
	assert.False(t, r.IntervalStart.IsZero())
	assert.True(t, r.IntervalStart.Before(time.Now()))
	assert.True(t, r.IntervalEnd.After(r.IntervalStart), "IntervalEnd is now: %v", r.IntervalEnd)
	assert.WithinDuration(t, time.Now(), r.IntervalEnd, 5*time.Second)

	lags, runs := stSamples(w.logs.all())
	assert.Len(t, lags, 10)
	assert.Len(t, runs, 7)
	stCheckPercentiles(t, "start lag", [3]float64{stMs(r.StartLag.P50), stMs(r.StartLag.P95), stMs(r.StartLag.P99)}, lags)
	stCheckPercentiles(t, "run time", [3]float64{stMs(r.RunTime.P50), stMs(r.RunTime.P95), stMs(r.RunTime.P99)}, runs)

	// The producer-only pool value reads the same counters and gauges; it
	// runs no loop, so it has no percentiles.
	r2, err := w.producer.Stats(context.Background())
	require.NoError(t, err)
	assert.Equal(t, [5]int64{r.Completed, r.Succeeded, r.Failed, r.Retries, r.Canceled},
		[5]int64{r2.Completed, r2.Succeeded, r2.Failed, r2.Retries, r2.Canceled})
	assert.Equal(t, stats.Percentiles{}, r2.StartLag)
}
