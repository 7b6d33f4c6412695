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
// granted), sending a NOTIFY if it says idle or scheduled too late. They
// never write run_status, so a long caller transaction holds no row lock;
// the loop marks itself running when it wakes. The loop moves to idle or
// scheduled only after
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
// A producer that runs in the leading process wakes its driver directly
// once its transaction ends, committed or not, and marks its NOTIFY with its
// Pool's origin: the driver, while it leads, ignores such a notification
// (it arrives while the iteration it asks for runs, and would cost a second,
// empty one), so a quiet enqueue costs two iterations, one to start it and
// one to record its result (DriverConfig.Origin). An enqueue there notifies
// only an idle loop, for the followers, which stop checking on the leader
// while it is idle (store.KickSource.Leading); one whose process lost the
// lead before it committed kicks in full afterwards.
//
// # Deviations from the Convex loop
//
//   - Producers never write run_status (see above); the loop marks itself
//     running when a kick or its timer wakes it, except from scheduled
//     saturated, which it leaves as it is. A pool at its limit wakes for
//     every freed slot, hands it on and is at its limit again: marking
//     itself running and writing the same scheduled saturated row back
//     were two writes of every such iteration (slots benchmark, six
//     alternating pairs, all in its favour: efficiency 0.881 against
//     0.868). The row then says less than the truth only in the safe
//     direction: a running loop is kicked by nobody, a scheduled
//     saturated one by the cancels and results that it could act on, and
//     the loop writes run_status whenever it goes quiet in any other way
//     (see decide).
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
//   - The process that runs the loop claims, in the statement that starts
//     work, as much as its own free worker slots can take, and hands it to
//     its workers after the commit with the arguments already read. Other
//     processes claim with FOR UPDATE SKIP LOCKED as DESIGN.md describes.
//     This saves a transaction and an update per item on the common path.
//   - Likewise the results of that process's own workers (those that run
//     no onComplete) are recorded by the next iteration, first thing in its
//     transaction, behind the same attempt fence the workers use: handing
//     a slot on then costs one commit, not two (the fsync of a commit is
//     most of an iteration's time on small machines). A terminal one frees
//     its slot right there instead of passing through pending_completion,
//     which the same transaction would only insert and delete; retries
//     still do, for the completion phase to schedule.
//   - An enqueue made in the process that runs the loop, while the loop
//     waits for work, does not commit on its own and kick: its inserts run
//     inside the transaction of the iteration that the driver starts at
//     once, right after the state lock, and commit with it
//     (Driver.RunInIteration). Its work starts one commit and one wake-up
//     of an idle connection sooner, which at 50 enqueues/s was what kept
//     our enqueue-to-start latency behind River's. Producers still only
//     append rows; the loop only carries them.
//   - Convex runs again at once after any iteration that did work. Here an
//     iteration that did work without filling a batch takes the kick lock
//     and re-checks itself, as an empty one does, and goes quiet if
//     nothing is left: the empty iteration it spares was 38% of all
//     iterations in the slots benchmark, each a transaction that delayed
//     every slot freed meanwhile. One that filled a batch runs again.
//     Nor does it go quiet while results of this process's workers wait
//     (they would wake it at once): it stays running and goes on.
//   - An iteration that the driver runs for its own workers' results
//     leaves out the completion and cancelation phases when the last
//     re-check found their tables empty (Driver.KickForResults); every
//     other wake-up runs them (Loop.rescan says why nothing is missed).
//     In the slots benchmark that was a statement or two of every
//     iteration that each freed slot waits for.
//   - Convex starts its next iteration as soon as it is kicked. Here the
//     iteration after a busy one (many items moved, slots left free) waits
//     until DriverConfig.GatherDelay after it, so that the enqueues and
//     results arriving meanwhile share one transaction instead of each
//     costing one: under sustained load the iterations' fixed costs took
//     the CPU the producers needed (steady benchmark: 450 iterations a
//     second of 12 items became 120 of 60, and throughput rose by a fifth
//     to a half). A pool at its limit, or a quiet one, never waits.
//
// # Round trips
//
// An iteration is pipelined: the first round trip sends BEGIN, the state
// lock, the workers' results, the completion, cancelation and start phases
// (less those left out as above), the kick lock's try-lock and the re-check
// together (the phases' ranges come from the state this process wrote
// last, which the database's equals or lags behind, in safe directions,
// while the generation matches; the start phase computes its own limit
// from the running count the phases before it left). The second sends the
// run status, the state and COMMIT. An iteration costs two round trips
// whether it goes on, goes scheduled or goes idle, plus one when it
// schedules retries or ends canceled work, and those of the recovery pass.
//
// While the pool is busy, an iteration that can neither schedule a retry
// nor end work (no failed result of this process's workers, the
// completion and cancelation tables empty at the last re-check) sends the
// generation's increment and COMMIT in its first round trip and has no
// second: its state save is put off, to the next iteration that must
// write the run status or the report, or at most stateSaveInterval (see
// Loop.fastPath for why what it leaves unwritten is safe to lag). The
// state lock then fails the transaction on a stale generation instead of
// returning it. In the benchmarks this is nearly every iteration of a
// drain and of a pool at its limit; each freed slot and each next batch
// no longer waits for the second round trip.
package loop

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
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
	// activity before it goes idle. Zero: every kick is a NOTIFY, so an
	// idle loop wakes as fast as a polling one, and polling costs a
	// transaction per PollInterval for every quiet moment. Measured against
	// River at 50 enqueues/s (examples/bench -mode latency, medians of 3
	// rounds): enqueue-to-start p50/p99 ratios 0.95/0.97 with no cooldown,
	// 0.96/0.99 and 1.05/1.38 with 2 s at 200 ms (Convex's choice), 1.13/1.23
	// with 2 s at 20 ms: within the noise between runs, for 10 or 100
	// transactions per burst.
	CooldownDefault = time.Duration(0)
	// PollIntervalDefault is the polling period during a cooldown.
	PollIntervalDefault = 20 * time.Millisecond
	// StatementTimeoutDefault bounds each statement of an iteration.
	StatementTimeoutDefault = 30 * time.Second
	// ProcessCountMaxAgeDefault: counting the processes reads every
	// backend slot of the server (pg_stat_activity); done every iteration,
	// it took 45 µs of the 0.53 ms the server spent on an iteration's
	// first round trip in the slots benchmark. A process that starts or stops changes the division of
	// the batches at most this much later; meanwhile work meant for it is
	// claimed by its own claimer, or by this process's claimer.
	ProcessCountMaxAgeDefault = time.Second
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
	// ProcessCountMaxAge is how long the start phase trusts its last count
	// of the pool's started processes, by which it divides a batch between
	// this process's workers and the others (ProcessCountMaxAgeDefault).
	ProcessCountMaxAge time.Duration
	// Local, if set, receives the work the loop claims for the workers of
	// this process (see the package doc).
	Local LocalWorkers
}

// LocalWorkers is the face of this process's workers that the loop hands
// work to directly.
type LocalWorkers interface {
	// Reserve sets aside up to max free slots for one iteration and says
	// for which worker and functions; a claim with no slots is allowed.
	Reserve(max int) store.LocalClaim
	// Deliver runs the attempts claimed for this process, after the
	// iteration committed, and frees the reserved slots it did not use.
	// The loop reuses starts' backing array: it is valid only during the
	// call.
	Deliver(claim store.LocalClaim, starts []store.Start)
	// Unreserve frees the slots of an iteration that did not commit.
	Unreserve(claim store.LocalClaim)
	// TakeResults hands the iteration up to max results of this process's
	// attempts that run no onComplete, to record in its own transaction:
	// a slot is then handed on with one commit instead of two.
	TakeResults(max int) []store.Result
	// ResultsRecorded tells which of the taken results passed the attempt
	// fence, after the iteration committed.
	ResultsRecorded(taken []store.Result, recorded []store.Recorded)
	// ResultsWaiting reports whether results wait for TakeResults.
	ResultsWaiting() bool
	// ReturnResults gives back results of an iteration that did not commit.
	ReturnResults(taken []store.Result)
}

// Loop runs iterations of one pool's main loop.
type Loop struct {
	cfg  Config
	keys store.Keys

	// Samples for the report's percentiles, kept by the process that runs
	// the loop (a failover starts a fresh interval's samples).
	startLag *stats.Sampler
	runTime  *stats.Sampler

	mu sync.Mutex // serializes Main within this process
	// rescan asks the next iteration to run every phase. Without it, a
	// phase whose table the last iteration's re-check found empty is left
	// out: in a busy pool with one process, iterations that only record
	// the workers' results and start work were a statement or two longer
	// than they needed to be, and every freed slot waits for them. Rows
	// appear in those tables only by producers, which kick (Driver.Kick
	// sets this), by another process's producers, whose notification
	// kicks, and by recovery, which sets it; a row that slips past the
	// flag is still seen by the re-check, which then runs the iteration
	// again with the phase. An iteration on the fast path (see fastPath)
	// relies on that re-check alone.
	rescan atomic.Bool
	// startsBuf and deliverBuf are the backing arrays of the last
	// iteration's starts, kept for the next one (Main is serialized): a
	// busy loop reads thousands of starts per iteration, and growing fresh
	// slices for them was a large share of the bytes a drain allocated,
	// and so of its garbage collections. Emptied and cleared after each
	// iteration, so no arguments outlive it.
	startsBuf, deliverBuf []store.Start
	// cache is the state this process wrote last; while the generation
	// matches, the database's equals it or lags behind it as fastPath
	// allows, which lets the first round trip carry the phases along with
	// the state lock.
	cache struct {
		valid bool
		state store.State
		at    time.Time
		// pending is what the last iteration's re-check saw.
		pending store.Pending
		// saved is when an iteration last wrote the whole state.
		saved time.Time
		// busy: the last iteration went on at once, or went back to
		// scheduled saturated.
		busy bool
	}
	// slowNext makes the next iteration write the whole state (see
	// fastPath): the last one committed early but has more to write.
	slowNext bool
	// checkStarts makes the start phase probe for work that is already
	// running, once an iteration has found some (see store.StartWorkOp);
	// the invariant broken once, it is not trusted again by this process.
	checkStarts bool
	// processes is the start phase's last count of the pool's started
	// processes, and when it was taken (see ProcessCountMaxAge).
	processes struct {
		n  int
		at time.Time
	}
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
	if cfg.ProcessCountMaxAge <= 0 {
		cfg.ProcessCountMaxAge = ProcessCountMaxAgeDefault
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

// SetLocal sets (or, with nil, clears) the workers of this process that
// the loop hands work to; it takes effect at the next iteration.
func (l *Loop) SetLocal(lw LocalWorkers) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.cfg.Local = lw
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
	// changed and Generation holds the current value, or -1 when the
	// iteration could not read it (one that would have committed in its
	// first round trip, see Loop.fastPath).
	Stale bool
	Next  Next
	Delay time.Duration
	// Counts of what the iteration did.
	Completions, Cancelations, Started, Retried, Ended, Recovered int
	// Delivered counts the attempts handed to this process's workers.
	Delivered int
	// Recorded counts the results of this process's workers the iteration
	// recorded (Local.TakeResults).
	Recorded int
	// Saturated says the iteration left as much running as the pool's
	// limit allows; BatchFull that a phase stopped at BatchSize, so more
	// rows may wait.
	Saturated, BatchFull bool
	// Signals is the set of worker signals it sent (store.Signal* letters).
	Signals string
	// Fast says the iteration committed in its first round trip and put
	// its state save off (see Loop.fastPath).
	Fast bool
	// Report is the report the iteration logged, if one was due.
	Report *stats.Report
}

// iteration carries one call's state through its phases.
type iteration struct {
	st           store.State
	running      int
	counters     store.Counters
	cursors      struct{ start, completion, cancelation int64 }
	lastRecovery int64
	lastActivity int64
	recovery     bool
	signals      map[byte]bool
	local        store.LocalClaim
	results      []store.Result // taken from Local, recorded first
	recorded     store.LocalRecorded
	comps        store.Completions
	cans         []store.Cancelation
	starts       store.Starts
	deliver      []store.Start
	// locked and pending are the kick lock and re-check taken after the
	// phases (see decide); pending is only meaningful when locked.
	locked  bool
	pending store.Pending
	// retryDue is the earliest segment of the retries endings scheduled,
	// which the re-check ran too early to see (0: none).
	retryDue int64
	final    []store.Op // statements of the last round trip, before COMMIT
	out      Outcome
	// rescan: run every phase (Loop.rescan); skipped*: a phase was left
	// out, so its cursor stays where it was.
	rescan                                  bool
	skippedCompletions, skippedCancelations bool
	// carried, if set, are a producer's statements that run in the
	// iteration's transaction; carriedFailed says they failed, and
	// committing that the last round trip, with COMMIT, was sent.
	carried       *carried
	carriedFailed bool
	committing    bool
	// countedProcesses: the start phase counted the pool's processes
	// itself rather than take the cached count.
	countedProcesses bool
	// fast: the first round trip committed (see fastPath); fastOK: the
	// caller allows it.
	fast, fastOK bool
	// failedResult: a failure is among results, which may retry.
	failedResult bool
}

func (it *iteration) signal(b byte) {
	if it.signals == nil {
		it.signals = map[byte]bool{}
	}
	it.signals[b] = true
}

// payload returns the signals as one notification's letters, less sent
// (0: none), which a statement of the iteration already sent.
func (it *iteration) payload(sent byte) string {
	var b strings.Builder
	for _, s := range []byte{store.SignalStart, store.SignalCancel, store.SignalFinish} {
		if it.signals[s] && s != sent {
			b.WriteByte(s)
		}
	}
	return b.String()
}

// Main runs one iteration as one transaction; see the package doc. It runs
// every phase: only the driver's iterations, which producers kick, leave
// out those whose tables were empty at the last re-check.
func (l *Loop) Main(ctx context.Context, generation int64) (Outcome, error) {
	l.rescan.Store(true)
	return l.main(ctx, generation, nil, false)
}

// carriedLockTimeout bounds each lock wait of an iteration that carries a
// producer's statements (see iterate).
const carriedLockTimeout = "SELECT set_config('lock_timeout', '1s', true)"

// errNotCarried answers a producer whose statements an iteration did not
// commit and that are known not to have committed: it runs them on its own.
var errNotCarried = errors.New("pgworkpool: loop: not carried by an iteration")

// carried is a producer's statements that run inside the transaction of an
// iteration, right after the state lock, so that the iteration's phases see
// their rows (see Driver.RunInIteration). done receives, once, nil when the
// iteration committed, errNotCarried when nothing committed and the
// producer may run them on its own, and any other error when they failed
// or the commit's outcome is unknown.
type carried struct {
	ops  []store.Op
	done chan error // buffered, so that answering never blocks
	once sync.Once
}

// answer tells the producer how its statements went; only the first
// answer counts. A nil carried has no producer.
func (c *carried) answer(err error) {
	if c != nil {
		c.once.Do(func() { c.done <- err })
	}
}

// main runs one iteration; fastOK lets it commit in its first round trip
// when it can (see fastPath).
func (l *Loop) main(ctx context.Context, generation int64, c *carried, fastOK bool) (Outcome, error) {
	defer c.answer(errNotCarried) // a no-op once answered below
	l.mu.Lock()
	defer l.mu.Unlock()
	conn, err := l.cfg.DB.Conn(ctx)
	if err != nil {
		return Outcome{}, fmt.Errorf("pgworkpool: loop: %w", err)
	}
	defer conn.Close()
	it := &iteration{carried: c, rescan: l.rescan.Swap(false), fastOK: fastOK}
	it.starts.Rows, it.deliver = l.startsBuf, l.deliverBuf
	defer func() { l.keepBuffers(it) }()
	if l.cfg.Local != nil {
		// Results first: the slot of an attempt that ended meanwhile is
		// then counted free by the reservation as well as by the start
		// phase, which frees it in the database when it records the
		// result. Reserved the other way round, the start phase could
		// start more than the reservation holds, and those rows wait for
		// a claim transaction of their own (about 6% of a drain's items).
		it.results = l.cfg.Local.TakeResults(l.cfg.BatchSize)
		it.local = l.cfg.Local.Reserve(l.cfg.BatchSize)
	}
	report, err := l.iterate(ctx, conn, generation, it)
	if err != nil && !l.checkStarts && store.IsRunningConflict(err) {
		// Nothing committed: run the iteration again, checking starts,
		// with what this one took. Should the rollback fail, the conflict
		// takes the error path below.
		l.cfg.Logger.Error(ctx, "loop: pending starts of work that is already running; checking every start from now on", "error", err)
		l.checkStarts = true
		if _, rbErr := conn.ExecContext(context.WithoutCancel(ctx), "ROLLBACK"); rbErr == nil {
			again := &iteration{carried: c, rescan: true, results: it.results, local: it.local}
			again.starts.Rows, again.deliver = it.starts.Rows[:0], it.deliver[:0]
			clear(it.starts.Rows)
			it = again
			report, err = l.iterate(ctx, conn, generation, it)
		}
	}
	switch {
	case err == nil && !it.out.Stale:
		c.answer(nil)
	case err != nil && (it.carriedFailed || it.committing):
		c.answer(err) // theirs, or a commit whose outcome is unknown
	}
	if err != nil || it.out.Stale {
		// Roll back whatever ran; a fresh context, as ctx may be why we
		// are leaving.
		_, _ = conn.ExecContext(context.WithoutCancel(ctx), "ROLLBACK")
		if l.cfg.Local != nil {
			l.cfg.Local.Unreserve(it.local)
			if len(it.results) > 0 {
				l.cfg.Local.ReturnResults(it.results)
			}
		}
		l.cache.valid = false
		if err != nil {
			return Outcome{}, fmt.Errorf("pgworkpool: loop: %w", err)
		}
		return it.out, nil
	}
	if l.cfg.Local != nil {
		it.local.Closed = it.running > it.st.MaxParallelism || it.st.MaxParallelism == 0
		l.cfg.Local.Deliver(it.local, it.deliver)
		it.out.Delivered = len(it.deliver)
		if len(it.results) > 0 {
			l.cfg.Local.ResultsRecorded(it.results, it.recorded.Recorded)
			it.out.Recorded = len(it.recorded.Recorded)
		}
	}
	l.remember(it)
	if report != nil {
		l.logReport(ctx, report)
		it.out.Report = report
	}
	return it.out, nil
}

// keepBuffers keeps an iteration's start slices for the next one, empty.
func (l *Loop) keepBuffers(it *iteration) {
	clear(it.starts.Rows)
	clear(it.deliver)
	l.startsBuf, l.deliverBuf = it.starts.Rows[:0], it.deliver[:0]
}

// remember caches the state this iteration wrote.
func (l *Loop) remember(it *iteration) {
	st := it.st
	st.Generation = it.out.Generation
	st.StartCursor, st.CompletionCursor, st.CancelationCursor = it.cursors.start, it.cursors.completion, it.cursors.cancelation
	st.LastRecovery, st.LastActivity = it.lastRecovery, it.lastActivity
	st.RunningCount = it.running
	st.Counters = it.counters
	l.cache.valid, l.cache.state, l.cache.at, l.cache.pending = true, st, time.Now(), it.pending
	if !it.fast {
		l.cache.saved = l.cache.at
	}
	l.cache.busy = it.out.Next == NextNow || it.out.Next == NextScheduled && it.out.Saturated
	if it.countedProcesses && it.starts.Processes > 0 {
		l.processes.n, l.processes.at = it.starts.Processes, time.Now()
	}
}

func (l *Loop) recoveryPeriod() segments.Segment { return segments.Of(l.cfg.RecoveryPeriod) }

// phases returns the statements of the local results and of the
// completion, cancelation and start phases for a state, reading into it.
func (l *Loop) phases(st store.State, cached, recoveryIter bool, it *iteration) []store.Op {
	s, pool := l.cfg.Store, l.cfg.Pool
	from := func(cursor int64) int64 {
		if recoveryIter {
			return 0 // the recovery pass rescans every pending table from its start
		}
		return cursor - int64(segments.CursorBuffer)
	}
	var ops []store.Op
	if len(it.results) > 0 {
		// Recorded first, so the completion phase below consumes the
		// retries among them.
		ops = append(ops, s.RecordLocalResultsOp(pool, it.results, &it.recorded))
	}
	// A phase whose table the last re-check found empty is left out
	// (see Loop.rescan), unless this transaction's own results may retry.
	known := cached && !recoveryIter && (!it.rescan || it.fast)
	if !known || l.cache.pending.Completion.Valid || it.failedResult {
		ops = append(ops, s.TakeCompletionsOp(pool, store.Range{From: from(st.CompletionCursor), To: math.MaxInt64}, l.cfg.BatchSize, &it.comps))
	} else {
		it.skippedCompletions = true
	}
	if !known || l.cache.pending.Cancelation.Valid {
		ops = append(ops, s.TakeCancelationsOp(pool, store.Range{From: from(st.CancelationCursor), To: math.MaxInt64}, l.cfg.BatchSize, &it.cans))
	} else {
		it.skippedCancelations = true
	}
	local := it.local
	if time.Since(l.processes.at) < l.cfg.ProcessCountMaxAge {
		local.Processes = l.processes.n
	}
	it.countedProcesses = local.Processes == 0
	if l.checkStarts {
		// Rows it leaves out could not be told apart from standbys (see
		// starts), so a loop that checks starts claims none.
		local.Standby = 0
	}
	return append(ops,
		s.StartWorkOp(pool, store.Range{From: from(st.StartCursor), To: math.MaxInt64}, l.cfg.BatchSize, local, l.checkStarts, l.keys.Channel, &it.starts),
		// The re-check is a later statement than the try-lock, so its
		// snapshot is taken after the lock was granted (see decide).
		s.TryKickLockOp(l.keys.KickLock, &it.locked),
		s.RecheckOp(pool, &it.pending),
	)
}

// stateSaveInterval bounds how long iterations that commit in their first
// round trip (see fastPath) go without writing the loop's whole state.
const stateSaveInterval = time.Second

// fastPath says whether a cached iteration commits in its first round
// trip, with no second one for the state. That is the common case of a
// busy pool that runs in one process: the iteration records its workers'
// successes and starts work, and its second round trip only wrote the
// state and committed. Each freed slot waited for that round trip (0.3 ms
// of the 1 ms an iteration took in the slots benchmark), and so did each
// drain iteration's next batch. It is taken only while the pool is busy,
// after an iteration that went on at once or went back to scheduled
// saturated (see decide): one that wakes a quiet pool usually goes quiet
// again, which needs the whole state written, and would then cost a
// second iteration.
//
// What such an iteration leaves unwritten may lag in the database, but
// only in safe directions: the cursors (a leader that reads them scans
// from further back; a cursor is never ahead), last_recovery (a recovery
// pass comes sooner) and last_activity (a cooldown ends sooner). The
// generation is moved on in the same round trip, after the state lock
// checked it and would have failed the transaction otherwise, so a stale
// iteration commits nothing; the running count and the report counters
// are kept by the statements themselves. The next iteration writes the
// whole state when this one cannot do without it: when it would change
// run_status (decide needs its own transaction's try-lock and re-check
// for that), or a report is due; and one does at least every
// stateSaveInterval.
//
// It is taken only when nothing can make the iteration schedule a retry or
// end work, which must commit with the rows that led to them: no failed
// result among the workers' results, and the completion and cancelation
// phases left out, their tables empty at the last re-check. A kick does
// not bring those phases back as it does for other iterations: the
// re-check of this round trip sees any row that came meanwhile, and the
// iteration that it then runs at once includes the phase.
func (l *Loop) fastPath(it *iteration) bool {
	if !it.fastOK || !l.cache.busy || it.recovery || l.checkStarts || l.slowNext || time.Since(l.cache.saved) >= stateSaveInterval ||
		l.cache.pending.Completion.Valid || l.cache.pending.Cancelation.Valid || it.failedResult {
		return false
	}
	return true
}

func (l *Loop) iterate(ctx context.Context, conn *sql.Conn, generation int64, it *iteration) (*stats.Report, error) {
	s, pool, log := l.cfg.Store, l.cfg.Pool, l.cfg.Logger
	var st store.State
	it.failedResult = slices.ContainsFunc(it.results, func(r store.Result) bool { return r.Status == "failed" })
	cached := l.cache.valid && l.cache.state.Generation == generation
	if cached {
		c := l.cache.state
		elapsed := int64(segments.FromTime(time.Now()) - segments.FromTime(l.cache.at))
		it.recovery = c.RunningCount > 0 && segments.Segment(c.NowSegment+elapsed-c.LastRecovery) >= l.recoveryPeriod()
		it.fast = l.fastPath(it)
	}
	if !it.fast {
		l.slowNext = false // this one writes the state
	}
	first := []store.Op{store.Raw("BEGIN"), s.LockStateOp(pool, generation, l.cfg.StatementTimeout, it.fast, &st)}
	carriedFrom, carriedTo := 0, 0 // the carried statements' indexes in first
	if it.carried != nil {
		// Their producer waits for this transaction, and may hold a row
		// that it would wait for (an onComplete's work row, when the
		// onComplete enqueues with a context other than its own): give
		// up waiting soon, so that the producer commits them by itself.
		first = append(first, store.Raw(carriedLockTimeout))
		carriedFrom = len(first)
		first = append(first, it.carried.ops...)
		carriedTo = len(first)
	}
	commitAt := len(first) // the COMMIT's index in first, if it has one
	if cached {
		first = append(first, l.phases(l.cache.state, true, it.recovery, it)...)
		if it.fast {
			commitAt = len(first) + 1
			first = append(first, s.BumpGenerationOp(pool, generation), store.Raw("COMMIT"))
		}
	}
	failedAt, err := store.PipelineAt(ctx, conn, first...)
	if err != nil {
		if it.fast && failedAt == 1 && store.IsStaleGeneration(err) {
			log.Debug(ctx, "loop: stale iteration ignored", "generation", generation)
			it.out = Outcome{Stale: true, Generation: -1}
			return nil, nil
		}
		it.carriedFailed = failedAt >= carriedFrom && failedAt < carriedTo
		// Nothing committed if a statement before the COMMIT failed; a
		// batch that failed as a whole (0) may have reached the server.
		it.committing = it.fast && (failedAt == 0 || failedAt >= commitAt)
		return nil, err
	}
	if !st.Found {
		return nil, ErrPoolNotFound
	}
	if st.Generation != generation {
		log.Debug(ctx, "loop: stale iteration ignored", "generation", generation, "current", st.Generation)
		it.out = Outcome{Stale: true, Generation: st.Generation}
		return nil, nil
	}
	if !cached {
		it.recovery = st.RunningCount > 0 && segments.Segment(st.NowSegment-st.LastRecovery) >= l.recoveryPeriod()
		if err := store.Pipeline(ctx, conn, l.phases(st, false, it.recovery, it)...); err != nil {
			return nil, err
		}
	}
	if lvl, err := stats.ParseLevel(st.LogLevel); err == nil {
		log.SetStoredLevel(lvl, st.ConfigVersion.UnixNano())
	}
	it.st, it.running, it.counters = st, st.RunningCount, st.Counters
	it.cursors.start, it.cursors.completion, it.cursors.cancelation = st.StartCursor, st.CompletionCursor, st.CancelationCursor
	it.lastRecovery, it.lastActivity = st.LastRecovery, st.LastActivity
	it.out.Generation = generation + 1

	retries, canceledRetries := l.completions(ctx, it)
	toEnd := l.cancelations(ctx, it, canceledRetries)
	l.starts(ctx, it)
	if err := l.endings(ctx, conn, it, retries, toEnd); err != nil {
		return nil, err
	}
	if err := l.recover(ctx, conn, it); err != nil {
		return nil, err
	}

	var report *stats.Report
	switch due := st.Now.Sub(it.counters.Since) >= l.cfg.ReportInterval; {
	case due && it.fast:
		l.slowNext = true // the report resets the counters that only a state save writes
	case due:
		report = l.takeReport(it, st.Now)
	}
	o := &it.out
	worked := o.Completions > 0 || o.Cancelations > 0 || o.Started > 0 || o.Recovered > 0
	if worked {
		it.lastActivity = st.NowSegment
	}
	o.Saturated, o.BatchFull = it.running >= it.st.MaxParallelism, l.batchFull(it)
	if worked && (o.BatchFull || o.Recovered > 0) {
		// More is waiting behind a full batch, or recovery recorded
		// completions after the re-check.
		o.Next = NextNow
	} else {
		l.decide(it, worked)
	}
	o.Signals, o.Fast = it.payload(0), it.fast
	if it.fast {
		if len(it.final) > 0 {
			// The run status that decide would write must commit with a
			// try-lock and a re-check of its own transaction: the next
			// iteration's, at once.
			it.final = nil
			o.Next, o.Delay = NextNow, 0
			l.slowNext = true
		}
		return nil, nil
	}
	// A SignalStart the start statement sent wakes every claimer, which
	// then claims any unclaimed row, those given back by UnclaimOp too.
	startSent := byte(0)
	if it.starts.Notified > 0 {
		startSent = store.SignalStart
	}
	last := append(it.final, s.SaveStateOp(pool, store.SavedState{
		Generation:  o.Generation,
		StartCursor: it.cursors.start, CompletionCursor: it.cursors.completion, CancelationCursor: it.cursors.cancelation,
		LastRecovery: it.lastRecovery, LastActivity: it.lastActivity,
		Counters: it.counters,
	}, l.keys.Channel, it.payload(startSent)), store.Raw("COMMIT"))
	it.committing = true
	if err := store.Pipeline(ctx, conn, last...); err != nil {
		return nil, err
	}
	return report, nil
}

// completions accounts for the completions the first round trip consumed
// and returns the retries to schedule (ids and segments) and the ids of
// retries that must end as canceled instead.
func (l *Loop) completions(ctx context.Context, it *iteration) (retries [2][]int64, canceled []int64) {
	log := l.cfg.Logger
	now := it.st.NowSegment
	comps := it.comps.Done()
	if !it.skippedCompletions {
		it.cursors.completion = advance(it.cursors.completion, comps, l.cfg.BatchSize, now, func(c store.Completion) int64 { return c.Segment })
	}
	// The terminal results of this process's workers ended with their
	// recording, without a pending_completion row.
	comps = append(it.recorded.Completions.Done(), comps...)
	it.out.Completions = len(comps)
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
			retries[0] = append(retries[0], c.WorkID)
			retries[1] = append(retries[1], int64(seg))
		}
	}
	return retries, canceled
}

// cancelations accounts for the cancelations the first round trip consumed
// and returns the work to end as canceled (with the canceled retries).
func (l *Loop) cancelations(ctx context.Context, it *iteration, canceledRetries []int64) []int64 {
	log := l.cfg.Logger
	it.out.Cancelations = len(it.cans)
	if !it.skippedCancelations {
		it.cursors.cancelation = advance(it.cursors.cancelation, it.cans, l.cfg.BatchSize, it.st.NowSegment, func(c store.Cancelation) int64 { return c.Segment })
	}
	toEnd := canceledRetries
	seen := map[int64]bool{}
	for _, c := range it.cans {
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
	return toEnd
}

// starts accounts for what the start phase moved into running.
func (l *Loop) starts(ctx context.Context, it *iteration) {
	log := l.cfg.Logger
	now := it.st.NowSegment
	st := &it.starts
	rows := st.Rows
	last := int64(0)
	for _, r := range rows {
		last = max(last, r.Segment)
	}
	switch {
	case len(rows) == 0:
		it.cursors.start = max(it.cursors.start, now)
	case len(rows) >= st.Limit:
		it.cursors.start = last // more may follow in that segment
	default:
		it.cursors.start = max(last, now)
	}
	if len(rows) == 0 {
		return
	}
	// The phase's own count is authoritative: it saw the completions of
	// this transaction.
	it.running = st.Running
	it.out.Started = st.Inserted
	mine := make([]int64, 0, len(rows))
	remote := false
	for _, r := range rows {
		lag := max(it.st.Now.Sub(segments.Segment(r.Segment).Time()), 0)
		l.startLag.Add(lag)
		if log.EventsEnabled() {
			log.Started(ctx, stats.Started{WorkID: r.WorkID, Fn: r.Fn, Label: r.Label, Attempt: r.Attempt + 1, StartLag: lag})
		}
		if r.Mine {
			mine = append(mine, r.WorkID)
			it.deliver = append(it.deliver, r)
		} else {
			remote = true
		}
	}
	if st.Inserted < len(rows) {
		// Some work was already running (an invariant violation): the
		// rows claimed for us cannot be told apart from it, so give them
		// to the claimers instead.
		log.Error(ctx, "loop: pending starts of work that is already running were dropped", "count", len(rows)-st.Inserted)
		if len(mine) > 0 {
			it.final = append(it.final, l.cfg.Store.UnclaimOp(mine, it.local.Worker.ID, st.StartedAt))
			it.deliver, remote = nil, true
		}
	}
	if remote {
		it.signal(store.SignalStart)
	}
}

// endings schedules retries and ends canceled work, in one round trip.
func (l *Loop) endings(ctx context.Context, conn *sql.Conn, it *iteration, retries [2][]int64, toEnd []int64) error {
	s, pool, log := l.cfg.Store, l.cfg.Pool, l.cfg.Logger
	var ops []store.Op
	var inserted []int64
	var ended []store.Ended
	if len(retries[0]) > 0 {
		ops = append(ops, s.InsertRetriesOp(pool, retries[0], retries[1], &inserted))
	}
	if len(toEnd) > 0 {
		ops = append(ops, s.FinishCanceledOp(pool, toEnd, &ended))
	}
	if len(ops) == 0 {
		return nil
	}
	if err := store.Pipeline(ctx, conn, ops...); err != nil {
		return err
	}
	byID := make(map[int64]store.Completion, len(it.comps.Rows))
	for _, c := range it.comps.Rows {
		byID[c.WorkID] = c
	}
	// The segment each retry is due at; what is left after the inserted
	// ones are taken out was skipped.
	due := make(map[int64]int64, len(retries[0]))
	for i, id := range retries[0] {
		due[id] = retries[1][i]
	}
	for _, id := range inserted {
		if it.retryDue == 0 || due[id] < it.retryDue {
			it.retryDue = due[id]
		}
		delete(due, id)
		it.counters.Retries++
		it.out.Retried++
		l.completedEvent(ctx, byID[id], stats.StatusRetrying)
	}
	for _, id := range retries[0] {
		if _, skipped := due[id]; skipped {
			log.Error(ctx, "loop: retry skipped, work already has a pending start", "work_id", id)
		}
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

// recover runs the recovery pass on a recovery iteration, and otherwise
// restarts the recovery clock while nothing runs. An iteration that began
// with nothing running restarts it too: whatever runs now started in this
// iteration and cannot be lost yet. Left alone, the clock kept the time of
// the pool's last busy spell, and the first iteration after a quiet minute
// scheduled a recovery pass at once (in the drain benchmark, 15 ms of the
// loop's time reading the thousand attempts it had just started).
func (l *Loop) recover(ctx context.Context, conn *sql.Conn, it *iteration) error {
	switch {
	case it.recovery:
		res, err := recovery.Run(ctx, conn, l.cfg.Store, l.cfg.Pool, l.cfg.Recovery, l.cfg.Logger)
		if err != nil {
			return err
		}
		it.running -= len(res.Orphans)
		it.out.Recovered = len(res.Recorded) + len(res.Orphans)
		if len(res.Recorded) > 0 {
			l.rescan.Store(true) // completions queued after the re-check
		}
		for _, r := range res.Recorded {
			if r.OnComplete != "" {
				it.signal(store.SignalFinish) // a final failure waits for its onComplete
			}
		}
		it.lastRecovery = it.st.NowSegment
	case it.running == 0 || it.st.RunningCount == 0:
		it.lastRecovery = it.st.NowSegment
	}
	return nil
}

// batchFull reports whether a phase of the iteration stopped at its batch
// bound, so that more rows may wait that the next iteration must take.
func (l *Loop) batchFull(it *iteration) bool {
	n := l.cfg.BatchSize
	return len(it.results) >= n || len(it.comps.Rows) >= n || len(it.cans) >= n || len(it.starts.Rows) >= n
}

// decide chooses what follows an iteration that found nothing to do, or
// did work without filling a batch: run again now, poll, scheduled or idle.
// Deciding inside a working iteration spares the empty iteration that would
// otherwise follow it, which costs a transaction and, measured in the
// slots benchmark, delays the hand-off of every slot freed meanwhile.
//
// It uses the kick lock and the re-check that the first round trip took
// after the phases: a try-lock, then a later statement, whose snapshot is
// therefore taken after the lock was granted (see the package doc). Taking
// them there rather than in a round trip of their own keeps an iteration
// at two round trips whether it goes on or goes quiet; the lock is held
// only for the last one, as it would be anyway.
func (l *Loop) decide(it *iteration, worked bool) {
	s, pool := l.cfg.Store, l.cfg.Pool
	switch {
	case !it.locked && worked:
		it.out.Next = NextNow // busy: producers are in flight, look again at once
		return
	case !it.locked:
		it.out.Next, it.out.Delay = NextPoll, 0 // a producer is in flight; the driver backs off
		return
	}
	p := it.pending
	if it.retryDue > 0 && (!p.Start.Valid || it.retryDue < p.Start.Int64) {
		p.Start = sql.NullInt64{Int64: it.retryDue, Valid: true} // scheduled after the re-check ran
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
		return
	}
	if l.cfg.Local != nil && l.cfg.Local.ResultsWaiting() {
		// Results of this process's workers arrived meanwhile: they kick
		// the driver, which would run the next iteration at once anyway.
		// Staying running spares writing run_status twice for it.
		it.out.Next = NextNow
		return
	}
	if l.cfg.Cooldown > 0 && segments.Segment(now-it.lastActivity) < segments.Of(l.cfg.Cooldown) {
		it.out.Next, it.out.Delay = NextPoll, l.cfg.PollInterval
		return
	}
	target, ok := int64(0), false
	if capacity > 0 && p.Start.Valid {
		target, ok = p.Start.Int64, true
	}
	if it.running > 0 {
		next := it.lastRecovery + int64(l.recoveryPeriod())
		if !ok || next < target {
			target, ok = next, true
		}
	}
	if !ok {
		it.out.Next = NextIdle
		it.final = append(it.final, s.SetRunStatusOp(pool, store.RunStatus{State: store.RunIdle, Generation: it.out.Generation}))
		return
	}
	bounded, _ := segments.BoundSegment(segments.Segment(target), segments.Segment(now))
	it.out.Next = NextScheduled
	it.out.Delay = max(time.Duration(int64(bounded)-now)*segments.Duration, 0)
	rs := store.RunStatus{
		State: store.RunScheduled, Segment: int64(bounded),
		Saturated:  it.running >= it.st.MaxParallelism,
		Generation: it.out.Generation,
	}
	if held := it.st.RunStatus; held.State == rs.State && held.Segment == rs.Segment && held.Saturated == rs.Saturated {
		// Woken scheduled saturated and going back to it unchanged, as
		// a pool at its limit does for every freed slot: lockState left
		// the row alone, and so does this iteration.
		return
	}
	it.final = append(it.final, s.SetRunStatusOp(pool, rs))
}

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
}

// Samples returns the current interval's start-lag and run-time
// percentiles as this process observed them.
func (l *Loop) Samples() (startLag, runTime stats.Percentiles) {
	return l.startLag.Percentiles(), l.runTime.Percentiles()
}
