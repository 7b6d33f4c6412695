// Package stats decides what a work pool logs and how: log levels,
// structured slog events about work items, the periodic report, and the
// percentile sampling behind it. It is pure Go and touches no database; the
// pool's loop and workers call it.
//
// # Levels
//
// A Logger filters by a Level, ordered from the most to the least verbose:
//
//	LevelDebug < LevelInfo < LevelReport < LevelWarn < LevelError
//
// The semantics are those of the Convex workpool:
//
//   - Debug messages are printed only at LevelDebug.
//   - The events enqueued, started and completed are printed only at
//     LevelInfo and LevelDebug.
//   - The report is printed at LevelDebug, LevelInfo and LevelReport, but
//     not at LevelWarn or LevelError.
//   - Warnings are printed at every level up to and including LevelWarn.
//   - Errors are printed at every level.
//
// LevelReport is the default, so an unconfigured pool logs one report per
// interval plus its warnings and errors, however busy it is. The zero Level
// means "unset" and is replaced by LevelReport. The level is stored in the
// database and refreshed while the pool runs, so Logger.SetLevel can change
// it at any time and every goroutine sees the change at once.
//
// A line is printed only if the base slog handler enables it too, so the
// level of the base handler still applies: debug messages need a handler
// that accepts slog.LevelDebug.
//
// # Events
//
// Events and reports are logged at slog.LevelInfo. Their message is the
// event name and they carry an attribute event with the same name, so they
// can be selected by either, plus the attribute pool naming the pool (which
// every line of a Logger carries). Durations are logged as float64
// milliseconds, with a _ms suffix on the key, and times as time.Time.
//
//	enqueued   work_id, fn, label, run_at
//	started    work_id, fn, label, attempt, start_lag_ms
//	completed  work_id, fn, label, status, attempts, run_time_ms, error
//
// label is omitted when empty, and so is error. status is one of success,
// failed, canceled and retrying.
//
// # Report
//
// The report line summarizes one interval:
//
//	completed, succeeded, failed, retries, canceled   counted over the interval
//	running, backlog, future, unclaimed, finishing    the state at its end
//	failure_rate, permanent_failure_rate              see Report.ComputeRates
//	start_lag_p50_ms, start_lag_p95_ms, start_lag_p99_ms
//	run_time_p50_ms, run_time_p95_ms, run_time_p99_ms
//	interval_start, interval_end
//
// The percentiles come from two Samplers (one for start lag, one for run
// time), which keep a bounded, uniform random sample of the durations seen
// during the interval and are meant to be reset after each report.
//
// Reports are only printed while the pool's loop is active. An idle pool
// sends no queries to the database, so it has observed nothing new and has
// nothing new to report; printing the same gauges again every interval would
// only add noise, and querying the database just to print them would defeat
// the point of letting an idle pool stay silent.
package stats
