package stats

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// line is one captured log line: its level, message, source file and
// attributes in order, with the attributes attached via WithAttrs first.
type line struct {
	level slog.Level
	msg   string
	file  string
	attrs []slog.Attr
}

// recorder is a slog.Handler that keeps every record it handles, so tests
// can check attributes with their exact kinds and values.
type recorder struct {
	min   slog.Level
	pre   []slog.Attr
	mu    *sync.Mutex
	lines *[]line
	calls *int // Handle calls, to prove disabled lines are never built
}

func newRecorder(min slog.Level) *recorder {
	return &recorder{min: min, mu: new(sync.Mutex), lines: new([]line), calls: new(int)}
}

func (h *recorder) Enabled(_ context.Context, l slog.Level) bool { return l >= h.min }

func (h *recorder) Handle(_ context.Context, r slog.Record) error {
	ln := line{level: r.Level, msg: r.Message, attrs: slices.Clone(h.pre)}
	if r.PC != 0 {
		f, _ := runtime.CallersFrames([]uintptr{r.PC}).Next()
		ln.file = filepath.Base(f.File)
	}
	r.Attrs(func(a slog.Attr) bool {
		ln.attrs = append(ln.attrs, a)
		return true
	})
	h.mu.Lock()
	defer h.mu.Unlock()
	*h.calls++
	*h.lines = append(*h.lines, ln)
	return nil
}

func (h *recorder) WithAttrs(as []slog.Attr) slog.Handler {
	h2 := *h
	h2.pre = append(slices.Clone(h.pre), as...)
	return &h2
}

func (h *recorder) WithGroup(string) slog.Handler { panic("WithGroup not expected") }

func (h *recorder) take() []line {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := *h.lines
	*h.lines = nil
	return out
}

func (h *recorder) handleCalls() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return *h.calls
}

// checkAttrs fails unless got holds exactly want, in order, with equal
// kinds and values.
func checkAttrs(t *testing.T, what string, got, want []slog.Attr) {
	t.Helper()
	keys := func(as []slog.Attr) []string {
		var ks []string
		for _, a := range as {
			ks = append(ks, a.Key)
		}
		return ks
	}
	if !slices.Equal(keys(got), keys(want)) {
		t.Fatalf("%s: attr keys\n got  %v\n want %v", what, keys(got), keys(want))
	}
	for i := range want {
		if got[i].Value.Kind() != want[i].Value.Kind() || !got[i].Value.Equal(want[i].Value) {
			t.Errorf("%s: attr %s = %v (%v), want %v (%v)", what, want[i].Key,
				got[i].Value, got[i].Value.Kind(), want[i].Value, want[i].Value.Kind())
		}
	}
}

func onlyLine(t *testing.T, h *recorder) line {
	t.Helper()
	lines := h.take()
	if len(lines) != 1 {
		t.Fatalf("got %d lines, want 1: %+v", len(lines), lines)
	}
	return lines[0]
}

var (
	t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	t1 = t0.Add(30 * time.Second)
)

func TestLevelString(t *testing.T) {
	tests := []struct {
		l    Level
		want string
	}{
		{0, "unset"},
		{LevelDebug, "debug"},
		{LevelInfo, "info"},
		{LevelReport, "report"},
		{LevelWarn, "warn"},
		{LevelError, "error"},
		{6, "level(6)"},
		{-1, "level(-1)"},
		{127, "level(127)"},
	}
	for _, tt := range tests {
		if got := tt.l.String(); got != tt.want {
			t.Errorf("Level(%d).String() = %q, want %q", int8(tt.l), got, tt.want)
		}
		if got := fmt.Sprint(tt.l); got != tt.want {
			t.Errorf("fmt.Sprint(Level(%d)) = %q, want %q", int8(tt.l), got, tt.want)
		}
	}
}

func TestLevelOrderAndValid(t *testing.T) {
	if !(LevelDebug < LevelInfo && LevelInfo < LevelReport && LevelReport < LevelWarn && LevelWarn < LevelError) {
		t.Fatal("levels are not ordered Debug < Info < Report < Warn < Error")
	}
	for l := Level(-3); l <= 8; l++ {
		want := l >= 1 && l <= 5
		if got := l.Valid(); got != want {
			t.Errorf("Level(%d).Valid() = %v, want %v", int8(l), got, want)
		}
	}
}

func TestParseLevel(t *testing.T) {
	for l := LevelDebug; l <= LevelError; l++ {
		for _, s := range []string{l.String(), strings.ToUpper(l.String()), " " + strings.ToUpper(l.String()[:1]) + l.String()[1:] + "\t"} {
			got, err := ParseLevel(s)
			if err != nil || got != l {
				t.Errorf("ParseLevel(%q) = %v, %v; want %v, nil", s, got, err, l)
			}
		}
	}
	for _, s := range []string{"", "unset", "trace", "warning", "level(3)", "3", "debugx", "in fo"} {
		got, err := ParseLevel(s)
		if !errors.Is(err, ErrInvalidLevel) {
			t.Errorf("ParseLevel(%q) error = %v, want one wrapping ErrInvalidLevel", s, err)
		}
		if got != 0 {
			t.Errorf("ParseLevel(%q) = %v, want the zero Level on error", s, got)
		}
		if err != nil && !strings.Contains(err.Error(), fmt.Sprintf("%q", s)) {
			t.Errorf("ParseLevel(%q) error %q does not quote the input", s, err)
		}
	}
}

func TestNewLoggerDefaults(t *testing.T) {
	h := newRecorder(slog.LevelDebug)
	base := slog.New(h)
	for _, tt := range []struct {
		in, want Level
	}{{0, LevelReport}, {-1, LevelReport}, {9, LevelReport}, {LevelDebug, LevelDebug}, {LevelError, LevelError}} {
		if got := NewLogger(base, "p", tt.in).Level(); got != tt.want {
			t.Errorf("NewLogger(level %d).Level() = %v, want %v", int8(tt.in), got, tt.want)
		}
	}

	// A nil base means slog.Default().
	old := slog.Default()
	t.Cleanup(func() { slog.SetDefault(old) })
	slog.SetDefault(base)
	NewLogger(nil, "dflt", LevelReport).Error(context.Background(), "boom")
	ln := onlyLine(t, h)
	checkAttrs(t, "default logger", ln.attrs, []slog.Attr{slog.String("pool", "dflt")})
}

func TestEnqueuedAttrs(t *testing.T) {
	h := newRecorder(slog.LevelDebug)
	l := NewLogger(slog.New(h), "emails", LevelInfo)
	ctx := context.Background()

	l.Enqueued(ctx, Enqueued{WorkID: 42, Fn: "send", Label: "welcome", RunAt: t0})
	ln := onlyLine(t, h)
	if ln.level != slog.LevelInfo || ln.msg != "enqueued" {
		t.Errorf("level, msg = %v, %q; want INFO, enqueued", ln.level, ln.msg)
	}
	checkAttrs(t, "enqueued", ln.attrs, []slog.Attr{
		slog.String("pool", "emails"),
		slog.String("event", "enqueued"),
		slog.Int64("work_id", 42),
		slog.String("fn", "send"),
		slog.String("label", "welcome"),
		slog.Time("run_at", t0),
	})

	l.Enqueued(ctx, Enqueued{WorkID: 7, Fn: "send", RunAt: t1})
	checkAttrs(t, "enqueued without label", onlyLine(t, h).attrs, []slog.Attr{
		slog.String("pool", "emails"),
		slog.String("event", "enqueued"),
		slog.Int64("work_id", 7),
		slog.String("fn", "send"),
		slog.Time("run_at", t1),
	})
}

func TestStartedAttrs(t *testing.T) {
	h := newRecorder(slog.LevelDebug)
	l := NewLogger(slog.New(h), "emails", LevelInfo)
	ctx := context.Background()

	l.Started(ctx, Started{WorkID: 42, Fn: "send", Label: "welcome", Attempt: 3, StartLag: 1500 * time.Microsecond})
	ln := onlyLine(t, h)
	if ln.level != slog.LevelInfo || ln.msg != "started" {
		t.Errorf("level, msg = %v, %q; want INFO, started", ln.level, ln.msg)
	}
	checkAttrs(t, "started", ln.attrs, []slog.Attr{
		slog.String("pool", "emails"),
		slog.String("event", "started"),
		slog.Int64("work_id", 42),
		slog.String("fn", "send"),
		slog.String("label", "welcome"),
		slog.Int("attempt", 3),
		slog.Float64("start_lag_ms", 1.5),
	})

	l.Started(ctx, Started{WorkID: 1, Fn: "f", Attempt: 1, StartLag: 2 * time.Second})
	checkAttrs(t, "started without label", onlyLine(t, h).attrs, []slog.Attr{
		slog.String("pool", "emails"),
		slog.String("event", "started"),
		slog.Int64("work_id", 1),
		slog.String("fn", "f"),
		slog.Int("attempt", 1),
		slog.Float64("start_lag_ms", 2000),
	})
}

func TestCompletedAttrs(t *testing.T) {
	h := newRecorder(slog.LevelDebug)
	l := NewLogger(slog.New(h), "emails", LevelDebug)
	ctx := context.Background()

	l.Completed(ctx, Completed{WorkID: 42, Fn: "send", Label: "welcome", Status: StatusRetrying,
		Attempts: 2, RunTime: 250 * time.Millisecond, Error: "smtp: timeout"})
	ln := onlyLine(t, h)
	if ln.level != slog.LevelInfo || ln.msg != "completed" {
		t.Errorf("level, msg = %v, %q; want INFO, completed", ln.level, ln.msg)
	}
	checkAttrs(t, "completed", ln.attrs, []slog.Attr{
		slog.String("pool", "emails"),
		slog.String("event", "completed"),
		slog.Int64("work_id", 42),
		slog.String("fn", "send"),
		slog.String("label", "welcome"),
		slog.String("status", "retrying"),
		slog.Int("attempts", 2),
		slog.Float64("run_time_ms", 250),
		slog.String("error", "smtp: timeout"),
	})

	l.Completed(ctx, Completed{WorkID: 43, Fn: "send", Status: StatusSuccess, Attempts: 1, RunTime: 10 * time.Microsecond})
	checkAttrs(t, "completed without label and error", onlyLine(t, h).attrs, []slog.Attr{
		slog.String("pool", "emails"),
		slog.String("event", "completed"),
		slog.Int64("work_id", 43),
		slog.String("fn", "send"),
		slog.String("status", "success"),
		slog.Int("attempts", 1),
		slog.Float64("run_time_ms", 0.01),
	})
}

func TestStatusValues(t *testing.T) {
	for s, want := range map[Status]string{
		StatusSuccess: "success", StatusFailed: "failed", StatusCanceled: "canceled", StatusRetrying: "retrying",
	} {
		if string(s) != want {
			t.Errorf("status %q, want %q", s, want)
		}
	}
}

func TestReportAttrs(t *testing.T) {
	h := newRecorder(slog.LevelDebug)
	l := NewLogger(slog.New(h), "emails", LevelReport)
	r := Report{
		IntervalStart: t0, IntervalEnd: t1,
		Completed: 21, Succeeded: 9, Failed: 1, Retries: 10, Canceled: 1,
		Running: 5, Backlog: 6, Future: 7, Unclaimed: 8, Finishing: 9,
		StartLag: Percentiles{P50: time.Millisecond, P95: 2500 * time.Microsecond, P99: 3 * time.Second},
		RunTime:  Percentiles{P50: 4 * time.Millisecond, P95: 5 * time.Millisecond, P99: 6 * time.Millisecond},
	}
	r.ComputeRates()
	l.Report(context.Background(), r)
	ln := onlyLine(t, h)
	if ln.level != slog.LevelInfo || ln.msg != "report" {
		t.Errorf("level, msg = %v, %q; want INFO, report", ln.level, ln.msg)
	}
	checkAttrs(t, "report", ln.attrs, []slog.Attr{
		slog.String("pool", "emails"),
		slog.String("event", "report"),
		slog.Int64("completed", 21),
		slog.Int64("succeeded", 9),
		slog.Int64("failed", 1),
		slog.Int64("retries", 10),
		slog.Int64("canceled", 1),
		slog.Int64("running", 5),
		slog.Int64("backlog", 6),
		slog.Int64("future", 7),
		slog.Int64("unclaimed", 8),
		slog.Int64("finishing", 9),
		slog.Float64("failure_rate", 0.5238),           // 11/21
		slog.Float64("permanent_failure_rate", 0.0909), // 1/11
		slog.Float64("start_lag_p50_ms", 1),
		slog.Float64("start_lag_p95_ms", 2.5),
		slog.Float64("start_lag_p99_ms", 3000),
		slog.Float64("run_time_p50_ms", 4),
		slog.Float64("run_time_p95_ms", 5),
		slog.Float64("run_time_p99_ms", 6),
		slog.Time("interval_start", t0),
		slog.Time("interval_end", t1),
	})
}

// logAll logs one line of every kind through l.
func logAll(l *Logger) {
	ctx := context.Background()
	l.Debug(ctx, "debug msg", "k", 1)
	l.Enqueued(ctx, Enqueued{WorkID: 1, Fn: "f", RunAt: t0})
	l.Started(ctx, Started{WorkID: 1, Fn: "f", Attempt: 1})
	l.Completed(ctx, Completed{WorkID: 1, Fn: "f", Status: StatusSuccess, Attempts: 1})
	l.Report(ctx, Report{IntervalStart: t0, IntervalEnd: t1})
	l.Warn(ctx, "warn msg", "k", 2)
	l.Error(ctx, "error msg", "k", 3)
}

func messages(lines []line) []string {
	var ms []string
	for _, ln := range lines {
		ms = append(ms, ln.msg)
	}
	return ms
}

func TestLevelFiltering(t *testing.T) {
	all := []string{"debug msg", "enqueued", "started", "completed", "report", "warn msg", "error msg"}
	tests := []struct {
		level Level
		want  []string
	}{
		{LevelDebug, all},
		{LevelInfo, all[1:]},
		{LevelReport, []string{"report", "warn msg", "error msg"}},
		{LevelWarn, []string{"warn msg", "error msg"}},
		{LevelError, []string{"error msg"}},
	}
	for _, tt := range tests {
		t.Run(tt.level.String(), func(t *testing.T) {
			h := newRecorder(slog.LevelDebug)
			l := NewLogger(slog.New(h), "p", tt.level)
			logAll(l)
			if got := messages(h.take()); !slices.Equal(got, tt.want) {
				t.Errorf("printed %v, want %v", got, tt.want)
			}
			if got, want := l.EventsEnabled(), tt.level <= LevelInfo; got != want {
				t.Errorf("EventsEnabled() = %v, want %v", got, want)
			}
		})
	}
}

func TestDebugWarnErrorLines(t *testing.T) {
	h := newRecorder(slog.LevelDebug)
	l := NewLogger(slog.New(h), "p", LevelDebug)
	l.Debug(context.Background(), "d", "a", 1, slog.String("b", "x"))
	l.Warn(context.Background(), "w", "c", true)
	//lint:ignore SA1012 a nil context must be tolerated, as slog does.
	l.Error(nil, "e", "err", "bad")
	lines := h.take()
	if len(lines) != 3 {
		t.Fatalf("got %d lines, want 3", len(lines))
	}
	wantLevels := []slog.Level{slog.LevelDebug, slog.LevelWarn, slog.LevelError}
	for i, ln := range lines {
		if ln.level != wantLevels[i] {
			t.Errorf("line %d level = %v, want %v", i, ln.level, wantLevels[i])
		}
	}
	checkAttrs(t, "debug", lines[0].attrs, []slog.Attr{slog.String("pool", "p"), slog.Int("a", 1), slog.String("b", "x")})
	checkAttrs(t, "warn", lines[1].attrs, []slog.Attr{slog.String("pool", "p"), slog.Bool("c", true)})
	checkAttrs(t, "error", lines[2].attrs, []slog.Attr{slog.String("pool", "p"), slog.String("err", "bad")})
}

func TestSetLevelAtRuntime(t *testing.T) {
	h := newRecorder(slog.LevelDebug)
	l := NewLogger(slog.New(h), "p", LevelReport)

	logAll(l)
	if got, want := messages(h.take()), []string{"report", "warn msg", "error msg"}; !slices.Equal(got, want) {
		t.Fatalf("at report: %v, want %v", got, want)
	}

	l.SetLevel(LevelInfo)
	if l.Level() != LevelInfo {
		t.Fatalf("Level() = %v after SetLevel(info)", l.Level())
	}
	logAll(l)
	if got, want := messages(h.take()), []string{"enqueued", "started", "completed", "report", "warn msg", "error msg"}; !slices.Equal(got, want) {
		t.Fatalf("at info: %v, want %v", got, want)
	}

	// Invalid levels, including unset, are ignored.
	for _, bad := range []Level{0, -1, 6} {
		l.SetLevel(bad)
		if l.Level() != LevelInfo {
			t.Fatalf("SetLevel(%d) changed the level to %v", int8(bad), l.Level())
		}
	}

	l.SetLevel(LevelError)
	logAll(l)
	if got, want := messages(h.take()), []string{"error msg"}; !slices.Equal(got, want) {
		t.Fatalf("at error: %v, want %v", got, want)
	}
}

func TestSetLevelConcurrent(t *testing.T) {
	h := newRecorder(slog.LevelDebug)
	l := NewLogger(slog.New(h), "p", LevelReport)
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Go(func() {
			for j := range 200 {
				l.SetLevel(Level(1 + (i+j)%5))
				logAll(l)
			}
		})
	}
	wg.Wait()
	if !l.Level().Valid() {
		t.Fatalf("Level() = %v", l.Level())
	}
}

func TestBaseHandlerEnabledRespected(t *testing.T) {
	// The pool level allows everything, but the base handler only accepts
	// warnings and above: nothing below reaches Handle.
	h := newRecorder(slog.LevelWarn)
	l := NewLogger(slog.New(h), "p", LevelDebug)
	logAll(l)
	if got, want := messages(h.take()), []string{"warn msg", "error msg"}; !slices.Equal(got, want) {
		t.Fatalf("printed %v, want %v", got, want)
	}
	if got := h.handleCalls(); got != 2 {
		t.Fatalf("Handle called %d times, want 2", got)
	}
}

func TestDisabledLinesDoNotAllocate(t *testing.T) {
	h := newRecorder(slog.LevelDebug)
	l := NewLogger(slog.New(h), "p", LevelError)
	ctx := context.Background()
	allocs := testing.AllocsPerRun(100, func() {
		l.Enqueued(ctx, Enqueued{WorkID: 1, Fn: "f", Label: "x", RunAt: t0})
		l.Started(ctx, Started{WorkID: 1, Fn: "f", Attempt: 1})
		l.Completed(ctx, Completed{WorkID: 1, Fn: "f", Status: StatusFailed, Error: "e"})
		l.Report(ctx, Report{Completed: 1})
		l.Debug(ctx, "d")
		l.Warn(ctx, "w")
	})
	if allocs != 0 {
		t.Errorf("filtered lines allocated %v times per run, want 0", allocs)
	}
	if h.handleCalls() != 0 {
		t.Errorf("Handle called %d times, want 0", h.handleCalls())
	}
}

func TestSourceIsCaller(t *testing.T) {
	h := newRecorder(slog.LevelDebug)
	l := NewLogger(slog.New(h), "p", LevelDebug)
	logAll(l)
	lines := h.take()
	if len(lines) != 7 {
		t.Fatalf("got %d lines, want 7", len(lines))
	}
	for _, ln := range lines {
		if ln.file != "stats_test.go" {
			t.Errorf("%q attributed to %q, want stats_test.go", ln.msg, ln.file)
		}
	}
}

func TestJSONOutput(t *testing.T) {
	var buf bytes.Buffer
	l := NewLogger(slog.New(slog.NewJSONHandler(&buf, nil)), "emails", LevelInfo)
	l.Completed(context.Background(), Completed{WorkID: 5, Fn: "send", Status: StatusFailed, Attempts: 3, RunTime: 1234567 * time.Nanosecond, Error: "boom"})
	var got map[string]any
	if err := json.Unmarshal(buf.Bytes(), &got); err != nil {
		t.Fatalf("decoding %q: %v", buf.String(), err)
	}
	delete(got, "time")
	want := map[string]any{
		"level": "INFO", "msg": "completed", "pool": "emails", "event": "completed",
		"work_id": 5.0, "fn": "send", "status": "failed", "attempts": 3.0, "run_time_ms": 1.234567, "error": "boom",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("JSON line\n got  %v\n want %v", got, want)
	}
}

func TestComputeRates(t *testing.T) {
	tests := []struct {
		name                       string
		completed, failed, retries int64
		rate, permanent            float64
	}{
		{"zero completed", 0, 0, 0, 0, 0},
		{"zero completed with stray counts", 0, 2, 3, 0, 0},
		{"all retries", 5, 0, 5, 1, 0},
		{"all permanent failures", 4, 4, 0, 1, 1},
		{"mixed", 21, 0, 10, 0.4762, 0},
		{"mixed with failures", 21, 1, 10, 0.5238, 0.0909},
		{"one third", 3, 1, 0, 0.3333, 0.3333},
		{"two thirds", 3, 2, 0, 0.6667, 0.6667},
		{"all succeeded", 100, 0, 0, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := Report{Completed: tt.completed, Failed: tt.failed, Retries: tt.retries,
				FailureRate: 99, PermanentFailureRate: 99} // stale values must be overwritten
			r.ComputeRates()
			if r.FailureRate != tt.rate || r.PermanentFailureRate != tt.permanent {
				t.Errorf("rates = %v, %v; want %v, %v", r.FailureRate, r.PermanentFailureRate, tt.rate, tt.permanent)
			}
		})
	}
}

func TestPercentilesNearestRank(t *testing.T) {
	s := NewSampler(0)
	if got := s.Percentiles(); got != (Percentiles{}) {
		t.Errorf("empty: %v, want zero", got)
	}
	// Added in a scrambled order to prove the samples are sorted.
	for i := range 100 {
		s.Add(time.Duration((i*37)%100+1) * time.Millisecond)
	}
	want := Percentiles{P50: 50 * time.Millisecond, P95: 95 * time.Millisecond, P99: 99 * time.Millisecond}
	if got := s.Percentiles(); got != want {
		t.Errorf("1..100 ms: %v, want %v", got, want)
	}
	if s.Count() != 100 {
		t.Errorf("Count() = %d, want 100", s.Count())
	}

	s.Reset()
	if s.Count() != 0 || s.Percentiles() != (Percentiles{}) {
		t.Errorf("after Reset: count %d, percentiles %v", s.Count(), s.Percentiles())
	}
	s.Add(7 * time.Second)
	want = Percentiles{P50: 7 * time.Second, P95: 7 * time.Second, P99: 7 * time.Second}
	if got := s.Percentiles(); got != want {
		t.Errorf("single sample: %v, want %v", got, want)
	}

	// Ten samples 1..10: ranks ceil(5)=5, ceil(9.5)=10, ceil(9.9)=10.
	s.Reset()
	for i := 10; i >= 1; i-- {
		s.Add(time.Duration(i))
	}
	if got, want := s.Percentiles(), (Percentiles{P50: 5, P95: 10, P99: 10}); got != want {
		t.Errorf("1..10: %v, want %v", got, want)
	}
}

func TestNearestRankMatchesFormula(t *testing.T) {
	for n := 1; n <= 1000; n++ {
		sorted := make([]time.Duration, n)
		for i := range sorted {
			sorted[i] = time.Duration(i)
		}
		for _, p := range []int{50, 95, 99} {
			// ceil on exact rationals: p*n/100 rounded up.
			want := sorted[int(math.Ceil(float64(p*n)/100))-1]
			if got := nearestRank(sorted, p); got != want {
				t.Fatalf("n=%d p=%d: %v, want %v", n, p, got, want)
			}
		}
	}
}

func TestReservoir(t *testing.T) {
	const capacity = 1000
	const total = 100_000
	s := NewSampler(capacity)
	for i := range total {
		s.Add(time.Duration(i))
	}
	if s.Count() != total {
		t.Errorf("Count() = %d, want %d", s.Count(), total)
	}
	s.mu.Lock()
	kept := len(s.samples)
	var sum float64
	for _, d := range s.samples {
		sum += float64(d)
	}
	s.mu.Unlock()
	if kept != capacity {
		t.Fatalf("kept %d samples, want %d", kept, capacity)
	}
	// A uniform sample of 0..99999 has mean 49999.5 with a standard error
	// of about 913 for 1000 samples; 6 standard errors never fail in practice
	// but catch a reservoir that keeps only the first or last values.
	if mean := sum / capacity; math.Abs(mean-49999.5) > 5500 {
		t.Errorf("mean of kept samples = %.0f, want about 50000", mean)
	}
	p := s.Percentiles()
	if p.P50 < 40_000 || p.P50 > 60_000 || p.P99 < 95_000 {
		t.Errorf("percentiles of a uniform 0..99999 sample = %v", p)
	}

	s.Reset()
	if s.Count() != 0 || s.Percentiles() != (Percentiles{}) {
		t.Errorf("after Reset: count %d, percentiles %v", s.Count(), s.Percentiles())
	}
	s.Add(3)
	if s.Count() != 1 || s.Percentiles().P50 != 3 {
		t.Errorf("after Reset and Add: count %d, percentiles %v", s.Count(), s.Percentiles())
	}
}

func TestZeroSamplerUsesDefaultCapacity(t *testing.T) {
	var s Sampler
	for i := range SamplerCapacityDefault + 10 {
		s.Add(time.Duration(i))
	}
	if s.Count() != SamplerCapacityDefault+10 {
		t.Errorf("Count() = %d", s.Count())
	}
	if len(s.samples) != SamplerCapacityDefault {
		t.Errorf("kept %d, want %d", len(s.samples), SamplerCapacityDefault)
	}
	if n := len(NewSampler(-5).samples); n != 0 {
		t.Errorf("NewSampler reserved %d samples up front", n)
	}
}

func TestSamplerConcurrent(t *testing.T) {
	const goroutines, each, capacity = 8, 2000, 500
	s := NewSampler(capacity)
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			for i := range each {
				s.Add(time.Duration(g*each + i))
				if i%100 == 0 {
					_ = s.Percentiles()
					_ = s.Count()
				}
			}
		})
	}
	wg.Wait()
	if got := s.Count(); got != goroutines*each {
		t.Errorf("Count() = %d, want %d", got, goroutines*each)
	}
	if got := len(s.samples); got != capacity {
		t.Errorf("kept %d, want %d", got, capacity)
	}
}

func BenchmarkDisabledEvent(b *testing.B) {
	l := NewLogger(slog.New(newRecorder(slog.LevelDebug)), "p", LevelReport)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		l.Completed(ctx, Completed{WorkID: 1, Fn: "f", Status: StatusSuccess})
	}
}

func BenchmarkSamplerAdd(b *testing.B) {
	s := NewSampler(1000)
	b.ReportAllocs()
	var i time.Duration
	for b.Loop() {
		i++
		s.Add(i)
	}
}
