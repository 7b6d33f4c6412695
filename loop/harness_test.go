package loop_test

import (
	"bytes"
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/uptrace/bun"

	"github.com/pgworkpool/pgworkpool/internal/pgtest"
	"github.com/pgworkpool/pgworkpool/internal/store"
	"github.com/pgworkpool/pgworkpool/loop"
	"github.com/pgworkpool/pgworkpool/migrations"
	"github.com/pgworkpool/pgworkpool/recovery"
	"github.com/pgworkpool/pgworkpool/stats"
)

func TestMain(m *testing.M) { pgtest.Main(m, pgtest.Options{}) }

const pool = "p"

// poolSchema is one pool in a fresh, migrated schema, with helpers that
// run SQL in it: the state-machine harness and the benchmark build on it.
type poolSchema struct {
	tb     testing.TB
	ctx    context.Context
	db     *bun.DB
	sqlDB  *sql.DB
	schema string
	st     *store.Store
	logs   *logBuffer
}

func newPoolSchema(tb testing.TB) *poolSchema {
	tb.Helper()
	db, schema := pgtest.NewSchema(tb)
	ctx := context.Background()
	_, err := migrations.Migrate(ctx, db, migrations.WithSchema(schema))
	require.NoError(tb, err)
	s := &poolSchema{tb: tb, ctx: ctx, db: db, sqlDB: db.DB, schema: schema, st: store.New(schema), logs: &logBuffer{}}
	require.NoError(tb, s.st.EnsurePool(ctx, s.sqlDB, pool, 10))
	return s
}

// exec runs SQL with {s} replaced by the schema and bun's ? placeholders.
func (s *poolSchema) exec(query string, args ...any) {
	s.tb.Helper()
	_, err := s.db.ExecContext(s.ctx, strings.ReplaceAll(query, "{s}", s.schema), args...)
	require.NoError(s.tb, err, query)
}

func (s *poolSchema) scalar(query string, args ...any) int64 {
	s.tb.Helper()
	var v sql.NullInt64
	require.NoError(s.tb, s.db.NewRaw(strings.ReplaceAll(query, "{s}", s.schema), args...).Scan(s.ctx, &v), query)
	return v.Int64
}

// harness is one pool in a fresh schema, driven by hand: tests write the
// composite state with SQL, run iterations and observe the result.
type harness struct {
	*poolSchema
	t    *testing.T
	loop *loop.Loop
	keys store.Keys
	// gatherDelay is the DriverConfig.GatherDelay of processes started on
	// the harness (0: default).
	gatherDelay time.Duration
}

type harnessOpts struct {
	paused         bool // max_parallelism 0
	maxParallelism int  // default 10
	batchSize      int
	jitter         float64 // the random draw; 0.5 makes the factor exactly 1
	recovery       recovery.Config
	// processCountMaxAge is loop.Config.ProcessCountMaxAge (0: default).
	processCountMaxAge time.Duration
	gatherDelay        time.Duration // see harness.gatherDelay
}

func newHarness(t *testing.T, o harnessOpts) *harness {
	t.Helper()
	h := &harness{poolSchema: newPoolSchema(t), t: t, gatherDelay: o.gatherDelay}
	if o.maxParallelism == 0 {
		o.maxParallelism = 10
	}
	if o.paused {
		o.maxParallelism = 0
	}
	// The loop applies the stored level each iteration: store debug so
	// the anomalies it logs can be asserted on.
	h.exec("UPDATE {s}.config SET max_parallelism = ?, log_level = 'debug'", o.maxParallelism)
	jitter := o.jitter
	if jitter == 0 {
		jitter = 0.5
	}
	logger := stats.NewLogger(slog.New(slog.NewTextHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelDebug})), pool, stats.LevelDebug)
	h.loop = loop.New(loop.Config{
		Pool: pool, Store: h.st, DB: h.sqlDB, Logger: logger,
		BatchSize: o.batchSize, Recovery: o.recovery,
		Jitter:             func() float64 { return jitter },
		ProcessCountMaxAge: o.processCountMaxAge,
	})
	h.keys = h.loop.Keys()
	return h
}

// cursorsAtNow moves every cursor to the current segment, as after a long
// time of activity, so that rows far behind it are "late commits".
func (h *harness) cursorsAtNow() {
	n := h.now()
	h.exec("UPDATE {s}.internal_state SET start_cursor = ?, completion_cursor = ?, cancelation_cursor = ?", n, n, n)
}

// recoveredNow records a recovery pass at the current segment, so the next
// iteration is an ordinary one even with work running.
func (h *harness) recoveredNow() {
	h.exec("UPDATE {s}.internal_state SET last_recovery = ?", h.now())
}

// now returns the current segment on the database clock.
func (h *harness) now() int64 { return h.scalar("SELECT " + store.NowSegment) }

type workOpts struct {
	attempts, maxAttempts int
	backoffMs             int64
	base                  float64
	canceled              bool
	onComplete            bool
	finishing             bool // result already set
}

// work inserts a work row and returns its id.
func (h *harness) work(o workOpts) int64 {
	h.t.Helper()
	if o.maxAttempts == 0 {
		o.maxAttempts = 1
	}
	if o.base == 0 {
		o.base = 2
	}
	var onComplete, result any
	if o.onComplete {
		onComplete = "done"
	}
	if o.finishing {
		result = `{"status": "success", "error": null, "value": 1}`
	}
	return h.scalar(`INSERT INTO {s}.work (pool, fn_name, args, attempts, max_attempts, initial_backoff_ms, backoff_base,
		timeout_ms, on_complete, canceled, result, finish_after)
		VALUES (?, 'fn', '{}', ?, ?, ?, ?, 60000, ?, ?, ?::jsonb, CASE WHEN ?::jsonb IS NULL THEN NULL ELSE now() END) RETURNING id`,
		pool, o.attempts, o.maxAttempts, o.backoffMs, o.base, onComplete, o.canceled, result, result)
}

func (h *harness) pendingStart(id, segment int64) {
	h.exec("INSERT INTO {s}.pending_start (work_id, pool, segment, fn_name, attempt, timeout_ms) "+
		"VALUES (?, ?, ?, 'fn', COALESCE((SELECT attempts FROM {s}.work WHERE id = ?), 0), 60000)", id, pool, segment, id)
}

// runningWork inserts work whose current attempt (o.attempts) holds an
// unclaimed slot.
func (h *harness) runningWork(o workOpts) int64 {
	h.t.Helper()
	id := h.work(o)
	h.running(id, o.attempts, nil)
	return id
}

// running inserts a running row and keeps internal_state.running_count in
// step, as the loop would have.
func (h *harness) running(id int64, attempt int, claimedBy *int64) {
	h.exec("INSERT INTO {s}.running (work_id, pool, fn_name, attempt, segment, started_at, timeout_ms, claimed_by, claimed_at, deadline) "+
		"VALUES (?, ?, 'fn', ?, ?, now(), 60000, ?, CASE WHEN ?::bigint IS NULL THEN NULL ELSE now() END, now() + interval '1 minute')",
		id, pool, attempt, h.now(), claimedBy, claimedBy)
	h.exec("UPDATE {s}.internal_state SET running_count = running_count + 1 WHERE pool = ?", pool)
}

func (h *harness) pendingCompletion(id int64, attempt int, status string, retry bool, segment int64) {
	h.exec("INSERT INTO {s}.pending_completion (pool, segment, work_id, attempt, status, error, retry, run_ms) VALUES (?, ?, ?, ?, ?, NULLIF(?, ''), ?, 5)",
		pool, segment, id, attempt, status, map[bool]string{true: "boom"}[status == "failed"], retry)
}

func (h *harness) pendingCancel(id, segment int64) {
	h.exec("INSERT INTO {s}.pending_cancelation (pool, segment, work_id) VALUES (?, ?, ?)", pool, segment, id)
}

func (h *harness) generation() int64 {
	g, err := h.st.ReadGeneration(h.ctx, h.sqlDB, pool)
	require.NoError(h.t, err)
	return g
}

// main runs one iteration with the current generation.
func (h *harness) main() loop.Outcome {
	h.t.Helper()
	out, err := h.loop.Main(h.ctx, h.generation())
	require.NoError(h.t, err)
	require.False(h.t, out.Stale)
	return out
}

// complete records an attempt result the way a worker does.
func (h *harness) complete(r store.Result) []store.Recorded {
	h.t.Helper()
	var recs []store.Recorded
	require.NoError(h.t, withTx(h.ctx, h.sqlDB, func(tx *sql.Tx) error {
		var err error
		recs, err = h.st.RecordResults(h.ctx, tx, pool, []store.Result{r}, h.keys.KickLock)
		return err
	}))
	return recs
}

// cancel records a cancel request the way Pool.Cancel does.
func (h *harness) cancel(id int64) []int64 {
	h.t.Helper()
	var got []int64
	require.NoError(h.t, withTx(h.ctx, h.sqlDB, func(tx *sql.Tx) error {
		var err error
		got, err = h.st.InsertCancelations(h.ctx, tx, pool, []int64{id}, h.keys.KickLock)
		return err
	}))
	return got
}

// kick runs a producer's kick in a transaction of its own and reports
// whether it notified.
func (h *harness) kick(src store.KickSource) bool {
	h.t.Helper()
	var kicked bool
	require.NoError(h.t, withTx(h.ctx, h.sqlDB, func(tx *sql.Tx) error {
		var err error
		kicked, err = h.st.Kick(h.ctx, tx, pool, h.keys, src)
		return err
	}))
	return kicked
}

func withTx(ctx context.Context, db *sql.DB, fn func(*sql.Tx) error) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := fn(tx); err != nil {
		_ = tx.Rollback()
		return err
	}
	return tx.Commit()
}

// composite is the observable state of one work item across the tables.
type composite struct {
	Work         bool   // the work row exists
	Attempts     int    // work.attempts
	Canceled     bool   // work.canceled
	Result       string // status in work.result ("" when not finishing)
	PendingStart int    // rows
	StartDelay   int64  // pending_start.segment - now, in segments (when one row)
	Running      int    // rows
	Completions  int    // pending_completion rows
	Cancelations int    // pending_cancelation rows
}

func (h *harness) observe(id int64) composite {
	h.t.Helper()
	var c composite
	var attempts sql.NullInt64
	var canceled sql.NullBool
	var result sql.NullString
	err := h.db.NewRaw(strings.ReplaceAll(`SELECT
		(SELECT attempts FROM {s}.work WHERE id = ?),
		(SELECT canceled FROM {s}.work WHERE id = ?),
		(SELECT result->>'status' FROM {s}.work WHERE id = ?)`, "{s}", h.schema), id, id, id).
		Scan(h.ctx, &attempts, &canceled, &result)
	require.NoError(h.t, err)
	c.Work, c.Attempts, c.Canceled, c.Result = attempts.Valid, int(attempts.Int64), canceled.Bool, result.String
	c.PendingStart = int(h.scalar("SELECT count(*) FROM {s}.pending_start WHERE work_id = ?", id))
	if c.PendingStart == 1 {
		c.StartDelay = h.scalar("SELECT segment FROM {s}.pending_start WHERE work_id = ?", id) - h.now()
	}
	c.Running = int(h.scalar("SELECT count(*) FROM {s}.running WHERE work_id = ?", id))
	c.Completions = int(h.scalar("SELECT count(*) FROM {s}.pending_completion WHERE work_id = ?", id))
	c.Cancelations = int(h.scalar("SELECT count(*) FROM {s}.pending_cancelation WHERE work_id = ?", id))
	return c
}

// checkRunningCount asserts the loop's running_count matches the rows.
func (h *harness) checkRunningCount() {
	h.t.Helper()
	require.Equal(h.t, h.scalar("SELECT count(*) FROM {s}.running WHERE pool = ?", pool),
		h.scalar("SELECT running_count FROM {s}.internal_state WHERE pool = ?", pool), "running_count drifted from the running table")
}

func (h *harness) counters() store.Counters {
	c, err := h.st.ReadCounters(h.ctx, h.sqlDB, pool)
	require.NoError(h.t, err)
	c.Since = c.Since.UTC().Truncate(0)
	return c
}

func (h *harness) runStatus() store.RunStatus {
	rs, err := h.st.ReadRunStatus(h.ctx, h.sqlDB, pool)
	require.NoError(h.t, err)
	return rs
}

// logBuffer collects log output for assertions on logged anomalies.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) contains(s string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return strings.Contains(b.buf.String(), s)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return fmt.Sprint(b.buf.String())
}
