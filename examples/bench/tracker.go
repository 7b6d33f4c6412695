package main

import (
	"context"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// jobArgs is the payload of every benchmark job, for both systems.
type jobArgs struct {
	// I numbers the job within a batch (0..n-1); -1 for jobs that are not
	// tracked one by one (steady, latency).
	I int `json:"i"`
	// T is the wall-clock time (Unix nanoseconds) taken right before the
	// enqueue call, for latency mode.
	T int64 `json:"t,omitempty"`
	// F marks the future-scheduled rows of backlog mode: they must never run
	// during the benchmark.
	F bool `json:"f,omitempty"`
}

// Kind is River's job kind.
func (jobArgs) Kind() string { return "bench_noop" }

// tracker is what the handlers of both systems report to: it counts
// completions, catches duplicate runs, records latencies and sleeps when a
// mode asks for it.
type tracker struct {
	sleep time.Duration

	target    int64 // completions that close done; 0: never
	completed atomic.Int64
	lastAt    atomic.Int64 // Unix nanoseconds of the latest completion
	firstAt   atomic.Int64 // Unix nanoseconds of the first handler start
	done      chan struct{}
	doneOnce  sync.Once

	// runs counts executions per job index, to catch duplicates.
	runs       []atomic.Int32
	duplicates atomic.Int64
	unexpected atomic.Int64 // future rows or indexes out of range that ran

	// window counts completions whose time falls in [winFrom, winTo).
	winFrom, winTo atomic.Int64
	window         atomic.Int64

	recordLatency bool
	latMu         sync.Mutex
	latencies     []time.Duration
}

func newTracker(n int, sleep time.Duration) *tracker {
	t := &tracker{sleep: sleep, target: int64(n), done: make(chan struct{})}
	if n > 0 {
		t.runs = make([]atomic.Int32, n)
	}
	return t
}

// handle is the body of the benchmark job in both systems.
func (t *tracker) handle(ctx context.Context, a jobArgs) error {
	now := time.Now()
	t.firstAt.CompareAndSwap(0, now.UnixNano())
	if t.recordLatency && a.T != 0 {
		d := now.Sub(time.Unix(0, a.T))
		t.latMu.Lock()
		t.latencies = append(t.latencies, d)
		t.latMu.Unlock()
	}
	if a.F {
		t.unexpected.Add(1)
	}
	if t.sleep > 0 {
		timer := time.NewTimer(t.sleep)
		select {
		case <-timer.C:
		case <-ctx.Done():
			timer.Stop()
			return ctx.Err()
		}
		now = time.Now()
	}
	if a.I >= 0 && t.runs != nil {
		if a.I >= len(t.runs) {
			t.unexpected.Add(1)
		} else if t.runs[a.I].Add(1) > 1 {
			t.duplicates.Add(1)
			return nil // count each job once
		}
	}
	ns := now.UnixNano()
	if from, to := t.winFrom.Load(), t.winTo.Load(); from != 0 && ns >= from && ns < to {
		t.window.Add(1)
	}
	for {
		last := t.lastAt.Load()
		if ns <= last || t.lastAt.CompareAndSwap(last, ns) {
			break
		}
	}
	if c := t.completed.Add(1); t.target > 0 && c >= t.target {
		t.doneOnce.Do(func() { close(t.done) })
	}
	return nil
}

// wait blocks until target completions, ctx's end or timeout.
func (t *tracker) wait(ctx context.Context, timeout time.Duration) bool {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-t.done:
		return true
	case <-timer.C:
		return false
	case <-ctx.Done():
		return false
	}
}

// percentiles returns the given quantiles (0..1) of the recorded latencies,
// nearest-rank, and how many there are.
func (t *tracker) percentiles(qs ...float64) ([]time.Duration, int) {
	t.latMu.Lock()
	l := append([]time.Duration(nil), t.latencies...)
	t.latMu.Unlock()
	sort.Slice(l, func(i, j int) bool { return l[i] < l[j] })
	out := make([]time.Duration, len(qs))
	if len(l) == 0 {
		return out, 0
	}
	for i, q := range qs {
		k := int(q*float64(len(l))+0.999999) - 1
		k = min(max(k, 0), len(l)-1)
		out[i] = l[k]
	}
	return out, len(l)
}
