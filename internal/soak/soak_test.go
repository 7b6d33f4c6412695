//go:build soak

package soak_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/uptrace/bun"

	"github.com/pgworkpool/pgworkpool/internal/pgtest"
	"github.com/pgworkpool/pgworkpool/migrations"
	"github.com/pgworkpool/pgworkpool/workpool"
)

func TestMain(m *testing.M) { pgtest.Main(m, pgtest.Options{}) }

// tables are our tables whose size the soak reports and watches.
var tables = []string{"work", "pending_start", "pending_completion", "pending_cancelation", "running",
	"internal_state", "run_status", "config", "workers"}

type sample struct {
	at         time.Duration
	heap       uint64 // HeapInuse after a GC
	goroutines int
	rows       map[string]int64
	bytes      map[string]int64
}

// warnCounter counts the records it prints (Warn and above). Without
// faults, a warning is a bug: a result dropped as stale, a claim released
// as stranded, a retried write.
type warnCounter struct {
	slog.Handler
	warnings *atomic.Int64
}

func (h warnCounter) Handle(ctx context.Context, r slog.Record) error {
	h.warnings.Add(1)
	return h.Handler.Handle(ctx, r)
}

func (h warnCounter) WithAttrs(a []slog.Attr) slog.Handler {
	return warnCounter{h.Handler.WithAttrs(a), h.warnings}
}

func (h warnCounter) WithGroup(g string) slog.Handler {
	return warnCounter{h.Handler.WithGroup(g), h.warnings}
}

func envDuration(t *testing.T, name string, def time.Duration) time.Duration {
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		t.Fatalf("%s=%q: want a positive duration", name, s)
	}
	return d
}

func TestSoak(t *testing.T) {
	duration := envDuration(t, "SOAK_DURATION", 10*time.Minute)
	rate := 200
	if s := os.Getenv("SOAK_RATE"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 1 {
			t.Fatalf("SOAK_RATE=%q: want a positive number", s)
		}
		rate = v
	}
	interval := min(10*time.Second, max(time.Second, duration/12))
	ctx := context.Background()
	db, schema := pgtest.NewSchema(t)
	if _, err := migrations.Migrate(ctx, db, migrations.WithSchema(schema)); err != nil {
		t.Fatal(err)
	}
	if _, err := db.ExecContext(ctx, "CREATE TABLE "+schema+".soak_done (work_id bigint PRIMARY KEY, status text NOT NULL)"); err != nil {
		t.Fatal(err)
	}
	var logWarnings atomic.Int64
	logger := slog.New(warnCounter{slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}), &logWarnings})

	// Two Pool values of one pool: like two processes, each with its own
	// driver, workers and heartbeat; one leads the loop.
	var pools []*workpool.Pool
	var fns []*workpool.Func[int, int]
	var dones []*workpool.OnCompleteHandler[string, int]
	var failedOnce sync.Map // item -> true once its first attempt failed
	for range 2 {
		p, err := workpool.New(db, workpool.Config{Name: "soak", Schema: schema, MaxParallelism: 20, Workers: 16,
			RetryByDefault: true, DefaultRetry: workpool.RetryBehavior{MaxAttempts: 3, InitialBackoff: 20 * time.Millisecond, Base: 2},
			Logger: logger})
		if err != nil {
			t.Fatal(err)
		}
		fn, err := workpool.Register(p, "soak.work", func(ctx context.Context, n int) (int, error) {
			select {
			case <-time.After(time.Duration(n%11) * time.Millisecond):
			case <-ctx.Done():
				return 0, ctx.Err()
			}
			switch {
			case n%50 == 7:
				return 0, workpool.NonRetryable(errors.New("planned non-retryable failure"))
			case n%10 == 3:
				if _, loaded := failedOnce.LoadOrStore(n, true); !loaded {
					return 0, errors.New("planned failure of the first attempt")
				}
				failedOnce.Delete(n) // keeps the test's own memory flat
			}
			return n, nil
		})
		if err != nil {
			t.Fatal(err)
		}
		done, err := workpool.RegisterOnComplete(p, "soak.done", func(ctx context.Context, tx bun.Tx, c workpool.Completion[string, int]) error {
			_, err := tx.ExecContext(ctx, "INSERT INTO "+schema+".soak_done (work_id, status) VALUES (?, ?)", int64(c.WorkID), string(c.Status))
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := p.Start(ctx); err != nil {
			t.Fatal(err)
		}
		pools, fns, dones = append(pools, p), append(fns, fn), append(dones, done)
	}
	t.Cleanup(func() {
		for _, p := range pools {
			stopCtx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			_ = p.Stop(stopCtx)
			cancel()
		}
	})

	measure := func(at time.Duration) sample {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		s := sample{at: at, heap: ms.HeapInuse, goroutines: runtime.NumGoroutine(), rows: map[string]int64{}, bytes: map[string]int64{}}
		for _, tb := range tables {
			var rows, bytes int64
			if err := db.DB.QueryRowContext(ctx, fmt.Sprintf("SELECT count(*), pg_total_relation_size('%s.%s') FROM %s.%s", schema, tb, schema, tb)).
				Scan(&rows, &bytes); err != nil {
				t.Fatal(err)
			}
			s.rows[tb], s.bytes[tb] = rows, bytes
		}
		return s
	}
	before := measure(0)

	// Producers: the enqueue mix, paced by one ticker shared by all.
	// Only counts: lists of ids would grow the heap this test watches.
	var (
		mu               sync.Mutex
		enqueueErr       error
		next             atomic.Int64
		enqueued, withOC atomic.Int64
	)
	record := func(got []workpool.WorkID, oc bool, err error) {
		if err != nil {
			mu.Lock()
			defer mu.Unlock()
			if enqueueErr == nil {
				enqueueErr = err
			}
			return
		}
		enqueued.Add(int64(len(got)))
		if oc {
			withOC.Add(int64(len(got)))
		}
	}
	loadCtx, stopLoad := context.WithTimeout(ctx, duration)
	defer stopLoad()
	ticks := make(chan struct{})
	go func() {
		defer close(ticks)
		tk := time.NewTicker(time.Second / time.Duration(rate))
		defer tk.Stop()
		for {
			select {
			case <-loadCtx.Done():
				return
			case <-tk.C:
				select {
				case ticks <- struct{}{}:
				default: // producers are behind: skip rather than burst
				}
			}
		}
	}()
	var producers sync.WaitGroup
	for w := range 4 {
		producers.Add(1)
		go func() {
			defer producers.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 99))
			i := 0
			for range ticks {
				i++
				which := w % len(pools)
				p, fn, done := pools[which], fns[which], dones[which]
				n := int(next.Add(1))
				var opts []workpool.Option
				oc := rng.IntN(100) < 30
				if oc {
					opts = append(opts, workpool.OnComplete(done, "soak"))
				}
				if rng.IntN(100) < 5 {
					opts = append(opts, workpool.RunAfter(time.Duration(1+rng.IntN(5))*time.Second))
				}
				if i%200 == 0 { // now and then a batch of 50
					args := make([]int, 50)
					for k := range args {
						args[k] = int(next.Add(1))
					}
					got, err := p.EnqueueBatch(ctx, fn, args, opts...)
					record(got, oc, err)
					continue
				}
				id, err := p.Enqueue(ctx, fn, n, opts...)
				record([]workpool.WorkID{id}, oc, err)
				if err == nil && rng.IntN(100) < 3 {
					if err := p.Cancel(ctx, id); err != nil {
						record(nil, false, fmt.Errorf("cancel %d: %w", id, err))
					}
				}
			}
		}()
	}

	// Sample while the load runs.
	var samples []sample
	start := time.Now()
	tick := time.NewTicker(interval)
sampling:
	for {
		select {
		case <-loadCtx.Done():
			break sampling
		case <-tick.C:
			s := measure(time.Since(start))
			samples = append(samples, s)
			t.Logf("%6s heap %6.1f MiB goroutines %4d enqueued %7d work %5d pending_start %5d pending_completion %4d running %3d",
				s.at.Round(time.Second), float64(s.heap)/(1<<20), s.goroutines, enqueued.Load(), s.rows["work"],
				s.rows["pending_start"], s.rows["pending_completion"], s.rows["running"])
		}
	}
	tick.Stop()
	producers.Wait()
	if enqueueErr != nil {
		t.Fatalf("enqueue: %v", enqueueErr)
	}

	// Drain: everything ends, then the pending tables are empty.
	drainStart := time.Now()
	lastLog := drainStart
	for {
		var left int64
		var detail string
		if err := db.DB.QueryRowContext(ctx, fmt.Sprintf(`SELECT a + b + c + d + e, format('work %%s (finishing %%s), pending_start %%s (due %%s), pending_completion %%s, pending_cancelation %%s, running %%s', a, f, b, g, c, d, e)
  FROM (SELECT (SELECT count(*) FROM %[1]s.work) a, (SELECT count(*) FROM %[1]s.pending_start) b,
               (SELECT count(*) FROM %[1]s.pending_completion) c, (SELECT count(*) FROM %[1]s.pending_cancelation) d,
               (SELECT count(*) FROM %[1]s.running) e, (SELECT count(*) FROM %[1]s.work WHERE result IS NOT NULL) f,
               (SELECT count(*) FROM %[1]s.pending_start WHERE segment <= floor(extract(epoch FROM now()) * 10)::bigint) g) x`, schema)).
			Scan(&left, &detail); err != nil {
			t.Fatal(err)
		}
		if left == 0 {
			break
		}
		if time.Since(lastLog) > time.Second {
			t.Logf("draining: %s", detail)
			lastLog = time.Now()
		}
		if time.Since(drainStart) > 2*time.Minute {
			t.Fatalf("%d rows left in work and the pending tables 2 minutes after the load stopped", left)
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("drained %v after the load stopped", time.Since(drainStart).Round(time.Millisecond))
	after := measure(time.Since(start))

	// The work table is empty, so every item reached its terminal state
	// (a work row lives until then). Every onComplete committed exactly
	// once: the primary key of soak_done refuses a second.
	var doneRows int64
	if err := db.DB.QueryRowContext(ctx, "SELECT count(*) FROM "+schema+".soak_done").Scan(&doneRows); err != nil {
		t.Fatal(err)
	}
	if doneRows != withOC.Load() {
		t.Errorf("%d onComplete rows for %d items enqueued with OnComplete", doneRows, withOC.Load())
	}

	var b strings.Builder
	fmt.Fprintf(&b, "%-20s %12s %12s %14s %14s\n", "table", "rows before", "rows after", "bytes before", "bytes after")
	for _, tb := range tables {
		fmt.Fprintf(&b, "%-20s %12d %12d %14d %14d\n", tb, before.rows[tb], after.rows[tb], before.bytes[tb], after.bytes[tb])
	}
	t.Logf("%d items enqueued (%d with OnComplete) in %v; table sizes:\n%s", enqueued.Load(), withOC.Load(), duration, b.String())

	checkFlat(t, samples)
	if n := logWarnings.Load(); n > 0 {
		t.Errorf("the pools logged %d warnings or errors (see above)", n)
	}
}

// checkFlat compares the end of the run with its beginning, after a
// warm-up of a fifth of the samples (connection pools, handler goroutines
// and the runtime's own caches grow to their working size first).
func checkFlat(t *testing.T, samples []sample) {
	t.Helper()
	if len(samples) < 6 {
		t.Fatalf("%d samples: run longer (SOAK_DURATION)", len(samples))
	}
	rest := samples[len(samples)/5:]
	third := len(rest) / 3
	first, last := rest[:third], rest[len(rest)-third:]
	median := func(ss []sample, f func(sample) float64) float64 {
		v := make([]float64, len(ss))
		for i, s := range ss {
			v[i] = f(s)
		}
		slices.Sort(v)
		return v[len(v)/2]
	}
	heap := func(s sample) float64 { return float64(s.heap) }
	backlog := func(s sample) float64 { return float64(s.rows["work"]) }
	base := rest[0].goroutines
	peak := 0
	for _, s := range rest {
		peak = max(peak, s.goroutines)
	}
	h0, h1 := median(first, heap), median(last, heap)
	w0, w1 := median(first, backlog), median(last, backlog)
	t.Logf("goroutines: %d after warm-up, peak %d; heap median %.1f -> %.1f MiB; work rows median %.0f -> %.0f",
		base, peak, h0/(1<<20), h1/(1<<20), w0, w1)
	// Slack: a handler goroutine replaced by the watchdog, a timer or a
	// connection goroutine of database/sql may come and go.
	if peak-base > 20 {
		t.Errorf("goroutines grew from %d to %d", base, peak)
	}
	if h1 > 1.5*h0+8<<20 {
		t.Errorf("heap grew: median %.1f MiB at the start, %.1f MiB at the end", h0/(1<<20), h1/(1<<20))
	}
	if w1 > 2*w0+500 {
		t.Errorf("the backlog grew: median %.0f work rows at the start, %.0f at the end", w0, w1)
	}
}
