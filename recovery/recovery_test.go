package recovery_test

import (
	"context"
	"database/sql"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgworkpool/pgworkpool/internal/pgtest"
	"github.com/pgworkpool/pgworkpool/internal/store"
	"github.com/pgworkpool/pgworkpool/migrations"
	"github.com/pgworkpool/pgworkpool/recovery"
	"github.com/pgworkpool/pgworkpool/stats"
)

func TestMain(m *testing.M) { pgtest.Main(m, pgtest.Options{}) }

const pool = "p"

// fixture is a migrated schema with one pool set up; rows are written
// directly with SQL, as the loop and workers would have left them.
type fixture struct {
	t      *testing.T
	db     *sql.DB
	schema string
	store  *store.Store
	logs   *capture
	log    *stats.Logger
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	bdb, schema := pgtest.NewSchema(t)
	ctx := context.Background()
	_, err := migrations.Migrate(ctx, bdb, migrations.WithSchema(schema))
	require.NoError(t, err)
	s := store.New(schema)
	require.NoError(t, s.EnsurePool(ctx, bdb.DB, pool, 10))
	require.NoError(t, s.EnsurePool(ctx, bdb.DB, "other", 10))
	c := &capture{}
	return &fixture{t: t, db: bdb.DB, schema: schema, store: s, logs: c,
		log: stats.NewLogger(slog.New(c), pool, stats.LevelReport)}
}

func (f *fixture) exec(query string, args ...any) {
	f.t.Helper()
	_, err := f.db.ExecContext(context.Background(), query, args...)
	require.NoError(f.t, err)
}

func (f *fixture) int(query string, args ...any) int64 {
	f.t.Helper()
	var n int64
	require.NoError(f.t, f.db.QueryRowContext(context.Background(), query, args...).Scan(&n))
	return n
}

// work inserts a work row and returns its id.
type workRow struct {
	pool        string
	attempts    int
	maxAttempts int
	onComplete  string // "" for none
	context     string // JSON, "" for none
	canceled    bool
	result      string // JSON, "" for none (not finishing)
}

func (f *fixture) work(w workRow) int64 {
	f.t.Helper()
	if w.pool == "" {
		w.pool = pool
	}
	if w.maxAttempts == 0 {
		w.maxAttempts = 1
	}
	var id int64
	require.NoError(f.t, f.db.QueryRowContext(context.Background(),
		"INSERT INTO "+f.schema+".work (pool, fn_name, args, attempts, max_attempts, initial_backoff_ms, backoff_base, timeout_ms, "+
			"on_complete, on_complete_context, canceled, result, finish_after) "+
			"VALUES ($1, 'fn', '{}', $2, $3, 10, 2, 60000, NULLIF($4, ''), NULLIF($5, '')::jsonb, $6, NULLIF($7, '')::jsonb, "+
			"CASE WHEN $7 = '' THEN NULL ELSE now() END) RETURNING id",
		w.pool, w.attempts, w.maxAttempts, w.onComplete, w.context, w.canceled, w.result).Scan(&id))
	return id
}

// worker inserts a workers row whose last heartbeat was ago.
func (f *fixture) worker(ago time.Duration) int64 {
	f.t.Helper()
	return f.int("INSERT INTO "+f.schema+".workers (pool, heartbeat_at) VALUES ($1, now() - $2 * interval '1 millisecond') RETURNING id",
		pool, ago.Milliseconds())
}

// running inserts a running row for attempt of workID. claimedBy 0 leaves
// it unclaimed (no claim columns); otherwise its deadline is deadlineIn
// from now (negative: in the past).
func (f *fixture) running(rowPool string, workID int64, attempt int, claimedBy int64, deadlineIn time.Duration) {
	f.t.Helper()
	if claimedBy == 0 {
		f.exec("INSERT INTO "+f.schema+".running (work_id, pool, fn_name, attempt, segment, started_at, timeout_ms) "+
			"VALUES ($1, $2, 'fn', $3, 0, now() - interval '1 hour', 60000)", workID, rowPool, attempt)
		return
	}
	f.exec("INSERT INTO "+f.schema+".running (work_id, pool, fn_name, attempt, segment, started_at, timeout_ms, claimed_by, claimed_at, deadline) "+
		"VALUES ($1, $2, 'fn', $3, 0, now() - interval '1 minute', 60000, $4, now() - interval '1 minute', now() + $5 * interval '1 millisecond')",
		workID, rowPool, attempt, claimedBy, deadlineIn.Milliseconds())
}

// run executes one recovery pass in a transaction, as the loop does.
func (f *fixture) run(cfg recovery.Config) recovery.Result {
	f.t.Helper()
	ctx := context.Background()
	tx, err := f.db.BeginTx(ctx, nil)
	require.NoError(f.t, err)
	res, err := recovery.Run(ctx, tx, f.store, pool, cfg, f.log)
	if err != nil {
		_ = tx.Rollback()
		require.NoError(f.t, err)
	}
	require.NoError(f.t, tx.Commit())
	return res
}

type pendingCompletion struct {
	attempt int
	status  string
	error   string
	retry   bool
	runMs   int64
}

func (f *fixture) completions(workID int64) []pendingCompletion {
	f.t.Helper()
	rows, err := f.db.QueryContext(context.Background(),
		"SELECT attempt, status, COALESCE(error, ''), retry, COALESCE(run_ms, -99) FROM "+f.schema+".pending_completion WHERE work_id = $1 ORDER BY attempt",
		workID)
	require.NoError(f.t, err)
	defer rows.Close()
	var out []pendingCompletion
	for rows.Next() {
		var c pendingCompletion
		require.NoError(f.t, rows.Scan(&c.attempt, &c.status, &c.error, &c.retry, &c.runMs))
		out = append(out, c)
	}
	require.NoError(f.t, rows.Err())
	return out
}

func (f *fixture) attempts(workID int64) int64 {
	f.t.Helper()
	return f.int("SELECT attempts FROM "+f.schema+".work WHERE id = $1", workID)
}

func (f *fixture) exists(table string, workIDColumn string, workID int64) bool {
	f.t.Helper()
	return f.int("SELECT count(*) FROM "+f.schema+"."+table+" WHERE "+workIDColumn+" = $1", workID) > 0
}

// lateResult is what a lost worker that comes back would record for its
// attempt: the same statement, fenced by the attempt number.
func (f *fixture) lateResult(workID int64, attempt int, status string) []store.Recorded {
	f.t.Helper()
	recs, err := f.store.RecordResults(context.Background(), f.db, pool,
		[]store.Result{{WorkID: workID, Attempt: attempt, Status: status, Value: `42`, RunMs: 5}},
		store.KeysFor(f.schema, pool).KickLock)
	require.NoError(f.t, err)
	return recs
}

var short = recovery.Config{Lease: 2 * time.Second, Grace: time.Second}

func TestLostWorkerRetryable(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	w := f.worker(10 * time.Second) // last heartbeat well past the 2 s lease
	id := f.work(workRow{maxAttempts: 3})
	f.running(pool, id, 0, w, time.Hour)

	res := f.run(short)
	require.Len(t, res.Recorded, 1)
	assert.Equal(t, store.Recorded{WorkID: id, Attempts: 1, Status: "failed", Retry: true}, res.Recorded[0])
	assert.Zero(t, res.Ignored)
	assert.Empty(t, res.Orphans)
	assert.Equal(t, []pendingCompletion{{attempt: 0, status: "failed", error: recovery.ReasonWorkerLost, retry: true, runMs: -1}}, f.completions(id))
	assert.EqualValues(t, 1, f.attempts(id), "the attempt is counted")
	assert.True(t, f.exists("running", "work_id", id), "the running row is the loop's to remove")
	assert.Equal(t, 1, f.logs.count("recovery: attempt failed"))

	// A second pass before the loop consumed the completion changes nothing.
	res = f.run(short)
	assert.Empty(t, res.Recorded)
	assert.Empty(t, res.Orphans)
	assert.Len(t, f.completions(id), 1)

	// The lost worker comes back and reports its attempt: ignored.
	assert.Empty(t, f.lateResult(id, 0, "success"))
	assert.Len(t, f.completions(id), 1)
	assert.EqualValues(t, 1, f.attempts(id))
}

func TestLostWorkerTerminal(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	w := f.worker(time.Minute)
	plain := f.work(workRow{maxAttempts: 2, attempts: 1}) // its last attempt
	withOnComplete := f.work(workRow{maxAttempts: 1, onComplete: "h", context: `{"k": 1}`})
	canceled := f.work(workRow{maxAttempts: 5, canceled: true})
	f.running(pool, plain, 1, w, time.Hour)
	f.running(pool, withOnComplete, 0, w, time.Hour)
	f.running(pool, canceled, 0, w, time.Hour)

	res := f.run(short)
	assert.ElementsMatch(t, []store.Recorded{
		{WorkID: plain, Attempts: 2, Status: "failed"},
		{WorkID: withOnComplete, Attempts: 1, Status: "failed", OnComplete: "h", Context: `{"k": 1}`},
		{WorkID: canceled, Attempts: 1, Status: "canceled"},
	}, res.Recorded)
	assert.Empty(t, res.Orphans)

	// Terminal without onComplete: the work row is gone at once.
	assert.False(t, f.exists("work", "id", plain))
	assert.Equal(t, []pendingCompletion{{attempt: 1, status: "failed", error: recovery.ReasonWorkerLost, runMs: -1}}, f.completions(plain))
	// Terminal with onComplete: finishing, the result kept for the handler.
	var result string
	var finishAfterSet bool
	require.NoError(t, f.db.QueryRow("SELECT result::text, finish_after IS NOT NULL FROM "+f.schema+".work WHERE id = $1", withOnComplete).
		Scan(&result, &finishAfterSet))
	assert.JSONEq(t, `{"status": "failed", "error": "worker lost", "value": null}`, result)
	assert.True(t, finishAfterSet)
	assert.Equal(t, []pendingCompletion{{attempt: 0, status: "failed", error: recovery.ReasonWorkerLost, runMs: -1}}, f.completions(withOnComplete))
	// Canceled work is not retried; it ends as canceled.
	assert.Equal(t, []pendingCompletion{{attempt: 0, status: "canceled", error: recovery.ReasonWorkerLost, runMs: -1}}, f.completions(canceled))

	// Late results of the lost worker are ignored, finishing work included.
	assert.Empty(t, f.lateResult(plain, 1, "success"))
	assert.Empty(t, f.lateResult(withOnComplete, 0, "success"))
	assert.Empty(t, f.lateResult(canceled, 0, "success"))
	assert.Len(t, f.completions(withOnComplete), 1)
	assert.Len(t, f.completions(canceled), 1)
}

func TestMissingWorkerRowIsLost(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	gone := f.worker(0)
	f.exec("DELETE FROM "+f.schema+".workers WHERE id = $1", gone)
	id := f.work(workRow{maxAttempts: 3})
	f.running(pool, id, 0, gone, time.Hour)

	res := f.run(short)
	require.Len(t, res.Recorded, 1)
	assert.Equal(t, id, res.Recorded[0].WorkID)
	assert.Equal(t, []pendingCompletion{{attempt: 0, status: "failed", error: recovery.ReasonWorkerLost, retry: true, runMs: -1}}, f.completions(id))
}

func TestDeadlinePastGraceTimedOut(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	live := f.worker(0)
	dead := f.worker(time.Minute)
	late := f.work(workRow{maxAttempts: 3})
	withinGrace := f.work(workRow{maxAttempts: 3})
	lateAndLost := f.work(workRow{maxAttempts: 3})
	f.running(pool, late, 0, live, -3*time.Second)               // 3 s past its deadline, grace 1 s
	f.running(pool, withinGrace, 0, live, -200*time.Millisecond) // the worker may still report it
	f.running(pool, lateAndLost, 0, dead, -3*time.Second)

	res := f.run(short)
	got := map[int64]bool{}
	for _, r := range res.Recorded {
		got[r.WorkID] = true
	}
	assert.Equal(t, map[int64]bool{late: true, lateAndLost: true}, got)
	assert.Equal(t, []pendingCompletion{{attempt: 0, status: "failed", error: recovery.ReasonTimedOut, retry: true, runMs: -1}}, f.completions(late))
	assert.Equal(t, []pendingCompletion{{attempt: 0, status: "failed", error: recovery.ReasonTimedOut, retry: true, runMs: -1}}, f.completions(lateAndLost),
		"an attempt past its deadline is reported as timed out even if its worker is also lost")
	assert.Empty(t, f.completions(withinGrace))
	assert.EqualValues(t, 0, f.attempts(withinGrace))

	// The worker reports the timeout itself afterwards: ignored.
	assert.Empty(t, f.lateResult(late, 0, "failed"))
	assert.Len(t, f.completions(late), 1)
}

func TestLiveAndUnclaimedUntouched(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	live := f.worker(time.Second) // within the 2 s lease
	claimed := f.work(workRow{maxAttempts: 3})
	unclaimed := f.work(workRow{maxAttempts: 3})
	f.running(pool, claimed, 0, live, time.Hour)
	f.running(pool, unclaimed, 0, 0, 0) // started an hour ago, no worker has the function

	res := f.run(short)
	assert.Empty(t, res.Recorded)
	assert.Zero(t, res.Ignored)
	assert.Empty(t, res.Orphans)
	for _, id := range []int64{claimed, unclaimed} {
		assert.Empty(t, f.completions(id))
		assert.EqualValues(t, 0, f.attempts(id))
		assert.True(t, f.exists("running", "work_id", id))
	}
	assert.Zero(t, f.logs.count("recovery: attempt failed"))
}

func TestOtherPoolUntouched(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	dead := f.worker(time.Minute)
	other := f.work(workRow{pool: "other", maxAttempts: 3})
	f.running("other", other, 0, dead, -time.Hour)
	orphan := int64(1 << 40) // no work row, but another pool's
	f.running("other", orphan, 0, 0, 0)

	res := f.run(short)
	assert.Empty(t, res.Recorded)
	assert.Empty(t, res.Orphans)
	assert.Empty(t, f.completions(other))
	assert.True(t, f.exists("running", "work_id", orphan))
}

func TestAlreadyRecordedIgnored(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	dead := f.worker(time.Minute)

	// The worker recorded its result, then died before the loop consumed it.
	reported := f.work(workRow{maxAttempts: 3})
	f.running(pool, reported, 0, dead, time.Hour)
	recs := f.lateResult(reported, 0, "success")
	require.Len(t, recs, 1)
	// Its failure was recorded and is waiting for the loop's retry.
	retrying := f.work(workRow{maxAttempts: 3})
	f.running(pool, retrying, 0, dead, time.Hour)
	recs, err := f.store.RecordResults(context.Background(), f.db, pool,
		[]store.Result{{WorkID: retrying, Attempt: 0, Status: "failed", Error: "boom", RunMs: 5}}, store.KeysFor(f.schema, pool).KickLock)
	require.NoError(t, err)
	require.Len(t, recs, 1)
	// Its work moved past the attempt without a queued completion (the
	// loop already handled it): recovery's verdict is fenced out.
	movedOn := f.work(workRow{maxAttempts: 3, attempts: 1})
	f.running(pool, movedOn, 0, dead, time.Hour)

	res := f.run(short)
	assert.Empty(t, res.Recorded)
	assert.Equal(t, 1, res.Ignored, "only the moved-on attempt reaches the fence; queued results are skipped before")
	assert.Equal(t, []int64{movedOn}, res.Orphans)

	assert.Equal(t, []pendingCompletion{{attempt: 0, status: "success", runMs: 5}}, f.completions(reported))
	assert.True(t, f.exists("running", "work_id", reported), "the loop removes it with the completion")
	assert.Equal(t, []pendingCompletion{{attempt: 0, status: "failed", error: "boom", retry: true, runMs: 5}}, f.completions(retrying))
	assert.EqualValues(t, 1, f.attempts(retrying))
	assert.Empty(t, f.completions(movedOn))
	assert.EqualValues(t, 1, f.attempts(movedOn))
	assert.False(t, f.exists("running", "work_id", movedOn))
}

func TestOrphansDeleted(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	live := f.worker(0)
	gone := f.work(workRow{})
	f.exec("DELETE FROM "+f.schema+".work WHERE id = $1", gone)
	f.running(pool, gone, 0, 0, 0)
	goneClaimed := f.work(workRow{})
	f.exec("DELETE FROM "+f.schema+".work WHERE id = $1", goneClaimed)
	f.running(pool, goneClaimed, 0, live, time.Hour)
	finishing := f.work(workRow{attempts: 1, onComplete: "h", result: `{"status": "success", "error": null, "value": 1}`})
	f.running(pool, finishing, 0, 0, 0)
	// Not orphans: the work is at this attempt, or a result is queued.
	current := f.work(workRow{maxAttempts: 2})
	f.running(pool, current, 0, live, time.Hour)
	queued := f.work(workRow{})
	f.running(pool, queued, 0, live, time.Hour)
	require.Len(t, f.lateResult(queued, 0, "success"), 1) // deletes the work, queues the completion

	res := f.run(short)
	assert.Empty(t, res.Recorded)
	assert.ElementsMatch(t, []int64{gone, goneClaimed, finishing}, res.Orphans)
	for _, id := range []int64{gone, goneClaimed, finishing} {
		assert.False(t, f.exists("running", "work_id", id))
	}
	assert.True(t, f.exists("running", "work_id", current))
	assert.True(t, f.exists("running", "work_id", queued))
	assert.Equal(t, 3, f.logs.count("recovery: removed a running row whose work already ended"))
}

func TestBatchBoundsOnePass(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	dead := f.worker(time.Minute)
	ids := make([]int64, 5)
	for i := range ids {
		ids[i] = f.work(workRow{maxAttempts: 3})
		f.running(pool, ids[i], 0, dead, time.Hour)
	}
	cfg := short
	cfg.Batch = 2
	var total []int64
	for pass := 0; pass < 3; pass++ {
		res := f.run(cfg)
		assert.LessOrEqual(t, len(res.Recorded), 2)
		for _, r := range res.Recorded {
			total = append(total, r.WorkID)
		}
	}
	assert.ElementsMatch(t, ids, total, "every lost attempt recorded exactly once over the passes")
	assert.Empty(t, f.run(cfg).Recorded)
	for _, id := range ids {
		assert.Len(t, f.completions(id), 1)
	}
}

// TestRecoveryRacesLateWorker runs a recovery pass and the lost worker's
// own report of the same attempts in concurrent transactions: whichever
// commits first wins, and each attempt is recorded exactly once.
func TestRecoveryRacesLateWorker(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ctx := context.Background()
	for round := 0; round < 10; round++ {
		dead := f.worker(time.Minute)
		const n = 50
		ids := make([]int64, n)
		results := make([]store.Result, n)
		for i := range ids {
			maxAttempts := 1 + i%2 // terminal and retried verdicts
			ids[i] = f.work(workRow{maxAttempts: maxAttempts})
			f.running(pool, ids[i], 0, dead, time.Hour)
			status := "success"
			if i%3 == 0 {
				status = "failed"
			}
			results[i] = store.Result{WorkID: ids[i], Attempt: 0, Status: status, RunMs: 1}
			if status == "failed" {
				results[i].Error = "late"
			}
		}
		var wg sync.WaitGroup
		var recovered recovery.Result
		var late []store.Recorded
		var errRecovery, errLate error
		start := make(chan struct{})
		wg.Add(2)
		go func() {
			defer wg.Done()
			<-start
			tx, err := f.db.BeginTx(ctx, nil)
			if err != nil {
				errRecovery = err
				return
			}
			recovered, errRecovery = recovery.Run(ctx, tx, f.store, pool, short, f.log)
			if errRecovery != nil {
				_ = tx.Rollback()
				return
			}
			errRecovery = tx.Commit()
		}()
		go func() {
			defer wg.Done()
			<-start
			tx, err := f.db.BeginTx(ctx, nil)
			if err != nil {
				errLate = err
				return
			}
			late, errLate = f.store.RecordResults(ctx, tx, pool, results, store.KeysFor(f.schema, pool).KickLock)
			if errLate != nil {
				_ = tx.Rollback()
				return
			}
			errLate = tx.Commit()
		}()
		close(start)
		wg.Wait()
		require.NoError(t, errRecovery)
		require.NoError(t, errLate)
		assert.Equal(t, n, len(recovered.Recorded)+len(late), "round %d: every attempt recorded by exactly one side", round)
		assert.Empty(t, recovered.Orphans, "round %d", round)
		for _, id := range ids {
			assert.Len(t, f.completions(id), 1, "round %d: work %d", round, id)
		}
		f.exec("DELETE FROM " + f.schema + ".running")
		f.exec("DELETE FROM " + f.schema + ".pending_completion")
		f.exec("DELETE FROM " + f.schema + ".work")
	}
}

// capture is a slog.Handler that keeps the message of every record.
type capture struct {
	mu   sync.Mutex
	msgs []string
}

func (c *capture) Enabled(context.Context, slog.Level) bool { return true }
func (c *capture) Handle(_ context.Context, r slog.Record) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.msgs = append(c.msgs, r.Message)
	return nil
}
func (c *capture) WithAttrs([]slog.Attr) slog.Handler { return c }
func (c *capture) WithGroup(string) slog.Handler      { return c }

func (c *capture) count(msg string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, m := range c.msgs {
		if m == msg {
			n++
		}
	}
	return n
}

// TestStaleWorkerRowsRemoved: the rows of processes that have not
// heartbeated for longer than the retention go, whatever they held (the
// same pass records their claims as lost); recent rows, past the lease but
// within the retention, and other pools' rows stay.
func TestStaleWorkerRowsRemoved(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	cfg := short
	cfg.WorkerRetention = time.Minute
	stale := f.worker(time.Hour)
	recent := f.worker(30 * time.Second)
	otherPool := f.int("INSERT INTO " + f.schema + ".workers (pool, heartbeat_at) VALUES ('other', now() - interval '1 hour') RETURNING id")
	staleClaiming := f.worker(time.Hour)
	claimed := f.work(workRow{maxAttempts: 3})
	f.running(pool, claimed, 0, staleClaiming, time.Hour)

	res := f.run(cfg)
	assert.ElementsMatch(t, []int64{stale, staleClaiming}, res.WorkersRemoved)
	assert.False(t, f.exists("workers", "id", stale))
	assert.False(t, f.exists("workers", "id", staleClaiming))
	assert.True(t, f.exists("workers", "id", recent))
	assert.True(t, f.exists("workers", "id", otherPool))
	require.Len(t, res.Recorded, 1, "the removed process's claim is lost")
	assert.Equal(t, claimed, res.Recorded[0].WorkID)
}

func TestWorkerRetentionDefault(t *testing.T) {
	assert.Equal(t, 20*time.Second, recovery.Config{Lease: 2 * time.Second}.WithDefaults().WorkerRetention)
	assert.Equal(t, recovery.WorkerRetentionLeases*recovery.LeaseDefault, recovery.Config{}.WithDefaults().WorkerRetention)
	assert.Equal(t, time.Hour, recovery.Config{WorkerRetention: time.Hour}.WithDefaults().WorkerRetention)
}
