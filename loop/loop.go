// Package loop runs a pool's main loop: the one place that changes what is
// running.
//
// Producers (enqueue, cancel, workers recording results) only append rows to
// the pending_start, pending_cancelation and pending_completion tables. One
// iteration of the loop ([Loop.Main]) is one transaction that consumes a
// bounded batch of each, in this order: completions (free slots, schedule
// jittered retries), cancelations, recovery (at most once per recovery
// period while anything runs), starts (up to MaxParallelism minus running,
// in one statement), the periodic report, and the cursors. It then decides
// what comes next: run again now, poll, wake at a scheduled segment, or go
// idle and send no queries until kicked.
//
// # Generations
//
// Every iteration locks the pool's internal_state row and checks the
// generation its caller passed. A stale or duplicate call (a second process
// that believes it leads, a timer from before a failover) changes nothing;
// a matching call increments the generation, and its successor carries the
// new value.
//
// # The lost wake-up
//
// Under READ COMMITTED a producer that reads run_status = running and
// commits after the loop decided to go idle would leave its row behind with
// nobody awake. Producers therefore take pg_advisory_xact_lock_shared on the
// pool's kick key in the statement that inserts their row, and read
// run_status in a later statement (a fresh snapshot, taken after the lock was
// granted). The loop moves to idle or scheduled only after
// pg_try_advisory_xact_lock on the same key succeeded, and re-reads the
// pending tables in a statement after that. Either the producer's shared
// lock was granted first, so the loop's try fails and it stays running and
// looks again shortly; or the loop's lock was granted first, so the producer
// waits for the loop to commit and then reads idle and kicks it; or the
// producer committed before the loop's re-check, which then sees its row.
// Shared locks do not conflict with each other, nothing is written per
// enqueue, and a long caller transaction only keeps the loop polling; it
// blocks no one. TestKickRace races the two thousands of times.
//
// # Deviations from the Convex loop
//
//   - Batches are sized for throughput (BatchSizeDefault rows per phase), and
//     a pool paused at MaxParallelism 0 still drains its completions.
//   - The loop never runs user code. Work that ends in the loop (canceled
//     before it started, or a retry suppressed by a cancel) and has an
//     onComplete is left "finishing" for a worker process that registered
//     the handler, which runs it in the transaction that deletes the work.
//   - A completion whose work is not in running is still retried when it
//     asks to be, so that an inconsistency never loses work.
//   - The re-check before idle scans each pending table from its first row,
//     not from the cursors, so long producer transactions that committed
//     behind the cursors are not stranded while nothing runs.
package loop

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	"github.com/pgworkpool/pgworkpool/internal/store"
	"github.com/pgworkpool/pgworkpool/recovery"
	"github.com/pgworkpool/pgworkpool/segments"
	"github.com/pgworkpool/pgworkpool/stats"
)

// Defaults for [Config].
const (
	// BatchSizeDefault bounds the rows each phase of one iteration takes,
	// so a transaction moves many items while its cost stays independent of
	// the backlog.
	BatchSizeDefault = 2000
	// ReportIntervalDefault is how often an active loop logs its report.
	ReportIntervalDefault = time.Minute
	// CooldownDefault is how long the loop keeps polling after its last
	// activity before it goes idle. Zero: our kicks are a NOTIFY away, so
	// going idle at once costs a producer one run_status write on its next
	// enqueue, while polling would add up to a poll interval of latency and
	// queries for every quiet moment. See the package README for figures.
	CooldownDefault = time.Duration(0)
	// PollIntervalDefault is the polling period during a cooldown.
	PollIntervalDefault = 20 * time.Millisecond
	// StatementTimeoutDefault bounds each statement of an iteration.
	StatementTimeoutDefault = 30 * time.Second
)

// ErrPoolNotFound is returned when the pool's rows do not exist: the pool
// was never set up in this schema (or the schema was not migrated).
var ErrPoolNotFound = errors.New("pgworkpool: pool state not found")

// Config configures a [Loop]. Zero fields take the documented defaults.
type Config struct {
	Pool   string
	Store  *store.Store
	DB     *sql.DB
	Logger *stats.Logger
	// BatchSize bounds each phase's rows per iteration (BatchSizeDefault).
	BatchSize int
	// Recovery configures the recovery pass.
	Recovery recovery.Config
	// RecoveryPeriod is the least time between recovery passes (and full
	// rescans of the pending tables) while anything runs. Default
	// segments.RecoveryPeriod.
	RecoveryPeriod time.Duration
	// ReportInterval is the period of the report (ReportIntervalDefault).
	ReportInterval time.Duration
	// Cooldown and PollInterval: see CooldownDefault.
	Cooldown     time.Duration
	PollInterval time.Duration
	// Jitter returns a number in [0, 1) for retry backoff; tests fix it.
	Jitter func() float64
	// StatementTimeout bounds each statement of an iteration on the
	// server (StatementTimeoutDefault), so an iteration whose client went
	// away cannot keep its locks.
	StatementTimeout time.Duration
}

// Loop runs iterations of one pool's main loop.
type Loop struct {
	cfg  Config
	keys store.Keys

	// Samples for the report's percentiles, kept by the process that runs
	// the loop (a failover starts a fresh interval's samples).
	startLag *stats.Sampler
	runTime  *stats.Sampler

	mu         sync.Mutex // serializes Main within this process
	lastReport *stats.Report
}

// New returns a Loop for cfg.
func New(cfg Config) *Loop {
	if cfg.BatchSize <= 0 {
		cfg.BatchSize = BatchSizeDefault
	}
	if cfg.ReportInterval <= 0 {
		cfg.ReportInterval = ReportIntervalDefault
	}
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = PollIntervalDefault
	}
	if cfg.Jitter == nil {
		cfg.Jitter = rand.Float64
	}
	if cfg.StatementTimeout <= 0 {
		cfg.StatementTimeout = StatementTimeoutDefault
	}
	cfg.Recovery = cfg.Recovery.WithDefaults()
	if cfg.RecoveryPeriod <= 0 {
		cfg.RecoveryPeriod = segments.RecoveryPeriod.Duration()
	}
	return &Loop{
		cfg:      cfg,
		keys:     store.KeysFor(cfg.Store.Schema(), cfg.Pool),
		startLag: stats.NewSampler(0),
		runTime:  stats.NewSampler(0),
	}
}

// Keys returns the pool's channel and lock keys.
func (l *Loop) Keys() store.Keys { return l.keys }

// Next says what the caller should do after an iteration.
type Next int

const (
	// NextNow: the iteration did work; run the next one at once.
	NextNow Next = iota
	// NextPoll: stay running and run again after Outcome.Delay, because a
	// producer is in flight or the loop is cooling down.
	NextPoll
	// NextScheduled: nothing is due; run again after Outcome.Delay unless
	// kicked earlier. run_status says scheduled.
	NextScheduled
	// NextIdle: nothing is due and nothing runs; wait for a kick.
	NextIdle
)

func (n Next) String() string {
	switch n {
	case NextNow:
		return "now"
	case NextPoll:
		return "poll"
	case NextScheduled:
		return "scheduled"
	case NextIdle:
		return "idle"
	}
	return fmt.Sprintf("next(%d)", int(n))
}

// Outcome reports one iteration.
type Outcome struct {
	// Generation is the value to pass to the next call.
	Generation int64
	// Stale is true when the call's generation did not match; nothing
	// changed and Generation holds the current value.
	Stale bool
	Next  Next
	Delay time.Duration
	// Counts of what the iteration did.
	Completions, Cancelations, Started, Retried, Ended, Recovered int
	// Signals is the set of worker signals it sent (store.Signal* letters).
	Signals string
	// Report is the report the iteration logged, if one was due.
	Report *stats.Report
}

// iteration carries one call's state through its phases.
type iteration struct {
	st       store.State
	running  int
	counters store.Counters
	cursors  struct{ start, completion, cancelation int64 }
	signals  map[byte]bool
	out      Outcome
}

func (it *iteration) signal(b byte) {
	if it.signals == nil {
		it.signals = map[byte]bool{}
	}
	it.signals[b] = true
}

func (it *iteration) payload() string {
	var b strings.Builder
	for _, s := range []byte{store.SignalStart, store.SignalCancel, store.SignalFinish} {
		if it.signals[s] {
			b.WriteByte(s)
		}
	}
	return b.String()
}

// Main runs one iteration as one transaction; see the package doc.
func (l *Loop) Main(ctx context.Context, generation int64) (Outcome, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	tx, err := l.cfg.DB.BeginTx(ctx, nil)
	if err != nil {
		return Outcome{}, fmt.Errorf("pgworkpool: loop: begin: %w", err)
	}
	committed := false
	defer func() {
		if !committed {
			_ = tx.Rollback()
		}
	}()

	out, report, err := l.iterate(ctx, tx, generation)
	if err != nil {
		return Outcome{}, fmt.Errorf("pgworkpool: loop: %w", err)
	}
	if out.Stale {
		return out, nil
	}
	if err := tx.Commit(); err != nil {
		return Outcome{}, fmt.Errorf("pgworkpool: loop: commit: %w", err)
	}
	committed = true
	if report != nil {
		l.logReport(ctx, report)
		out.Report = report
	}
	return out, nil
}

func (l *Loop) iterate(ctx context.Context, tx *sql.Tx, generation int64) (Outcome, *stats.Report, error) {
	s, pool, log := l.cfg.Store, l.cfg.Pool, l.cfg.Logger
	st, found, err := s.LockState(ctx, tx, pool, generation, l.cfg.StatementTimeout)
	if err != nil {
		return Outcome{}, nil, err
	}
	if !found {
		return Outcome{}, nil, ErrPoolNotFound
	}
	if st.Generation != generation {
		log.Debug(ctx, "loop: stale iteration ignored", "generation", generation, "current", st.Generation)
		return Outcome{Stale: true, Generation: st.Generation}, nil, nil
	}
	if lvl, err := stats.ParseLevel(st.LogLevel); err == nil {
		log.SetLevel(lvl)
	}
	it := &iteration{st: st, running: st.RunningCount, counters: st.Counters}
	it.out.Generation = generation + 1
	it.cursors.start, it.cursors.completion, it.cursors.cancelation = st.StartCursor, st.CompletionCursor, st.CancelationCursor
	now := st.NowSegment
	recoveryIter := st.RunningCount > 0 && segments.Segment(now-st.LastRecovery) >= l.recoveryPeriod()
	from := func(cursor int64) int64 {
		if recoveryIter {
			return 0 // the recovery pass rescans every pending table from its start
		}
		return cursor - int64(segments.CursorBuffer)
	}

	canceledRetries, err := l.completions(ctx, tx, it, from(st.CompletionCursor))
	if err != nil {
		return Outcome{}, nil, err
	}
	if err := l.cancelations(ctx, tx, it, from(st.CancelationCursor), canceledRetries); err != nil {
		return Outcome{}, nil, err
	}
	lastRecovery := st.LastRecovery
	switch {
	case recoveryIter:
		res, err := recovery.Run(ctx, tx, s, pool, l.cfg.Recovery, log)
		if err != nil {
			return Outcome{}, nil, err
		}
		it.running -= len(res.Orphans)
		it.out.Recovered = len(res.Recorded) + len(res.Orphans)
		for _, r := range res.Recorded {
			if r.OnComplete != "" {
				it.signal(store.SignalFinish) // a final failure waits for its onComplete
			}
		}
		lastRecovery = now
	case it.running == 0:
		lastRecovery = now // nothing runs: restart the recovery clock
	}
	if err := l.starts(ctx, tx, it, from(st.StartCursor)); err != nil {
		return Outcome{}, nil, err
	}

	var report *stats.Report
	if st.Now.Sub(it.counters.Since) >= l.cfg.ReportInterval {
		report = l.takeReport(it, st.Now)
	}

	didWork := it.out.Completions > 0 || it.out.Cancelations > 0 || it.out.Started > 0 || it.out.Recovered > 0
	lastActivity := st.LastActivity
	if didWork {
		lastActivity = now
		it.out.Next = NextNow
	} else if err := l.decide(ctx, tx, it, lastRecovery, lastActivity); err != nil {
		return Outcome{}, nil, err
	}
	it.out.Signals = it.payload()
	if err := s.SaveState(ctx, tx, pool, store.SavedState{
		Generation:  it.out.Generation,
		StartCursor: it.cursors.start, CompletionCursor: it.cursors.completion, CancelationCursor: it.cursors.cancelation,
		LastRecovery: lastRecovery, LastActivity: lastActivity,
		RunningCount: it.running,
		Counters:     it.counters,
	}, l.keys.Channel, it.out.Signals); err != nil {
		return Outcome{}, nil, err
	}
	return it.out, report, nil
}

// completions consumes a batch of pending_completion and returns the ids of
// retries that must end as canceled instead.
func (l *Loop) completions(ctx context.Context, tx *sql.Tx, it *iteration, from int64) ([]int64, error) {
	s, pool, log := l.cfg.Store, l.cfg.Pool, l.cfg.Logger
	now := it.st.NowSegment
	comps, err := s.TakeCompletions(ctx, tx, pool, store.Range{From: from, To: math.MaxInt64}, l.cfg.BatchSize)
	if err != nil {
		return nil, err
	}
	it.out.Completions = len(comps)
	it.cursors.completion = advance(it.cursors.completion, comps, l.cfg.BatchSize, now, func(c store.Completion) int64 { return c.Segment })

	var canceled, retryIDs, retrySegs []int64
	retryOf := map[int64]store.Completion{}
	for _, c := range comps {
		if c.WasRunning {
			it.running--
			it.counters.Completed++
		} else {
			log.Error(ctx, "loop: completion of work that is not running", "work_id", c.WorkID, "attempt", c.Attempt)
		}
		if c.RunMs >= 0 {
			l.runTime.Add(time.Duration(c.RunMs) * time.Millisecond)
		}
		if !c.Retry {
			status := stats.Status(c.Status)
			switch status {
			case stats.StatusSuccess:
				it.counters.Succeeded++
			case stats.StatusFailed:
				it.counters.Failed++
			case stats.StatusCanceled:
				it.counters.Canceled++
			}
			l.completedEvent(ctx, c, status)
			continue
		}
		switch {
		case !c.WorkExists:
			log.Warn(ctx, "loop: retry of work that is gone", "work_id", c.WorkID)
		case c.Canceled || c.CancelPending:
			canceled = append(canceled, c.WorkID)
		default:
			backoff := float64(c.BackoffMs) * math.Pow(c.BackoffBase, float64(c.Attempts-1)) * (0.5 + l.cfg.Jitter())
			seg, reason := segments.BoundSegment(segments.Segment(now)+segments.Of(time.Duration(backoff*float64(time.Millisecond))), segments.Segment(now))
			if reason != segments.InRange {
				log.Warn(ctx, "loop: "+reason.String(), "work_id", c.WorkID)
			}
			retryIDs = append(retryIDs, c.WorkID)
			retrySegs = append(retrySegs, int64(seg))
			retryOf[c.WorkID] = c
		}
	}
	if len(retryIDs) > 0 {
		inserted, err := s.InsertRetries(ctx, tx, pool, retryIDs, retrySegs)
		if err != nil {
			return nil, err
		}
		for _, id := range inserted {
			it.counters.Retries++
			it.out.Retried++
			l.completedEvent(ctx, retryOf[id], stats.StatusRetrying)
			delete(retryOf, id)
		}
		for id := range retryOf {
			log.Error(ctx, "loop: retry skipped, work already has a pending start", "work_id", id)
		}
	}
	return canceled, nil
}

// cancelations consumes a batch of pending_cancelation and ends canceled
// work that is not running, together with the canceled retries.
func (l *Loop) cancelations(ctx context.Context, tx *sql.Tx, it *iteration, from int64, canceledRetries []int64) error {
	s, pool, log := l.cfg.Store, l.cfg.Pool, l.cfg.Logger
	cans, err := s.TakeCancelations(ctx, tx, pool, store.Range{From: from, To: math.MaxInt64}, l.cfg.BatchSize)
	if err != nil {
		return err
	}
	it.out.Cancelations = len(cans)
	it.cursors.cancelation = advance(it.cursors.cancelation, cans, l.cfg.BatchSize, it.st.NowSegment, func(c store.Cancelation) int64 { return c.Segment })

	toEnd := canceledRetries
	seen := map[int64]bool{}
	for _, c := range cans {
		switch {
		case seen[c.WorkID]:
			log.Debug(ctx, "loop: duplicate cancelation", "work_id", c.WorkID)
		case !c.Marked:
			log.Debug(ctx, "loop: cancelation of work that already ended", "work_id", c.WorkID)
		case c.WasPending:
			toEnd = append(toEnd, c.WorkID)
		case c.IsRunning:
			it.signal(store.SignalCancel)
		}
		seen[c.WorkID] = true
	}
	if len(toEnd) == 0 {
		return nil
	}
	ended, err := s.FinishCanceled(ctx, tx, pool, toEnd)
	if err != nil {
		return err
	}
	for _, e := range ended {
		it.counters.Canceled++
		it.out.Ended++
		if e.Finishing {
			it.signal(store.SignalFinish)
		}
		if log.EventsEnabled() {
			log.Completed(ctx, stats.Completed{WorkID: e.WorkID, Fn: e.Fn, Label: e.Label, Status: stats.StatusCanceled, Attempts: e.Attempts})
		}
	}
	return nil
}

// starts moves due pending_start rows into running, up to the free slots.
func (l *Loop) starts(ctx context.Context, tx *sql.Tx, it *iteration, from int64) error {
	s, pool, log := l.cfg.Store, l.cfg.Pool, l.cfg.Logger
	capacity := it.st.MaxParallelism - it.running
	if capacity <= 0 {
		return nil
	}
	now := it.st.NowSegment
	limit := min(capacity, l.cfg.BatchSize)
	rows, inserted, err := s.StartWork(ctx, tx, pool, store.Range{From: from, To: now}, limit)
	if err != nil {
		return err
	}
	last := int64(0)
	for _, r := range rows {
		last = max(last, r.Segment)
	}
	switch {
	case len(rows) == 0:
		it.cursors.start = max(it.cursors.start, now)
	case len(rows) >= limit:
		it.cursors.start = last // more may follow in that segment
	default:
		it.cursors.start = max(last, now)
	}
	if inserted < len(rows) {
		log.Error(ctx, "loop: pending starts of work that is already running were dropped", "count", len(rows)-inserted)
	}
	it.running += inserted
	it.out.Started = inserted
	nowTime := it.st.Now
	for _, r := range rows {
		lag := max(nowTime.Sub(segments.Segment(r.Segment).Time()), 0)
		l.startLag.Add(lag)
		if log.EventsEnabled() {
			log.Started(ctx, stats.Started{WorkID: r.WorkID, Fn: r.Fn, Label: r.Label, Attempt: r.Attempt + 1, StartLag: lag})
		}
	}
	if it.out.Started > 0 {
		it.signal(store.SignalStart)
	}
	return nil
}

// decide chooses between polling, scheduled and idle when the iteration
// found nothing to do. See the package doc for why the try-lock comes first
// and the re-check in a later statement.
func (l *Loop) decide(ctx context.Context, tx *sql.Tx, it *iteration, lastRecovery, lastActivity int64) error {
	s, pool := l.cfg.Store, l.cfg.Pool
	locked, err := s.TryKickLock(ctx, tx, l.keys.KickLock)
	if err != nil {
		return err
	}
	if !locked {
		it.out.Next, it.out.Delay = NextPoll, 0 // a producer is in flight; the driver backs off
		return nil
	}
	p, err := s.Recheck(ctx, tx, pool)
	if err != nil {
		return err
	}
	now := p.NowSegment
	capacity := it.st.MaxParallelism - it.running
	// Rows found here but not by this iteration's phases committed behind
	// their cursor: move the cursor back so the next iteration reaches them.
	buffer := int64(segments.CursorBuffer)
	actionable := false
	if p.Completion.Valid {
		it.cursors.completion = min(it.cursors.completion, p.Completion.Int64+buffer)
		actionable = true
	}
	if p.Cancelation.Valid {
		it.cursors.cancelation = min(it.cursors.cancelation, p.Cancelation.Int64+buffer)
		actionable = true
	}
	if capacity > 0 && p.Start.Valid && p.Start.Int64 <= now {
		it.cursors.start = min(it.cursors.start, p.Start.Int64+buffer)
		actionable = true
	}
	if actionable {
		it.out.Next = NextNow
		return nil
	}
	if l.cfg.Cooldown > 0 && segments.Segment(now-lastActivity) < segments.Of(l.cfg.Cooldown) {
		it.out.Next, it.out.Delay = NextPoll, l.cfg.PollInterval
		return nil
	}
	target, ok := int64(0), false
	if capacity > 0 && p.Start.Valid {
		target, ok = p.Start.Int64, true
	}
	if it.running > 0 {
		next := lastRecovery + int64(l.recoveryPeriod())
		if !ok || next < target {
			target, ok = next, true
		}
	}
	if !ok {
		it.out.Next = NextIdle
		return s.SetRunStatus(ctx, tx, pool, store.RunStatus{State: store.RunIdle, Generation: it.out.Generation})
	}
	bounded, _ := segments.BoundSegment(segments.Segment(target), segments.Segment(now))
	it.out.Next = NextScheduled
	it.out.Delay = max(time.Duration(int64(bounded)-now)*segments.Duration, 0)
	return s.SetRunStatus(ctx, tx, pool, store.RunStatus{
		State: store.RunScheduled, Segment: int64(bounded),
		Saturated:  it.running >= it.st.MaxParallelism,
		Generation: it.out.Generation,
	})
}

func (l *Loop) recoveryPeriod() segments.Segment { return segments.Of(l.cfg.RecoveryPeriod) }

// advance moves a cursor past the rows a phase consumed. A full batch stops
// at its last row's segment (more may follow in that segment); otherwise
// everything up to now was read.
func advance[T any](cursor int64, rows []T, limit int, now int64, segment func(T) int64) int64 {
	if len(rows) == 0 {
		return max(cursor, now)
	}
	last := segment(rows[len(rows)-1])
	if len(rows) >= limit {
		return last
	}
	return max(last, now)
}

func (l *Loop) completedEvent(ctx context.Context, c store.Completion, status stats.Status) {
	log := l.cfg.Logger
	if !log.EventsEnabled() {
		return
	}
	e := stats.Completed{WorkID: c.WorkID, Fn: c.Fn, Label: c.Label, Status: status, Attempts: c.Attempt + 1, Error: c.Error}
	if c.RunMs >= 0 {
		e.RunTime = time.Duration(c.RunMs) * time.Millisecond
	}
	log.Completed(ctx, e)
}

// takeReport turns the counters into a report and resets them. Gauges are
// filled in after commit (they scan the backlog).
func (l *Loop) takeReport(it *iteration, now time.Time) *stats.Report {
	c := it.counters
	r := &stats.Report{
		IntervalStart: c.Since, IntervalEnd: now,
		Completed: c.Completed, Succeeded: c.Succeeded, Failed: c.Failed, Retries: c.Retries, Canceled: c.Canceled,
		StartLag: l.startLag.Percentiles(), RunTime: l.runTime.Percentiles(),
	}
	l.startLag.Reset()
	l.runTime.Reset()
	it.counters = store.Counters{Since: now}
	return r
}

func (l *Loop) logReport(ctx context.Context, r *stats.Report) {
	g, err := l.cfg.Store.ReadGauges(ctx, l.cfg.DB, l.cfg.Pool)
	if err != nil {
		l.cfg.Logger.Warn(ctx, "loop: report gauges unavailable", "error", err)
	}
	r.Running, r.Backlog, r.Future, r.Unclaimed, r.Finishing = g.Running, g.Backlog, g.Future, g.Unclaimed, g.Finishing
	r.ComputeRates()
	l.cfg.Logger.Report(ctx, *r)
	l.lastReport = r
}

// Samples returns the current interval's start-lag and run-time
// percentiles as this process observed them.
func (l *Loop) Samples() (startLag, runTime stats.Percentiles) {
	return l.startLag.Percentiles(), l.runTime.Percentiles()
}
