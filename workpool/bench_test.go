package workpool_test

import (
	"context"
	"log/slog"
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

// Benchmarks of the public API on the test server (make bench runs them
// with fsync on). Each run of a benchmark function gets a fresh schema.

// benchNum is the benchmarks' argument type.
type benchNum struct{ N int }

// benchLogs keeps what the pool logs at Warn and above.
type benchLogs struct {
	mu    sync.Mutex
	lines []string
}

func (l *benchLogs) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, strings.TrimSpace(string(p)))
	return len(p), nil
}

// check fails the benchmark on errors the pool logged and shows warnings.
func (l *benchLogs) check(b *testing.B) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, s := range l.lines {
		if strings.Contains(s, "level=ERROR") {
			b.Error(s)
		} else {
			b.Log(s)
		}
	}
}

type benchEnv struct {
	db     *bun.DB
	schema string
	logs   *benchLogs
}

func newBenchEnv(b *testing.B) *benchEnv {
	b.Helper()
	db, schema := pgtest.NewSchema(b)
	if _, err := migrations.Migrate(context.Background(), db, migrations.WithSchema(schema)); err != nil {
		b.Fatal(err)
	}
	return &benchEnv{db: db, schema: schema, logs: &benchLogs{}}
}

// pool returns a pool with a no-op function that calls done (if set).
func (e *benchEnv) pool(b *testing.B, maxParallelism int, done func()) (*workpool.Pool, *workpool.Func[benchNum, struct{}]) {
	b.Helper()
	p, err := workpool.New(e.db, workpool.Config{
		Schema:         e.schema,
		MaxParallelism: maxParallelism,
		Logger:         slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		b.Fatal(err)
	}
	fn, err := workpool.Register(p, "noop", func(context.Context, benchNum) (struct{}, error) {
		if done != nil {
			done()
		}
		return struct{}{}, nil
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = p.Stop(ctx)
		e.logs.check(b)
	})
	return p, fn
}

// BenchmarkEnqueue: one Enqueue per op, each in its own transaction, on a
// pool that is not started in this process (a producer-only process: the
// loop is idle, so each enqueue also sends the kick NOTIFY).
func BenchmarkEnqueue(b *testing.B) {
	e := newBenchEnv(b)
	p, fn := e.pool(b, 10, nil)
	ctx := context.Background()
	b.ResetTimer()
	for i := range b.N {
		if _, err := p.Enqueue(ctx, fn, benchNum{N: i}); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "enqueues/s")
}

// BenchmarkEnqueueBatch1000: one EnqueueBatch of 1,000 items per op (one
// round trip, one transaction), on a pool that is not started.
func BenchmarkEnqueueBatch1000(b *testing.B) {
	const batch = 1000
	e := newBenchEnv(b)
	p, fn := e.pool(b, 10, nil)
	ctx := context.Background()
	args := make([]benchNum, batch)
	for i := range args {
		args[i] = benchNum{N: i}
	}
	b.ResetTimer()
	for range b.N {
		ids, err := p.EnqueueBatch(ctx, fn, args)
		if err != nil {
			b.Fatal(err)
		}
		if len(ids) != batch {
			b.Fatalf("%d ids for %d items", len(ids), batch)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "rows/s")
}

// drainChunk is how many jobs one op of BenchmarkDrain stands for: b.N jobs
// would mean nothing under -benchtime=3x (make bench), so the backlog is
// b.N × drainChunk.
const drainChunk = 10_000

// BenchmarkDrain enqueues b.N × drainChunk no-op items (untimed, before
// Start), then starts a pool with MaxParallelism 1000 and times until the
// database records every item finished (the work table is empty). One op
// is drainChunk jobs; jobs/s uses the same clock, handler_jobs/s stops at
// the last handler's return (the clock of examples/bench's drain).
func BenchmarkDrain(b *testing.B) {
	e := newBenchEnv(b)
	total := b.N * drainChunk
	var ran atomic.Int64
	var lastAt atomic.Int64
	allRan := make(chan struct{})
	p, fn := e.pool(b, 1000, func() {
		lastAt.Store(time.Now().UnixNano())
		if ran.Add(1) == int64(total) {
			close(allRan)
		}
	})
	ctx := context.Background()
	args := make([]benchNum, total)
	for i := range args {
		args[i] = benchNum{N: i}
	}
	t := time.Now()
	if _, err := p.EnqueueBatch(ctx, fn, args); err != nil {
		b.Fatal(err)
	}
	enqueue := time.Since(t)
	remaining := func() int64 {
		var n int64
		if err := e.db.DB.QueryRowContext(ctx, "SELECT count(*) FROM "+e.schema+".work").Scan(&n); err != nil {
			b.Fatal(err)
		}
		return n
	}

	b.ResetTimer()
	t0 := time.Now()
	if err := p.Start(ctx); err != nil {
		b.Fatal(err)
	}
	select {
	case <-allRan:
	case <-time.After(5 * time.Minute):
		b.Fatalf("%d of %d jobs ran after 5 minutes", ran.Load(), total)
	}
	for remaining() > 0 {
		if time.Since(t0) > 5*time.Minute {
			b.Fatalf("every handler returned but %d items are not finished after 5 minutes", remaining())
		}
		time.Sleep(5 * time.Millisecond)
	}
	b.StopTimer()
	handlers := time.Unix(0, lastAt.Load()).Sub(t0)
	if n := ran.Load(); n != int64(total) {
		b.Fatalf("%d handler runs for %d items", n, total)
	}
	b.ReportMetric(float64(total)/b.Elapsed().Seconds(), "jobs/s")
	b.ReportMetric(float64(total)/handlers.Seconds(), "handler_jobs/s")
	b.ReportMetric(float64(total)/enqueue.Seconds(), "enqueue_rows/s")
}
