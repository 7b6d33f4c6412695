package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivermigrate"
	"github.com/uptrace/bun"
	"github.com/uptrace/bun/dialect/pgdialect"

	"github.com/pgworkpool/pgworkpool/migrations"
	"github.com/pgworkpool/pgworkpool/workpool"
)

// Names of the systems, as given to -system and printed.
const (
	sysPgworkpool = "pgworkpool"
	sysRiver      = "river"
)

// Schemas and names used by the benchmark. Each run drops and recreates them.
const (
	schemaPgworkpool = "bench_wp"
	schemaRiver      = "bench_river"
	poolName         = "bench"
	fnName           = "noop"
)

// bulkChunk is how many rows one enqueue call writes when a phase inserts
// more than that (the backlog's future rows); each call is one transaction.
const bulkChunk = 100_000

// system is one queue implementation on one database: it owns its
// connections and its schema, and makes instances (a pool or a client).
type system interface {
	name() string
	// schema is the schema the system's tables live in.
	schema() string
	// reset drops the system's schema and installs it afresh.
	reset(ctx context.Context) error
	// drop removes the system's schema.
	drop(ctx context.Context) error
	// open makes a new, unstarted instance whose handler reports to t.
	open(ctx context.Context, t *tracker, parallelism int) (instance, error)
	// lastID is the highest job id the system's table holds (0 if none).
	lastID(ctx context.Context) (int64, error)
	// remaining counts the benchmark jobs with ids above after (future rows
	// excluded) that the database does not yet record as finished. Counting
	// only ids above the jobs that were there before keeps this check cheap
	// with a million future rows present; counting the whole table made
	// its own cost part of the backlog test's durable time.
	remaining(ctx context.Context, after int64) (int64, error)
	// settings describes the configuration, for the output.
	settings(parallelism int) string
	close()
}

// instance is one started-or-not pool (ours) or client (River).
type instance interface {
	enqueue(ctx context.Context, a jobArgs) error
	// enqueueInTx enqueues a in a transaction the caller opens and commits
	// (ours EnqueueTx in a bun.Tx, River InsertTx in a pgx.Tx), so that no
	// library can share the commit with another producer's.
	enqueueInTx(ctx context.Context, a jobArgs) error
	enqueueBatch(ctx context.Context, args []jobArgs) error
	// enqueueFuture inserts rows scheduled after d.
	enqueueFuture(ctx context.Context, args []jobArgs, d time.Duration) error
	start(ctx context.Context) error
	stop(ctx context.Context) error
	// state describes the instance's progress, for a timeout report.
	state(ctx context.Context) string
}

// ---------------------------------------------------------------- pgworkpool

type wpSystem struct {
	db    *bun.DB
	conns int
	log   *logSink
	// cooldown and poll are Config.Cooldown and PollInterval (zero: the
	// library's defaults).
	cooldown, poll time.Duration
}

func newWPSystem(connCfg *pgx.ConnConfig, conns int, cooldown, poll time.Duration, log *logSink) *wpSystem {
	sqlDB := stdlib.OpenDB(*connCfg)
	sqlDB.SetMaxOpenConns(conns)
	sqlDB.SetMaxIdleConns(conns)
	return &wpSystem{db: bun.NewDB(sqlDB, pgdialect.New()), conns: conns, log: log, cooldown: cooldown, poll: poll}
}

func (s *wpSystem) name() string   { return sysPgworkpool }
func (s *wpSystem) schema() string { return schemaPgworkpool }

func (s *wpSystem) reset(ctx context.Context) error {
	if err := s.drop(ctx); err != nil {
		return err
	}
	if _, err := migrations.Migrate(ctx, s.db, migrations.WithSchema(schemaPgworkpool)); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	return nil
}

func (s *wpSystem) drop(ctx context.Context) error {
	_, err := s.db.DB.ExecContext(ctx, "DROP SCHEMA IF EXISTS "+schemaPgworkpool+" CASCADE")
	return err
}

func (s *wpSystem) lastID(ctx context.Context) (int64, error) {
	var id int64
	err := s.db.DB.QueryRowContext(ctx, "SELECT coalesce(max(id), 0) FROM "+schemaPgworkpool+".work").Scan(&id)
	return id, err
}

func (s *wpSystem) remaining(ctx context.Context, after int64) (int64, error) {
	var n int64
	err := s.db.DB.QueryRowContext(ctx, "SELECT count(*) FROM "+schemaPgworkpool+
		".work WHERE id > $1 AND NOT coalesce((args->>'f')::boolean, false)", after).Scan(&n)
	return n, err
}

func (s *wpSystem) settings(parallelism int) string {
	other := "other fields default"
	if s.cooldown != 0 || s.poll != 0 {
		cd, poll := s.cooldown, s.poll
		if poll == 0 {
			poll = workpool.PollIntervalDefault
		}
		other = fmt.Sprintf("Cooldown=%v PollInterval=%v, other fields default", cd, poll)
	}
	return fmt.Sprintf("MaxParallelism=%d Workers=%d, %s; database/sql max %d connections", parallelism, parallelism, other, s.conns)
}

func (s *wpSystem) close() { _ = s.db.Close() }

func (s *wpSystem) open(_ context.Context, t *tracker, parallelism int) (instance, error) {
	p, err := workpool.New(s.db, workpool.Config{
		Name:           poolName,
		Schema:         schemaPgworkpool,
		MaxParallelism: parallelism,
		Workers:        parallelism,
		Cooldown:       s.cooldown,
		PollInterval:   s.poll,
		Logger:         slog.New(s.log.handler(sysPgworkpool)),
	})
	if err != nil {
		return nil, err
	}
	fn, err := workpool.Register(p, fnName, func(ctx context.Context, a jobArgs) (struct{}, error) {
		return struct{}{}, t.handle(ctx, a)
	})
	if err != nil {
		return nil, err
	}
	return &wpInstance{p: p, fn: fn, db: s.db}, nil
}

type wpInstance struct {
	p  *workpool.Pool
	fn *workpool.Func[jobArgs, struct{}]
	db *bun.DB
}

func (w *wpInstance) enqueueInTx(ctx context.Context, a jobArgs) error {
	return w.db.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		_, err := w.p.EnqueueTx(ctx, tx, w.fn, a)
		return err
	})
}

func (w *wpInstance) enqueue(ctx context.Context, a jobArgs) error {
	_, err := w.p.Enqueue(ctx, w.fn, a)
	return err
}

func (w *wpInstance) enqueueBatch(ctx context.Context, args []jobArgs) error {
	_, err := w.p.EnqueueBatch(ctx, w.fn, args)
	return err
}

func (w *wpInstance) enqueueFuture(ctx context.Context, args []jobArgs, d time.Duration) error {
	for start := 0; start < len(args); start += bulkChunk {
		end := min(start+bulkChunk, len(args))
		if _, err := w.p.EnqueueBatch(ctx, w.fn, args[start:end], workpool.RunAfter(d)); err != nil {
			return err
		}
	}
	return nil
}

func (w *wpInstance) start(ctx context.Context) error { return w.p.Start(ctx) }
func (w *wpInstance) stop(ctx context.Context) error  { return w.p.Stop(ctx) }

func (w *wpInstance) state(ctx context.Context) string {
	st, err := w.p.Stats(ctx)
	if err != nil {
		return "stats: " + err.Error()
	}
	return fmt.Sprintf("Stats: running=%d backlog=%d future=%d unclaimed=%d finishing=%d completed(interval)=%d failed=%d",
		st.Running, st.Backlog, st.Future, st.Unclaimed, st.Finishing, st.Completed, st.Failed)
}

// --------------------------------------------------------------------- River

// riverSettings are the River knobs the benchmark varies. Zero durations mean
// River's defaults.
type riverSettings struct {
	label             string
	fetchCooldown     time.Duration
	fetchPollInterval time.Duration
}

func (r riverSettings) String() string {
	cd, poll := r.fetchCooldown, r.fetchPollInterval
	if cd == 0 {
		cd = river.FetchCooldownDefault
	}
	if poll == 0 {
		poll = river.FetchPollIntervalDefault
	}
	return fmt.Sprintf("%s: FetchCooldown=%v FetchPollInterval=%v", r.label, cd, poll)
}

type riverSystem struct {
	pool  *pgxpool.Pool
	conns int
	s     riverSettings
	log   *logSink
}

func newRiverSystem(ctx context.Context, connCfg *pgx.ConnConfig, conns int, s riverSettings, log *logSink) (*riverSystem, error) {
	cfg, err := pgxpool.ParseConfig("")
	if err != nil {
		return nil, err
	}
	cfg.ConnConfig = connCfg.Copy()
	cfg.MaxConns = int32(conns)
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, err
	}
	return &riverSystem{pool: pool, conns: conns, s: s, log: log}, nil
}

func (s *riverSystem) name() string   { return sysRiver }
func (s *riverSystem) schema() string { return schemaRiver }

func (s *riverSystem) reset(ctx context.Context) error {
	if err := s.drop(ctx); err != nil {
		return err
	}
	if _, err := s.pool.Exec(ctx, "CREATE SCHEMA "+schemaRiver); err != nil {
		return err
	}
	m, err := rivermigrate.New(riverpgxv5.New(s.pool), &rivermigrate.Config{Schema: schemaRiver, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return err
	}
	if _, err := m.Migrate(ctx, rivermigrate.DirectionUp, nil); err != nil {
		return fmt.Errorf("river migrate: %w", err)
	}
	return nil
}

func (s *riverSystem) drop(ctx context.Context) error {
	_, err := s.pool.Exec(ctx, "DROP SCHEMA IF EXISTS "+schemaRiver+" CASCADE")
	return err
}

func (s *riverSystem) lastID(ctx context.Context) (int64, error) {
	var id int64
	err := s.pool.QueryRow(ctx, "SELECT coalesce(max(id), 0) FROM "+schemaRiver+".river_job").Scan(&id)
	return id, err
}

func (s *riverSystem) remaining(ctx context.Context, after int64) (int64, error) {
	var n int64
	err := s.pool.QueryRow(ctx, "SELECT count(*) FROM "+schemaRiver+
		".river_job WHERE id > $1 AND state <> 'completed' AND NOT coalesce((args->>'f')::boolean, false)", after).Scan(&n)
	return n, err
}

func (s *riverSystem) settings(parallelism int) string {
	return fmt.Sprintf("MaxWorkers=%d, %s; pgxpool max %d connections", parallelism, s.s, s.conns)
}

func (s *riverSystem) close() { s.pool.Close() }

func (s *riverSystem) open(_ context.Context, t *tracker, parallelism int) (instance, error) {
	workers := river.NewWorkers()
	river.AddWorker(workers, river.WorkFunc(func(ctx context.Context, job *river.Job[jobArgs]) error {
		return t.handle(ctx, job.Args)
	}))
	c, err := river.NewClient(riverpgxv5.New(s.pool), &river.Config{
		Logger:            slog.New(s.log.handler(sysRiver)),
		Schema:            schemaRiver,
		Queues:            map[string]river.QueueConfig{river.QueueDefault: {MaxWorkers: parallelism}},
		Workers:           workers,
		FetchCooldown:     s.s.fetchCooldown,
		FetchPollInterval: s.s.fetchPollInterval,
	})
	if err != nil {
		return nil, err
	}
	return &riverInstance{c: c, s: s}, nil
}

type riverInstance struct {
	c *river.Client[pgx.Tx]
	s *riverSystem
}

func (r *riverInstance) enqueue(ctx context.Context, a jobArgs) error {
	_, err := r.c.Insert(ctx, a, nil)
	return err
}

func (r *riverInstance) enqueueInTx(ctx context.Context, a jobArgs) error {
	return pgx.BeginFunc(ctx, r.s.pool, func(tx pgx.Tx) error {
		_, err := r.c.InsertTx(ctx, tx, a, nil)
		return err
	})
}

func (r *riverInstance) enqueueBatch(ctx context.Context, args []jobArgs) error {
	return r.insertFast(ctx, args, nil)
}

func (r *riverInstance) enqueueFuture(ctx context.Context, args []jobArgs, d time.Duration) error {
	at := time.Now().Add(d)
	for start := 0; start < len(args); start += bulkChunk {
		end := min(start+bulkChunk, len(args))
		if err := r.insertFast(ctx, args[start:end], &river.InsertOpts{ScheduledAt: at}); err != nil {
			return err
		}
	}
	return nil
}

func (r *riverInstance) insertFast(ctx context.Context, args []jobArgs, opts *river.InsertOpts) error {
	params := make([]river.InsertManyParams, len(args))
	for i, a := range args {
		params[i] = river.InsertManyParams{Args: a, InsertOpts: opts}
	}
	n, err := r.c.InsertManyFast(ctx, params)
	if err == nil && n != len(args) {
		err = fmt.Errorf("river InsertManyFast inserted %d of %d rows", n, len(args))
	}
	return err
}

func (r *riverInstance) start(ctx context.Context) error { return r.c.Start(ctx) }

func (r *riverInstance) stop(ctx context.Context) error {
	err := r.c.Stop(ctx)
	if errors.Is(err, context.DeadlineExceeded) {
		_ = r.c.StopAndCancel(context.Background())
	}
	return err
}

func (r *riverInstance) state(ctx context.Context) string {
	rows, err := r.s.pool.Query(ctx, "SELECT state::text, count(*) FROM "+schemaRiver+".river_job GROUP BY 1 ORDER BY 1")
	if err != nil {
		return "state: " + err.Error()
	}
	defer rows.Close()
	out := "river_job by state:"
	for rows.Next() {
		var st string
		var n int64
		if err := rows.Scan(&st, &n); err != nil {
			return out + " " + err.Error()
		}
		out += fmt.Sprintf(" %s=%d", st, n)
	}
	return out
}
