package loop

import (
	"context"
	"errors"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgworkpool/pgworkpool/internal/store"
	"github.com/pgworkpool/pgworkpool/stats"
)

// Defaults for [DriverConfig].
const (
	// HealthcheckIntervalDefault is how often a process that does not lead
	// checks, while the pool has work, that a leader is alive. It bounds
	// failover after a leader dies without releasing its lock cleanly.
	HealthcheckIntervalDefault = 2 * time.Second
	// IterationTimeoutDefault bounds one iteration on the client so a
	// wedged connection cannot stall the loop forever; it is longer than
	// the loop's server-side statement timeout.
	IterationTimeoutDefault = 40 * time.Second
	// ReconnectBackoffMaxDefault caps the wait between attempts to
	// re-establish the LISTEN connection.
	ReconnectBackoffMaxDefault = 5 * time.Second
	// GatherDelayDefault is how long a busy loop waits before its next
	// iteration (DriverConfig.GatherDelay). In the steady benchmark (eight
	// producers, no-op jobs) 5 ms took iterations from about 450 a second
	// with 12 items each to 120 with 60, and throughput up by a fifth;
	// 2 ms gained half as much, 10 ms no more.
	GatherDelayDefault = 5 * time.Millisecond
	// gatherMinMoved is how many items (started plus completed) an
	// iteration must have moved for the next one to wait: below it the
	// loop is not busy enough for the wait to pay, and a lone enqueue's
	// start and result, an iteration each, never wait.
	gatherMinMoved = 8
)

// DriverConfig configures a [Driver].
type DriverConfig struct {
	Loop *Loop
	// ConnConfig opens the driver's dedicated LISTEN connection, which also
	// holds the leader lock: if this process dies, Postgres drops the
	// connection and the lock with it.
	ConnConfig *pgx.ConnConfig
	Logger     *stats.Logger
	// OnSignal receives worker signals (store.Signal* letters other than
	// the kick). It is called after every (re)connect with all of them,
	// because notifications may have been missed. It must not block.
	OnSignal func(signals string)
	// OnLeaderChange, if set, is told when this process gains or loses the
	// pool's leadership. It must not block.
	OnLeaderChange func(leader bool)
	// Origin, if set, names (in decimal digits) the producers that call
	// [Driver.Kick] themselves once their transaction ends
	// (store.KickSource.Origin). While this driver leads it ignores their
	// notifications, which arrive while the iteration they asked for runs
	// and would each cost a second, empty one; another origin's kick, or
	// one without an origin, still wakes it. A driver that does not lead
	// treats every kick alike: its own producers' kicks are how it notices
	// a leader that is gone.
	Origin string

	HealthcheckInterval time.Duration
	IterationTimeout    time.Duration
	ReconnectBackoffMax time.Duration
	// GatherDelay is how long the loop waits before an iteration that
	// follows a busy one, so that the enqueues and results arriving
	// meanwhile share its transaction: each iteration's statements and
	// commit cost about the same whether they carry ten items or a
	// hundred, and under sustained load those fixed costs took CPU the
	// producers needed. The wait applies only when the last iteration
	// ended less than GatherDelay ago, started work, moved at least
	// gatherMinMoved items, did not fill a batch and left free slots: a
	// saturated pool hands a freed slot on at once, and a quiet one starts
	// an enqueue at once. Zero means GatherDelayDefault; negative
	// disables the wait.
	GatherDelay time.Duration
}

// Driver runs a pool's loop in one process: it listens for kicks, competes
// for leadership, and while it leads runs iterations and keeps the timer for
// a scheduled wake-up. Every started process runs one; at most one of them
// iterates at a time.
type Driver struct {
	cfg    DriverConfig
	kickCh chan struct{}
	// carryCh is unbuffered: a send succeeds only while the driver waits
	// for something to do (see RunInIteration).
	carryCh chan *carried

	leader     atomic.Bool
	iterations atomic.Int64

	// gatherAfter is when the last iteration ended, if the next one is to
	// wait GatherDelay (see gathers); only the iterating goroutine uses it.
	gatherAfter time.Time
}

// NewDriver returns a driver; call Run to start it.
func NewDriver(cfg DriverConfig) *Driver {
	if cfg.HealthcheckInterval <= 0 {
		cfg.HealthcheckInterval = HealthcheckIntervalDefault
	}
	if cfg.IterationTimeout <= 0 {
		cfg.IterationTimeout = IterationTimeoutDefault
	}
	if cfg.ReconnectBackoffMax <= 0 {
		cfg.ReconnectBackoffMax = ReconnectBackoffMaxDefault
	}
	if cfg.GatherDelay == 0 {
		cfg.GatherDelay = GatherDelayDefault
	}
	if cfg.OnSignal == nil {
		cfg.OnSignal = func(string) {}
	}
	if cfg.OnLeaderChange == nil {
		cfg.OnLeaderChange = func(bool) {}
	}
	return &Driver{cfg: cfg, kickCh: make(chan struct{}, 1), carryCh: make(chan *carried)}
}

// Leader reports whether this process currently runs the pool's loop.
func (d *Driver) Leader() bool { return d.leader.Load() }

// Iterations counts the iterations this driver has run (including stale
// ones); tests use it to see which process leads.
func (d *Driver) Iterations() int64 { return d.iterations.Load() }

// Kick asks the driver to run an iteration soon, with every phase (unless
// the pool is busy, see Loop.fastPath).
// Producers in this process call it after their own commit to skip the
// NOTIFY round trip; it is a no-op unless this process leads.
func (d *Driver) Kick() {
	d.cfg.Loop.rescan.Store(true)
	d.wake()
}

// KickForResults asks the driver to run an iteration soon to record the
// results of this process's workers, which the iteration takes from them
// itself: unlike Kick, it lets the iteration leave out the phases whose
// tables were empty at the last re-check.
func (d *Driver) KickForResults() { d.wake() }

func (d *Driver) wake() {
	select {
	case d.kickCh <- struct{}{}:
	default:
	}
}

// RunInIteration offers a producer's statements, which must not begin or
// end a transaction, to run inside the transaction of an iteration that
// the driver starts at once, right after its state lock, so that the
// iteration's phases see their rows: the work an enqueue writes then starts
// in the same transaction, one commit (an fsync) and one wake-up of an
// idle connection sooner than after a commit of its own and a kick.
// Measured at 50 enqueues/s, that was what separated our enqueue-to-start
// latency from River's, whose fetch follows its insert directly.
//
// It returns ran false, having committed nothing, when this process does
// not lead, when the driver is busy iterating (the producer would wait for
// iterations that are not its own), or when the iteration did not commit
// for a reason of its own (a stale generation, a failed statement of the
// loop): the producer then commits by itself and kicks, as usual. With ran
// true, err is nil when the iteration committed the statements, or the
// error that stopped them, or that lost the answer to the COMMIT (whose
// outcome is then unknown, as for any transaction).
//
// The statements' own kick lock does not hold the iteration back: a
// transaction does not conflict with its own locks.
func (d *Driver) RunInIteration(ops []store.Op) (ran bool, err error) {
	if !d.leader.Load() {
		return false, nil
	}
	c := &carried{ops: ops, done: make(chan error, 1)}
	select {
	case d.carryCh <- c:
	default:
		return false, nil
	}
	if err := <-c.done; !errors.Is(err, errNotCarried) {
		return true, err
	}
	return false, nil
}

// Run drives the loop until ctx is done, then releases leadership (and
// tells the other processes, so one of them takes over at once).
func (d *Driver) Run(ctx context.Context) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		d.runIterations(ctx)
	}()
	d.listen(ctx)
	<-done
}

// listen keeps the LISTEN connection up for the driver's lifetime.
func (d *Driver) listen(ctx context.Context) {
	log := d.cfg.Logger
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		conn, err := d.connect(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			log.Warn(ctx, "loop: listen connection failed, retrying", "error", err, "backoff", backoff)
			sleep(ctx, backoff)
			backoff = min(2*backoff, d.cfg.ReconnectBackoffMax)
			continue
		}
		backoff = 100 * time.Millisecond
		err = d.serve(ctx, conn)
		d.setLeader(ctx, false)
		closeCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		if ctx.Err() != nil {
			d.handOver(closeCtx, conn)
		}
		_ = conn.Close(closeCtx)
		cancel()
		if ctx.Err() == nil {
			log.Warn(ctx, "loop: listen connection lost, reconnecting", "error", err)
		}
	}
}

func (d *Driver) connect(ctx context.Context) (*pgx.Conn, error) {
	cfg := d.cfg.ConnConfig.Copy()
	// A config copied from a live connection keeps that connection's
	// notification hook; ours must buffer its own notifications.
	cfg.OnNotification = nil
	// Name the connection after the pool's channel so operators (and
	// tests) can find the listeners of one pool in pg_stat_activity.
	cfg.RuntimeParams["application_name"] = d.cfg.Loop.keys.Channel
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, err
	}
	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{d.cfg.Loop.keys.Channel}.Sanitize()); err != nil {
		_ = conn.Close(ctx)
		return nil, err
	}
	return conn, nil
}

// serve handles one connection's notifications until it fails or ctx ends.
func (d *Driver) serve(ctx context.Context, conn *pgx.Conn) error {
	if err := d.tryLead(ctx, conn); err != nil {
		return err
	}
	// Signals may have been missed while disconnected (or before start).
	d.cfg.OnSignal(string([]byte{store.SignalStart, store.SignalCancel, store.SignalFinish, store.SignalConfig}))
	active := true // the pool may have work: keep checking that someone leads
	for {
		waitCtx, cancel := ctx, context.CancelFunc(func() {})
		if active && !d.leader.Load() {
			waitCtx, cancel = context.WithTimeout(ctx, d.cfg.HealthcheckInterval)
		}
		n, err := conn.WaitForNotification(waitCtx)
		timedOut := waitCtx.Err() != nil && ctx.Err() == nil
		cancel()
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			if !timedOut || conn.IsClosed() {
				return err
			}
			idle, err := d.healthcheck(ctx, conn)
			if err != nil {
				return err
			}
			active = !idle
			continue
		}
		active = true
		d.handle(ctx, conn, n)
	}
}

func (d *Driver) handle(ctx context.Context, conn *pgx.Conn, n *pgconn.Notification) {
	kick, origin, signals := store.ParseNotification(n.Payload)
	if kick {
		switch {
		case !d.leader.Load():
			if err := d.tryLead(ctx, conn); err != nil && ctx.Err() == nil {
				// A canceled ctx is Stop, not a failure.
				d.cfg.Logger.Warn(ctx, "loop: leadership attempt failed", "error", err)
			}
		case origin == "" || origin != d.cfg.Origin:
			d.Kick()
		}
	}
	if signals != "" {
		d.cfg.OnSignal(signals)
	}
}

// tryLead takes the leader lock if it is free; the new leader runs an
// iteration at once.
func (d *Driver) tryLead(ctx context.Context, conn *pgx.Conn) error {
	if d.leader.Load() {
		return nil
	}
	var ok bool
	if err := conn.QueryRow(ctx, "SELECT pg_try_advisory_lock($1)", d.cfg.Loop.keys.LeaderLock).Scan(&ok); err != nil {
		return err
	}
	if ok {
		d.setLeader(ctx, true)
		d.Kick()
	}
	return nil
}

func (d *Driver) setLeader(ctx context.Context, leader bool) {
	if d.leader.Swap(leader) == leader {
		return
	}
	if leader {
		d.cfg.Logger.Debug(ctx, "loop: this process now leads the pool")
	} else {
		d.cfg.Logger.Debug(ctx, "loop: this process no longer leads the pool")
	}
	d.cfg.OnLeaderChange(leader)
}

// healthcheck runs on a follower while the pool has work: take over if the
// leader is gone, and report whether the pool is idle (then stop checking
// until the next notification).
func (d *Driver) healthcheck(ctx context.Context, conn *pgx.Conn) (idle bool, err error) {
	if err := d.tryLead(ctx, conn); err != nil {
		return false, err
	}
	if d.leader.Load() {
		return false, nil
	}
	var state string
	err = conn.QueryRow(ctx, "SELECT state FROM "+pgx.Identifier{d.cfg.Loop.cfg.Store.Schema(), "run_status"}.Sanitize()+
		" WHERE pool = $1", d.cfg.Loop.cfg.Pool).Scan(&state)
	if errors.Is(err, pgx.ErrNoRows) {
		return true, nil
	}
	return state == string(store.RunIdle), err
}

// handOver releases the leader lock and kicks the channel so a follower
// takes over at once instead of at its next healthcheck.
func (d *Driver) handOver(ctx context.Context, conn *pgx.Conn) {
	if conn.IsClosed() {
		return
	}
	var released bool
	if err := conn.QueryRow(ctx, "SELECT pg_advisory_unlock($1)", d.cfg.Loop.keys.LeaderLock).Scan(&released); err != nil || !released {
		return
	}
	_, _ = conn.Exec(ctx, "SELECT pg_notify($1, $2)", d.cfg.Loop.keys.Channel, string(store.SignalKick))
}

// runIterations runs the loop whenever this process leads and is kicked or
// its timer fires.
func (d *Driver) runIterations(ctx context.Context) {
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	generation := int64(-1)
	for {
		var c *carried
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-d.kickCh:
		case <-timer.C:
		case c = <-d.carryCh:
		}
		if !d.leader.Load() {
			c.answer(errNotCarried)
			timer.Stop()
			continue
		}
		var wake time.Duration
		generation, wake = d.iterateUntilQuiet(ctx, generation, c)
		timer.Stop()
		if wake >= 0 {
			timer.Reset(wake)
		}
	}
}

// iterateUntilQuiet runs iterations until the loop goes scheduled or idle,
// and returns the generation and when to wake (-1: only on a kick). The
// first iteration carries c, if set (see RunInIteration).
func (d *Driver) iterateUntilQuiet(ctx context.Context, generation int64, c *carried) (int64, time.Duration) {
	defer c.answer(errNotCarried) // a no-op once an iteration answered
	log, lp := d.cfg.Logger, d.cfg.Loop
	// A poll follows a failed try-lock (a producer was in flight) or a
	// cooldown; producers of this process wake the driver when they
	// commit, so the cap only delays those of other processes.
	const pollMin, pollMax = time.Millisecond, 20 * time.Millisecond
	poll, errBackoff := pollMin, 50*time.Millisecond
	for ctx.Err() == nil && d.leader.Load() {
		if generation < 0 {
			g, err := lp.cfg.Store.ReadGeneration(ctx, lp.cfg.DB, lp.cfg.Pool)
			if err != nil {
				// Its producer need not wait out the backoff; answered, the
				// statements must not ride in the iteration after it, or
				// they would run twice.
				c.answer(errNotCarried)
				c = nil
				if ctx.Err() == nil { // a canceled ctx is Stop, not a failure
					log.Warn(ctx, "loop: cannot read generation", "error", err)
				}
				d.wait(ctx, errBackoff)
				errBackoff = min(2*errBackoff, d.cfg.ReconnectBackoffMax)
				continue
			}
			generation = g
		}
		if c == nil && !d.gatherAfter.IsZero() {
			wait := time.Until(d.gatherAfter.Add(d.cfg.GatherDelay))
			d.gatherAfter = time.Time{}
			if wait > 0 {
				sleep(ctx, wait)
				continue // Stop or a lost leadership may have come meanwhile
			}
		}
		// A kick sent before this point is answered by the iteration about
		// to run, which takes the results, the rescan and the committed
		// rows that caused it. Left waiting, it would wake another
		// iteration with nothing to do once this one went quiet: in the
		// slots benchmark, where each result kicks while an iteration
		// runs, that was a quarter of all iterations, each holding up the
		// results that came meanwhile by a round trip.
		select {
		case <-d.kickCh:
		default:
		}
		// Stopping the driver does not cancel an iteration in flight: a
		// canceled client leaves its statement running on the server with
		// the iteration's locks. Only the timeout applies.
		ictx, cancel := context.WithTimeout(context.WithoutCancel(ctx), d.cfg.IterationTimeout)
		out, err := lp.main(ictx, generation, c, true)
		c = nil
		cancel()
		d.iterations.Add(1)
		d.gatherAfter = time.Time{}
		if err == nil && d.gathers(out) {
			d.gatherAfter = time.Now()
		}
		if err != nil {
			if ctx.Err() == nil {
				log.Warn(ctx, "loop: iteration failed, retrying", "error", err, "backoff", errBackoff)
			}
			d.wait(ctx, errBackoff)
			errBackoff = min(2*errBackoff, d.cfg.ReconnectBackoffMax)
			generation = -1 // the commit may or may not have happened
			continue
		}
		errBackoff = 50 * time.Millisecond
		generation = out.Generation
		if out.Stale {
			continue
		}
		if out.Signals != "" {
			d.cfg.OnSignal(out.Signals) // in-process workers need not wait for the NOTIFY
		}
		switch out.Next {
		case NextNow:
			poll = pollMin
		case NextPoll:
			delay := out.Delay
			if delay <= 0 {
				delay = poll
				poll = min(2*poll, pollMax)
			}
			d.wait(ctx, delay)
		case NextScheduled:
			return generation, out.Delay
		case NextIdle:
			return generation, -1
		}
	}
	return generation, -1
}

// gathers reports whether the iteration after one that ended with out
// waits for work to gather (see DriverConfig.GatherDelay).
func (d *Driver) gathers(out Outcome) bool {
	return d.cfg.GatherDelay > 0 && !out.Stale && !out.Saturated && !out.BatchFull &&
		out.Started > 0 && out.Started+out.Completions >= gatherMinMoved
}

// wait sleeps for d or until kicked or ctx ends.
func (d *Driver) wait(ctx context.Context, dur time.Duration) {
	t := time.NewTimer(dur)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	case <-d.kickCh:
	}
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
