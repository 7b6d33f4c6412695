package workpool

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"runtime/debug"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/uptrace/bun"

	"github.com/pgworkpool/pgworkpool/internal/store"
	"github.com/pgworkpool/pgworkpool/loop"
	"github.com/pgworkpool/pgworkpool/recovery"
)

// Causes of a handler's context cancellation.
var (
	errCanceledByUser = errors.New("pgworkpool: work canceled")
	errStopping       = errors.New("pgworkpool: pool stopping")
)

const (
	// abandonGrace is how long past its deadline a worker waits for a
	// handler that ignores its context before reporting the timeout anyway.
	abandonGrace = time.Second
	// flushBatch bounds the results one completion transaction records.
	flushBatch = 2000
	// finishBatch bounds the onCompletes one finisher transaction runs.
	finishBatch = 100
	// stopGrace is how long Stop waits for canceled handlers to return.
	stopGrace = time.Second
	// stopFlushTimeout bounds how long Stop keeps trying to record results
	// (and its other final writes) when the database is unreachable; what
	// is not recorded is retried by recovery after the lease.
	stopFlushTimeout = 10 * time.Second
	// flushAttemptTimeout bounds one attempt to record a batch.
	flushAttemptTimeout = 30 * time.Second
)

// running is the state of a started pool: its driver, its worker slots and
// the goroutines around them.
type running struct {
	p      *Pool
	driver *loop.Driver
	// worker is this process's row in the workers table.
	worker store.Worker

	driverStop context.CancelFunc
	driverDone chan struct{}
	// handlerBase parents every handler context; Stop cancels it last.
	handlerBase   context.Context
	handlerCancel context.CancelCauseFunc
	// bgCtx is the context of our own queries; canceled when Stop ends.
	bgCtx    context.Context
	bgCancel context.CancelFunc

	claimWake, cancelWake, finishWake, configWake, flushWake chan struct{}
	// jobs feeds the long-lived handler goroutines (Workers of them): a
	// goroutine keeps its grown stack from one attempt to the next, until
	// a garbage collection finds it idle and shrinks it (measured in the
	// drain benchmark: a goroutine per attempt copied stacks only an
	// eighth less, for no change in throughput).
	jobs       chan *attempt
	stopClaims chan struct{} // closed: claimer, finisher, canceler, config refresher stop
	stopFlush  chan struct{} // closed: flusher drains and stops
	stopBeat   chan struct{} // closed: heartbeat stops
	claimersWG sync.WaitGroup
	flushDone  chan struct{}
	beatDone   chan struct{}

	mu            sync.Mutex
	inflight      map[attemptKey]*attempt
	idle          *sync.Cond // signaled when inflight shrinks
	stopping      bool
	dirty         bool // unclaimed work may remain: claim when a slot frees
	reserved      int  // slots set aside for a claim in flight: the loop's current iteration's or the claimer's
	lastHeartbeat time.Time
	pending       []store.Result // results waiting to be flushed
	released      []int64        // attempts given back on Stop
	// standbys are attempts the loop claimed for this process beyond the
	// pool's free slots, in the order they are due: a handler that ends
	// hands its slot to the first of them at once (see handOff). Those not
	// started within the pool's standbyHold are given back (expireStandbys).
	standbys []standby
	// standbyAsked counts the standbys asked for by iterations in flight.
	standbyAsked int
	// ended counts the attempts that ended since the loop's last
	// iteration reserved slots: only an iteration that follows slots
	// turning over asks for standbys, as many as turned over at most
	// (see Reserve).
	ended int
	// deliverBuf holds the attempts of one Deliver until they are
	// dispatched; the loop's iterations, and so Deliver, are serialized.
	deliverBuf  []*attempt
	flushGiveUp time.Time // set when Stop begins: the last moment to retry a flush
	// unrecorded counts the results of each attempt that this process
	// holds and has not yet recorded (pending, in a flush, or taken by the
	// loop's iteration): their running rows are not stranded.
	unrecorded map[attemptKey]int
	// strandSuspects are the claimed attempts the last heartbeat found
	// that this process neither runs nor holds a result of. Seen twice in
	// a row, a heartbeat interval apart, they are released: their claim
	// committed but its answer never arrived.
	strandSuspects map[attemptKey]bool
	// claimDoubt is when a claim (ours or the loop's for us) last failed
	// in a way that may have committed anyway; the heartbeat keeps
	// checking for stranded claims for a while after it.
	claimDoubt time.Time
}

// attemptKey identifies one attempt. The same work can have two attempts in
// one process: a retry claimed while an attempt declared lost (or abandoned
// after its deadline) still runs.
type attemptKey struct {
	workID  int64
	attempt int
}

// attempt is one handler run in this process.
type attempt struct {
	key      attemptKey
	ctx      context.Context
	cancel   context.CancelCauseFunc
	claim    store.Claimed
	released bool // Stop gave it back; its result is dropped (under r.mu)
	// state settles who reports the attempt: the handler returning, or the
	// watchdog giving up on a handler that ignores its deadline.
	state atomic.Int32
}

// States of an attempt.
const (
	attemptRunning int32 = iota
	attemptReturned
	attemptAbandoned
)

func wake(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// Start runs this process's share of the pool: the loop's driver (at most
// one process leads at a time) and Config.Workers handler slots for the
// functions registered so far. It returns once everything is running.
func (p *Pool) Start(ctx context.Context) error {
	p.startMu.Lock()
	defer p.startMu.Unlock()
	if p.closed.Load() {
		return ErrPoolClosed
	}
	if p.started {
		return ErrAlreadyStarted
	}
	if err := p.ensure(ctx); err != nil {
		return err
	}
	if p.cfg.MaxParallelism > 0 {
		if _, err := p.store.SetMaxParallelism(ctx, p.sqlDB, p.cfg.Name, p.cfg.MaxParallelism); err != nil {
			return p.wrapDBError("start", err)
		}
	}
	if p.cfg.LogLevel != 0 {
		if _, err := p.store.SetLogLevel(ctx, p.sqlDB, p.cfg.Name, p.cfg.LogLevel.String(), MaxParallelismDefault); err != nil {
			return p.wrapDBError("start", err)
		}
	}
	if err := p.refreshConfig(ctx); err != nil {
		return err
	}
	connCfg, err := p.connConfig(ctx)
	if err != nil {
		return err
	}
	worker := store.Worker{Host: hostname(), PID: os.Getpid()}
	worker.ID, err = p.store.RegisterWorker(ctx, p.sqlDB, p.cfg.Name, worker.Host, worker.PID)
	if err != nil {
		return p.wrapDBError("start", err)
	}
	r := &running{
		p:          p,
		worker:     worker,
		claimWake:  make(chan struct{}, 1),
		cancelWake: make(chan struct{}, 1),
		finishWake: make(chan struct{}, 1),
		configWake: make(chan struct{}, 1),
		flushWake:  make(chan struct{}, 1),
		stopClaims: make(chan struct{}),
		stopFlush:  make(chan struct{}),
		stopBeat:   make(chan struct{}),
		flushDone:  make(chan struct{}),
		beatDone:   make(chan struct{}),
		driverDone: make(chan struct{}),
		inflight:   map[attemptKey]*attempt{},
		unrecorded: map[attemptKey]int{},
		jobs:       make(chan *attempt, p.cfg.Workers),
	}
	r.idle = sync.NewCond(&r.mu)
	r.lastHeartbeat = time.Now()
	r.handlerBase, r.handlerCancel = context.WithCancelCause(context.WithoutCancel(ctx))
	r.bgCtx, r.bgCancel = context.WithCancel(context.WithoutCancel(ctx))
	r.driver = loop.NewDriver(loop.DriverConfig{
		Loop:       p.loop,
		ConnConfig: connCfg,
		Logger:     p.log,
		OnSignal:   r.onSignal,
		Origin:     p.origin,
		// Results left to the loop's iterations go back to the flusher
		// when this process stops leading.
		OnLeaderChange: func(leader bool) {
			if !leader {
				wake(r.flushWake)
			}
		},
		HealthcheckInterval: p.cfg.HealthcheckInterval,
		GatherDelay:         p.cfg.GatherDelay,
	})
	p.loop.SetLocal(r)
	var driverCtx context.Context
	driverCtx, r.driverStop = context.WithCancel(r.bgCtx)
	go func() {
		defer close(r.driverDone)
		r.driver.Run(driverCtx)
	}()
	for range p.cfg.Workers {
		go r.handlerLoop()
	}
	r.claimersWG.Add(4)
	go r.claimLoop()
	go r.cancelLoop()
	go r.finishLoop()
	go r.configLoop()
	go r.flushLoop()
	go r.heartbeatLoop()
	p.run, p.started = r, true
	return nil
}

// Stop shuts the pool down in this process: it stops claiming work, waits
// for running handlers until ctx is done, then cancels the rest and gives
// their work back (another process claims it at once, and it runs again
// with the same attempt number), records every result it has, and hands
// the loop over to another process. It returns ctx's error if handlers had
// to be canceled. After Stop the pool refuses new calls with ErrPoolClosed.
func (p *Pool) Stop(ctx context.Context) error {
	p.startMu.Lock()
	if p.closed.Swap(true) {
		p.startMu.Unlock()
		return nil
	}
	r := p.run
	p.startMu.Unlock()
	if r == nil {
		return nil
	}
	return r.stop(ctx)
}

func (r *running) stop(ctx context.Context) error {
	p := r.p
	r.mu.Lock()
	r.stopping = true
	r.mu.Unlock()
	close(r.stopClaims)
	r.claimersWG.Wait()

	err := r.waitIdle(ctx)
	if err != nil {
		r.handlerCancel(errStopping)
		graceCtx, cancel := context.WithTimeout(context.Background(), stopGrace)
		_ = r.waitIdle(graceCtx)
		cancel()
		r.mu.Lock()
		for key, a := range r.inflight {
			a.released = true
			r.released = append(r.released, key.workID)
			delete(r.inflight, key)
		}
		r.mu.Unlock()
	}

	r.mu.Lock()
	r.flushGiveUp = time.Now().Add(stopFlushTimeout)
	r.mu.Unlock()
	close(r.stopFlush)
	<-r.flushDone
	finalCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), stopFlushTimeout)
	defer cancel()
	r.mu.Lock()
	released := r.released
	r.mu.Unlock()
	if len(released) > 0 {
		if rerr := r.releaseClaims(finalCtx, released); rerr != nil {
			p.log.Warn(finalCtx, "stop: could not give work back; recovery will retry it after the lease", "error", rerr)
		}
	}
	close(r.stopBeat)
	<-r.beatDone
	r.driverStop()
	select {
	case <-r.driverDone:
	case <-finalCtx.Done():
		p.log.Warn(finalCtx, "stop: the loop's last iteration is still running; not waiting for it")
	}
	// The loop's last iteration may have delivered standbys after Stop
	// began; none of them starts now.
	r.mu.Lock()
	left := r.dropStandbys(func(standby) bool { return true })
	r.mu.Unlock()
	r.releaseStandbys(finalCtx, left)
	if derr := p.store.DeregisterWorker(finalCtx, p.sqlDB, r.worker.ID); derr != nil {
		p.log.Warn(finalCtx, "stop: could not remove worker row", "error", derr)
	}
	r.handlerCancel(errStopping)
	r.bgCancel()
	close(r.jobs) // claims and deliveries stopped long ago
	return err
}

// waitIdle blocks until no handler runs or ctx is done.
func (r *running) waitIdle(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() {
		r.mu.Lock()
		r.idle.Broadcast()
		r.mu.Unlock()
	})
	defer stop()
	r.mu.Lock()
	defer r.mu.Unlock()
	for len(r.inflight) > 0 {
		if err := ctx.Err(); err != nil {
			return err
		}
		r.idle.Wait()
	}
	return nil
}

func (r *running) releaseClaims(ctx context.Context, ids []int64) error {
	p := r.p
	if err := p.store.Release(ctx, p.sqlDB, p.cfg.Name, r.worker.ID, ids); err != nil {
		return err
	}
	return p.store.Notify(ctx, p.sqlDB, p.keys.Channel, string(store.SignalStart))
}

// onSignal dispatches the driver's signals; it must not block.
func (r *running) onSignal(signals string) {
	for i := 0; i < len(signals); i++ {
		switch signals[i] {
		case store.SignalStart:
			wake(r.claimWake)
		case store.SignalCancel:
			wake(r.cancelWake)
		case store.SignalFinish:
			wake(r.finishWake)
		case store.SignalConfig:
			wake(r.configWake)
		}
	}
}

// claimLoop claims started work for the functions this process registered
// whenever it is signaled, as long as it has free slots.
func (r *running) claimLoop() {
	defer r.claimersWG.Done()
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	for {
		select {
		case <-r.stopClaims:
			return
		case <-r.claimWake:
		case <-retry.C:
		}
		if err := r.claimAll(); err != nil {
			if r.bgCtx.Err() == nil {
				r.p.log.Warn(r.bgCtx, "worker: claim failed, retrying", "error", err)
			}
			retry.Reset(500 * time.Millisecond)
		}
	}
}

func (r *running) claimAll() error {
	p := r.p
	for {
		fns := p.funcNames()
		if len(fns) == 0 {
			return nil
		}
		r.mu.Lock()
		free := p.cfg.Workers - len(r.inflight) - r.reserved
		if r.stopping || free <= 0 {
			r.dirty = !r.stopping
			r.mu.Unlock()
			return nil
		}
		// The slots are reserved while the claim runs, as the loop's
		// iteration reserves those it claims for: the same attempt's end
		// wakes both, and each would otherwise count the slot as free.
		limit := min(free, p.cfg.ClaimBatch)
		r.reserved += limit
		beat := time.Since(r.lastHeartbeat) > p.cfg.HeartbeatInterval/2
		r.mu.Unlock()
		claimed, err := r.claim(fns, limit, beat)
		r.mu.Lock()
		r.reserved -= limit
		if err != nil {
			r.claimDoubt = time.Now()
			r.mu.Unlock()
			return err
		}
		if beat {
			r.lastHeartbeat = time.Now()
		}
		attempts := make([]*attempt, 0, len(claimed))
		for _, c := range claimed {
			attempts = append(attempts, r.begin(c))
		}
		more := len(claimed) == limit
		if !more {
			r.dirty = false
		}
		r.mu.Unlock()
		r.dispatch(attempts)
		if !more {
			return nil
		}
	}
}

// Reserve sets free slots aside for the loop's current iteration, which
// claims work for them in the statement that starts it (loop.LocalWorkers).
func (r *running) Reserve(limit int) store.LocalClaim {
	fns := r.p.funcNames()
	r.mu.Lock()
	defer r.mu.Unlock()
	claim := store.LocalClaim{Worker: r.worker, Fns: fns, Listeners: r.p.keys.Channel}
	if r.stopping || len(fns) == 0 {
		return claim
	}
	claim.Slots = max(0, min(limit, r.p.cfg.Workers-len(r.inflight)-r.reserved))
	r.reserved += claim.Slots
	if r.ended > 0 {
		claim.Standby = max(0, min(r.ended, r.standbyMax()-len(r.standbys)-r.standbyAsked))
		r.standbyAsked += claim.Standby
		r.ended = 0
	}
	claim.Heartbeat = claim.Slots > 0 && time.Since(r.lastHeartbeat) > r.p.cfg.HeartbeatInterval/2
	return claim
}

// Deliver runs the attempts the loop claimed for this process, after its
// commit, and frees the slots it did not fill.
func (r *running) Deliver(claim store.LocalClaim, starts []store.Start) {
	r.mu.Lock()
	r.reserved -= claim.Slots
	r.standbyAsked -= claim.Standby
	if claim.Heartbeat && len(starts) > 0 {
		// The start statement refreshes the lease only when it claims
		// work for this process. Counted as a heartbeat without one, an
		// iteration that claimed nothing would let the next claim go
		// without a refresh, and a recovery pass could then declare that
		// claim lost, its worker's heartbeat still as old as its idleness.
		r.lastHeartbeat = time.Now()
	}
	attempts := r.deliverBuf[:0]
	held := false
	for _, st := range starts {
		if r.stopping {
			// Stop began after the loop reserved the slot: give the work
			// back with the other released attempts.
			r.released = append(r.released, st.WorkID)
			continue
		}
		if st.Standby {
			r.standbys = append(r.standbys, standby{Start: st, at: time.Now()})
			held = true
			continue
		}
		attempts = append(attempts, r.beginStart(st))
	}
	if len(starts) < claim.Slots && r.dirty && !r.stopping {
		wake(r.claimWake)
	}
	var closed []int64
	if claim.Closed {
		closed = r.dropStandbys(func(standby) bool { return true })
	}
	r.mu.Unlock()
	if len(closed) > 0 {
		go r.releaseStandbys(r.bgCtx, closed)
	} else if held {
		time.AfterFunc(r.p.standbyHold, r.expireStandbys)
	}
	r.dispatch(attempts)
	clear(attempts)
	r.deliverBuf = attempts[:0]
}

// Unreserve frees the slots of an iteration that did not commit.
func (r *running) Unreserve(claim store.LocalClaim) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.reserved -= claim.Slots
	r.standbyAsked -= claim.Standby
	if claim.Slots > 0 {
		r.claimDoubt = time.Now() // the commit may have succeeded unseen
	}
	if claim.Slots > 0 && r.dirty && !r.stopping {
		wake(r.claimWake)
	}
}

// standby is an attempt claimed ahead of a free slot (see running.standbys).
type standby struct {
	store.Start
	at time.Time // when it was delivered
}

// standbyHoldDefault is how long a standby waits for a slot before it is given
// back to the pool. A slot that turns over often, as in a busy pool of
// short handlers, takes its standbys within a millisecond or two; in a pool
// of long handlers a standby would hold its work back from processes whose
// slots free sooner.
const standbyHoldDefault = 50 * time.Millisecond

// standbyMax is how many standbys the process holds at most: about as many
// slots as turn over during one of the loop's iterations in a busy pool.
func (r *running) standbyMax() int { return (r.p.cfg.Workers + 7) / 8 }

func (r *running) beginStart(st store.Start) *attempt {
	return r.begin(store.Claimed{WorkID: st.WorkID, Attempt: st.Attempt, Fn: st.Fn, Timeout: st.Timeout,
		Args: st.Args, Label: st.Label, WorkMissing: st.Args == "", HasOnComplete: st.HasOnComplete})
}

// claim runs the claim statement with PlanSettings, in one round trip.
func (r *running) claim(fns []string, limit int, beat bool) ([]store.Claimed, error) {
	p := r.p
	var claimed []store.Claimed
	err := p.pipeline(r.bgCtx, p.store.ClaimOp(p.cfg.Name, fns, limit, r.worker, beat, &claimed))
	return claimed, err
}

// begin registers one claimed attempt in flight; r.mu is held. The caller
// hands it to a handler goroutine with dispatch once it has let go of r.mu:
// a handler that finishes takes r.mu to queue its result, and a busy loop
// hands out hundreds of attempts at a time, which held the lock for all
// their wake-ups (Deliver was a twentieth of an iteration in the drain
// benchmark).
func (r *running) begin(c store.Claimed) *attempt {
	ctx, cancel := context.WithCancelCause(r.handlerBase)
	a := &attempt{key: attemptKey{c.WorkID, c.Attempt}, ctx: ctx, cancel: cancel, claim: c}
	r.inflight[a.key] = a
	if len(r.inflight) > r.p.cfg.Workers {
		// Every claim, the claimer's and the loop's, reserves its slots
		// first; more attempts than Workers means a slot was counted twice.
		r.p.log.Error(r.bgCtx, "worker: more attempts in flight than Workers",
			"in_flight", len(r.inflight), "workers", r.p.cfg.Workers, "work_id", c.WorkID)
	}
	return a
}

// dispatch runs attempts that begin registered on handler goroutines; r.mu
// must not be held.
func (r *running) dispatch(attempts []*attempt) {
	for _, a := range attempts {
		select {
		case r.jobs <- a:
		default:
			// Every handler goroutine is busy and the queue is full, which
			// the slot accounting rules out; run it on a goroutine of its
			// own.
			go r.execute(a)
		}
	}
}

// handlerLoop runs attempts until the pool stops, or until an attempt it
// runs is abandoned (a replacement goroutine then takes its place).
func (r *running) handlerLoop() {
	for a := range r.jobs {
		if !r.execute(a) {
			return
		}
	}
}

// execute runs one attempt and queues its result. It reports false when
// the watchdog gave up on the handler meanwhile: the calling goroutine has
// been replaced and must exit.
func (r *running) execute(a *attempt) bool {
	defer a.cancel(nil)
	p, c, ctx := r.p, a.claim, a.ctx
	res := store.Result{WorkID: c.WorkID, Attempt: c.Attempt, OnComplete: c.HasOnComplete, Fn: c.Fn, Label: c.Label}
	switch fn := p.lookupFunc(c.Fn); {
	case c.WorkMissing:
		p.log.Error(ctx, "worker: claimed work has no work row", "work_id", c.WorkID)
		r.done(a, nil, false)
		return true
	case c.Canceled:
		res.Status = "canceled"
	default:
		begin := time.Now()
		value, err, timedOut := r.invoke(a, fn)
		if !a.state.CompareAndSwap(attemptRunning, attemptReturned) {
			return false // the watchdog reported it and replaced this goroutine
		}
		res.RunMs = time.Since(begin).Milliseconds()
		cause := context.Cause(ctx)
		switch {
		case err == nil:
			res.Status, res.Value = "success", string(value)
		case errors.Is(cause, errStopping):
			r.done(a, nil, true)
			return true
		case errors.Is(cause, errCanceledByUser):
			res.Status = "canceled"
		case timedOut:
			res.Status, res.Error = "failed", recovery.ReasonTimedOut
		default:
			res.Status, res.Error, res.NonRetryable = "failed", store.StorableText(err.Error()), IsNonRetryable(err)
		}
	}
	r.done(a, &res, false)
	return true
}

// invoke calls the handler with the attempt's timeout, turning a panic into
// an error. A watchdog gives up on a handler that ignores its context: at
// the deadline plus a grace period it reports the timeout, frees the slot
// and starts a replacement goroutine, leaving the handler running.
func (r *running) invoke(a *attempt, fn *funcInfo) (value []byte, err error, timedOut bool) {
	c := a.claim
	tctx, cancel := context.WithTimeout(a.ctx, c.Timeout)
	defer cancel()
	watchdog := time.AfterFunc(c.Timeout+abandonGrace, func() { r.abandon(a) })
	defer watchdog.Stop()
	defer func() {
		if rec := recover(); rec != nil {
			r.p.log.Error(a.ctx, "worker: handler panicked", "work_id", c.WorkID, "fn", c.Fn,
				"panic", fmt.Sprint(rec), "stack", string(debug.Stack()))
			value, err, timedOut = nil, fmt.Errorf("panic: %v", rec), false
		}
	}()
	value, err = fn.run(tctx, []byte(c.Args))
	expired := errors.Is(tctx.Err(), context.DeadlineExceeded) && a.ctx.Err() == nil
	return value, err, err != nil && expired
}

// abandon reports an attempt whose handler ignored its deadline as timed
// out, unless it returned meanwhile.
func (r *running) abandon(a *attempt) {
	if !a.state.CompareAndSwap(attemptRunning, attemptAbandoned) {
		return
	}
	c := a.claim
	r.p.log.Warn(a.ctx, "worker: handler ignored its deadline; reporting a timeout and leaving it running",
		"work_id", c.WorkID, "fn", c.Fn)
	go r.handlerLoop()
	r.done(a, &store.Result{WorkID: c.WorkID, Attempt: c.Attempt, OnComplete: c.HasOnComplete, Fn: c.Fn, Label: c.Label,
		Status: "failed", Error: recovery.ReasonTimedOut, RunMs: (c.Timeout + abandonGrace).Milliseconds()}, false)
}

// done frees the attempt's slot and queues its result (or its release).
func (r *running) done(a *attempt, res *store.Result, release bool) {
	var next *attempt
	defer func() {
		if next != nil {
			r.dispatch([]*attempt{next})
		}
	}()
	r.mu.Lock()
	defer r.mu.Unlock()
	if a.released {
		return // Stop already gave it back
	}
	if r.inflight[a.key] == a {
		delete(r.inflight, a.key)
	}
	switch {
	case release:
		r.released = append(r.released, a.key.workID)
	case res != nil:
		next = r.handOff(res)
		r.queueResult(a.key, *res)
		r.ended++
	}
	if r.dirty && !r.stopping {
		wake(r.claimWake)
	}
	r.idle.Broadcast()
}

// queueResult queues an attempt's result for recording; r.mu is held.
func (r *running) queueResult(key attemptKey, res store.Result) {
	r.pending = append(r.pending, res)
	r.unrecorded[key]++
	if forLoop(res) && r.loopTakesResults() {
		r.driver.KickForResults() // the next iteration records it
	} else {
		wake(r.flushWake)
	}
}

// handOff starts the first standby in the slot of the attempt that ended
// with res, if there is one, and names it res's successor; r.mu is held.
// The caller dispatches the attempt returned. The slot stays counted in the
// database throughout: by the ended attempt's running row until its result
// is recorded, and by the standby's from the same statement on.
func (r *running) handOff(res *store.Result) *attempt {
	if r.stopping || len(r.standbys) == 0 {
		return nil
	}
	st := r.standbys[0]
	r.standbys = slices.Delete(r.standbys, 0, 1)
	res.Successor = st.WorkID
	r.p.handOffs.Add(1)
	return r.beginStart(st.Start)
}

// cancelStandbys ends the canceled standbys as canceled without running
// them, as a canceled attempt that had started would end; r.mu is held.
// Their result frees nothing: a standby holds no counted slot.
func (r *running) cancelStandbys(isCanceled map[int64]bool) {
	var canceled []standby
	r.dropStandbys(func(st standby) bool {
		if isCanceled[st.WorkID] {
			canceled = append(canceled, st)
			return true
		}
		return false
	})
	for _, st := range canceled {
		r.queueResult(attemptKey{st.WorkID, st.Attempt}, store.Result{WorkID: st.WorkID, Attempt: st.Attempt,
			Status: "canceled", OnComplete: st.HasOnComplete, Fn: st.Fn, Label: st.Label})
	}
}

// dropStandbys removes the standbys that drop selects and returns their
// work ids; r.mu is held.
func (r *running) dropStandbys(drop func(standby) bool) []int64 {
	var ids []int64
	keep := r.standbys[:0]
	for _, st := range r.standbys {
		if drop(st) {
			ids = append(ids, st.WorkID)
		} else {
			keep = append(keep, st)
		}
	}
	clear(r.standbys[len(keep):])
	r.standbys = keep
	return ids
}

// expireStandbys gives back the standbys that waited their hold.
func (r *running) expireStandbys() {
	r.mu.Lock()
	ids := r.dropStandbys(func(st standby) bool { return time.Since(st.at) >= r.p.standbyHold || r.stopping })
	r.mu.Unlock()
	r.releaseStandbys(r.bgCtx, ids)
}

// releaseStandbys gives standbys that no handler took back to the pool.
// Should that fail, they stay claimed by this process until it stops or
// recovery declares it lost, and are retried from there.
func (r *running) releaseStandbys(ctx context.Context, ids []int64) {
	if len(ids) == 0 {
		return
	}
	p := r.p
	err := p.writeAndKick(ctx, "release standbys", func(tx *sql.Tx) (bool, error) {
		released, err := p.store.ReleaseStandbys(ctx, tx, p.cfg.Name, r.worker.ID, ids, p.keys.KickLock)
		return len(released) > 0, err
	})
	if err != nil {
		p.log.Warn(ctx, "worker: cannot give back standbys; recovery will retry them after the lease", "error", err, "work_ids", ids)
	}
}

// cancelLoop cancels the handlers of work that was canceled while running.
func (r *running) cancelLoop() {
	defer r.claimersWG.Done()
	p := r.p
	for {
		select {
		case <-r.stopClaims:
			return
		case <-r.cancelWake:
		}
		r.mu.Lock()
		ids := make([]int64, 0, len(r.inflight)+len(r.standbys))
		for key := range r.inflight {
			ids = append(ids, key.workID)
		}
		for _, st := range r.standbys {
			ids = append(ids, st.WorkID)
		}
		r.mu.Unlock()
		if len(ids) == 0 {
			continue
		}
		canceled, err := p.store.CanceledAmong(r.bgCtx, p.sqlDB, ids)
		if err != nil {
			p.log.Warn(r.bgCtx, "worker: cannot check for canceled work", "error", err)
			continue
		}
		isCanceled := make(map[int64]bool, len(canceled))
		for _, id := range canceled {
			isCanceled[id] = true
		}
		r.mu.Lock()
		for key, a := range r.inflight {
			if isCanceled[key.workID] {
				a.cancel(errCanceledByUser)
			}
		}
		r.cancelStandbys(isCanceled)
		r.mu.Unlock()
	}
}

// configLoop refreshes the stored log level when another process changes it.
func (r *running) configLoop() {
	defer r.claimersWG.Done()
	for {
		select {
		case <-r.stopClaims:
			return
		case <-r.configWake:
		}
		if err := r.p.refreshConfig(r.bgCtx); err != nil && r.bgCtx.Err() == nil {
			r.p.log.Warn(r.bgCtx, "worker: cannot refresh config", "error", err)
		}
	}
}

// heartbeatLoop extends this process's lease while it holds work. An idle
// process sends nothing.
func (r *running) heartbeatLoop() {
	defer close(r.beatDone)
	p := r.p
	t := time.NewTicker(p.cfg.HeartbeatInterval)
	defer t.Stop()
	for {
		select {
		case <-r.stopBeat:
			return
		case <-t.C:
		}
		r.mu.Lock()
		busy := len(r.inflight) > 0 || len(r.standbys) > 0 || len(r.unrecorded) > 0 || len(r.strandSuspects) > 0 ||
			time.Since(r.claimDoubt) < 3*p.cfg.HeartbeatInterval
		r.mu.Unlock()
		if !busy {
			continue
		}
		claimed, err := p.store.Heartbeat(r.bgCtx, p.sqlDB, p.cfg.Name, r.worker)
		if err != nil {
			p.log.Warn(r.bgCtx, "worker: heartbeat failed", "error", err)
			continue
		}
		r.mu.Lock()
		r.lastHeartbeat = time.Now()
		stranded := r.findStranded(claimed)
		r.mu.Unlock()
		if len(stranded) > 0 {
			r.releaseStranded(stranded)
		}
	}
}

// findStranded compares the attempts the database says this process
// claimed with those it runs or holds results of; r.mu is held. A claim
// whose answer was lost (the connection broke after the server committed)
// would otherwise hold a global slot, unrun, until its deadline: this
// process heartbeats, so recovery never declares it lost. An attempt must
// be seen twice, a heartbeat interval apart, because a claim that just
// committed may not have reached this process yet.
func (r *running) findStranded(claimed []store.ClaimedAttempt) []store.ClaimedAttempt {
	released := make(map[int64]bool, len(r.released)+len(r.standbys))
	for _, id := range r.released {
		released[id] = true
	}
	for _, st := range r.standbys {
		released[st.WorkID] = true // held, not stranded
	}
	var stranded []store.ClaimedAttempt
	suspects := map[attemptKey]bool{}
	for _, c := range claimed {
		key := attemptKey{c.WorkID, c.Attempt}
		if r.inflight[key] != nil || r.unrecorded[key] > 0 || released[c.WorkID] {
			continue
		}
		if r.strandSuspects[key] {
			stranded = append(stranded, c)
		} else {
			suspects[key] = true
		}
	}
	r.strandSuspects = suspects
	return stranded
}

// releaseStranded gives stranded claims back so that a worker claims them.
func (r *running) releaseStranded(stranded []store.ClaimedAttempt) {
	p := r.p
	// A stranded standby (its claim's answer was lost) goes back to
	// pending_start; the statement below leaves standbys alone.
	strandedIDs := make([]int64, len(stranded))
	for i, c := range stranded {
		strandedIDs[i] = c.WorkID
	}
	r.releaseStandbys(r.bgCtx, strandedIDs)
	ids, err := p.store.ReleaseStranded(r.bgCtx, p.sqlDB, p.cfg.Name, r.worker.ID, stranded)
	if err != nil {
		p.log.Warn(r.bgCtx, "worker: cannot release stranded claims", "error", err)
		return
	}
	if len(ids) == 0 {
		return
	}
	p.log.Warn(r.bgCtx, "worker: released claimed work this process never received (a claim's answer was lost)", "work_ids", ids)
	if err := p.store.Notify(r.bgCtx, p.sqlDB, p.keys.Channel, string(store.SignalStart)); err != nil {
		p.log.Warn(r.bgCtx, "worker: cannot signal released work", "error", err)
	}
	wake(r.claimWake)
}

// forgetResults drops results from unrecorded once they were recorded or
// given up; r.mu is held.
func (r *running) forgetResults(results []store.Result) {
	for _, res := range results {
		key := attemptKey{res.WorkID, res.Attempt}
		if r.unrecorded[key]--; r.unrecorded[key] <= 0 {
			delete(r.unrecorded, key)
		}
	}
}

// loopTakesResults reports whether this process's loop iteration records
// the results that run no onComplete (the process leads and is not
// stopping); r.mu is held.
func (r *running) loopTakesResults() bool {
	return !r.stopping && r.driver.Leader()
}

// forLoop reports whether the loop's iteration may record res: one that
// runs an onComplete needs the flusher's transaction, where the onComplete
// runs.
func forLoop(res store.Result) bool { return !res.OnComplete }

// TakeResults hands the loop's iteration up to limit pending results that
// run no onComplete (loop.LocalWorkers).
func (r *running) TakeResults(limit int) []store.Result {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.loopTakesResults() {
		return nil
	}
	return r.takePending(limit, forLoop)
}

// ResultsWaiting reports whether TakeResults would hand over any result
// (loop.LocalWorkers).
func (r *running) ResultsWaiting() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.loopTakesResults() && slices.ContainsFunc(r.pending, forLoop)
}

// takePending removes and returns up to limit pending results that take
// accepts, keeping the others in order; r.mu is held. The kept ones are
// filtered in place, so that pending keeps its backing array: refilled by
// every attempt's end, it would otherwise grow afresh after each take.
func (r *running) takePending(limit int, take func(store.Result) bool) []store.Result {
	taken := make([]store.Result, 0, min(limit, len(r.pending)))
	kept := r.pending[:0]
	for _, res := range r.pending {
		if len(taken) < limit && take(res) {
			taken = append(taken, res)
		} else {
			kept = append(kept, res)
		}
	}
	clear(r.pending[len(kept):])
	r.pending = kept
	return taken
}

// ResultsRecorded logs the taken results that the attempt fence rejected.
func (r *running) ResultsRecorded(taken []store.Result, recorded []store.Recorded) {
	r.mu.Lock()
	r.forgetResults(taken)
	r.mu.Unlock()
	r.logStale(r.bgCtx, unrecorded(taken, recorded))
}

// ReturnResults puts back the results of an iteration that did not commit;
// the next iteration, or the flusher if this process no longer leads,
// records them.
func (r *running) ReturnResults(taken []store.Result) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.pending = append(taken, r.pending...)
	wake(r.flushWake)
}

// flushLoop records results in batches: while one transaction commits, the
// next batch accumulates, so a busy worker writes many results per commit
// and an idle one writes each at once. While this process leads, it leaves
// the results that run no onComplete to the loop's iteration.
func (r *running) flushLoop() {
	defer close(r.flushDone)
	stopping := false
	for {
		if !stopping {
			select {
			case <-r.flushWake:
			case <-r.stopFlush:
				stopping = true
			}
		}
		for {
			r.mu.Lock()
			loopTakes := !stopping && r.loopTakesResults()
			batch := r.takePending(flushBatch, func(res store.Result) bool { return !forLoop(res) || !loopTakes })
			r.mu.Unlock()
			if len(batch) == 0 {
				break
			}
			r.flushWithRetry(batch)
		}
		if stopping {
			return
		}
	}
}

// flushWithRetry records a batch, retrying while the database is away. Once
// Stop has begun it gives up at the stop's deadline (even for a batch it
// started before): those attempts then count as lost and recovery retries
// them after the lease.
func (r *running) flushWithRetry(batch []store.Result) {
	p := r.p
	defer func() {
		r.mu.Lock()
		r.forgetResults(batch)
		r.mu.Unlock()
	}()
	backoff := 50 * time.Millisecond
	for {
		r.mu.Lock()
		giveUp := r.flushGiveUp
		r.mu.Unlock()
		deadline := time.Now().Add(flushAttemptTimeout)
		if !giveUp.IsZero() && giveUp.Before(deadline) {
			deadline = giveUp
		}
		ctx, cancel := context.WithDeadline(context.WithoutCancel(r.bgCtx), deadline)
		err := r.flush(ctx, batch)
		cancel()
		if err == nil {
			return
		}
		if !giveUp.IsZero() && !time.Now().Before(giveUp) {
			p.log.Error(r.bgCtx, "worker: dropping results on stop; recovery will retry them", "error", err, "results", len(batch))
			return
		}
		p.log.Warn(r.bgCtx, "worker: recording results failed, retrying", "error", err, "results", len(batch), "backoff", backoff)
		t := time.NewTimer(backoff)
		select {
		case <-t.C:
		case <-r.stopFlush: // Stop began: retry now, within its deadline
		}
		t.Stop()
		backoff = min(2*backoff, 5*time.Second)
	}
}

// flush records one batch of results in one transaction, running the
// onComplete of every item that reached its terminal state, if this process
// has the handler. If a handler fails the transaction is redone with a
// savepoint around each handler, so one failure delays only its own item.
func (r *running) flush(ctx context.Context, batch []store.Result) error {
	if !slices.ContainsFunc(batch, func(res store.Result) bool { return res.OnComplete }) {
		return r.flushPipelined(ctx, batch)
	}
	err := r.flushOnce(ctx, batch, false)
	if errors.Is(err, errOnCompleteFailed) {
		err = r.flushOnce(ctx, batch, true)
	}
	return err
}

// flushPipelined records a batch that runs no onComplete in one round trip:
// the results and the kick as one implicit transaction.
func (r *running) flushPipelined(ctx context.Context, batch []store.Result) error {
	p := r.p
	var recs []store.Recorded
	var kicked bool
	if err := p.pipeline(ctx,
		p.store.RecordResultsOp(p.cfg.Name, batch, p.keys.KickLock, &recs),
		p.store.KickOp(p.cfg.Name, p.keys, store.KickSource{Origin: p.origin}, &kicked)); err != nil {
		r.driver.Kick() // the commit may have happened, and the kick carried p.origin
		return err
	}
	// A rejected result is recorded once more, in a statement of its own.
	// The record statement decides on the row version it read; if another
	// transaction (the loop marking the work canceled) updates the row
	// meanwhile, the recheck on the new version can reject a result that
	// the new version accepts, such as a retryable failure of work that is
	// now canceled. The next statement reads the new version; a result of
	// a stale attempt is rejected again.
	if missed := unrecorded(batch, recs); len(missed) > 0 {
		var again []store.Recorded
		if err := p.pipeline(ctx,
			p.store.RecordResultsOp(p.cfg.Name, missed, p.keys.KickLock, &again),
			p.store.KickOp(p.cfg.Name, p.keys, store.KickSource{Origin: p.origin}, &kicked)); err != nil {
			r.driver.Kick()
			return err
		}
		r.logStale(ctx, unrecorded(missed, again))
	}
	// Wake this process's driver even when the kick found the loop running:
	// it may be polling because this very flush held the kick lock when it
	// tried to go idle, and would sleep out its poll delay. (A no-op unless
	// this process leads; the NOTIFY, when sent, reaches the others.)
	r.driver.Kick()
	return nil
}

func (r *running) flushOnce(ctx context.Context, batch []store.Result, careful bool) error {
	p := r.p
	byID := make(map[int64]store.Result, len(batch))
	for _, res := range batch {
		byID[res.WorkID] = res
	}
	err := p.db.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		if err := store.Run(ctx, tx.Tx, store.PlanSettings()); err != nil {
			return err
		}
		recs, err := p.store.RecordResults(ctx, tx.Tx, p.cfg.Name, batch, p.keys.KickLock)
		if err != nil {
			return err
		}
		if missed := unrecorded(batch, recs); len(missed) > 0 { // once more, as in flushPipelined
			again, err := p.store.RecordResults(ctx, tx.Tx, p.cfg.Name, missed, p.keys.KickLock)
			if err != nil {
				return err
			}
			recs = append(recs, again...)
			r.logStale(ctx, unrecorded(missed, again))
		}
		var items []finishItem
		for _, rec := range recs {
			if rec.OnComplete == "" {
				continue
			}
			res := byID[rec.WorkID]
			sr := storedResult{Status: rec.Status, Value: []byte(res.Value)}
			if res.Error != "" && rec.Status != "success" {
				e := res.Error
				sr.Error = &e
			}
			items = append(items, finishItem{workID: rec.WorkID, attempts: rec.Attempts, onComplete: rec.OnComplete, context: rec.Context, result: sr})
		}
		deferred, err := r.p.runOnCompletes(ctx, tx, items, careful)
		if err != nil {
			return err
		}
		if deferred {
			if err := p.store.Notify(ctx, tx.Tx, p.keys.Channel, string(store.SignalFinish)); err != nil {
				return err
			}
		}
		_, err = p.store.Kick(ctx, tx.Tx, p.cfg.Name, p.keys, store.KickSource{Origin: p.origin})
		return err
	})
	r.driver.Kick() // as in flushPipelined, and after an error too (kickLocal)
	return err
}

// unrecorded returns the results of batch that recs does not list: those
// the attempt fence rejected.
func unrecorded(batch []store.Result, recs []store.Recorded) []store.Result {
	if len(recs) >= len(batch) {
		return nil
	}
	ok := make(map[int64]bool, len(recs))
	for _, rec := range recs {
		ok[rec.WorkID] = true
	}
	var out []store.Result
	for _, res := range batch {
		if !ok[res.WorkID] {
			out = append(out, res)
		}
	}
	return out
}

// logStale logs results that the attempt fence rejected.
func (r *running) logStale(ctx context.Context, stale []store.Result) {
	for _, res := range stale {
		r.p.log.Warn(ctx, "worker: result of a stale attempt ignored (recovered, canceled or already recorded)",
			"work_id", res.WorkID, "attempt", res.Attempt+1, "status", res.Status)
	}
}
