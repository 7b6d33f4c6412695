package loop_test

import (
	"context"
	"database/sql"
	"fmt"
	"math"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgworkpool/pgworkpool/internal/store"
)

// TestStatementsIgnoreStaleStatistics runs the statements that visit rows
// by id, or look for a pending table's earliest row, on queue tables whose
// statistics are stale the way a queue's usually are: a vacuum found the
// tables nearly empty but could not shrink them, and a burst refilled the
// freed space, so the planner believes they hold a row or two. Each
// statement must still read index entries in proportion to the rows it
// handles, not to the table: counted through the transaction's own
// statistics (pg_stat_get_xact_tuples_returned), which do not depend on
// timing. With equality joins and min(), the results statement read every
// work row of the burst and the re-check every pending row.
func TestStatementsIgnoreStaleStatistics(t *testing.T) {
	t.Parallel()
	s := newPoolSchema(t)
	const (
		handled = 200  // results recorded, cancelations taken, statuses read
		burst   = 4000 // work rows of the pool: running, then pending
	)
	tables := []string{"work", "pending_start", "pending_completion", "pending_cancelation", "running"}
	for _, tbl := range tables {
		// Autovacuum would otherwise re-analyze during the burst, at random.
		s.exec("ALTER TABLE {s}." + tbl + " SET (autovacuum_enabled = false)")
	}
	// The churn: one live row at the end of many pages.
	s.exec(`INSERT INTO {s}.work (pool, fn_name, args, timeout_ms) SELECT 'other', 'fn', '{}', 60000 FROM generate_series(1, ?)`, 2*burst)
	s.exec(`INSERT INTO {s}.pending_start (work_id, pool, segment, fn_name, attempt, timeout_ms) SELECT id, pool, 0, 'fn', 0, 60000 FROM {s}.work`)
	s.exec(`DELETE FROM {s}.pending_start WHERE work_id < (SELECT max(id) FROM {s}.work)`)
	s.exec(`DELETE FROM {s}.work WHERE id < (SELECT max(id) FROM {s}.work)`)
	for _, tbl := range tables {
		s.exec("VACUUM ANALYZE {s}." + tbl)
	}
	// The burst: the first rows run, the rest wait to start.
	s.exec(`INSERT INTO {s}.work (pool, fn_name, args, timeout_ms) SELECT ?, 'fn', '{}', 60000 FROM generate_series(1, ?)`, pool, burst)
	s.exec(`INSERT INTO {s}.running (work_id, pool, fn_name, attempt, segment, started_at, timeout_ms)
		SELECT id, pool, 'fn', 0, 0, now(), 60000 FROM {s}.work WHERE pool = ? ORDER BY id LIMIT ?`, pool, handled)
	s.exec(`UPDATE {s}.internal_state SET running_count = ? WHERE pool = ?`, handled, pool)
	s.exec(`INSERT INTO {s}.pending_start (work_id, pool, segment, fn_name, attempt, timeout_ms)
		SELECT id, pool, 0, 'fn', 0, 60000 FROM {s}.work WHERE pool = ? ORDER BY id OFFSET ?`, pool, handled)
	s.exec(`INSERT INTO {s}.pending_cancelation (pool, segment, work_id)
		SELECT pool, 0, id FROM {s}.work WHERE pool = ? ORDER BY id OFFSET ? LIMIT ?`, pool, handled, handled)
	require.Less(t, s.scalar("SELECT reltuples::bigint FROM pg_class WHERE oid = '{s}.work'::regclass"), int64(10),
		"the statistics must be stale for this test to mean anything")

	var runningIDs []int64
	require.NoError(t, s.db.NewRaw(strings.ReplaceAll("SELECT id FROM {s}.work WHERE pool = ? ORDER BY id LIMIT ?", "{s}", s.schema), pool, handled).Scan(s.ctx, &runningIDs))
	results := make([]store.Result, len(runningIDs))
	for i, id := range runningIDs {
		results[i] = store.Result{WorkID: id, Status: "success"}
	}

	tx, err := s.sqlDB.BeginTx(s.ctx, nil)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback() }()
	require.NoError(t, store.Run(s.ctx, tx, store.PlanSettings()))
	entriesRead := func(op func() error, indexes ...string) map[string]int64 {
		t.Helper()
		return indexEntriesRead(t, s.ctx, tx, s.schema, op, indexes...)
	}

	var pending store.Pending
	got := entriesRead(func() error { return store.Run(s.ctx, tx, s.st.RecheckOp(pool, &pending)) },
		"pending_start_pool_segment_idx")
	assert.LessOrEqual(t, got["pending_start_pool_segment_idx"], int64(2), "the re-check reads the earliest entry only")
	assert.True(t, pending.Start.Valid)

	var recorded store.LocalRecorded
	got = entriesRead(func() error {
		return store.Run(s.ctx, tx, s.st.RecordLocalResultsOp(pool, results, &recorded))
	}, "work_pkey")
	assert.Len(t, recorded.Recorded, handled)
	assert.LessOrEqual(t, got["work_pkey"], int64(2*handled), "one probe of work per result")

	var cans []store.Cancelation
	got = entriesRead(func() error {
		return store.Run(s.ctx, tx, s.st.TakeCancelationsOp(pool, store.Range{From: 0, To: math.MaxInt64}, handled, &cans))
	}, "work_pkey", "pending_start_pkey")
	assert.Len(t, cans, handled)
	// A probe each to mark the work, and to report on it afterwards.
	assert.LessOrEqual(t, got["work_pkey"], int64(3*handled), "probes of work per cancelation")
	assert.LessOrEqual(t, got["pending_start_pkey"], int64(3*handled), "probes of pending_start per cancelation")

	var statuses []store.WorkStatus
	got = entriesRead(func() error {
		var err error
		statuses, err = s.st.Status(s.ctx, tx, pool, runningIDs)
		return err
	}, "work_pkey")
	assert.Len(t, statuses, handled)
	assert.LessOrEqual(t, got["work_pkey"], int64(3*handled), "probes of work per status")
}

// indexEntriesRead runs op in tx and returns how many entries it read from
// each of the schema's indexes, by the transaction's own statistics.
func indexEntriesRead(t *testing.T, ctx context.Context, tx *sql.Tx, schema string, op func() error, indexes ...string) map[string]int64 {
	t.Helper()
	count := func() map[string]int64 {
		m := make(map[string]int64, len(indexes))
		for _, ix := range indexes {
			var n int64
			require.NoError(t, tx.QueryRowContext(ctx, "SELECT pg_stat_get_xact_tuples_returned(to_regclass($1))", schema+"."+ix).Scan(&n))
			m[ix] = n
		}
		return m
	}
	before := count()
	require.NoError(t, op())
	after := count()
	for ix := range after {
		after[ix] -= before[ix]
	}
	return after
}

// TestStartFindsWorkByItsLocation checks the hint the start statement reads
// arguments by (pending_start.work_ctid): work found where it was written
// costs no descent of work's primary key, whose depth grows with the
// backlog, and work that moved since (any update writes a new row version)
// is still found, by the key. Without the hint every started row probes
// the key.
func TestStartFindsWorkByItsLocation(t *testing.T) {
	t.Parallel()
	s := newPoolSchema(t)
	const n, moved = 50, 10
	args, labels, contexts := make([]string, n), make([]string, n), make([]string, n)
	for i := range args {
		args[i] = fmt.Sprintf(`{"i": %d}`, i)
	}
	ids, _, err := s.st.InsertWork(s.ctx, s.sqlDB, store.NewWork{
		WorkOptions: store.WorkOptions{Pool: pool, Fn: "fn", MaxAttempts: 1, BackoffBase: 2, TimeoutMs: 60000},
		Labels:      labels, Args: args, Contexts: contexts,
	}, 1)
	require.NoError(t, err)
	require.Len(t, ids, n)
	s.exec("UPDATE {s}.config SET max_parallelism = ? WHERE pool = ?", n, pool)
	s.exec("UPDATE {s}.work SET label = 'moved' WHERE id <= ?", ids[moved-1])
	workerID, err := s.st.RegisterWorker(s.ctx, s.sqlDB, pool, "host", 1)
	require.NoError(t, err)

	tx, err := s.sqlDB.BeginTx(s.ctx, nil)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback() }()
	require.NoError(t, store.Run(s.ctx, tx, store.PlanSettings()))
	var starts store.Starts
	local := store.LocalClaim{Worker: store.Worker{ID: workerID, Host: "host", PID: 1}, Fns: []string{"fn"}, Slots: n, Listeners: "listeners"}
	got := indexEntriesRead(t, s.ctx, tx, s.schema, func() error {
		return store.Run(s.ctx, tx, s.st.StartWorkOp(pool, store.Range{From: 0, To: math.MaxInt64}, n, local, false, "channel", &starts))
	}, "work_pkey")

	require.Len(t, starts.Rows, n)
	want := make(map[int64]string, n)
	for i, id := range ids {
		want[id] = args[i]
	}
	for _, st := range starts.Rows {
		assert.True(t, st.Mine, "work %d", st.WorkID)
		assert.JSONEq(t, want[st.WorkID], st.Args, "work %d", st.WorkID)
	}
	assert.Equal(t, int64(moved), got["work_pkey"], "only the moved rows are looked up by key")
}
