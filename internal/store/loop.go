package store

import (
	"context"
	"database/sql"
	"fmt"
	"time"
)

// Statements of one loop iteration. Each phase reads a bounded batch from a
// pending table through its (pool, segment) index, starting at the phase's
// cursor, and deletes what it read by ctid in the same statement: only the
// loop deletes pending rows, and it runs under the internal_state row lock,
// so the rows it selected cannot change under it.

func init() {
	// lockState locks the pool's internal_state row (the generation guard)
	// and, when the generation matches, marks the loop running so that
	// producers stop kicking it while it works.
	register("lockState", `
WITH st AS (
    SELECT s.*, c.max_parallelism, c.log_level
      FROM {s}.internal_state s JOIN {s}.config c ON c.pool = s.pool
     WHERE s.pool = $1
       FOR UPDATE OF s
), rs AS (
    UPDATE {s}.run_status SET state = 'running', segment = NULL, saturated = false, updated_at = now()
     WHERE pool = $1 AND state <> 'running' AND (SELECT generation FROM st) = $2
    RETURNING 1
)
SELECT st.generation, st.start_cursor, st.completion_cursor, st.cancelation_cursor, st.last_recovery,
       st.last_activity, st.running_count, st.report_completed, st.report_succeeded, st.report_failed,
       st.report_retries, st.report_canceled, st.report_started_at, st.max_parallelism, st.log_level,
       {now}, statement_timestamp(), (SELECT count(*) FROM rs),
       set_config('statement_timeout', $3, true)
  FROM st`)

	// No statement here joins two CTEs: the planner estimates a
	// data-modifying CTE at one row and would join two of them with a nested
	// loop, quadratic in the batch. Columns travel through RETURNING, and
	// facts about rows a CTE deletes are read from the base tables, which the
	// whole statement sees as of its start.
	// takeCompletions returns one row per consumed completion plus one
	// marker row per running row it deleted (carrying the function and label
	// for events); the work row is read only for retries.
	register("takeCompletions", `
WITH pc AS (
    DELETE FROM {s}.pending_completion WHERE ctid = ANY(ARRAY(
        SELECT ctid FROM {s}.pending_completion
         WHERE pool = $1 AND segment >= $2 AND segment <= $3
         ORDER BY segment LIMIT $4))
    RETURNING work_id, attempt, status, error, retry, run_ms, segment
), rn AS (
    DELETE FROM {s}.running r USING pc WHERE r.work_id = pc.work_id AND r.pool = $1
    RETURNING r.work_id, r.fn_name, r.label
), c AS (
    SELECT pc.*, NULL::text AS fn_name, NULL::text AS label, false AS marker FROM pc
    UNION ALL
    SELECT work_id, 0, '', NULL, false, NULL, 0, fn_name, label, true FROM rn
)
SELECT c.work_id, c.attempt, c.status, COALESCE(c.error, ''), c.retry, COALESCE(c.run_ms, -1), c.segment, c.marker,
       w.id IS NOT NULL, COALESCE(w.canceled, false), COALESCE(w.attempts, 0),
       COALESCE(w.initial_backoff_ms, 0), COALESCE(w.backoff_base, 1),
       COALESCE(c.fn_name, w.fn_name, ''), COALESCE(c.label, w.label, ''),
       CASE WHEN c.retry THEN EXISTS (SELECT 1 FROM {s}.pending_cancelation x WHERE x.work_id = c.work_id) ELSE false END
  FROM c
  LEFT JOIN LATERAL (SELECT * FROM {s}.work WHERE id = c.work_id AND c.retry LIMIT 1) w ON true`)

	register("insertRetries", `
INSERT INTO {s}.pending_start (work_id, pool, segment, fn_name, label, attempt, timeout_ms)
SELECT t.id, $1, t.segment, w.fn_name, w.label, w.attempts, w.timeout_ms
  FROM unnest($2::bigint[], $3::bigint[]) AS t(id, segment)
 CROSS JOIN LATERAL (SELECT fn_name, label, attempts, timeout_ms FROM {s}.work WHERE id = t.id LIMIT 1) w
ON CONFLICT (work_id) DO NOTHING
RETURNING work_id`)

	register("takeCancelations", `
WITH pc AS (
    DELETE FROM {s}.pending_cancelation WHERE ctid = ANY(ARRAY(
        SELECT ctid FROM {s}.pending_cancelation
         WHERE pool = $1 AND segment >= $2 AND segment <= $3
         ORDER BY segment LIMIT $4))
    RETURNING work_id, segment
), d AS (
    SELECT DISTINCT work_id FROM pc
), w AS (
    UPDATE {s}.work w SET canceled = true FROM d
     WHERE w.id = d.work_id AND w.pool = $1 AND w.result IS NULL
    RETURNING w.id
), ps AS (
    DELETE FROM {s}.pending_start p USING d WHERE p.work_id = d.work_id
    RETURNING p.work_id
)
SELECT pc.work_id, pc.segment,
       EXISTS (SELECT 1 FROM {s}.work x WHERE x.id = pc.work_id AND x.pool = $1 AND x.result IS NULL),
       EXISTS (SELECT 1 FROM {s}.pending_start p WHERE p.work_id = pc.work_id),
       EXISTS (SELECT 1 FROM {s}.running r WHERE r.work_id = pc.work_id)
  FROM pc`)

	// finishCanceled ends canceled work that is not running: deleted at once
	// if it has no onComplete, otherwise left finishing for a process that
	// has the handler (the loop never runs user code).
	register("finishCanceled", `
WITH d AS (
    DELETE FROM {s}.work
     WHERE id = ANY($2::bigint[]) AND pool = $1 AND on_complete IS NULL AND result IS NULL
    RETURNING id, fn_name, label, attempts
), u AS (
    UPDATE {s}.work
       SET result = '{"status": "canceled", "error": null, "value": null}'::jsonb, finish_after = now()
     WHERE id = ANY($2::bigint[]) AND pool = $1 AND on_complete IS NOT NULL AND result IS NULL
    RETURNING id, fn_name, label, attempts
)
SELECT id, fn_name, label, attempts, false FROM d
UNION ALL
SELECT id, fn_name, label, attempts, true FROM u`)

	// startWork needs no work row: pending_start carries what the running
	// row needs.
	register("startWork", `
WITH ps AS (
    DELETE FROM {s}.pending_start WHERE ctid = ANY(ARRAY(
        SELECT ctid FROM {s}.pending_start
         WHERE pool = $1 AND segment >= $2 AND segment <= $3
         ORDER BY segment LIMIT $4))
    RETURNING work_id, segment, fn_name, label, attempt, timeout_ms
), ins AS (
    INSERT INTO {s}.running (work_id, pool, fn_name, label, attempt, segment, started_at, timeout_ms)
    SELECT work_id, $1, fn_name, label, attempt, segment, statement_timestamp(), timeout_ms FROM ps
    ON CONFLICT (work_id) DO NOTHING
    RETURNING work_id
)
SELECT ps.work_id, ps.segment, ps.fn_name, ps.label, ps.attempt, (SELECT count(*) FROM ins) FROM ps`)

	register("saveState", `
WITH n AS (
    SELECT pg_notify($15, $16) WHERE $16 <> ''
)
UPDATE {s}.internal_state
   SET generation = $2, start_cursor = $3, completion_cursor = $4, cancelation_cursor = $5,
       last_recovery = $6, last_activity = $7, running_count = $8,
       report_completed = $9, report_succeeded = $10, report_failed = $11,
       report_retries = $12, report_canceled = $13, report_started_at = $14
 WHERE pool = $1
RETURNING (SELECT count(*) FROM n)`)

	register("tryKickLock", `SELECT pg_try_advisory_xact_lock($1)`)

	// recheck looks at the whole of each pending table, not from the
	// cursors: a producer transaction that ran longer than the cursor
	// buffer committed rows behind the cursors, and going idle must not
	// strand them.
	register("recheck", `
SELECT (SELECT min(segment) FROM {s}.pending_completion WHERE pool = $1),
       (SELECT min(segment) FROM {s}.pending_cancelation WHERE pool = $1),
       (SELECT min(segment) FROM {s}.pending_start WHERE pool = $1),
       {now}`)

	register("setRunStatus", `
UPDATE {s}.run_status SET state = $2, segment = $3, saturated = $4, generation = $5, updated_at = now()
 WHERE pool = $1`)

	register("readGeneration", `SELECT generation FROM {s}.internal_state WHERE pool = $1`)

	register("readRunStatus", `
SELECT state, COALESCE(segment, 0), saturated, generation, {now} FROM {s}.run_status WHERE pool = $1`)

	register("gauges", `
SELECT (SELECT count(*) FROM {s}.running WHERE pool = $1),
       (SELECT count(*) FROM {s}.pending_start WHERE pool = $1 AND segment <= {now}),
       (SELECT count(*) FROM {s}.pending_start WHERE pool = $1 AND segment > {now}),
       (SELECT count(*) FROM {s}.running WHERE pool = $1 AND claimed_by IS NULL),
       (SELECT count(*) FROM {s}.work WHERE pool = $1 AND result IS NOT NULL)`)

	register("counters", `
SELECT report_completed, report_succeeded, report_failed, report_retries, report_canceled, report_started_at
  FROM {s}.internal_state WHERE pool = $1`)
}

// Counters are the report counters kept in internal_state between reports.
type Counters struct {
	Completed, Succeeded, Failed, Retries, Canceled int64
	Since                                           time.Time
}

// State is the loop's view of a pool at the start of an iteration.
type State struct {
	Generation                                       int64
	StartCursor, CompletionCursor, CancelationCursor int64
	LastRecovery, LastActivity                       int64
	RunningCount                                     int
	Counters                                         Counters
	MaxParallelism                                   int
	LogLevel                                         string
	NowSegment                                       int64
	Now                                              time.Time
	// MarkedRunning is true when this call moved run_status to running
	// (the loop was woken by its timer rather than by a kick).
	MarkedRunning bool
}

// LockState locks the pool's state row for the iteration. found is false if
// the pool has no state row.
// statementTimeout bounds every later statement of the transaction on the
// server, so an iteration abandoned by its client cannot hold locks on.
func (s *Store) LockState(ctx context.Context, q Querier, pool string, generation int64, statementTimeout time.Duration) (st State, found bool, err error) {
	var marked int64
	var setting string
	err = q.QueryRowContext(ctx, s.sql("lockState"), pool, generation, fmt.Sprintf("%dms", statementTimeout.Milliseconds())).Scan(
		&st.Generation, &st.StartCursor, &st.CompletionCursor, &st.CancelationCursor, &st.LastRecovery,
		&st.LastActivity, &st.RunningCount, &st.Counters.Completed, &st.Counters.Succeeded, &st.Counters.Failed,
		&st.Counters.Retries, &st.Counters.Canceled, &st.Counters.Since, &st.MaxParallelism, &st.LogLevel,
		&st.NowSegment, &st.Now, &marked, &setting)
	if err == sql.ErrNoRows {
		return State{}, false, nil
	}
	if err != nil {
		return State{}, false, fmt.Errorf("lock state: %w", err)
	}
	st.MarkedRunning = marked > 0
	return st, true, nil
}

// Range is an inclusive segment range of a pending table to scan.
type Range struct{ From, To int64 }

// Completion is a pending_completion row the loop consumed, with what it
// needs to know about the work.
type Completion struct {
	WorkID        int64
	Attempt       int
	Status        string
	Error         string
	Retry         bool
	RunMs         int64 // -1 when unknown (recovery verdicts)
	Segment       int64
	WasRunning    bool
	WorkExists    bool
	Canceled      bool
	Attempts      int
	BackoffMs     int64
	BackoffBase   float64
	Fn, Label     string
	CancelPending bool
}

// TakeCompletions deletes and returns up to limit completions in r, and
// deletes their running rows.
func (s *Store) TakeCompletions(ctx context.Context, q Querier, pool string, r Range, limit int) ([]Completion, error) {
	var out []Completion
	running := map[int64]Completion{}
	err := collect(ctx, q, s.sql("takeCompletions"), []any{pool, r.From, r.To, limit}, func(rows *sql.Rows) error {
		var c Completion
		var marker bool
		if err := rows.Scan(&c.WorkID, &c.Attempt, &c.Status, &c.Error, &c.Retry, &c.RunMs, &c.Segment,
			&marker, &c.WorkExists, &c.Canceled, &c.Attempts, &c.BackoffMs, &c.BackoffBase,
			&c.Fn, &c.Label, &c.CancelPending); err != nil {
			return err
		}
		if marker {
			running[c.WorkID] = c
			return nil
		}
		out = append(out, c)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("take completions: %w", err)
	}
	for i := range out {
		if m, ok := running[out[i].WorkID]; ok {
			out[i].WasRunning, out[i].Fn, out[i].Label = true, m.Fn, m.Label
		}
	}
	return out, nil
}

// InsertRetries schedules retries; it returns the ids actually inserted (a
// work id that already has a pending_start is skipped).
func (s *Store) InsertRetries(ctx context.Context, q Querier, pool string, ids, segments []int64) ([]int64, error) {
	var out []int64
	err := collect(ctx, q, s.sql("insertRetries"), []any{pool, ids, segments}, func(rows *sql.Rows) error {
		var id int64
		if err := rows.Scan(&id); err != nil {
			return err
		}
		out = append(out, id)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("insert retries: %w", err)
	}
	return out, nil
}

// Cancelation is a pending_cancelation row the loop consumed.
type Cancelation struct {
	WorkID     int64
	Segment    int64
	Marked     bool // the work existed and is now marked canceled
	WasPending bool // its pending_start was deleted: it never starts
	IsRunning  bool // it holds a slot: its worker must cancel the handler
}

// TakeCancelations deletes and returns up to limit cancelations in r, marks
// their work canceled and deletes their pending_start rows.
func (s *Store) TakeCancelations(ctx context.Context, q Querier, pool string, r Range, limit int) ([]Cancelation, error) {
	var out []Cancelation
	err := collect(ctx, q, s.sql("takeCancelations"), []any{pool, r.From, r.To, limit}, func(rows *sql.Rows) error {
		var c Cancelation
		if err := rows.Scan(&c.WorkID, &c.Segment, &c.Marked, &c.WasPending, &c.IsRunning); err != nil {
			return err
		}
		out = append(out, c)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("take cancelations: %w", err)
	}
	return out, nil
}

// Ended is work the loop brought to its canceled terminal state.
type Ended struct {
	WorkID    int64
	Fn, Label string
	Attempts  int
	Finishing bool // waits for its onComplete in a worker process
}

// FinishCanceled ends the given (not running) work as canceled.
func (s *Store) FinishCanceled(ctx context.Context, q Querier, pool string, ids []int64) ([]Ended, error) {
	var out []Ended
	err := collect(ctx, q, s.sql("finishCanceled"), []any{pool, ids}, func(rows *sql.Rows) error {
		var e Ended
		if err := rows.Scan(&e.WorkID, &e.Fn, &e.Label, &e.Attempts, &e.Finishing); err != nil {
			return err
		}
		out = append(out, e)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("finish canceled: %w", err)
	}
	return out, nil
}

// Start is one pending_start row the start phase consumed.
type Start struct {
	WorkID    int64
	Segment   int64
	Fn, Label string
	Attempt   int
}

// StartWork moves up to limit due pending_start rows in r into running and
// returns the rows it consumed and how many running rows it inserted (fewer
// means some work was already running: an invariant violation).
func (s *Store) StartWork(ctx context.Context, q Querier, pool string, r Range, limit int) ([]Start, int, error) {
	var out []Start
	inserted := 0
	err := collect(ctx, q, s.sql("startWork"), []any{pool, r.From, r.To, limit}, func(rows *sql.Rows) error {
		var st Start
		if err := rows.Scan(&st.WorkID, &st.Segment, &st.Fn, &st.Label, &st.Attempt, &inserted); err != nil {
			return err
		}
		out = append(out, st)
		return nil
	})
	if err != nil {
		return nil, 0, fmt.Errorf("start work: %w", err)
	}
	return out, inserted, nil
}

// SavedState is what an iteration writes back to internal_state.
type SavedState struct {
	Generation                                       int64
	StartCursor, CompletionCursor, CancelationCursor int64
	LastRecovery, LastActivity                       int64
	RunningCount                                     int
	Counters                                         Counters
}

// SaveState writes the iteration's state and sends payload on channel (at
// commit) unless payload is empty.
func (s *Store) SaveState(ctx context.Context, q Querier, pool string, st SavedState, channel, payload string) error {
	var sent int64
	err := q.QueryRowContext(ctx, s.sql("saveState"), pool, st.Generation, st.StartCursor, st.CompletionCursor,
		st.CancelationCursor, st.LastRecovery, st.LastActivity, st.RunningCount,
		st.Counters.Completed, st.Counters.Succeeded, st.Counters.Failed, st.Counters.Retries, st.Counters.Canceled,
		st.Counters.Since, channel, payload).Scan(&sent)
	if err != nil {
		return fmt.Errorf("save state: %w", err)
	}
	return nil
}

// TryKickLock tries to take the pool's kick lock exclusively for the rest of
// the transaction; it fails while any producer transaction holds it shared.
func (s *Store) TryKickLock(ctx context.Context, q Querier, key int64) (bool, error) {
	var ok bool
	if err := q.QueryRowContext(ctx, s.sql("tryKickLock"), key).Scan(&ok); err != nil {
		return false, fmt.Errorf("try kick lock: %w", err)
	}
	return ok, nil
}

// Pending summarizes the pending tables of a pool: the earliest segment of
// each (invalid when the table has no row of the pool).
type Pending struct {
	Completion  sql.NullInt64
	Cancelation sql.NullInt64
	Start       sql.NullInt64
	NowSegment  int64
}

// Recheck reads the earliest row of each pending table (see the SQL).
func (s *Store) Recheck(ctx context.Context, q Querier, pool string) (Pending, error) {
	var p Pending
	if err := q.QueryRowContext(ctx, s.sql("recheck"), pool).Scan(&p.Completion, &p.Cancelation, &p.Start, &p.NowSegment); err != nil {
		return Pending{}, fmt.Errorf("recheck: %w", err)
	}
	return p, nil
}

// RunState is a value of run_status.state.
type RunState string

// The states of run_status.
const (
	RunIdle      RunState = "idle"
	RunScheduled RunState = "scheduled"
	RunRunning   RunState = "running"
)

// RunStatus is the pool's run_status row.
type RunStatus struct {
	State      RunState
	Segment    int64
	Saturated  bool
	Generation int64
	NowSegment int64
}

// SetRunStatus writes run_status; the loop calls it only on transitions.
func (s *Store) SetRunStatus(ctx context.Context, q Querier, pool string, rs RunStatus) error {
	var seg sql.NullInt64
	if rs.State == RunScheduled {
		seg = sql.NullInt64{Int64: rs.Segment, Valid: true}
	}
	_, err := q.ExecContext(ctx, s.sql("setRunStatus"), pool, string(rs.State), seg, rs.Saturated, rs.Generation)
	if err != nil {
		return fmt.Errorf("set run status: %w", err)
	}
	return nil
}

// ReadRunStatus reads the pool's run_status row.
func (s *Store) ReadRunStatus(ctx context.Context, q Querier, pool string) (RunStatus, error) {
	var rs RunStatus
	var state string
	err := q.QueryRowContext(ctx, s.sql("readRunStatus"), pool).Scan(&state, &rs.Segment, &rs.Saturated, &rs.Generation, &rs.NowSegment)
	if err != nil {
		return RunStatus{}, fmt.Errorf("read run status: %w", err)
	}
	rs.State = RunState(state)
	return rs, nil
}

// ReadGeneration returns the pool's current loop generation.
func (s *Store) ReadGeneration(ctx context.Context, q Querier, pool string) (int64, error) {
	var g int64
	if err := q.QueryRowContext(ctx, s.sql("readGeneration"), pool).Scan(&g); err != nil {
		return 0, fmt.Errorf("read generation: %w", err)
	}
	return g, nil
}

// Gauges are the pool's current sizes, read for reports and Stats.
type Gauges struct {
	Running, Backlog, Future, Unclaimed, Finishing int64
}

// ReadGauges counts the pool's rows by state. It scans the backlog, so it
// runs once per report, outside the loop's transaction.
func (s *Store) ReadGauges(ctx context.Context, q Querier, pool string) (Gauges, error) {
	var g Gauges
	err := q.QueryRowContext(ctx, s.sql("gauges"), pool).Scan(&g.Running, &g.Backlog, &g.Future, &g.Unclaimed, &g.Finishing)
	if err != nil {
		return Gauges{}, fmt.Errorf("read gauges: %w", err)
	}
	return g, nil
}

// ReadCounters returns the report counters accumulated since the last report.
func (s *Store) ReadCounters(ctx context.Context, q Querier, pool string) (Counters, error) {
	var c Counters
	err := q.QueryRowContext(ctx, s.sql("counters"), pool).Scan(&c.Completed, &c.Succeeded, &c.Failed, &c.Retries, &c.Canceled, &c.Since)
	if err != nil {
		return Counters{}, fmt.Errorf("read counters: %w", err)
	}
	return c, nil
}
