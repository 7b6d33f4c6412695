package stats

import (
	"context"
	"log/slog"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// Event names, used both as the message and as the value of the "event"
// attribute of the corresponding log line.
const (
	eventEnqueued  = "enqueued"
	eventStarted   = "started"
	eventCompleted = "completed"
	eventReport    = "report"
)

// Logger filters a pool's log output by a Level that can change at runtime,
// and adds the pool name to every line. The level lives in the database and
// is refreshed while the pool runs, so an operator can turn on event logging
// for a running pool without restarting it; SetLevel makes that change
// visible to every goroutine at once.
//
// Filtering by Level happens before the base logger is consulted, and the
// base handler's own Enabled check is honored as well, so a line is printed
// only when both agree. A line rejected by either check is dropped before
// its attributes are built, so filtered lines cost no allocations.
//
// A Logger is safe for concurrent use. Create it with NewLogger; the zero
// Logger is not usable.
type Logger struct {
	handler slog.Handler // the base handler with the pool attribute attached
	level   atomic.Int32 // always a valid Level

	versionMu sync.Mutex
	version   int64 // of the stored level last applied by SetStoredLevel
}

// NewLogger returns a Logger writing to base and tagging every line with the
// attribute pool=<pool>, so lines from several pools sharing a process can
// be told apart. A nil base means slog.Default() as it is at the time of the
// call. A zero (unset) or otherwise invalid level means LevelReport, the
// default, so that a missing configuration never silences errors.
func NewLogger(base *slog.Logger, pool string, level Level) *Logger {
	if base == nil {
		base = slog.Default()
	}
	l := &Logger{handler: base.Handler().WithAttrs([]slog.Attr{slog.String("pool", pool)})}
	if !level.Valid() {
		level = LevelReport
	}
	l.level.Store(int32(level))
	return l
}

// SetLevel changes the level used for every later line, atomically, so the
// pool can apply a level read from the database while other goroutines log.
// An invalid level, including the zero (unset) Level, is ignored and the
// current level is kept: a bad value in the database must not change what
// the pool logs.
func (l *Logger) SetLevel(level Level) {
	if level.Valid() {
		l.level.Store(int32(level))
	}
}

// SetStoredLevel applies a level read from the database, with the version
// it was stored at (the config row's update time). Readers race: a read
// that started before a change can finish after it, so an older version
// than the one applied last is ignored.
func (l *Logger) SetStoredLevel(level Level, version int64) {
	if !level.Valid() {
		return
	}
	l.versionMu.Lock()
	defer l.versionMu.Unlock()
	if version < l.version {
		return
	}
	l.version = version
	l.level.Store(int32(level))
}

// Level returns the level currently used for filtering.
func (l *Logger) Level() Level {
	return Level(l.level.Load())
}

// EventsEnabled reports whether the enqueued, started and completed events
// are printed at the current level (LevelInfo or LevelDebug), so callers can
// skip gathering the fields of an event nobody will see.
func (l *Logger) EventsEnabled() bool {
	return l.Level() <= LevelInfo
}

// Debug logs msg with the given key-value args at slog.LevelDebug, but only
// when the level is LevelDebug: debug lines describe the inner workings of
// the loop and are too frequent for any other level. The args are
// interpreted as by slog.Logger.Log.
func (l *Logger) Debug(ctx context.Context, msg string, args ...any) {
	if l.Level() > LevelDebug {
		return
	}
	l.logArgs(ctx, slog.LevelDebug, msg, args)
}

// Warn logs msg with the given key-value args at slog.LevelWarn when the
// level is LevelWarn or lower, that is at every level but LevelError.
func (l *Logger) Warn(ctx context.Context, msg string, args ...any) {
	if l.Level() > LevelWarn {
		return
	}
	l.logArgs(ctx, slog.LevelWarn, msg, args)
}

// Error logs msg with the given key-value args at slog.LevelError. Every
// valid level includes errors, so errors are always printed (provided the
// base handler accepts them).
func (l *Logger) Error(ctx context.Context, msg string, args ...any) {
	if l.Level() > LevelError {
		return
	}
	l.logArgs(ctx, slog.LevelError, msg, args)
}

// Enqueued logs the "enqueued" event at slog.LevelInfo when events are
// enabled (see EventsEnabled), with the attributes event, work_id, fn,
// label (omitted when empty) and run_at.
func (l *Logger) Enqueued(ctx context.Context, e Enqueued) {
	if !l.EventsEnabled() {
		return
	}
	ctx, ok := l.enabled(ctx, slog.LevelInfo)
	if !ok {
		return
	}
	r := newRecord(slog.LevelInfo, eventEnqueued)
	var buf [5]slog.Attr
	attrs := append(buf[:0], slog.String("event", eventEnqueued), slog.Int64("work_id", e.WorkID), slog.String("fn", e.Fn))
	if e.Label != "" {
		attrs = append(attrs, slog.String("label", e.Label))
	}
	attrs = append(attrs, slog.Time("run_at", e.RunAt))
	r.AddAttrs(attrs...)
	_ = l.handler.Handle(ctx, r)
}

// Started logs the "started" event at slog.LevelInfo when events are
// enabled (see EventsEnabled), with the attributes event, work_id, fn,
// label (omitted when empty), attempt and start_lag_ms.
func (l *Logger) Started(ctx context.Context, e Started) {
	if !l.EventsEnabled() {
		return
	}
	ctx, ok := l.enabled(ctx, slog.LevelInfo)
	if !ok {
		return
	}
	r := newRecord(slog.LevelInfo, eventStarted)
	var buf [6]slog.Attr
	attrs := append(buf[:0], slog.String("event", eventStarted), slog.Int64("work_id", e.WorkID), slog.String("fn", e.Fn))
	if e.Label != "" {
		attrs = append(attrs, slog.String("label", e.Label))
	}
	attrs = append(attrs, slog.Int("attempt", e.Attempt), slog.Float64("start_lag_ms", millis(e.StartLag)))
	r.AddAttrs(attrs...)
	_ = l.handler.Handle(ctx, r)
}

// Completed logs the "completed" event at slog.LevelInfo when events are
// enabled (see EventsEnabled), with the attributes event, work_id, fn,
// label (omitted when empty), status, attempts, run_time_ms and error
// (omitted when empty).
func (l *Logger) Completed(ctx context.Context, e Completed) {
	if !l.EventsEnabled() {
		return
	}
	ctx, ok := l.enabled(ctx, slog.LevelInfo)
	if !ok {
		return
	}
	r := newRecord(slog.LevelInfo, eventCompleted)
	var buf [8]slog.Attr
	attrs := append(buf[:0], slog.String("event", eventCompleted), slog.Int64("work_id", e.WorkID), slog.String("fn", e.Fn))
	if e.Label != "" {
		attrs = append(attrs, slog.String("label", e.Label))
	}
	attrs = append(attrs,
		slog.String("status", string(e.Status)),
		slog.Int("attempts", e.Attempts),
		slog.Float64("run_time_ms", millis(e.RunTime)),
	)
	if e.Error != "" {
		attrs = append(attrs, slog.String("error", e.Error))
	}
	r.AddAttrs(attrs...)
	_ = l.handler.Handle(ctx, r)
}

// Report logs the periodic "report" line at slog.LevelInfo when the level is
// LevelReport or lower; LevelWarn and LevelError suppress it. The rates are
// logged as they are in r, so call r.ComputeRates first. The attributes are
// event, completed, succeeded, failed, retries, canceled, running, backlog,
// future, unclaimed, finishing, failure_rate, permanent_failure_rate,
// start_lag_p50_ms, start_lag_p95_ms, start_lag_p99_ms, run_time_p50_ms,
// run_time_p95_ms, run_time_p99_ms, interval_start and interval_end.
func (l *Logger) Report(ctx context.Context, r Report) {
	if l.Level() > LevelReport {
		return
	}
	ctx, ok := l.enabled(ctx, slog.LevelInfo)
	if !ok {
		return
	}
	rec := newRecord(slog.LevelInfo, eventReport)
	rec.AddAttrs(
		slog.String("event", eventReport),
		slog.Int64("completed", r.Completed),
		slog.Int64("succeeded", r.Succeeded),
		slog.Int64("failed", r.Failed),
		slog.Int64("retries", r.Retries),
		slog.Int64("canceled", r.Canceled),
		slog.Int64("running", r.Running),
		slog.Int64("backlog", r.Backlog),
		slog.Int64("future", r.Future),
		slog.Int64("unclaimed", r.Unclaimed),
		slog.Int64("finishing", r.Finishing),
		slog.Float64("failure_rate", r.FailureRate),
		slog.Float64("permanent_failure_rate", r.PermanentFailureRate),
		slog.Float64("start_lag_p50_ms", millis(r.StartLag.P50)),
		slog.Float64("start_lag_p95_ms", millis(r.StartLag.P95)),
		slog.Float64("start_lag_p99_ms", millis(r.StartLag.P99)),
		slog.Float64("run_time_p50_ms", millis(r.RunTime.P50)),
		slog.Float64("run_time_p95_ms", millis(r.RunTime.P95)),
		slog.Float64("run_time_p99_ms", millis(r.RunTime.P99)),
		slog.Time("interval_start", r.IntervalStart),
		slog.Time("interval_end", r.IntervalEnd),
	)
	_ = l.handler.Handle(ctx, rec)
}

// enabled substitutes context.Background for a nil ctx, as slog does, and
// reports whether the base handler accepts lines at level.
func (l *Logger) enabled(ctx context.Context, level slog.Level) (context.Context, bool) {
	if ctx == nil {
		ctx = context.Background()
	}
	return ctx, l.handler.Enabled(ctx, level)
}

// logArgs logs msg with slog-style key-value args. It must be called
// directly by an exported method so that newRecord attributes the line to
// that method's caller.
func (l *Logger) logArgs(ctx context.Context, level slog.Level, msg string, args []any) {
	ctx, ok := l.enabled(ctx, level)
	if !ok {
		return
	}
	r := newRecordSkip(4, level, msg)
	r.Add(args...)
	_ = l.handler.Handle(ctx, r)
}

// newRecord returns a record whose source is the caller of the exported
// method that called newRecord, so that handlers with AddSource point at the
// pool code that logged rather than at this package. This is why the Logger
// writes to the base handler directly instead of through
// slog.Logger.LogAttrs, which would attribute every line to this file.
func newRecord(level slog.Level, msg string) slog.Record {
	return newRecordSkip(4, level, msg)
}

// newRecordSkip is newRecord with an explicit runtime.Callers skip count:
// 0 is runtime.Callers, 1 newRecordSkip, 2 its caller, and so on.
func newRecordSkip(skip int, level slog.Level, msg string) slog.Record {
	var pcs [1]uintptr
	runtime.Callers(skip, pcs[:])
	return slog.NewRecord(time.Now(), level, msg, pcs[0])
}
