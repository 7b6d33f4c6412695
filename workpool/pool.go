package workpool

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/uptrace/bun"

	"github.com/pgworkpool/pgworkpool/internal/store"
	"github.com/pgworkpool/pgworkpool/loop"
	"github.com/pgworkpool/pgworkpool/recovery"
	"github.com/pgworkpool/pgworkpool/stats"
)

// Pool is a durable work pool stored in Postgres. Create one with New per
// process and pool name; it is safe for concurrent use.
type Pool struct {
	db    *bun.DB
	sqlDB *sql.DB
	cfg   Config
	store *store.Store
	keys  store.Keys
	log   *stats.Logger
	loop  *loop.Loop

	mu          sync.RWMutex
	funcs       map[string]*funcInfo
	onCompletes map[string]*onCompleteInfo

	ensureMu sync.Mutex
	ensured  bool

	startMu sync.Mutex
	started bool
	closed  atomic.Bool
	run     *running // set by Start

	// enqueues lets concurrent Enqueue calls share commits.
	enqueues combiner

	// origin marks the kicks of transactions this Pool commits itself,
	// after which it wakes its own driver (kickLocal), so that the driver
	// can ignore their notifications while it leads (store.KickSource).
	origin string

	// standbyHold is how long a standby waits for a slot (standbyHoldDefault;
	// tests shorten or lengthen it before Start).
	standbyHold time.Duration
	// handOffs counts the slots handed to standbys, for tests.
	handOffs atomic.Int64

	// beforeLeadingWrite, if set (by tests), runs when writeTogether found
	// this process leading, before its transaction.
	beforeLeadingWrite func()
}

// New returns a pool on db, which must use the pgx database/sql driver
// (github.com/jackc/pgx/v5/stdlib) and the bun pgdialect. New sends no
// query: tables must exist (see the migrations package) by the first call
// that uses them.
func New(db *bun.DB, cfg Config) (*Pool, error) {
	if db == nil {
		return nil, fmt.Errorf("%w: nil *bun.DB", ErrUnsupportedDB)
	}
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	p := &Pool{
		db:          db,
		sqlDB:       db.DB,
		cfg:         cfg,
		store:       store.New(cfg.Schema),
		funcs:       map[string]*funcInfo{},
		onCompletes: map[string]*onCompleteInfo{},
		origin:      strconv.FormatUint(rand.Uint64(), 10),
		standbyHold: standbyHoldDefault,
	}
	p.keys = store.KeysFor(cfg.Schema, cfg.Name)
	p.enqueues.write, p.enqueues.regroupWait = p.writeEnqueues, regroupWait
	level := cfg.LogLevel
	if level == 0 {
		level = LogReport
	}
	p.log = stats.NewLogger(cfg.Logger, cfg.Name, level)
	p.loop = loop.New(loop.Config{
		Pool:           cfg.Name,
		Store:          p.store,
		DB:             p.sqlDB,
		Logger:         p.log,
		BatchSize:      cfg.BatchSize,
		Recovery:       recovery.Config{Lease: cfg.Lease, Grace: cfg.TimeoutGrace},
		RecoveryPeriod: cfg.RecoveryPeriod,
		ReportInterval: cfg.ReportInterval,
		Cooldown:       cfg.Cooldown,
		PollInterval:   cfg.PollInterval,
	})
	return p, nil
}

// Name returns the pool's name.
func (p *Pool) Name() string { return p.cfg.Name }

func (p *Pool) addFunc(f *funcInfo) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, dup := p.funcs[f.name]; dup {
		return fmt.Errorf("%w: function %q", ErrDuplicateName, f.name)
	}
	p.funcs[f.name] = f
	return nil
}

func (p *Pool) addOnComplete(h *onCompleteInfo) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, dup := p.onCompletes[h.name]; dup {
		return fmt.Errorf("%w: onComplete %q", ErrDuplicateName, h.name)
	}
	p.onCompletes[h.name] = h
	return nil
}

func (p *Pool) funcNames() []string {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return slices.Collect(maps.Keys(p.funcs))
}

func (p *Pool) onCompleteNames() []string {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return slices.Collect(maps.Keys(p.onCompletes))
}

func (p *Pool) lookupFunc(name string) *funcInfo {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return p.funcs[name]
}

func (p *Pool) lookupOnComplete(name string) *onCompleteInfo {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return p.onCompletes[name]
}

// ensure creates the pool's rows once per Pool value.
func (p *Pool) ensure(ctx context.Context) error {
	p.ensureMu.Lock()
	defer p.ensureMu.Unlock()
	if p.ensured {
		return nil
	}
	if err := p.store.EnsurePool(ctx, p.sqlDB, p.cfg.Name, max(p.cfg.MaxParallelism, MaxParallelismDefault)); err != nil {
		return p.wrapDBError("set up pool", err)
	}
	p.ensured = true
	return nil
}

// wrapDBError adds context and recognizes a missing schema.
func (p *Pool) wrapDBError(op string, err error) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && (pgErr.Code == "42P01" || pgErr.Code == "3F000") {
		return fmt.Errorf("pgworkpool: %s: %w (schema %q: %v)", op, ErrNotMigrated, p.cfg.Schema, err)
	}
	return fmt.Errorf("pgworkpool: %s: %w", op, err)
}

// inTx runs fn in a transaction of ours on the pool's database.
func (p *Pool) inTx(ctx context.Context, fn func(tx *sql.Tx) error) error {
	tx, err := p.sqlDB.BeginTx(ctx, nil)
	if err != nil {
		return p.wrapDBError("begin", err)
	}
	if err := fn(tx); err != nil {
		_ = tx.Rollback()
		return err
	}
	if err := tx.Commit(); err != nil {
		return p.wrapDBError("commit", err)
	}
	return nil
}

// kickLocal wakes this process's driver after a transaction that kicked
// the loop, saving the NOTIFY round trip when this process leads. A kick
// that carried p.origin must be followed by kickLocal even when the
// transaction reported an error, since its commit may have happened: the
// leading driver ignores the notification.
func (p *Pool) kickLocal() {
	if r := p.runState(); r != nil {
		r.driver.Kick()
	}
}

// leading reports whether this process's driver leads the pool's loop.
func (p *Pool) leading() bool {
	r := p.runState()
	return r != nil && r.driver.Leader()
}

// kickAfterCommit kicks the loop in a transaction of its own, for rows
// whose transaction kicked counting on this process leading (see
// writeTogether). The kick protocol holds: an iteration that went quiet
// before the commit left run_status idle or scheduled, which this kick
// reads, and is woken; one whose re-check came later sees the rows; one in
// between failed its try-lock against the rows' transaction and looks
// again by itself. A failure is logged: the rows are committed, and the
// loop reaches them at its next wake-up.
func (p *Pool) kickAfterCommit(ctx context.Context, src store.KickSource) {
	src.Origin, src.Leading = "", false
	ctx = context.WithoutCancel(ctx) // the rows are committed whatever the caller does now
	err := p.inTx(ctx, func(tx *sql.Tx) error {
		_, err := p.store.Kick(ctx, tx, p.cfg.Name, p.keys, src)
		return err
	})
	if err != nil {
		p.log.Warn(ctx, "kick after losing the lead failed; the work starts at the loop's next iteration", "error", err)
	}
}

// writeAndKick runs write in a transaction of ours and, when it says the
// loop must learn about it, kicks the loop in the same transaction and this
// process's driver after the commit.
func (p *Pool) writeAndKick(ctx context.Context, op string, write func(tx *sql.Tx) (kick bool, err error)) error {
	kicked := false
	err := p.inTx(ctx, func(tx *sql.Tx) error {
		kick, err := write(tx)
		if err != nil || !kick {
			return err
		}
		if kicked, err = p.store.Kick(ctx, tx, p.cfg.Name, p.keys, store.KickSource{Origin: p.origin}); err != nil {
			return p.wrapDBError(op, err)
		}
		return nil
	})
	// Even after an error: a commit whose answer was lost still notified.
	if kicked {
		p.kickLocal()
	}
	return err
}

func (p *Pool) runState() *running {
	p.startMu.Lock()
	defer p.startMu.Unlock()
	return p.run
}

// connConfig extracts the pgx configuration behind db, for the driver's
// dedicated LISTEN connection.
func (p *Pool) connConfig(ctx context.Context) (*pgx.ConnConfig, error) {
	conn, err := p.sqlDB.Conn(ctx)
	if err != nil {
		return nil, p.wrapDBError("connect", err)
	}
	defer conn.Close()
	var cfg *pgx.ConnConfig
	err = conn.Raw(func(dc any) error {
		sc, ok := dc.(*stdlib.Conn)
		if !ok {
			return fmt.Errorf("%w: driver connection is %T, want pgx stdlib", ErrUnsupportedDB, dc)
		}
		cfg = sc.Conn().Config().Copy()
		return nil
	})
	return cfg, err
}

// SetMaxParallelism changes the pool's limit at runtime, for every process.
// 0 pauses: nothing new starts, running work finishes and is recorded.
// Raising the limit wakes the loop at once.
func (p *Pool) SetMaxParallelism(ctx context.Context, n int) error {
	if n < 0 || n > MaxParallelismLimit {
		return fmt.Errorf("%w: MaxParallelism %d outside [0, %d]", ErrInvalidConfig, n, MaxParallelismLimit)
	}
	if p.closed.Load() {
		return ErrPoolClosed
	}
	if err := p.ensure(ctx); err != nil {
		return err
	}
	return p.writeAndKick(ctx, "set max parallelism", func(tx *sql.Tx) (bool, error) {
		old, err := p.store.SetMaxParallelism(ctx, tx, p.cfg.Name, n)
		if err != nil {
			return false, p.wrapDBError("set max parallelism", err)
		}
		return n > old, nil
	})
}

// SetLogLevel changes the pool's log level at runtime, for every process.
func (p *Pool) SetLogLevel(ctx context.Context, level LogLevel) error {
	if !level.Valid() {
		return fmt.Errorf("%w: LogLevel %v", ErrInvalidConfig, level)
	}
	if p.closed.Load() {
		return ErrPoolClosed
	}
	if err := p.ensure(ctx); err != nil {
		return err
	}
	var version time.Time
	err := p.inTx(ctx, func(tx *sql.Tx) error {
		var err error
		if version, err = p.store.SetLogLevel(ctx, tx, p.cfg.Name, level.String(), MaxParallelismDefault); err != nil {
			return p.wrapDBError("set log level", err)
		}
		return p.store.Notify(ctx, tx, p.keys.Channel, string(store.SignalConfig))
	})
	if err == nil {
		p.log.SetStoredLevel(level, version.UnixNano())
	}
	return err
}

// refreshConfig reads the stored config into this process.
func (p *Pool) refreshConfig(ctx context.Context) error {
	c, err := p.store.ReadConfig(ctx, p.sqlDB, p.cfg.Name)
	if err != nil {
		return p.wrapDBError("read config", err)
	}
	if l, err := stats.ParseLevel(c.LogLevel); err == nil {
		p.log.SetStoredLevel(l, c.Version.UnixNano())
	}
	return nil
}

// Stats returns the figures of the periodic report as of now: counters
// since the last report, current sizes, and (in the process that runs the
// loop) the interval's start-lag and run-time percentiles. The loop closes
// an interval every ReportInterval while it is active, even at a log level
// that does not print the report (LogWarn, LogError), so the counters cover
// the time since then.
func (p *Pool) Stats(ctx context.Context) (stats.Report, error) {
	if err := p.ensure(ctx); err != nil {
		return stats.Report{}, err
	}
	c, err := p.store.ReadCounters(ctx, p.sqlDB, p.cfg.Name)
	if err != nil {
		return stats.Report{}, p.wrapDBError("stats", err)
	}
	g, err := p.store.ReadGauges(ctx, p.sqlDB, p.cfg.Name)
	if err != nil {
		return stats.Report{}, p.wrapDBError("stats", err)
	}
	r := stats.Report{
		IntervalStart: c.Since, IntervalEnd: time.Now(),
		Completed: c.Completed, Succeeded: c.Succeeded, Failed: c.Failed, Retries: c.Retries, Canceled: c.Canceled,
		Running: g.Running, Backlog: g.Backlog, Future: g.Future, Unclaimed: g.Unclaimed, Finishing: g.Finishing,
	}
	r.StartLag, r.RunTime = p.loop.Samples()
	r.ComputeRates()
	return r, nil
}

func hostname() string {
	h, _ := os.Hostname()
	return h
}
