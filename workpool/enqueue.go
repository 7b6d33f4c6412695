package workpool

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/uptrace/bun"

	"github.com/pgworkpool/pgworkpool/internal/store"
	"github.com/pgworkpool/pgworkpool/segments"
	"github.com/pgworkpool/pgworkpool/stats"
)

// WorkID identifies an enqueued work item.
type WorkID int64

// String formats the ID as a decimal number.
func (id WorkID) String() string { return strconv.FormatInt(int64(id), 10) }

// Option adjusts one Enqueue call.
type Option func(*enqueueOptions)

type enqueueOptions struct {
	runAt       time.Time
	runAtSet    bool
	runAfter    time.Duration
	runAfterSet bool
	retry       *RetryBehavior // nil: pool default
	noRetry     bool
	onComplete  *onCompleteInfo
	onCtx       []byte
	onErr       error
	label       string
	timeout     time.Duration
	timeoutSet  bool
}

// RunAt starts the work no earlier than t, at the first 100 ms segment
// boundary at or after it, on the database's clock. Times more than a year
// in the past mean now; more than four years ahead, a year from now
// (logged).
func RunAt(t time.Time) Option {
	return func(o *enqueueOptions) { o.runAt, o.runAtSet = t, true }
}

// RunAfter starts the work no earlier than d from now, at the first 100 ms
// segment boundary at or after it, on the database's clock.
func RunAfter(d time.Duration) Option {
	return func(o *enqueueOptions) { o.runAfter, o.runAfterSet = d, true }
}

// Retry retries failed attempts as b says. A zero b means the pool's
// DefaultRetry.
func Retry(b RetryBehavior) Option {
	return func(o *enqueueOptions) { o.retry, o.noRetry = &b, false }
}

// NoRetry makes the first failure final, even if the pool retries by default.
func NoRetry() Option {
	return func(o *enqueueOptions) { o.retry, o.noRetry = nil, true }
}

// OnComplete calls h with value (encoded as JSON) when the work ends. h's
// result type must be the function's.
func OnComplete[C, R any](h *OnCompleteHandler[C, R], value C) Option {
	return func(o *enqueueOptions) {
		if h == nil || h.h == nil {
			o.onErr = fmt.Errorf("%w: nil onComplete handler", ErrInvalidOption)
			return
		}
		b, err := json.Marshal(value)
		if err != nil {
			o.onErr = fmt.Errorf("%w: onComplete context: %v", ErrNotEncodable, err)
			return
		}
		if store.JSONHasNUL(b) {
			o.onErr = fmt.Errorf("%w: onComplete context holds a NUL character, which Postgres cannot store", ErrNotEncodable)
			return
		}
		o.onComplete, o.onCtx, o.onErr = h.h, b, nil
	}
}

// Label names the item in logs (events, errors), e.g. an order number.
func Label(name string) Option {
	return func(o *enqueueOptions) { o.label = name }
}

// Timeout bounds each attempt; the handler's context is canceled at the
// deadline and the attempt fails with "timed out".
func Timeout(d time.Duration) Option {
	return func(o *enqueueOptions) { o.timeout, o.timeoutSet = d, true }
}

// prepared is an enqueue call checked and encoded, ready for the database.
type prepared struct {
	fn   *funcInfo
	work store.NewWork
}

// prepare validates everything before any query runs: a call that fails here
// writes nothing.
func (p *Pool) prepare(ctx context.Context, h Handle, args []any, opts []Option) (*prepared, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("pgworkpool: enqueue: %w", err)
	}
	if p.closed.Load() {
		return nil, ErrPoolClosed
	}
	var fn *funcInfo
	if h != nil {
		fn = h.info()
	}
	if fn == nil {
		return nil, fmt.Errorf("%w: nil handle", ErrUnknownFunction)
	}
	if fn.pool != p {
		return nil, fmt.Errorf("%w: %q is registered with another pool", ErrUnknownFunction, fn.name)
	}
	var o enqueueOptions
	for _, opt := range opts {
		if opt == nil {
			return nil, fmt.Errorf("%w: nil option", ErrInvalidOption)
		}
		opt(&o)
	}
	w := store.NewWork{WorkOptions: store.WorkOptions{Pool: p.cfg.Name, Fn: fn.name, TimeoutMs: p.cfg.DefaultTimeout.Milliseconds()}}
	if err := p.applyOptions(fn, &o, &w); err != nil {
		return nil, err
	}
	w.Labels = make([]string, len(args))
	w.Args = make([]string, len(args))
	w.Contexts = make([]string, len(args))
	for i, a := range args {
		b, err := fn.encodeArgs(a)
		if err != nil {
			return nil, err
		}
		if len(b) > p.cfg.MaxPayloadBytes {
			return nil, fmt.Errorf("%w: arguments of %q are %d bytes (max %d)", ErrPayloadTooLarge, fn.name, len(b), p.cfg.MaxPayloadBytes)
		}
		w.Labels[i], w.Args[i], w.Contexts[i] = o.label, string(b), string(o.onCtx)
	}
	return &prepared{fn: fn, work: w}, nil
}

func (p *Pool) applyOptions(fn *funcInfo, o *enqueueOptions, w *store.NewWork) error {
	if o.runAtSet && o.runAfterSet {
		return fmt.Errorf("%w: RunAt and RunAfter are exclusive", ErrInvalidOption)
	}
	if o.runAfterSet {
		if o.runAfter < 0 || o.runAfter > 4*365*24*time.Hour {
			return fmt.Errorf("%w: RunAfter %v outside [0, 4 years]", ErrInvalidOption, o.runAfter)
		}
		w.DelayMs = o.runAfter.Milliseconds()
		if o.runAfter%time.Millisecond != 0 {
			w.DelayMs++ // never earlier than asked
		}
	}
	if o.runAtSet {
		if o.runAt.IsZero() {
			return fmt.Errorf("%w: zero RunAt", ErrInvalidOption)
		}
		t, reason := segments.Bound(o.runAt, time.Now())
		if reason == segments.TooFar {
			p.log.Warn(context.Background(), "enqueue: "+reason.String(), "fn", fn.name, "run_at", o.runAt)
		}
		seg := segments.FromTime(t)
		if seg.Time().Before(t) {
			seg++ // the first segment that starts at or after t: never early
		}
		w.RunAtSegment = int64(seg)
	}
	if o.timeoutSet {
		if o.timeout <= 0 || o.timeout > 365*24*time.Hour {
			return fmt.Errorf("%w: Timeout %v outside (0, 1 year]", ErrInvalidOption, o.timeout)
		}
		w.TimeoutMs = max(o.timeout.Milliseconds(), 1)
	}
	if !store.ValidText(o.label) || len(o.label) > 256 {
		return fmt.Errorf("%w: Label must be valid UTF-8 without NUL, of at most 256 bytes", ErrInvalidOption)
	}
	retry := p.cfg.DefaultRetry
	switch {
	case o.noRetry:
		retry = RetryBehavior{MaxAttempts: 1, Base: 1}
	case o.retry != nil:
		if *o.retry != (RetryBehavior{}) {
			retry = *o.retry
		}
	case !p.cfg.RetryByDefault:
		retry = RetryBehavior{MaxAttempts: 1, Base: 1}
	}
	if err := retry.validate(); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidOption, err)
	}
	w.MaxAttempts, w.InitialBackoffMs, w.BackoffBase = retry.MaxAttempts, retry.InitialBackoff.Milliseconds(), retry.Base
	if o.onErr != nil {
		return o.onErr
	}
	if o.onComplete != nil {
		if o.onComplete.pool != p {
			return fmt.Errorf("%w: onComplete %q is registered with another pool", ErrInvalidOption, o.onComplete.name)
		}
		if o.onComplete.resultType != fn.resultType {
			return fmt.Errorf("%w: onComplete %q takes results of type %v, %q returns %v",
				ErrInvalidOption, o.onComplete.name, o.onComplete.resultType, fn.name, fn.resultType)
		}
		if len(o.onCtx) > p.cfg.MaxPayloadBytes {
			return fmt.Errorf("%w: onComplete context is %d bytes (max %d)", ErrPayloadTooLarge, len(o.onCtx), p.cfg.MaxPayloadBytes)
		}
		w.OnComplete = o.onComplete.name
	}
	return nil
}

// Enqueue stores a work item that runs fn with args (of fn's argument type,
// or a pointer to it) and returns its ID. The item is durable when Enqueue
// returns; it starts once a slot is free and it is due.
//
// Calls made while a commit of this Pool's enqueues is in flight wait for
// it to end and then commit together, in one transaction: with
// many producers, that costs the database one commit per group rather than
// one per item. Such a group waits up to 100 µs for the callers of the
// commit before it to come back, as producers in a loop do, so that they
// all share one commit instead of taking turns in two; a call that finds
// no commit in flight never waits. If ctx ends while the call waits, nothing is written; if
// it ends during the commit, as during any statement, the item may or may
// not be stored.
//
// In the process that runs the pool's loop, while the loop waits for work,
// the item is written inside the loop's own transaction, which starts it
// at once if it is due and a slot is free: one commit instead of two, and
// Enqueue returns once that transaction committed. Inside an onComplete,
// pass the context the onComplete was given: the enqueue then commits on
// its own and never waits for the loop, which could be waiting for the
// work row the onComplete holds.
func (p *Pool) Enqueue(ctx context.Context, fn Handle, args any, opts ...Option) (WorkID, error) {
	ids, err := p.enqueueOwnTx(ctx, fn, []any{args}, opts)
	if err != nil {
		return 0, err
	}
	return ids[0], nil
}

// EnqueueTx is Enqueue inside the caller's transaction (or connection): the
// work exists only if the caller commits. It only inserts rows and, when
// the loop must be woken, updates one status row; the lock it takes is
// shared and never blocks other producers, however long tx stays open.
// tx must be a bun.Tx, bun.Conn or *bun.DB of a pgx-backed database.
//
// Two consequences of running inside the caller's transaction: the
// "enqueued" event (at LogInfo) is logged when the insert runs, before the
// caller commits or rolls back; and the returned ID was drawn from a
// sequence, so after a rollback Status reports it as finished rather than
// unknown.
func (p *Pool) EnqueueTx(ctx context.Context, tx bun.IDB, fn Handle, args any, opts ...Option) (WorkID, error) {
	ids, err := p.EnqueueBatchTx(ctx, tx, fn, []any{args}, opts...)
	if err != nil {
		return 0, err
	}
	return ids[0], nil
}

// EnqueueBatch enqueues one item per element of args (a slice of fn's
// argument type, or []any of it) with the same options, atomically, in one
// round trip per chunk of batchChunk items. In the process that runs the
// loop, the items may be written in the loop's transaction, as Enqueue
// says.
func (p *Pool) EnqueueBatch(ctx context.Context, fn Handle, args any, opts ...Option) ([]WorkID, error) {
	list, err := asList(args)
	if err != nil {
		return nil, err
	}
	return p.enqueueOwnTx(ctx, fn, list, opts)
}

// EnqueueBatchTx is EnqueueBatch inside the caller's transaction.
func (p *Pool) EnqueueBatchTx(ctx context.Context, tx bun.IDB, fn Handle, args any, opts ...Option) ([]WorkID, error) {
	list, err := asList(args)
	if err != nil {
		return nil, err
	}
	q, err := querierOf(tx)
	if err != nil {
		return nil, err
	}
	pr, err := p.prepare(ctx, fn, list, opts)
	if err != nil {
		return nil, err
	}
	if err := p.ensure(ctx); err != nil {
		return nil, err
	}
	ids, _, err := p.insert(ctx, q, pr)
	return ids, err
}

// batchChunk bounds the rows of one INSERT statement.
const batchChunk = 5000

func asList(args any) ([]any, error) {
	if l, ok := args.([]any); ok {
		return l, nil
	}
	v := reflect.ValueOf(args)
	if v.Kind() != reflect.Slice {
		return nil, fmt.Errorf("%w: batch arguments must be a slice, got %T", ErrArgsMismatch, args)
	}
	out := make([]any, v.Len())
	for i := range out {
		out[i] = v.Index(i).Interface()
	}
	return out, nil
}

// enqueueOwnTx runs an enqueue in a transaction of ours, shared with the
// enqueues that other goroutines make meanwhile (see combiner).
func (p *Pool) enqueueOwnTx(ctx context.Context, fn Handle, args []any, opts []Option) ([]WorkID, error) {
	pr, err := p.prepare(ctx, fn, args, opts)
	if err != nil {
		return nil, err
	}
	if len(args) == 0 {
		return []WorkID{}, nil
	}
	if err := p.ensure(ctx); err != nil {
		return nil, err
	}
	call := &enqueueCall{work: pr.work, carry: ctx.Value(holdingWorkRows{}) == nil}
	if !p.enqueues.do(ctx, call) {
		return nil, fmt.Errorf("pgworkpool: enqueue: %w", context.Cause(ctx))
	}
	if call.err != nil {
		return nil, call.err
	}
	p.enqueuedEvents(ctx, pr.work, call.ids, call.segment)
	return call.ids, nil
}

// writeEnqueues writes calls in one transaction and sets their outcomes.
// If Postgres refuses a statement, it rolls back everything, so then each
// call is written alone: one call's rows must not fail the others.
func (p *Pool) writeEnqueues(ctx context.Context, calls []*enqueueCall) {
	err := p.writeTogether(ctx, calls)
	var pgErr *pgconn.PgError
	if err != nil && len(calls) > 1 && errors.As(err, &pgErr) {
		for _, call := range calls {
			p.writeEnqueues(ctx, []*enqueueCall{call})
		}
		return
	}
	if err != nil {
		for _, call := range calls {
			call.ids, call.err = nil, p.wrapDBError("enqueue", err)
		}
	}
}

// insertGroup is the calls with equal options, written by one statement
// per chunk of batchChunk items.
type insertGroup struct {
	work   store.NewWork
	calls  []*enqueueCall
	chunks []*store.Inserted
}

// writeTogether writes calls as one pipelined transaction (one round trip:
// the inserts, then the kick). In the leading process, while its loop
// waits for work, the inserts run inside the transaction of the iteration
// that starts the work instead (loop.Driver.RunInIteration), unless an
// onComplete made one of the calls (see holdingWorkRows); otherwise they
// commit on their own and, after the commit, this process's driver is
// kicked directly if it leads.
//
// In the leading process, the kick notifies only a loop that is idle:
// its own driver, woken after the commit, runs an iteration that sees the
// rows and would ignore the notification, and followers need one only
// while the loop is idle, when they stop checking on the leader (one that
// died before that iteration ran would otherwise go unnoticed). Under the
// steady benchmark a third of the enqueue transactions notified a loop
// scheduled between iterations (6,379 in a 10 s run; 24 now), each taking
// the database-wide lock that orders notifying commits and waking every
// process's listener; the benchmark's throughput moved within its noise
// (five alternating pairs, +0.3%). A leader that lost the lead before the
// commit cannot run that iteration, and its successor may be scheduled
// for later, so then a full kick follows the commit in a transaction of
// its own (kickAfterCommit).
func (p *Pool) writeTogether(ctx context.Context, calls []*enqueueCall) error {
	var groups []*insertGroup
	byOptions := make(map[store.WorkOptions]*insertGroup, 1)
	carry := true
	for _, call := range calls {
		carry = carry && call.carry
		g := byOptions[call.work.WorkOptions]
		if g == nil {
			g = &insertGroup{work: store.NewWork{WorkOptions: call.work.WorkOptions}}
			byOptions[call.work.WorkOptions] = g
			groups = append(groups, g)
		}
		g.work.Labels = append(g.work.Labels, call.work.Labels...)
		g.work.Args = append(g.work.Args, call.work.Args...)
		g.work.Contexts = append(g.work.Contexts, call.work.Contexts...)
		g.calls = append(g.calls, call)
	}
	var inserts []store.Op
	due := int64(-1)
	for _, g := range groups {
		for _, chunk := range g.work.Chunks(batchChunk) {
			out := &store.Inserted{}
			g.chunks = append(g.chunks, out)
			inserts = append(inserts, p.store.InsertWorkOp(chunk, p.keys.KickLock, out))
		}
		if d := dueHint(g.work); due < 0 || d < due {
			due = d
		}
	}
	ran, err := false, error(nil)
	if carry {
		ran, err = p.runInIteration(inserts)
	}
	if !ran {
		for _, g := range groups {
			for _, c := range g.chunks {
				*c = store.Inserted{} // an iteration that rolled back may have filled them
			}
		}
		var kicked bool // the NOTIFY reaches other processes; this one is woken below
		src := store.KickSource{Due: due, StartsOnly: true, Origin: p.origin, Leading: p.leading()}
		if src.Leading && p.beforeLeadingWrite != nil {
			p.beforeLeadingWrite()
		}
		err = p.pipeline(ctx, append(inserts, p.store.KickOp(p.cfg.Name, p.keys, src, &kicked))...)
		// Wake this process's driver even if the kick found the loop
		// running: it may be polling because this enqueue held the kick
		// lock. After an error too: the commit may have happened, and the
		// kick carried p.origin.
		p.kickLocal()
		if src.Leading && !p.leading() {
			p.kickAfterCommit(ctx, src)
		}
	}
	if err != nil {
		return err
	}
	for _, g := range groups {
		var ids []int64
		for _, c := range g.chunks {
			ids = append(ids, c.IDs...)
		}
		for _, call := range g.calls {
			n := len(call.work.Args)
			call.ids = make([]WorkID, n)
			for i, id := range ids[:n] {
				call.ids[i] = WorkID(id)
			}
			ids = ids[n:]
			call.segment = g.chunks[0].Segment
		}
	}
	return nil
}

// runInIteration runs statements of ours inside the transaction of an
// iteration of this process's loop, if it leads and waits for work (see
// loop.Driver.RunInIteration), and reports whether it did.
func (p *Pool) runInIteration(ops []store.Op) (ran bool, err error) {
	if r := p.runState(); r != nil {
		return r.driver.RunInIteration(ops)
	}
	return false, nil
}

// pipeline runs ops in one round trip, as one implicit transaction of
// ours (so planned as store.PlanSettings says), on a connection of the
// pool.
func (p *Pool) pipeline(ctx context.Context, ops ...store.Op) error {
	conn, err := p.sqlDB.Conn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	return store.Pipeline(ctx, conn, append([]store.Op{store.PlanSettings()}, ops...)...)
}

// dueHint estimates, on this process's clock, the segment from which
// delayed work is due, for a kick that must be sent before the database has
// computed it. It errs a second early: an early kick costs one wake-up, a
// late one would delay the work.
func dueHint(w store.NewWork) int64 {
	if w.RunAtSegment == 0 && w.DelayMs == 0 {
		return 0
	}
	due := max(int64(segments.FromTime(time.Now().Add(time.Duration(w.DelayMs)*time.Millisecond))), w.RunAtSegment)
	return max(due-int64(segments.Second), 0)
}

// insert writes prepared work in chunks, kicks the loop once, and logs the
// enqueued events.
func (p *Pool) insert(ctx context.Context, q store.Querier, pr *prepared) ([]WorkID, bool, error) {
	w := pr.work
	out := make([]WorkID, 0, len(w.Args))
	var segment int64
	for _, chunk := range w.Chunks(batchChunk) {
		ids, seg, err := p.store.InsertWork(ctx, q, chunk, p.keys.KickLock)
		if err != nil {
			return nil, false, p.wrapDBError("enqueue", err)
		}
		segment = seg
		for _, id := range ids {
			out = append(out, WorkID(id))
		}
	}
	kicked, err := p.store.Kick(ctx, q, p.cfg.Name, p.keys, store.KickSource{Due: segment, StartsOnly: true})
	if err != nil {
		return nil, false, p.wrapDBError("enqueue", err)
	}
	p.enqueuedEvents(ctx, w, out, segment)
	return out, kicked, nil
}

func (p *Pool) enqueuedEvents(ctx context.Context, w store.NewWork, ids []WorkID, segment int64) {
	if !p.log.EventsEnabled() {
		return
	}
	runAt := segments.Segment(segment).Time()
	for i, id := range ids {
		p.log.Enqueued(ctx, stats.Enqueued{WorkID: int64(id), Fn: w.Fn, Label: w.Labels[i], RunAt: runAt})
	}
}

// querierOf unwraps a bun handle to its database/sql value so our
// statements bypass bun's placeholder formatting and keep real parameters.
func querierOf(db bun.IDB) (store.Querier, error) {
	var q store.Querier
	switch v := db.(type) {
	case bun.Tx:
		if v.Tx != nil {
			q = v.Tx
		}
	case *bun.Tx:
		if v != nil && v.Tx != nil {
			q = v.Tx
		}
	case *bun.DB:
		if v != nil && v.DB != nil {
			q = v.DB
		}
	case bun.Conn:
		if v.Conn != nil {
			q = v.Conn
		}
	case *bun.Conn:
		if v != nil && v.Conn != nil {
			q = v.Conn
		}
	default:
		return nil, fmt.Errorf("%w: %T", ErrUnsupportedDB, db)
	}
	if q == nil {
		// A nil or zero handle: using it would panic deep in database/sql.
		return nil, fmt.Errorf("%w: nil %T", ErrUnsupportedDB, db)
	}
	return q, nil
}
