package stats

import (
	"math"
	"time"
)

// Status is the outcome recorded in a Completed event. It is a string so the
// value logged is readable as is and matches the Convex workpool's names.
type Status string

const (
	// StatusSuccess means the work function returned without error and the
	// item is finished.
	StatusSuccess Status = "success"

	// StatusFailed means the attempt failed and no retry is left (or retries
	// are disabled), so the failure is permanent.
	StatusFailed Status = "failed"

	// StatusCanceled means the item was canceled before it could finish.
	StatusCanceled Status = "canceled"

	// StatusRetrying means the attempt failed but the item will run again
	// after its backoff, so the failure is not (yet) final.
	StatusRetrying Status = "retrying"
)

// Enqueued describes a work item that was just added to the pool. It is
// logged as the "enqueued" event so that an item can be followed from the
// moment it exists.
type Enqueued struct {
	// WorkID identifies the item in every event about it.
	WorkID int64
	// Fn names the work function that will run the item.
	Fn string
	// Label is an optional caller-chosen tag; it is omitted from the log
	// line when empty.
	Label string
	// RunAt is when the item becomes due, which is in the future for
	// scheduled items.
	RunAt time.Time
}

// Started describes an attempt that was just given one of the pool's slots
// by the loop (the handler begins once a worker holds it, at once when the
// process that runs the loop has a free slot for it). It is logged as the
// "started" event, by the process that runs the loop; StartLag shows how
// long due work waits for a slot, which is the first sign of an undersized
// pool.
type Started struct {
	// WorkID identifies the item in every event about it.
	WorkID int64
	// Fn names the work function running the item.
	Fn string
	// Label is an optional caller-chosen tag; it is omitted from the log
	// line when empty.
	Label string
	// Attempt numbers this attempt, starting at 1 for the first.
	Attempt int
	// StartLag is the time between the item becoming due and this attempt
	// getting its slot. It is logged in milliseconds.
	StartLag time.Duration
}

// Completed describes the end of an attempt. It is logged as the "completed"
// event and carries the outcome, so that failures and retries can be found
// in the logs without querying the database.
type Completed struct {
	// WorkID identifies the item in every event about it.
	WorkID int64
	// Fn names the work function that ran the item.
	Fn string
	// Label is an optional caller-chosen tag; it is omitted from the log
	// line when empty.
	Label string
	// Status is the outcome of the attempt.
	Status Status
	// Attempts counts the attempts made so far, including this one.
	Attempts int
	// RunTime is how long the attempt ran, as its worker measured it. It is
	// logged in milliseconds, and is zero when unknown: an attempt failed
	// by recovery, or canceled before it ran (neither enters the run-time
	// percentiles).
	RunTime time.Duration
	// Error is the failure message; it is omitted from the log line when
	// empty, which is the case for successful attempts.
	Error string
}

// Percentiles summarizes a distribution of durations by its 50th, 95th and
// 99th percentiles: the median shows the typical case and the tail shows
// what the unlucky items experience, which averages would hide.
type Percentiles struct {
	// P50 is the median.
	P50 time.Duration
	// P95 is the 95th percentile.
	P95 time.Duration
	// P99 is the 99th percentile.
	P99 time.Duration
}

// Report is the periodic summary of a pool, logged as the "report" event.
// The counters of completions are counted over the interval
// [IntervalStart, IntervalEnd); the gauges (Running, Backlog, Future,
// Unclaimed, Finishing) are the state at the end of the interval. One line
// per interval keeps the log volume independent of throughput while still
// showing whether the pool keeps up.
type Report struct {
	// IntervalStart is when the interval the counters cover began.
	IntervalStart time.Time
	// IntervalEnd is when the interval the counters cover ended.
	IntervalEnd time.Time

	// Completed counts attempts that ended during the interval, whatever
	// their outcome (success, failure, retry or cancellation).
	Completed int64
	// Succeeded counts attempts that succeeded during the interval.
	Succeeded int64
	// Failed counts attempts that failed permanently during the interval.
	Failed int64
	// Retries counts attempts that failed during the interval and were
	// scheduled to run again.
	Retries int64
	// Canceled counts items canceled during the interval.
	Canceled int64

	// Running counts items holding a slot now, whether or not a worker has
	// claimed them.
	Running int64
	// Backlog counts due items waiting for a slot. Items scheduled for later
	// are not backlog: they are counted in Future.
	Backlog int64
	// Future counts items scheduled for later, either explicitly (RunAt or
	// RunAfter) or by a retry backoff.
	Future int64
	// Unclaimed counts started items that no live worker has claimed,
	// usually because no running process registered their function. A
	// nonzero value that does not drain points at a deployment problem.
	Unclaimed int64
	// Finishing counts items whose outcome is decided but whose onComplete
	// callback has not committed yet.
	Finishing int64

	// FailureRate is the share of completed attempts that failed, counting
	// retried failures, rounded to 4 decimals. Set it with ComputeRates.
	FailureRate float64
	// PermanentFailureRate is the share of final outcomes that were
	// permanent failures, rounded to 4 decimals. Set it with ComputeRates.
	PermanentFailureRate float64

	// StartLag summarizes how long items waited between becoming due and
	// starting, over the interval.
	StartLag Percentiles
	// RunTime summarizes how long attempts ran, over the interval.
	RunTime Percentiles
}

// ComputeRates sets FailureRate and PermanentFailureRate from the counters,
// using the Convex workpool's formulas so that reports from both systems can
// be compared:
//
//	FailureRate          = (Failed + Retries) / Completed            (0 if Completed == 0)
//	PermanentFailureRate = Failed / (Completed - Retries)            (0 if Completed - Retries <= 0)
//
// A retried attempt is a failure, but not a final outcome, so it counts
// towards FailureRate and is excluded from the denominator of
// PermanentFailureRate. Both rates are rounded to 4 decimals to keep the log
// line short. Call it after filling the counters and before Logger.Report.
func (r *Report) ComputeRates() {
	r.FailureRate = 0
	if r.Completed != 0 {
		r.FailureRate = round4(float64(r.Failed+r.Retries) / float64(r.Completed))
	}
	r.PermanentFailureRate = 0
	if final := r.Completed - r.Retries; final > 0 {
		r.PermanentFailureRate = round4(float64(r.Failed) / float64(final))
	}
}

// round4 rounds x to 4 decimals.
func round4(x float64) float64 {
	return math.Round(x*1e4) / 1e4
}

// millis converts d to fractional milliseconds, the unit every duration is
// logged in, so that sub-millisecond lags stay visible.
func millis(d time.Duration) float64 {
	return float64(d) / float64(time.Millisecond)
}
