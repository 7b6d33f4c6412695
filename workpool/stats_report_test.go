package workpool_test

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgworkpool/pgworkpool/workpool"
)

// stReportKeys are the report's attributes, in order.
var stReportKeys = []string{"pool", "event", "completed", "succeeded", "failed", "retries", "canceled",
	"running", "backlog", "future", "unclaimed", "finishing", "failure_rate", "permanent_failure_rate",
	"start_lag_p50_ms", "start_lag_p95_ms", "start_lag_p99_ms", "run_time_p50_ms", "run_time_p95_ms", "run_time_p99_ms",
	"interval_start", "interval_end"}

// Short periods so that an active loop reports every second: while work
// runs the loop wakes at least once per recovery period.
const (
	stReportInterval = time.Second
	stRecoveryPeriod = 200 * time.Millisecond
)

// stWaitReports waits until n reports were logged after the record seq.
func stWaitReports(t *testing.T, logs *slogCapture, after, n int, timeout time.Duration) []slogRec {
	t.Helper()
	var got []slogRec
	waitFor(t, timeout, "reports", func() bool {
		got = got[:0]
		for _, r := range logs.msgs("report") {
			if r.Seq > after {
				got = append(got, r)
			}
		}
		return len(got) >= n
	})
	return got
}

// stCheckReportShape checks what every report line must satisfy on its own.
func stCheckReportShape(t *testing.T, r slogRec) {
	t.Helper()
	assert.Equal(t, slog.LevelInfo, r.Level)
	assert.Equal(t, stReportKeys, r.Keys)
	assert.Equal(t, stPool, r.str("pool"))
	assert.Equal(t, "report", r.str("event"))
	completed, failed, retries := r.int("completed"), r.int("failed"), r.int("retries")
	var fr, pfr float64
	if completed > 0 {
		fr = stRound4(float64(failed+retries) / float64(completed))
	}
	if completed-retries > 0 {
		pfr = stRound4(float64(failed) / float64(completed-retries))
	}
	assert.Equal(t, fr, r.f64("failure_rate"))
	assert.Equal(t, pfr, r.f64("permanent_failure_rate"))
	for _, k := range []string{"start_lag", "run_time"} {
		p50, p95, p99 := r.f64(k+"_p50_ms"), r.f64(k+"_p95_ms"), r.f64(k+"_p99_ms")
		assert.True(t, 0 <= p50 && p50 <= p95 && p95 <= p99, "%s percentiles %v %v %v", k, p50, p95, p99)
	}
	start, end := r.Attrs["interval_start"].Time(), r.Attrs["interval_end"].Time()
	assert.GreaterOrEqual(t, end.Sub(start), stReportInterval, "an interval is at least ReportInterval")
}

// TestStatsReportAtInfo runs the workload at LogInfo with a 1 s report
// interval and checks every report against the events logged since the
// previous one: counters, rates and nearest-rank percentiles of start lag
// and run time. Over all reports the counters add up to the workload, and
// the reports after the workload show its final gauges.
func TestStatsReportAtInfo(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	w := stRun(t, e, workpool.Config{ReportInterval: stReportInterval, RecoveryPeriod: stRecoveryPeriod})
	w.checkEvents(t)
	steady := len(w.logs.all()) - 1
	stWaitReports(t, w.logs, steady, 2, 30*time.Second)

	all := w.logs.all()
	var sum [5]int64
	prev := -1
	var prevEnd time.Time
	reports := 0
	for _, r := range all {
		if r.Msg != "report" {
			continue
		}
		reports++
		t.Logf("report %d: completed %d succeeded %d failed %d retries %d canceled %d running %d backlog %d future %d unclaimed %d finishing %d rates %v/%v start lag p50/p99 %v/%v ms run time p50/p99 %v/%v ms",
			reports, r.int("completed"), r.int("succeeded"), r.int("failed"), r.int("retries"), r.int("canceled"),
			r.int("running"), r.int("backlog"), r.int("future"), r.int("unclaimed"), r.int("finishing"),
			r.f64("failure_rate"), r.f64("permanent_failure_rate"), r.f64("start_lag_p50_ms"), r.f64("start_lag_p99_ms"),
			r.f64("run_time_p50_ms"), r.f64("run_time_p99_ms"))
		window := all[prev+1 : r.Seq]
		prev = r.Seq
		var completed, succeeded, failed, retries, canceled, canceledPending int64
		for _, ev := range window {
			if ev.Msg != "completed" {
				continue
			}
			if ev.int("attempts") > 0 {
				completed++
			}
			switch ev.str("status") {
			case "success":
				succeeded++
			case "failed":
				failed++
			case "retrying":
				retries++
			case "canceled":
				canceled++
				if ev.int("attempts") == 0 {
					canceledPending++
				}
			}
		}
		assert.Equal(t, [5]int64{completed, succeeded, failed, retries, canceled},
			[5]int64{r.int("completed"), r.int("succeeded"), r.int("failed"), r.int("retries"), r.int("canceled")},
			"report %d: counters = the completed events since the previous report", reports)
		assert.Equal(t, r.int("completed"), r.int("succeeded")+r.int("failed")+r.int("retries")+r.int("canceled")-canceledPending)
		stCheckReportShape(t, r)
		lags, runs := stSamples(window)
		stCheckPercentiles(t, "start lag", [3]float64{r.f64("start_lag_p50_ms"), r.f64("start_lag_p95_ms"), r.f64("start_lag_p99_ms")}, lags)
		stCheckPercentiles(t, "run time", [3]float64{r.f64("run_time_p50_ms"), r.f64("run_time_p95_ms"), r.f64("run_time_p99_ms")}, runs)
		start := r.Attrs["interval_start"].Time()
		if !prevEnd.IsZero() {
			assert.True(t, start.Equal(prevEnd), "report %d starts where the previous ended: %v vs %v", reports, start, prevEnd)
		}
		prevEnd = r.Attrs["interval_end"].Time()
		for i, k := range []string{"completed", "succeeded", "failed", "retries", "canceled"} {
			sum[i] += r.int(k)
		}
	}
	reportsBefore := w.logs.msgs("report")
	st, err := w.p.Stats(context.Background())
	require.NoError(t, err)
	if reportsAfter := w.logs.msgs("report"); len(reportsAfter) == len(reportsBefore) {
		assert.True(t, st.IntervalStart.Equal(reportsAfter[len(reportsAfter)-1].Attrs["interval_end"].Time()),
			"Stats counts from the end of the last report")
	}
	sum[0] += st.Completed
	sum[1] += st.Succeeded
	sum[2] += st.Failed
	sum[3] += st.Retries
	sum[4] += st.Canceled
	want := stWorkloadTotals
	assert.Equal(t, [5]int64{want.Completed, want.Succeeded, want.Failed, want.Retries, want.Canceled}, sum,
		"reports plus the current interval add up to the workload")

	// The reports after the workload show its final state.
	last := stWaitReports(t, w.logs, steady, 2, time.Second)
	for _, r := range last {
		assert.Equal(t, [5]int64{want.Running, want.Backlog, want.Future, want.Unclaimed, want.Finishing},
			[5]int64{r.int("running"), r.int("backlog"), r.int("future"), r.int("unclaimed"), r.int("finishing")},
			"running backlog future unclaimed finishing")
		// An active loop reports about once per interval.
		d := r.Attrs["interval_end"].Time().Sub(r.Attrs["interval_start"].Time())
		assert.Less(t, d, stReportInterval+stRecoveryPeriod+time.Second, "interval length")
	}
	assert.Equal(t, [5]int64{want.Running, want.Backlog, want.Future, want.Unclaimed, want.Finishing},
		[5]int64{st.Running, st.Backlog, st.Future, st.Unclaimed, st.Finishing}, "Stats gauges")
}

// stQuietPool starts a pool at level with one item that runs until the
// test ends (keeping the loop active) and two that succeed at once.
func stQuietPool(t *testing.T, e *env, level workpool.LogLevel) (*workpool.Pool, *slogCapture) {
	t.Helper()
	logs := &slogCapture{}
	p := e.pool(workpool.Config{Name: stPool, MaxParallelism: 4, LogLevel: level, Logger: logs.logger(),
		ReportInterval: stReportInterval, RecoveryPeriod: stRecoveryPeriod})
	release := make(chan struct{})
	t.Cleanup(func() { close(release) }) // before the pool's Stop
	ok, err := workpool.Register(p, "ok", func(ctx context.Context, n int) (int, error) { return n, nil })
	require.NoError(t, err)
	hold, err := workpool.Register(p, "hold", func(ctx context.Context, n int) (int, error) {
		select {
		case <-release:
		case <-ctx.Done():
		}
		return n, nil
	})
	require.NoError(t, err)
	ctx := context.Background()
	require.NoError(t, p.Start(ctx))
	_, err = p.Enqueue(ctx, hold, 1, workpool.Label("sentinel"))
	require.NoError(t, err)
	_, err = p.EnqueueBatch(ctx, ok, []int{1, 2})
	require.NoError(t, err)
	return p, logs
}

func stGeneration(e *env) int {
	e.t.Helper()
	return e.count("SELECT generation::int FROM "+e.schema+".internal_state WHERE pool = ?", stPool)
}

// TestStatsOnlyReportsAtReportLevel: at LogReport the pool prints its
// reports and no events.
func TestStatsOnlyReportsAtReportLevel(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	p, logs := stQuietPool(t, e, workpool.LogReport)
	reports := stWaitReports(t, logs, -1, 2, 30*time.Second)
	for _, r := range reports {
		stCheckReportShape(t, r)
	}
	assert.Zero(t, len(logs.msgs("enqueued", "started", "completed")), "no events at LogReport")
	for _, r := range logs.all() {
		assert.NotEqual(t, slog.LevelDebug, r.Level, "no debug lines: %s", r.Msg)
	}
	var completed, succeeded int64
	for _, r := range logs.msgs("report") {
		assert.Equal(t, r.int("completed"), r.int("succeeded")+r.int("failed")+r.int("retries")+r.int("canceled"))
		completed += r.int("completed")
		succeeded += r.int("succeeded")
	}
	st, err := p.Stats(context.Background())
	require.NoError(t, err)
	assert.EqualValues(t, 2, completed+st.Completed)
	assert.EqualValues(t, 2, succeeded+st.Succeeded)
	assert.EqualValues(t, 1, st.Running)
	assert.EqualValues(t, 1, reports[len(reports)-1].int("running"))
}

// TestStatsNoReportAtWarn: at LogWarn an active loop prints no report (and
// no events); switching the level at runtime brings the reports back.
func TestStatsNoReportAtWarn(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	p, logs := stQuietPool(t, e, workpool.LogWarn)
	waitFor(t, 30*time.Second, "the sentinel to run", func() bool {
		return e.count("SELECT count(*) FROM "+e.schema+".running WHERE claimed_by IS NOT NULL") == 1
	})
	g0 := stGeneration(e)
	time.Sleep(3 * stReportInterval)
	assert.GreaterOrEqual(t, stGeneration(e)-g0, 5, "the loop kept iterating (every recovery period)")
	assert.Zero(t, logs.count("report"), "no report at LogWarn")
	assert.Zero(t, len(logs.msgs("enqueued", "started", "completed")), "no events at LogWarn")
	for _, r := range logs.all() {
		assert.GreaterOrEqual(t, r.Level, slog.LevelWarn, "only warnings and errors at LogWarn: %s", r.Msg)
	}

	mark := len(logs.all()) - 1
	require.NoError(t, p.SetLogLevel(context.Background(), workpool.LogReport))
	for _, r := range stWaitReports(t, logs, mark, 1, 10*time.Second) {
		stCheckReportShape(t, r)
	}
}

// TestStatsNoReportWhileIdle: an idle loop sends no queries, so it prints
// no report however long it stays idle; the first iteration after a kick
// reports the whole interval since the previous report.
func TestStatsNoReportWhileIdle(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	logs := &slogCapture{}
	p := e.pool(workpool.Config{Name: stPool, MaxParallelism: 4, LogLevel: workpool.LogReport, Logger: logs.logger(),
		ReportInterval: stReportInterval, RecoveryPeriod: stRecoveryPeriod})
	ok, err := workpool.Register(p, "ok", func(ctx context.Context, n int) (int, error) { return n, nil })
	require.NoError(t, err)
	ctx := context.Background()
	require.NoError(t, p.Start(ctx))
	_, err = p.Enqueue(ctx, ok, 1)
	require.NoError(t, err)
	waitFor(t, 10*time.Second, "the loop to go idle", func() bool {
		return e.count("SELECT count(*) FROM "+e.schema+".run_status WHERE state = 'idle'") == 1 &&
			e.count("SELECT count(*) FROM "+e.schema+".work") == 0
	})
	idleSince := time.Now()
	time.Sleep(3 * stReportInterval)
	assert.Zero(t, logs.count("report"), "no report while idle")

	_, err = p.Enqueue(ctx, ok, 2)
	require.NoError(t, err)
	r := stWaitReports(t, logs, -1, 1, 10*time.Second)[0]
	stCheckReportShape(t, r)
	assert.EqualValues(t, 1, r.int("completed"), "the item that ran before the idle period")
	start, end := r.Attrs["interval_start"].Time(), r.Attrs["interval_end"].Time()
	assert.True(t, start.Before(idleSince), "the interval spans the idle period")
	assert.GreaterOrEqual(t, end.Sub(start), 3*stReportInterval)
	waitFor(t, 10*time.Second, "the second item", func() bool {
		return e.count("SELECT count(*) FROM "+e.schema+".work") == 0
	})
	time.Sleep(2 * stReportInterval)
	assert.Equal(t, 1, logs.count("report"), "idle again: no further report")
	st, err := p.Stats(ctx)
	require.NoError(t, err)
	assert.EqualValues(t, 1, st.Completed, "the second item waits for the next active interval")
}
