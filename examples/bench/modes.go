package main

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
)

// result is what one system measured in one mode.
type result struct {
	system   string
	settings string
	metrics  map[string]float64
	notes    []string
	err      error
}

func (r *result) set(key string, v float64) {
	if r.metrics == nil {
		r.metrics = map[string]float64{}
	}
	r.metrics[key] = v
}

func (r *result) note(format string, args ...any) {
	r.notes = append(r.notes, fmt.Sprintf(format, args...))
}

// env is what every mode needs: the flags, the base connection config and an
// admin connection for bookkeeping queries.
type env struct {
	o        options
	connCfg  *pgx.ConnConfig
	admin    *pgx.Conn
	log      *logSink
	progress func(format string, args ...any)
}

// riverSettingsFor returns the River settings a mode uses.
func (e *env) riverSettingsFor() riverSettings {
	var s riverSettings
	switch {
	case !e.o.riverTuned:
		s = riverSettings{label: "River defaults (-river-tuned=false)"}
	case e.o.mode == "latency":
		s = riverLatencyTuned
	case e.o.mode == "idle":
		s = riverIdleTuned
	default:
		s = riverThroughputTuned
	}
	if e.o.riverCooldown != 0 {
		s.fetchCooldown = e.o.riverCooldown
		s.label += " + -river-cooldown"
	}
	if e.o.riverPoll != 0 {
		s.fetchPollInterval = e.o.riverPoll
		s.label += " + -river-poll"
	}
	return s
}

// The tuned River settings (see README.md for how they were chosen).
var (
	// riverThroughputTuned is what the benchmark anchors used: fetch as often
	// as River allows, poll every 50 ms as a fallback to LISTEN/NOTIFY.
	riverThroughputTuned = riverSettings{label: "tuned for throughput", fetchCooldown: time.Millisecond, fetchPollInterval: 50 * time.Millisecond}
	// riverLatencyTuned gave River its lowest latency on the reference
	// machine among the settings tried (README.md).
	riverLatencyTuned = riverSettings{label: "tuned for latency", fetchCooldown: time.Millisecond, fetchPollInterval: 50 * time.Millisecond}
	// riverIdleTuned polls once a minute: an idle client then costs only
	// its maintenance work (leader election and the like). New jobs still
	// arrive at once through LISTEN/NOTIFY; River's defaults poll every
	// second and cost about twice as much, the throughput settings twenty
	// times as much (README.md).
	riverIdleTuned = riverSettings{label: "tuned for idle", fetchPollInterval: time.Minute}
)

// newSystem opens one system on the database of connCfg.
func (e *env) newSystem(ctx context.Context, name string, connCfg *pgx.ConnConfig) (system, error) {
	if name == sysRiver {
		return newRiverSystem(ctx, connCfg, e.o.conns, e.riverSettingsFor(), e.log)
	}
	return newWPSystem(connCfg, e.o.conns, e.o.wpCooldown, e.o.wpPoll, e.log), nil
}

// runSystem runs the mode for one system, from a fresh schema to its drop.
func (e *env) runSystem(ctx context.Context, name string) *result {
	res := &result{system: name}
	if e.o.mode == "idle" {
		res.err = e.idle(ctx, name, res)
		return res
	}
	sys, err := e.newSystem(ctx, name, e.connCfg)
	if err != nil {
		res.err = err
		return res
	}
	defer sys.close()
	res.settings = sys.settings(e.o.parallelism)
	if err := sys.reset(ctx); err != nil {
		res.err = fmt.Errorf("set up schema: %w", err)
		return res
	}
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		if err := sys.drop(dctx); err != nil {
			res.note("drop schema at the end failed: %v", err)
		}
	}()
	if e.o.checkpoint {
		if _, err := e.admin.Exec(ctx, "CHECKPOINT"); err != nil {
			res.note("CHECKPOINT before the run failed, so one may fall inside it: %v", err)
		}
	}
	if walStart, err := e.walLSN(ctx); err == nil {
		defer func() {
			if walEnd, err := e.walLSN(context.WithoutCancel(ctx)); err == nil {
				res.set("wal_mb", float64(walEnd-walStart)/1e6)
			}
		}()
	}
	switch e.o.mode {
	case "drain", "slots":
		res.err = e.drainMode(ctx, sys, res)
	case "steady":
		res.err = e.steady(ctx, sys, res)
	case "latency":
		res.err = e.latency(ctx, sys, res)
	case "backlog":
		res.err = e.backlog(ctx, sys, res)
	default:
		res.err = fmt.Errorf("unknown mode %q", e.o.mode)
	}
	return res
}

// walLSN returns the server's current WAL insert position in bytes.
func (e *env) walLSN(ctx context.Context) (int64, error) {
	var lsn int64
	err := e.admin.QueryRow(ctx, "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint").Scan(&lsn)
	return lsn, err
}

// drainStats is what one drain phase measured.
type drainStats struct {
	enqueue   time.Duration // inserting the n jobs
	handlers  time.Duration // Start to the last handler's return
	first     time.Duration // Start to the first handler's start
	durable   time.Duration // Start to the database recording every job finished
	jobsPerS  float64
	durablePS float64
}

// drain enqueues n jobs on a new instance (after before, if any), starts it,
// and times the run until every job completed, then stops it and checks
// that the database holds no unfinished job.
func (e *env) drain(ctx context.Context, sys system, n int, sleep time.Duration, before func(instance) error) (drainStats, error) {
	var ds drainStats
	t := newTracker(n, sleep)
	inst, err := sys.open(ctx, t, e.o.parallelism)
	if err != nil {
		return ds, fmt.Errorf("open: %w", err)
	}
	stopped := false
	defer func() {
		if !stopped {
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
			defer cancel()
			_ = inst.stop(sctx)
		}
	}()
	if before != nil {
		if err := before(inst); err != nil {
			return ds, err
		}
	}
	args := make([]jobArgs, n)
	for i := range args {
		args[i] = jobArgs{I: i}
	}
	after, err := sys.lastID(ctx)
	if err != nil {
		return ds, fmt.Errorf("read the last job id: %w", err)
	}
	e0 := time.Now()
	if err := inst.enqueueBatch(ctx, args); err != nil {
		return ds, fmt.Errorf("enqueue %d jobs: %w", n, err)
	}
	ds.enqueue = time.Since(e0)
	e.progress("%s: enqueued %d jobs in %v; starting", sys.name(), n, ds.enqueue.Round(time.Millisecond))

	t0 := time.Now()
	if err := inst.start(ctx); err != nil {
		return ds, fmt.Errorf("start: %w", err)
	}
	if !t.wait(ctx, e.o.timeout) {
		return ds, fmt.Errorf("timed out after %v: %d of %d jobs completed (%d duplicate runs); %s",
			e.o.timeout, t.completed.Load(), n, t.duplicates.Load(), inst.state(context.WithoutCancel(ctx)))
	}
	ds.handlers = time.Unix(0, t.lastAt.Load()).Sub(t0)
	ds.first = time.Unix(0, t.firstAt.Load()).Sub(t0)
	for {
		left, err := sys.remaining(ctx, after)
		if err != nil {
			return ds, fmt.Errorf("count unfinished jobs: %w", err)
		}
		if left == 0 {
			ds.durable = time.Since(t0)
			break
		}
		if time.Since(t0) > e.o.timeout {
			return ds, fmt.Errorf("timed out after %v: every handler returned but %d jobs are not recorded as finished; %s",
				e.o.timeout, left, inst.state(context.WithoutCancel(ctx)))
		}
		time.Sleep(5 * time.Millisecond)
	}
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	err = inst.stop(sctx)
	cancel()
	stopped = true
	if err != nil {
		return ds, fmt.Errorf("stop: %w", err)
	}
	if left, err := sys.remaining(ctx, after); err != nil || left != 0 {
		return ds, fmt.Errorf("after stop: %d unfinished jobs in the database (err %v)", left, err)
	}
	if d := t.duplicates.Load(); d > 0 {
		return ds, fmt.Errorf("%d jobs ran more than once", d)
	}
	if u := t.unexpected.Load(); u > 0 {
		return ds, fmt.Errorf("%d unexpected jobs ran (future-scheduled rows or unknown indexes)", u)
	}
	ds.jobsPerS = float64(n) / ds.handlers.Seconds()
	ds.durablePS = float64(n) / ds.durable.Seconds()
	return ds, nil
}

func (e *env) drainMode(ctx context.Context, sys system, res *result) error {
	sleep := time.Duration(0)
	if e.o.mode == "slots" {
		sleep = e.o.sleep
	}
	ds, err := e.drain(ctx, sys, e.o.n, sleep, nil)
	if err != nil {
		return err
	}
	res.set("jobs_per_s", ds.jobsPerS)
	res.set("durable_jobs_per_s", ds.durablePS)
	res.set("enqueue_jobs_per_s", float64(e.o.n)/ds.enqueue.Seconds())
	res.set("seconds", ds.handlers.Seconds())
	res.set("first_job_ms", float64(ds.first.Microseconds())/1000)
	if e.o.mode == "slots" {
		ideal := float64(e.o.parallelism) / sleep.Seconds()
		res.set("efficiency", ds.jobsPerS/ideal)
	}
	return nil
}

func (e *env) backlog(ctx context.Context, sys system, res *result) error {
	empty, err := e.drain(ctx, sys, e.o.n, 0, nil)
	if err != nil {
		return fmt.Errorf("drain without backlog: %w", err)
	}
	e.progress("%s: %.0f jobs/s without backlog; inserting %d future rows", sys.name(), empty.jobsPerS, e.o.backlogRows)
	var insert time.Duration
	withBacklog, err := e.drain(ctx, sys, e.o.n, 0, func(inst instance) error {
		future := make([]jobArgs, e.o.backlogRows)
		for i := range future {
			future[i] = jobArgs{I: -1, F: true}
		}
		t0 := time.Now()
		if err := inst.enqueueFuture(ctx, future, 24*time.Hour); err != nil {
			return fmt.Errorf("insert %d future rows: %w", len(future), err)
		}
		insert = time.Since(t0)
		e.progress("%s: inserted %d future rows in %v", sys.name(), len(future), insert.Round(time.Millisecond))
		if !e.o.backlogSettle {
			return nil
		}
		return e.settleSchema(ctx, sys.schema())
	})
	if err != nil {
		return fmt.Errorf("drain with backlog: %w", err)
	}
	res.set("jobs_per_s_empty", empty.jobsPerS)
	res.set("jobs_per_s_backlog", withBacklog.jobsPerS)
	res.set("jobs_per_s", withBacklog.jobsPerS)
	res.set("ratio", withBacklog.jobsPerS/empty.jobsPerS)
	res.set("durable_ratio", withBacklog.durablePS/empty.durablePS)
	res.set("first_job_ms_empty", float64(empty.first.Microseconds())/1000)
	res.set("first_job_ms_backlog", float64(withBacklog.first.Microseconds())/1000)
	res.set("backlog_insert_rows_per_s", float64(e.o.backlogRows)/insert.Seconds())
	return nil
}

// settleSchema checkpoints and vacuums every table of a schema, so that a
// drain timed next pays neither the first write-back of rows just inserted
// nor an autovacuum of them that happens to start during the drain.
func (e *env) settleSchema(ctx context.Context, schema string) error {
	t0 := time.Now()
	rows, err := e.admin.Query(ctx, "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables WHERE schemaname = $1", schema)
	if err != nil {
		return fmt.Errorf("list tables of %s: %w", schema, err)
	}
	tables, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("list tables of %s: %w", schema, err)
	}
	for _, t := range tables {
		if _, err := e.admin.Exec(ctx, "VACUUM (ANALYZE) "+t); err != nil {
			return fmt.Errorf("vacuum %s: %w", t, err)
		}
	}
	if _, err := e.admin.Exec(ctx, "CHECKPOINT"); err != nil {
		return fmt.Errorf("checkpoint: %w", err)
	}
	e.progress("vacuumed %d tables of %s and checkpointed in %v", len(tables), schema, time.Since(t0).Round(time.Millisecond))
	return nil
}

func (e *env) steady(ctx context.Context, sys system, res *result) error {
	t := newTracker(0, 0)
	inst, err := sys.open(ctx, t, e.o.parallelism)
	if err != nil {
		return fmt.Errorf("open: %w", err)
	}
	if err := inst.start(ctx); err != nil {
		return fmt.Errorf("start: %w", err)
	}
	window := time.Duration(e.o.seconds * float64(time.Second))
	t0 := time.Now()
	t.winFrom.Store(t0.Add(time.Second).UnixNano())
	t.winTo.Store(t0.Add(window).UnixNano())
	end := t0.Add(window)
	var enqueued atomic.Int64
	var firstErr error
	var errOnce sync.Once
	var wg sync.WaitGroup
	enqueue := inst.enqueue
	if e.o.producerTx {
		enqueue = inst.enqueueInTx
	}
	for range e.o.producers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(end) && ctx.Err() == nil {
				if err := enqueue(ctx, jobArgs{I: -1}); err != nil {
					errOnce.Do(func() { firstErr = err })
					return
				}
				enqueued.Add(1)
			}
		}()
	}
	wg.Wait()
	if d := time.Until(end); d > 0 {
		time.Sleep(d)
	}
	inWindow := t.window.Load()
	completed := t.completed.Load()
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	stopErr := inst.stop(sctx)
	cancel()
	if firstErr != nil {
		return fmt.Errorf("enqueue: %w", firstErr)
	}
	if stopErr != nil {
		return fmt.Errorf("stop: %w", stopErr)
	}
	res.set("jobs_per_s", float64(inWindow)/(window-time.Second).Seconds())
	res.set("enqueue_jobs_per_s", float64(enqueued.Load())/window.Seconds())
	res.set("backlog_at_end", float64(enqueued.Load()-completed))
	return nil
}

func (e *env) latency(ctx context.Context, sys system, res *result) error {
	t := newTracker(0, 0)
	t.recordLatency = true
	inst, err := sys.open(ctx, t, e.o.parallelism)
	if err != nil {
		return fmt.Errorf("open: %w", err)
	}
	stopped := false
	defer func() {
		if !stopped {
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
			defer cancel()
			_ = inst.stop(sctx)
		}
	}()
	if err := inst.start(ctx); err != nil {
		return fmt.Errorf("start: %w", err)
	}
	// Let start-up work (leader election, first polls) settle: the jobs
	// should meet an idle system.
	time.Sleep(time.Second)
	const every = 20 * time.Millisecond
	total := int(e.o.seconds * float64(time.Second/every))
	t0 := time.Now()
	for i := range total {
		if d := time.Until(t0.Add(time.Duration(i) * every)); d > 0 {
			time.Sleep(d)
		}
		if err := inst.enqueue(ctx, jobArgs{I: -1, T: time.Now().UnixNano()}); err != nil {
			return fmt.Errorf("enqueue: %w", err)
		}
	}
	deadline := time.Now().Add(e.o.timeout)
	for t.completed.Load() < int64(total) {
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("timed out: %d of %d jobs completed; %s", t.completed.Load(), total, inst.state(context.WithoutCancel(ctx)))
		}
		time.Sleep(5 * time.Millisecond)
	}
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	err = inst.stop(sctx)
	cancel()
	stopped = true
	if err != nil {
		return fmt.Errorf("stop: %w", err)
	}
	ps, count := t.percentiles(0.5, 0.9, 0.99, 1)
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	res.set("p50_ms", ms(ps[0]))
	res.set("p90_ms", ms(ps[1]))
	res.set("p99_ms", ms(ps[2]))
	res.set("max_ms", ms(ps[3]))
	res.set("jobs", float64(count))
	return nil
}

// idle runs one system alone on a database of its own and counts the
// transactions the database commits and rolls back while the system has
// nothing to do. A twin database with the same schema and no client is
// counted over the same window: what Postgres itself runs there (autovacuum)
// is the noise floor of the measurement.
func (e *env) idle(ctx context.Context, name string, res *result) (err error) {
	dbName := "bench_idle_" + name
	twinName := dbName + "_baseline"
	for _, db := range []string{dbName, twinName} {
		ident := pgx.Identifier{db}.Sanitize()
		if _, err := e.admin.Exec(ctx, "DROP DATABASE IF EXISTS "+ident+" WITH (FORCE)"); err != nil {
			return err
		}
		if _, err := e.admin.Exec(ctx, "CREATE DATABASE "+ident); err != nil {
			return err
		}
		defer func() {
			dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
			defer cancel()
			if _, derr := e.admin.Exec(dctx, "DROP DATABASE IF EXISTS "+ident+" WITH (FORCE)"); derr != nil {
				res.note("drop database %s at the end failed: %v", db, derr)
			}
		}()
		// Install the schema with connections that are closed before the
		// measurement, so that their statistics are flushed (a backend
		// flushes when it exits) and cannot leak into the window.
		connCfg := e.connCfg.Copy()
		connCfg.Database = db
		setup, err := e.newSystem(ctx, name, connCfg)
		if err != nil {
			return err
		}
		err = setup.reset(ctx)
		setup.close()
		if err != nil {
			return fmt.Errorf("set up schema: %w", err)
		}
	}

	connCfg := e.connCfg.Copy()
	connCfg.Database = dbName
	sys, err := e.newSystem(ctx, name, connCfg)
	if err != nil {
		return err
	}
	defer sys.close()
	res.settings = sys.settings(e.o.parallelism)
	t := newTracker(0, 0)
	inst, err := sys.open(ctx, t, e.o.parallelism)
	if err != nil {
		return fmt.Errorf("open: %w", err)
	}
	if err := inst.start(ctx); err != nil {
		return fmt.Errorf("start: %w", err)
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if serr := inst.stop(sctx); serr != nil && err == nil {
			err = fmt.Errorf("stop: %w", serr)
		}
	}()
	e.progress("%s: started idle; settling for %v", name, e.o.settle)
	if err := sleepCtx(ctx, e.o.settle); err != nil {
		return err
	}
	before, err := e.xacts(ctx, dbName)
	if err != nil {
		return err
	}
	twinBefore, err := e.xacts(ctx, twinName)
	if err != nil {
		return err
	}
	window := time.Duration(e.o.seconds * float64(time.Second))
	t0 := time.Now()
	if err := sleepCtx(ctx, window); err != nil {
		return err
	}
	after, err := e.xacts(ctx, dbName)
	if err != nil {
		return err
	}
	twinAfter, err := e.xacts(ctx, twinName)
	if err != nil {
		return err
	}
	elapsed := time.Since(t0)
	res.set("tx_per_min", float64(after-before)/elapsed.Minutes())
	res.set("tx", float64(after-before))
	res.set("baseline_tx_per_min", float64(twinAfter-twinBefore)/elapsed.Minutes())
	if c := t.completed.Load(); c != 0 {
		res.note("%d jobs ran during the idle window", c)
	}
	return nil
}

// xacts reads xact_commit + xact_rollback of a database. The admin
// connection is on another database, so reading does not count.
func (e *env) xacts(ctx context.Context, dbName string) (int64, error) {
	var n int64
	err := e.admin.QueryRow(ctx, "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = $1", dbName).Scan(&n)
	return n, err
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return errors.Join(errors.New("interrupted"), ctx.Err())
	}
}
