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
	"runtime/pprof"
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

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m, pgtest.Options{})) }

const (
	envDuration = "SOAK_DURATION"
	envRate     = "SOAK_RATE"

	defaultDuration = 10 * time.Minute
	defaultRate     = 200 // enqueues per second, all producers together

	poolName       = "soak"
	fnName         = "soak.work"
	onCompleteName = "soak.done"
	pools          = 2
	workers        = 16 // per Pool value
	maxParallelism = 20 // below 2 × 16 worker slots: a real limit

	// The load: singleProducers enqueue one item per tick (their ticks
	// together make the rate, minus the batches); one more producer
	// enqueues a batch of batchSize every batchEvery.
	singleProducers = 4
	batchSize       = 50
	batchEvery      = 5 * time.Second

	// Sampling: every maxInterval, or a twelfth of the run when that is
	// shorter (but at least minInterval), so that a short local run still
	// has enough samples for the checks.
	maxInterval = 10 * time.Second
	minInterval = time.Second
	minSamples  = 6

	// After the producers stop, everything must drain within this.
	drainWithin = 60 * time.Second
	// After Stop, the pools' goroutines must be gone within this.
	stopWithin = 10 * time.Second
	// StatusBatch is called with at most this many ids.
	statusChunk = 5000
)

// The checks' slack; see checkFlat for why each is what it is.
const (
	goroutineSlack     = 20
	goroutineStopSlack = 5
	heapFactor         = 1.5
	heapSlack          = 8 << 20
	backlogFactor      = 2
	backlogSlack       = 500
	// The producers must reach at least this share of the asked rate, or
	// the run tested a lighter load than it reports.
	minRateShare = 0.5
)

// Kinds of item, chosen by the producers.
const (
	kindOK           = "ok"           // sleeps 0-10 ms and succeeds
	kindFailOnce     = "fail_once"    // ~10%: fails its first attempt, then succeeds
	kindNonRetryable = "nonretryable" // ~2%: returns workpool.NonRetryable
	kindDelayed      = "delayed"      // ~5%: enqueued with RunAfter(2-5 s), succeeds
	kindCancel       = "cancel"       // ~3%: canceled right after its enqueue
)

var (
	errFailOnce     = errors.New("planned failure of the first attempt")
	errNonRetryable = errors.New("planned non-retryable failure")
)

// retry is every item's retry behavior: a fail_once item's second attempt
// follows its first within about 20 ms.
var retry = workpool.RetryBehavior{MaxAttempts: 3, InitialBackoff: 20 * time.Millisecond, Base: 2}

// tables are our tables, whose rows and bytes every sample records.
var tables = []string{"work", "pending_start", "pending_completion", "pending_cancelation", "running",
	"workers", "internal_state", "run_status", "config"}

// pendingTables are the tables that hold in-flight work: their rows must not
// grow during the run and must be gone once it drained.
var pendingTables = []string{"work", "pending_start", "pending_completion", "pending_cancelation", "running"}

// item is the test function's argument: N tells items apart, Kind says what
// the handler does, Ms how long it sleeps.
type item struct {
	N    int64  `json:"n"`
	Kind string `json:"k"`
	Ms   int    `json:"ms"`
}

// sample is one measurement during the load.
type sample struct {
	at         time.Duration
	heapInuse  uint64 // after runtime.GC
	heapAlloc  uint64
	goroutines int
	enqueued   int64
	rows       map[string]int64
	bytes      map[string]int64
}

// logCounter passes the pools' records (Warn and above) to a text handler
// on stderr and counts them. The run has no faults, so any of them fails
// the test: a warning here means a path that should not run did (a result
// dropped as stale, a claim released as stranded, a write retried), which
// is how the soak found results dropped as stale when a cancel updated
// their work row at the same moment.
type logCounter struct {
	slog.Handler
	c *logCounts
}

type logCounts struct {
	errors   atomic.Int64
	mu       sync.Mutex
	warnings map[string]int // by message
}

func (h logCounter) Handle(ctx context.Context, r slog.Record) error {
	switch {
	case r.Level >= slog.LevelError:
		h.c.errors.Add(1)
	case r.Level >= slog.LevelWarn:
		h.c.mu.Lock()
		h.c.warnings[r.Message]++
		h.c.mu.Unlock()
	}
	return h.Handler.Handle(ctx, r)
}

func (h logCounter) WithAttrs(a []slog.Attr) slog.Handler {
	return logCounter{h.Handler.WithAttrs(a), h.c}
}

func (h logCounter) WithGroup(g string) slog.Handler {
	return logCounter{h.Handler.WithGroup(g), h.c}
}

// failOnce remembers the items whose first attempt failed, until their
// retry succeeds: its size is bounded by the retries in flight, so the
// test's own memory stays flat.
type failOnce struct {
	mu     sync.Mutex
	failed map[int64]bool
}

// first reports whether this is the first attempt of item n.
func (f *failOnce) first(n int64) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failed[n] {
		delete(f.failed, n)
		return false
	}
	f.failed[n] = true
	return true
}

// ledger records what the producers enqueued. Its slices are allocated for
// the whole run up front, so that they do not grow the heap the test
// watches.
type ledger struct {
	mu       sync.Mutex
	ids      []workpool.WorkID // every item
	ocIDs    []workpool.WorkID // the items enqueued with OnComplete
	canceled int
	errs     []error // the first few
	nErrs    int
}

func (l *ledger) add(ids []workpool.WorkID, withOC bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.ids = append(l.ids, ids...)
	if withOC {
		l.ocIDs = append(l.ocIDs, ids...)
	}
}

func (l *ledger) fail(err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.nErrs++
	if len(l.errs) < 10 {
		l.errs = append(l.errs, err)
	}
}

func (l *ledger) count() int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return int64(len(l.ids))
}

// side is one of the two Pool values with what was registered on it.
type side struct {
	p    *workpool.Pool
	fn   *workpool.Func[item, int64]
	done *workpool.OnCompleteHandler[string, int64]
}

// TestSoak is the soak test; see the package doc.
func TestSoak(t *testing.T) {
	duration := defaultDuration
	if s := os.Getenv(envDuration); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d <= 0 {
			t.Fatalf("%s=%q: want a positive Go duration such as 1m", envDuration, s)
		}
		duration = d
	}
	rate := defaultRate
	if s := os.Getenv(envRate); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 1 || v > 100_000 {
			t.Fatalf("%s=%q: want enqueues per second in [1, 100000]", envRate, s)
		}
		rate = v
	}
	interval := min(maxInterval, max(minInterval, duration/12))
	nSamples := int(duration / interval)
	if nSamples < minSamples {
		t.Fatalf("%s=%v gives %d samples of %v; the checks need at least %d: run longer", envDuration, duration, nSamples, interval, minSamples)
	}
	if dl, ok := t.Deadline(); ok && time.Until(dl) < duration+drainWithin+2*time.Minute {
		t.Fatalf("the test deadline (-timeout) is %v away, too close for a load of %v plus the drain", time.Until(dl).Round(time.Second), duration)
	}
	singlesRate := max(1, rate-int(float64(batchSize)/batchEvery.Seconds()))
	t.Logf("load %v at %d enqueues/s (%d single + a batch of %d every %v), sample every %v (%d samples), 2 pools × %d workers, MaxParallelism %d",
		duration, rate, singlesRate, batchSize, batchEvery, interval, nSamples, workers, maxParallelism)

	ctx := context.Background()
	db, schema := pgtest.NewSchema(t)
	if _, err := migrations.Migrate(ctx, db, migrations.WithSchema(schema)); err != nil {
		t.Fatal(err)
	}
	if _, err := db.DB.ExecContext(ctx, "CREATE TABLE "+schema+".soak_done "+
		"(work_id bigint PRIMARY KEY, kind text NOT NULL, status text NOT NULL, attempts int NOT NULL)"); err != nil {
		t.Fatal(err)
	}
	// The second Pool value gets its own database connections, like a
	// second process.
	dbs := []*bun.DB{db, pgtest.OpenBun(t, pgtest.Shared(t).URL())}

	logs := &logCounts{warnings: map[string]int{}}
	logger := slog.New(logCounter{slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}), logs})

	goroutinesBeforeStart := runtime.NumGoroutine()
	fo := &failOnce{failed: map[int64]bool{}}
	var sides []side
	for i := range pools {
		s, err := newSide(dbs[i], schema, logger, fo)
		if err != nil {
			t.Fatal(err)
		}
		sides = append(sides, s)
	}
	stopped := false
	stopAll := func() error {
		stopped = true
		var errs []error
		for i, s := range sides {
			stopCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
			if err := s.p.Stop(stopCtx); err != nil {
				errs = append(errs, fmt.Errorf("stop pool %d: %w", i, err))
			}
			cancel()
		}
		return errors.Join(errs...)
	}
	t.Cleanup(func() {
		if !stopped {
			_ = stopAll()
		}
	})
	for _, s := range sides {
		if err := s.p.Start(ctx); err != nil {
			t.Fatal(err)
		}
	}

	measure := func(at time.Duration) sample {
		t.Helper()
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		s := sample{at: at, heapInuse: ms.HeapInuse, heapAlloc: ms.HeapAlloc, goroutines: runtime.NumGoroutine(),
			rows: map[string]int64{}, bytes: map[string]int64{}}
		var cols []string
		for _, tb := range tables {
			cols = append(cols, fmt.Sprintf("(SELECT count(*) FROM %[1]s.%[2]s), pg_total_relation_size('%[1]s.%[2]s')", schema, tb))
		}
		rows, bytes := make([]int64, len(tables)), make([]int64, len(tables))
		dest := make([]any, 0, 2*len(tables))
		for i := range tables {
			dest = append(dest, &rows[i], &bytes[i])
		}
		if err := db.DB.QueryRowContext(ctx, "SELECT "+strings.Join(cols, ", ")).Scan(dest...); err != nil {
			t.Fatalf("measure the tables: %v", err)
		}
		for i, tb := range tables {
			s.rows[tb], s.bytes[tb] = rows[i], bytes[i]
		}
		return s
	}
	before := measure(0)
	t.Logf("table sizes before the load:\n%s", sizeTable(before, nil))

	// The ledger holds every id; allocated now for the whole run (with a
	// margin) so that appending to it does not show up as heap growth.
	capacity := int(float64(rate)*duration.Seconds()*1.2) + 10*batchSize
	led := &ledger{ids: make([]workpool.WorkID, 0, capacity), ocIDs: make([]workpool.WorkID, 0, capacity*2/5)}

	// The producers run until stop is closed. Their calls use ctx, never a
	// canceled context, so every enqueue that committed returned its ids.
	stop := make(chan struct{})
	var producers sync.WaitGroup
	var nextN atomic.Int64
	for w := range singleProducers {
		producers.Add(1)
		go func() {
			defer producers.Done()
			s := sides[w%len(sides)]
			tick := time.NewTicker(time.Duration(singleProducers) * time.Second / time.Duration(singlesRate))
			defer tick.Stop()
			for {
				select {
				case <-stop:
					return
				case <-tick.C:
				}
				enqueueOne(ctx, s, nextN.Add(1), led)
			}
		}()
	}
	producers.Add(1)
	go func() {
		defer producers.Done()
		tick := time.NewTicker(batchEvery)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			enqueueBatch(ctx, sides[i%len(sides)], &nextN, led)
		}
	}()

	// Sample while the load runs. The goroutine profile is kept at the end
	// of the warm-up and at the highest count above the slack, so that a
	// leak can be told from the goroutines that belong there.
	var samples []sample
	warm := nSamples / 5
	var baseDump, peakDump string
	peakSeen := 0
	begin := time.Now()
	tick := time.NewTicker(interval)
	for i := range nSamples {
		<-tick.C
		s := measure(time.Since(begin))
		s.enqueued = led.count()
		samples = append(samples, s)
		if i == warm {
			baseDump = goroutineDump()
		}
		if i > warm && s.goroutines > samples[warm].goroutines+goroutineSlack && s.goroutines > peakSeen {
			peakSeen, peakDump = s.goroutines, goroutineDump()
		}
		var total int64
		for _, tb := range tables {
			total += s.bytes[tb]
		}
		t.Logf("sample %2d %6s heap_inuse %6.1f MiB heap_alloc %6.1f MiB goroutines %4d enqueued %7d | rows work %5d pending_start %4d pending_completion %4d pending_cancelation %3d running %3d workers %d | bytes work %s pending_start %s pending_completion %s all %s",
			i+1, s.at.Round(time.Second), mib(s.heapInuse), mib(s.heapAlloc), s.goroutines, s.enqueued,
			s.rows["work"], s.rows["pending_start"], s.rows["pending_completion"], s.rows["pending_cancelation"], s.rows["running"], s.rows["workers"],
			human(s.bytes["work"]), human(s.bytes["pending_start"]), human(s.bytes["pending_completion"]), human(total))
	}
	tick.Stop()
	close(stop)
	producers.Wait()
	loadTime := time.Since(begin)

	led.mu.Lock()
	ids, ocIDs, canceled, nErrs, errs := led.ids, led.ocIDs, led.canceled, led.nErrs, led.errs
	led.mu.Unlock()
	achieved := float64(len(ids)) / loadTime.Seconds()
	t.Logf("producers stopped: %d items enqueued in %v (%.1f/s of %d asked), %d with OnComplete, %d canceled right after their enqueue",
		len(ids), loadTime.Round(time.Millisecond), achieved, rate, len(ocIDs), canceled)
	for _, err := range errs {
		t.Errorf("producer: %v", err)
	}
	if nErrs > len(errs) {
		t.Errorf("... and %d more producer errors", nErrs-len(errs))
	}
	if achieved < minRateShare*float64(rate) {
		t.Errorf("the producers reached %.1f enqueues/s, less than %.0f%% of the %d asked: the run tested a lighter load than it claims",
			achieved, 100*minRateShare, rate)
	}

	// The run's figures are checked before the drain, which may fail the
	// test: a backlog that grew is the likeliest reason it does not drain.
	f := checkFlat(t, samples, warm)
	if f.goroutinesGrew {
		t.Logf("goroutines at the end of the warm-up (%d):\n%s", samples[warm].goroutines, baseDump)
		t.Logf("goroutines at the highest count (%d):\n%s", peakSeen, peakDump)
	}
	if f.heapGrew {
		if path, err := heapProfile(); err == nil {
			t.Logf("heap profile of the end of the load: %s (go tool pprof -sample_index=inuse_space %s)", path, path)
		} else {
			t.Logf("heap profile: %v", err)
		}
	}

	// Drain. Database state has no signal to wait on, so this polls.
	drainStart := time.Now()
	var drained time.Duration
	poll := time.NewTicker(250 * time.Millisecond)
	for {
		left, err := pendingRows(ctx, db, schema)
		if err == nil && left == "" {
			drained = time.Since(drainStart)
			break
		}
		if time.Since(drainStart) > drainWithin {
			poll.Stop()
			t.Fatalf("not drained %v after the producers stopped: %s (error %v)\n%s", drainWithin, left, err, diagnose(ctx, db, schema))
		}
		<-poll.C
	}
	poll.Stop()
	t.Logf("drained %v after the producers stopped", drained.Round(time.Millisecond))

	// Every item reached its terminal state.
	notFinished := 0
	for lo := 0; lo < len(ids); lo += statusChunk {
		chunk := ids[lo:min(lo+statusChunk, len(ids))]
		sts, err := sides[0].p.StatusBatch(ctx, chunk)
		if err != nil {
			t.Fatalf("status of items %d-%d: %v", lo, lo+len(chunk)-1, err)
		}
		for i, st := range sts {
			if st.State != workpool.StateFinished {
				if notFinished < 10 {
					t.Errorf("item %d: %v after %d attempts, want finished", chunk[i], st.State, st.PreviousAttempts)
				}
				notFinished++
			}
		}
	}
	if notFinished > 0 {
		t.Errorf("%d of %d items did not finish", notFinished, len(ids))
	}

	// Every onComplete committed exactly once (soak_done's primary key
	// refuses a second), for exactly the items enqueued with one, with the
	// outcome the item's kind allows. A canceled item's onComplete runs
	// too, with Status Canceled, unless it finished first.
	byStatus := checkOnCompletes(t, ctx, db, schema, ocIDs)

	// Stop both pools: nothing runs, so Stop must not have to cancel a
	// handler. Their worker rows go, and so do their goroutines (the
	// handler goroutines end just after Stop returns, so this polls).
	if err := stopAll(); err != nil {
		t.Error(err)
	}
	after := measure(time.Since(begin))
	if n := after.rows["workers"]; n != 0 {
		t.Errorf("%d worker rows left after both pools stopped", n)
	}
	goroutinesAfterStop := runtime.NumGoroutine()
	for deadline := time.Now().Add(stopWithin); goroutinesAfterStop > goroutinesBeforeStart+goroutineStopSlack && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
		goroutinesAfterStop = runtime.NumGoroutine()
	}
	if goroutinesAfterStop > goroutinesBeforeStart+goroutineStopSlack {
		t.Errorf("%d goroutines %v after both pools stopped, %d before they started\n%s",
			goroutinesAfterStop, stopWithin, goroutinesBeforeStart, goroutineDump())
	}
	t.Logf("table sizes before the load and after it drained (pools stopped):\n%s", sizeTable(before, &after))
	t.Logf("vacuum statistics after the run (bytes beyond the live rows are dead rows and free space that autovacuum leaves for reuse):\n%s",
		vacuumStats(ctx, db, schema))

	logs.mu.Lock()
	for msg, n := range logs.warnings {
		t.Logf("the pools logged the warning %q ×%d", msg, n)
	}
	nWarnings := 0
	for _, n := range logs.warnings {
		nWarnings += n
	}
	logs.mu.Unlock()
	if n := logs.errors.Load(); n > 0 {
		t.Errorf("the pools logged %d errors (on stderr above)", n)
	}
	if nWarnings > 0 {
		t.Errorf("the pools logged %d warnings (on stderr above); without faults a warning is a bug", nWarnings)
	}
	t.Logf("SOAK SUMMARY duration=%v rate=%.1f/s (asked %d) items=%d on_complete=%d canceled_early=%d outcomes=%v "+
		"goroutines warm=%d peak=%d (+%d, slack %d) before_start=%d after_stop=%d "+
		"heap_inuse_median first=%.1fMiB last=%.1fMiB (limit %.1fMiB) "+
		"work_rows_median first=%.0f last=%.0f (limit %.0f) drained=%v log_errors=%d log_warnings=%d",
		loadTime.Round(time.Second), achieved, rate, len(ids), len(ocIDs), canceled, byStatus,
		f.goroutineBase, f.goroutinePeak, f.goroutinePeak-f.goroutineBase, goroutineSlack, goroutinesBeforeStart, goroutinesAfterStop,
		mib(uint64(f.heapFirst)), mib(uint64(f.heapLast)), (heapFactor*f.heapFirst+heapSlack)/(1<<20),
		f.backlogFirst, f.backlogLast, backlogFactor*f.backlogFirst+backlogSlack, drained.Round(time.Millisecond),
		logs.errors.Load(), nWarnings)
}

// newSide creates one Pool value of the soak pool on db and registers the
// test function and the onComplete on it.
func newSide(db *bun.DB, schema string, logger *slog.Logger, fo *failOnce) (side, error) {
	p, err := workpool.New(db, workpool.Config{Name: poolName, Schema: schema, MaxParallelism: maxParallelism,
		Workers: workers, Logger: logger})
	if err != nil {
		return side{}, err
	}
	fn, err := workpool.Register(p, fnName, func(ctx context.Context, it item) (int64, error) {
		t := time.NewTimer(time.Duration(it.Ms) * time.Millisecond)
		select {
		case <-t.C:
		case <-ctx.Done(): // canceled while running
			t.Stop()
			return 0, context.Cause(ctx)
		}
		switch it.Kind {
		case kindNonRetryable:
			return 0, workpool.NonRetryable(errNonRetryable)
		case kindFailOnce:
			if fo.first(it.N) {
				return 0, errFailOnce
			}
		}
		return it.N, nil
	})
	if err != nil {
		return side{}, err
	}
	done, err := workpool.RegisterOnComplete(p, onCompleteName, func(ctx context.Context, tx bun.Tx, c workpool.Completion[string, int64]) error {
		_, err := tx.Tx.ExecContext(ctx, "INSERT INTO "+schema+".soak_done (work_id, kind, status, attempts) VALUES ($1, $2, $3, $4)",
			int64(c.WorkID), c.Context, string(c.Status), c.Attempts)
		return err
	})
	if err != nil {
		return side{}, err
	}
	return side{p: p, fn: fn, done: done}, nil
}

// enqueueOne enqueues item n of a random kind, with OnComplete ~30% of the
// time, and cancels it at once if its kind says so.
func enqueueOne(ctx context.Context, s side, n int64, led *ledger) {
	it := item{N: n, Kind: kindOK, Ms: rand.IntN(11)}
	opts := []workpool.Option{workpool.Retry(retry), workpool.Timeout(time.Minute)}
	switch r := rand.Float64(); {
	case r < 0.10:
		it.Kind = kindFailOnce
	case r < 0.12:
		it.Kind = kindNonRetryable
	case r < 0.17:
		it.Kind = kindDelayed
		opts = append(opts, workpool.RunAfter(time.Duration(2000+rand.IntN(3001))*time.Millisecond))
	case r < 0.20:
		it.Kind = kindCancel
	}
	opts = append(opts, workpool.Label(it.Kind))
	withOC := rand.Float64() < 0.30
	if withOC {
		opts = append(opts, workpool.OnComplete(s.done, it.Kind))
	}
	id, err := s.p.Enqueue(ctx, s.fn, it, opts...)
	if err != nil {
		led.fail(fmt.Errorf("enqueue item %d (%s): %w", n, it.Kind, err))
		return
	}
	led.add([]workpool.WorkID{id}, withOC)
	if it.Kind == kindCancel {
		if err := s.p.Cancel(ctx, id); err != nil {
			led.fail(fmt.Errorf("cancel item %d (work %d): %w", n, id, err))
			return
		}
		led.mu.Lock()
		led.canceled++
		led.mu.Unlock()
	}
}

// enqueueBatch enqueues batchSize items with EnqueueBatch; their kinds are
// those that need no option of their own (options apply to the whole
// batch), and the whole batch has an onComplete ~30% of the time.
func enqueueBatch(ctx context.Context, s side, next *atomic.Int64, led *ledger) {
	args := make([]item, batchSize)
	for i := range args {
		args[i] = item{N: next.Add(1), Kind: kindOK, Ms: rand.IntN(11)}
		switch r := rand.Float64(); {
		case r < 0.10:
			args[i].Kind = kindFailOnce
		case r < 0.12:
			args[i].Kind = kindNonRetryable
		}
	}
	opts := []workpool.Option{workpool.Retry(retry), workpool.Label("batch")}
	withOC := rand.Float64() < 0.30
	if withOC {
		opts = append(opts, workpool.OnComplete(s.done, "batch"))
	}
	ids, err := s.p.EnqueueBatch(ctx, s.fn, args, opts...)
	if err != nil {
		led.fail(fmt.Errorf("enqueue a batch of %d from item %d: %w", batchSize, args[0].N, err))
		return
	}
	if len(ids) != batchSize {
		led.fail(fmt.Errorf("EnqueueBatch of %d items returned %d ids", batchSize, len(ids)))
	}
	led.add(ids, withOC)
}

// pendingRows returns "" when the pending tables are empty, and otherwise
// what is left in them.
func pendingRows(ctx context.Context, db *bun.DB, schema string) (string, error) {
	var cols []string
	for _, tb := range pendingTables {
		cols = append(cols, fmt.Sprintf("(SELECT count(*) FROM %s.%s)", schema, tb))
	}
	n := make([]int64, len(pendingTables))
	dest := make([]any, len(n))
	for i := range n {
		dest[i] = &n[i]
	}
	if err := db.DB.QueryRowContext(ctx, "SELECT "+strings.Join(cols, ", ")).Scan(dest...); err != nil {
		return "unknown", err
	}
	var left []string
	for i, tb := range pendingTables {
		if n[i] > 0 {
			left = append(left, fmt.Sprintf("%s %d", tb, n[i]))
		}
	}
	return strings.Join(left, ", "), nil
}

// checkOnCompletes compares the soak_done rows with the items enqueued
// with OnComplete and returns the count of each status.
func checkOnCompletes(t *testing.T, ctx context.Context, db *bun.DB, schema string, ocIDs []workpool.WorkID) map[string]int {
	t.Helper()
	type done struct {
		kind, status string
		attempts     int
	}
	got := make(map[workpool.WorkID]done, len(ocIDs))
	rows, err := db.DB.QueryContext(ctx, "SELECT work_id, kind, status, attempts FROM "+schema+".soak_done")
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id int64
		var d done
		if err := rows.Scan(&id, &d.kind, &d.status, &d.attempts); err != nil {
			t.Fatal(err)
		}
		got[workpool.WorkID(id)] = d
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	_ = rows.Close()

	byStatus := map[string]int{}
	var problems []string
	problem := func(format string, args ...any) {
		if len(problems) < 20 {
			problems = append(problems, fmt.Sprintf(format, args...))
		}
	}
	missing, bad := 0, 0
	want := make(map[workpool.WorkID]bool, len(ocIDs))
	for _, id := range ocIDs {
		want[id] = true
		d, ok := got[id]
		if !ok {
			missing++
			problem("work %d: no onComplete row", id)
			continue
		}
		byStatus[d.status]++
		okStatus := false
		switch d.kind {
		case kindOK, kindDelayed:
			okStatus = d.status == string(workpool.Succeeded) && d.attempts == 1
		case kindFailOnce:
			okStatus = d.status == string(workpool.Succeeded) && d.attempts == 2
		case kindNonRetryable:
			okStatus = d.status == string(workpool.Failed) && d.attempts == 1
		case kindCancel:
			// Canceled before it ran (0 attempts) or while it ran, or
			// it finished before the cancel reached it.
			okStatus = d.status == string(workpool.Canceled) || d.status == string(workpool.Succeeded) && d.attempts == 1
		case "batch":
			// Mixed kinds: any terminal outcome but canceled.
			okStatus = d.status != string(workpool.Canceled) && d.attempts >= 1 && d.attempts <= 2
		}
		if !okStatus {
			bad++
			problem("work %d (%s): onComplete with status %s after %d attempts", id, d.kind, d.status, d.attempts)
		}
	}
	extra := 0
	for id := range got {
		if !want[id] {
			extra++
			problem("work %d: onComplete row for an item enqueued without OnComplete", id)
		}
	}
	for _, p := range problems {
		t.Log(p)
	}
	if missing > 0 || extra > 0 || len(got) != len(ocIDs) {
		t.Errorf("%d onComplete rows for %d items enqueued with OnComplete: %d missing, %d unexpected", len(got), len(ocIDs), missing, extra)
	}
	if bad > 0 {
		t.Errorf("%d onCompletes with an outcome their item's kind does not allow", bad)
	}
	return byStatus
}

// flat is what checkFlat computed.
type flat struct {
	goroutineBase, goroutinePeak int
	heapFirst, heapLast          float64
	backlogFirst, backlogLast    float64
	goroutinesGrew, heapGrew     bool
}

// checkFlat compares the end of the run with its beginning. The first warm
// samples are ignored: connection pools, the handler goroutines, the
// statement caches and the runtime's own structures grow to their working
// size first. The rest is cut in thirds; the first third is the baseline
// and the last third must not be much larger. Medians, not single samples,
// so that one sample taken during a burst (a batch, a GC cycle, an
// autovacuum) does not decide.
func checkFlat(t *testing.T, samples []sample, warm int) flat {
	t.Helper()
	rest := samples[warm:]
	third := len(rest) / 3
	first, last := rest[:third], rest[len(rest)-third:]
	median := func(ss []sample, f func(sample) float64) float64 {
		v := make([]float64, len(ss))
		for i, s := range ss {
			v[i] = f(s)
		}
		slices.Sort(v)
		if len(v)%2 == 0 {
			return (v[len(v)/2-1] + v[len(v)/2]) / 2
		}
		return v[len(v)/2]
	}
	var f flat

	// Goroutines: the pools' own are a fixed set (handlers, claimers,
	// heartbeat, driver), so a leak shows as steady growth. The slack is
	// for goroutines that live for one call and that a sample may catch in
	// flight: a context.AfterFunc or time.AfterFunc callback, database/sql
	// opening a connection, the producers' and handlers' timers firing. A
	// leak of one goroutine per item, per batch or per loop iteration
	// passes it within seconds.
	f.goroutineBase = rest[0].goroutines
	for _, s := range rest {
		f.goroutinePeak = max(f.goroutinePeak, s.goroutines)
	}
	if f.goroutinePeak-f.goroutineBase > goroutineSlack {
		f.goroutinesGrew = true
		t.Errorf("goroutines grew from %d at the end of the warm-up to %d (slack %d)", f.goroutineBase, f.goroutinePeak, goroutineSlack)
	}

	// Heap in use after a GC: the factor covers the runtime keeping spans
	// for reuse and the pgx and database/sql buffers that grow with the
	// largest message seen; the absolute slack covers small heaps, where
	// a few MiB of buffers are a large factor.
	heap := func(s sample) float64 { return float64(s.heapInuse) }
	f.heapFirst, f.heapLast = median(first, heap), median(last, heap)
	if f.heapLast > heapFactor*f.heapFirst+heapSlack {
		f.heapGrew = true
		t.Errorf("the heap grew: median HeapInuse %.1f MiB in the first third after the warm-up, %.1f MiB in the last (limit %.1f MiB)",
			f.heapFirst/(1<<20), f.heapLast/(1<<20), (heapFactor*f.heapFirst+heapSlack)/(1<<20))
	}

	// Pending tables: at a steady rate below the pool's capacity the
	// backlog hovers around a constant. The factor and slack cover the
	// scheduled items (a few seconds' worth of ~5% of the rate), a retry
	// burst and a slow iteration on a noisy machine; a table that only
	// fills grows by the rate times the run, far beyond them.
	backlog := func(tb string) func(sample) float64 {
		return func(s sample) float64 { return float64(s.rows[tb]) }
	}
	f.backlogFirst, f.backlogLast = median(first, backlog("work")), median(last, backlog("work"))
	for _, tb := range pendingTables {
		a, b := median(first, backlog(tb)), median(last, backlog(tb))
		t.Logf("%s rows: median %.0f in the first third after the warm-up, %.0f in the last (limit %.0f)", tb, a, b, backlogFactor*a+backlogSlack)
		if b > backlogFactor*a+backlogSlack {
			t.Errorf("%s grew: median %.0f rows in the first third after the warm-up, %.0f in the last", tb, a, b)
		}
	}
	t.Logf("goroutines: %d at the end of the warm-up, peak %d after it; heap in use: median %.1f MiB -> %.1f MiB",
		f.goroutineBase, f.goroutinePeak, f.heapFirst/(1<<20), f.heapLast/(1<<20))
	return f
}

// diagnose describes the pool's tables when they did not drain.
func diagnose(ctx context.Context, db *bun.DB, schema string) string {
	var b strings.Builder
	dump := func(title, query string) {
		out, err := pgtest.QueryLines(ctx, db.DB, query)
		if err != nil {
			fmt.Fprintf(&b, "%s: %v\n", title, err)
		}
		fmt.Fprintf(&b, "%s:\n", title)
		for _, line := range out {
			fmt.Fprintf(&b, "  %s\n", line)
		}
	}
	dump("internal_state", "SELECT * FROM "+schema+".internal_state")
	dump("run_status", "SELECT * FROM "+schema+".run_status")
	dump("workers", "SELECT id, pid, started_at, heartbeat_at FROM "+schema+".workers")
	dump("work (first 20)", "SELECT id, fn_name, label, attempts, canceled, result, finish_after, finish_attempts, finish_error FROM "+schema+".work ORDER BY id LIMIT 20")
	dump("pending_start (first 10)", "SELECT * FROM "+schema+".pending_start ORDER BY segment LIMIT 10")
	dump("pending_completion (first 10)", "SELECT * FROM "+schema+".pending_completion ORDER BY segment LIMIT 10")
	dump("pending_cancelation (first 10)", "SELECT * FROM "+schema+".pending_cancelation ORDER BY segment LIMIT 10")
	dump("running (first 10)", "SELECT * FROM "+schema+".running ORDER BY work_id LIMIT 10")
	return b.String()
}

// sizeTable formats the rows and bytes of our tables before the load and,
// when after is not nil, after it.
func sizeTable(before sample, after *sample) string {
	var b strings.Builder
	if after == nil {
		fmt.Fprintf(&b, "  %-20s %8s %10s\n", "table", "rows", "bytes")
		for _, tb := range tables {
			fmt.Fprintf(&b, "  %-20s %8d %10d\n", tb, before.rows[tb], before.bytes[tb])
		}
		return b.String()
	}
	fmt.Fprintf(&b, "  %-20s %11s %10s %12s %12s\n", "table", "rows before", "rows after", "bytes before", "bytes after")
	var tb0, tb1 int64
	for _, tb := range tables {
		fmt.Fprintf(&b, "  %-20s %11d %10d %12d %12d\n", tb, before.rows[tb], after.rows[tb], before.bytes[tb], after.bytes[tb])
		tb0, tb1 = tb0+before.bytes[tb], tb1+after.bytes[tb]
	}
	fmt.Fprintf(&b, "  %-20s %11s %10s %12d %12d\n", "all", "", "", tb0, tb1)
	return b.String()
}

// vacuumStats formats the live and dead rows and the vacuum counts of our
// tables, as the statistics system last reported them.
func vacuumStats(ctx context.Context, db *bun.DB, schema string) string {
	rows, err := db.DB.QueryContext(ctx, `SELECT relname, n_live_tup, n_dead_tup, n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del,
       vacuum_count, autovacuum_count, COALESCE(to_char(last_autovacuum, 'HH24:MI:SS'), '-')
  FROM pg_stat_user_tables WHERE schemaname = $1 AND relname = ANY($2) ORDER BY relname`, schema, tables)
	if err != nil {
		return err.Error()
	}
	defer rows.Close()
	var b strings.Builder
	fmt.Fprintf(&b, "  %-20s %6s %6s %9s %9s %9s %9s %7s %11s %15s\n", "table", "live", "dead", "inserted", "updated", "hot upd", "deleted",
		"vacuums", "autovacuums", "last autovacuum")
	for rows.Next() {
		var name, last string
		var live, dead, ins, upd, hot, del, vac, autovac int64
		if err := rows.Scan(&name, &live, &dead, &ins, &upd, &hot, &del, &vac, &autovac, &last); err != nil {
			return err.Error()
		}
		fmt.Fprintf(&b, "  %-20s %6d %6d %9d %9d %9d %9d %7d %11d %15s\n", name, live, dead, ins, upd, hot, del, vac, autovac, last)
	}
	if err := rows.Err(); err != nil {
		return err.Error()
	}
	return b.String()
}

// goroutineDump returns the stacks of every goroutine, grouped by stack
// with a count each.
func goroutineDump() string {
	var b strings.Builder
	_ = pprof.Lookup("goroutine").WriteTo(&b, 1)
	return b.String()
}

// heapProfile writes a heap profile to a temporary file, kept for the
// reader, and returns its path.
func heapProfile() (string, error) {
	f, err := os.CreateTemp("", "pgworkpool-soak-heap-*.pprof")
	if err != nil {
		return "", err
	}
	runtime.GC()
	if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
		_ = f.Close()
		return "", err
	}
	return f.Name(), f.Close()
}

func mib(b uint64) float64 { return float64(b) / (1 << 20) }

// human formats a size in bytes briefly.
func human(b int64) string {
	switch {
	case b >= 1<<20:
		return fmt.Sprintf("%.1fM", float64(b)/(1<<20))
	case b >= 1<<10:
		return fmt.Sprintf("%dk", b>>10)
	}
	return strconv.FormatInt(b, 10)
}
