package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
)

// logSink collects the warnings and errors that the systems log, so that a
// benchmark run does not hide them: the first few are printed to out as they
// come, all are counted per system and reported at the end.
type logSink struct {
	out   io.Writer
	limit int

	mu     sync.Mutex
	counts map[string]int
}

func newLogSink(out io.Writer, limit int) *logSink {
	return &logSink{out: out, limit: limit, counts: map[string]int{}}
}

// handler returns a slog handler for one system.
func (l *logSink) handler(system string) slog.Handler {
	return &sinkHandler{sink: l, system: system}
}

// count returns how many warnings and errors system logged.
func (l *logSink) count(system string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.counts[system]
}

func (l *logSink) record(system string, r slog.Record, attrs []slog.Attr) {
	l.mu.Lock()
	l.counts[system]++
	n := l.counts[system]
	l.mu.Unlock()
	if n > l.limit {
		return
	}
	var b strings.Builder
	fmt.Fprintf(&b, "[%s log] %s %s", system, r.Level, r.Message)
	for _, a := range attrs {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
	}
	r.Attrs(func(a slog.Attr) bool {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
		return true
	})
	if n == l.limit {
		b.WriteString(" (further log lines of this system are only counted)")
	}
	l.mu.Lock()
	fmt.Fprintln(l.out, b.String())
	l.mu.Unlock()
}

type sinkHandler struct {
	sink   *logSink
	system string
	attrs  []slog.Attr
}

func (h *sinkHandler) Enabled(_ context.Context, level slog.Level) bool {
	return level >= slog.LevelWarn
}

func (h *sinkHandler) Handle(_ context.Context, r slog.Record) error {
	h.sink.record(h.system, r, h.attrs)
	return nil
}

func (h *sinkHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &sinkHandler{sink: h.sink, system: h.system, attrs: append(append([]slog.Attr(nil), h.attrs...), attrs...)}
}

// WithGroup flattens groups: the sink only prints key=value pairs.
func (h *sinkHandler) WithGroup(string) slog.Handler { return h }
