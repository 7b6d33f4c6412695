package workpool_test

import (
	"context"
	"log/slog"
	"slices"
	"sync"
	"time"
)

// slogCapture records every log record a pool emits, with all its
// attributes (those added by WithAttrs included), in the order the handler
// received them. It is safe for concurrent use.
type slogCapture struct {
	mu   sync.Mutex
	recs []slogRec
}

type slogRec struct {
	Seq   int
	Time  time.Time
	Level slog.Level
	Msg   string
	Attrs map[string]slog.Value
	Keys  []string // attribute keys in order, to spot duplicates
}

func (r slogRec) str(key string) string {
	if !r.has(key) {
		return ""
	}
	return r.Attrs[key].String()
}
func (r slogRec) int(key string) int64 { return r.Attrs[key].Int64() }
func (r slogRec) f64(key string) float64 {
	return r.Attrs[key].Float64()
}
func (r slogRec) has(key string) bool { _, ok := r.Attrs[key]; return ok }

func (c *slogCapture) logger() *slog.Logger { return slog.New(&slogCaptureHandler{c: c}) }

// all returns a copy of every record so far.
func (c *slogCapture) all() []slogRec {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.recs)
}

// msgs returns the records whose message is one of names, in order.
func (c *slogCapture) msgs(names ...string) []slogRec {
	var out []slogRec
	for _, r := range c.all() {
		if slices.Contains(names, r.Msg) {
			out = append(out, r)
		}
	}
	return out
}

func (c *slogCapture) count(name string) int { return len(c.msgs(name)) }

type slogCaptureHandler struct {
	c      *slogCapture
	attrs  []slog.Attr
	prefix string
}

func (h *slogCaptureHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h *slogCaptureHandler) Handle(_ context.Context, r slog.Record) error {
	rec := slogRec{Time: r.Time, Level: r.Level, Msg: r.Message, Attrs: map[string]slog.Value{}}
	add := func(prefix string, a slog.Attr) {
		rec.Attrs[prefix+a.Key] = a.Value.Resolve()
		rec.Keys = append(rec.Keys, prefix+a.Key)
	}
	for _, a := range h.attrs {
		add("", a) // already prefixed by WithAttrs
	}
	r.Attrs(func(a slog.Attr) bool {
		add(h.prefix, a)
		return true
	})
	h.c.mu.Lock()
	rec.Seq = len(h.c.recs)
	h.c.recs = append(h.c.recs, rec)
	h.c.mu.Unlock()
	return nil
}

func (h *slogCaptureHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	n := &slogCaptureHandler{c: h.c, prefix: h.prefix, attrs: slices.Clone(h.attrs)}
	for _, a := range attrs {
		a.Key = h.prefix + a.Key
		n.attrs = append(n.attrs, a)
	}
	return n
}

func (h *slogCaptureHandler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	return &slogCaptureHandler{c: h.c, attrs: h.attrs, prefix: h.prefix + name + "."}
}
