package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// Statements of one loop iteration. Each phase reads a bounded batch from a
// pending table through its (pool, segment) index, starting at the phase's
// cursor, and deletes what it read by ctid in the same statement: only the
// loop deletes pending rows, and it runs under the internal_state row lock,
// so the rows it selected cannot change under it.

func init() {
	// lockState locks the pool's internal_state row (the generation guard)
	// and, when the generation matches, marks the loop running so that
	// producers stop kicking it while it works, and returns the run status
	// the iteration holds. A loop scheduled saturated is left so: enqueues,
	// which a full pool could not start, still do not kick it meanwhile,
	// cancels and results still do, and a pool at its limit, whose every
	// iteration woke from and went back to the same scheduled saturated
	// status, does not write it at all (see loop.decide).
	register("lockState", `
WITH st AS (
    SELECT s.*, c.max_parallelism, c.log_level, c.updated_at AS config_updated_at
      FROM {s}.internal_state s JOIN {s}.config c ON c.pool = s.pool
     WHERE s.pool = $1
       FOR UPDATE OF s
), cur AS (
    SELECT state, segment, saturated FROM {s}.run_status WHERE pool = $1
), rs AS (
    UPDATE {s}.run_status SET state = 'running', segment = NULL, saturated = false, updated_at = now()
     WHERE pool = $1 AND state <> 'running' AND NOT (state = 'scheduled' AND saturated)
       AND (SELECT generation FROM st) = $2
    RETURNING 1
)
SELECT st.generation, st.start_cursor, st.completion_cursor, st.cancelation_cursor, st.last_recovery,
       st.last_activity, st.running_count, st.report_completed, st.report_succeeded, st.report_failed,
       st.report_retries, st.report_canceled, st.report_started_at, st.max_parallelism, st.log_level,
       st.config_updated_at,
       {now}, statement_timestamp(), (SELECT count(*) FROM rs),
       COALESCE((SELECT state FROM cur), ''), COALESCE((SELECT segment FROM cur), 0),
       COALESCE((SELECT saturated FROM cur), false),
       set_config('statement_timeout', $3, true) || `+planSettings+`,
       CASE WHEN $4 AND st.generation <> $2 THEN (`+staleGeneration+` || st.generation)::int ELSE 0 END
  FROM st`)

	// bumpGeneration is the part of saveState that an iteration committing
	// in its first round trip cannot leave out (see loop.fastPath). The
	// state lock taken before it in the transaction checked the generation.
	register("bumpGeneration", `
UPDATE {s}.internal_state SET generation = generation + 1 WHERE pool = $1 AND generation = $2`)

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
    RETURNING work_id, attempt, status, error, retry, run_ms, segment, successor
), `+handOver("SELECT successor FROM pc WHERE successor IS NOT NULL")+`, `+freeSlots("SELECT work_id FROM pc", "", handedOver)+`, c AS (
    SELECT pc.work_id, pc.attempt, pc.status, pc.error, pc.retry, pc.run_ms, pc.segment,
           NULL::text AS fn_name, NULL::text AS label, false AS marker FROM pc
    UNION ALL
    SELECT work_id, 0, '', NULL, false, NULL, 0, fn_name, label, true FROM rn
)
SELECT c.work_id, c.attempt, c.status, COALESCE(c.error, ''), c.retry, COALESCE(c.run_ms, -1), c.segment, c.marker,
       w.id IS NOT NULL, COALESCE(w.canceled, false), COALESCE(w.attempts, 0),
       COALESCE(w.initial_backoff_ms, 0), COALESCE(w.backoff_base, 1),
       COALESCE(c.fn_name, w.fn_name, ''), COALESCE(c.label, w.label, ''),
       CASE WHEN c.retry THEN `+cancelPending("c.work_id")+` ELSE false END
  FROM c
  LEFT JOIN LATERAL (SELECT * FROM {s}.work WHERE id = c.work_id AND c.retry LIMIT 1) w ON true`)

	register("insertRetries", `
INSERT INTO {s}.pending_start (work_id, pool, segment, fn_name, label, attempt, timeout_ms, work_ctid)
SELECT t.id, $1, t.segment, w.fn_name, w.label, w.attempts, w.timeout_ms, w.ctid
  FROM unnest($2::bigint[], $3::bigint[]) AS t(id, segment)
 CROSS JOIN LATERAL (SELECT fn_name, label, attempts, timeout_ms, ctid FROM {s}.work WHERE id = t.id LIMIT 1) w
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
     WHERE `+probe("w.id", "d.work_id")+` AND w.pool = $1 AND w.result IS NULL
    RETURNING w.id
), ps AS (
    DELETE FROM {s}.pending_start p USING d WHERE `+probe("p.work_id", "d.work_id")+`
    RETURNING p.work_id
)
SELECT pc.work_id, pc.segment,
       EXISTS (SELECT 1 FROM {s}.work x WHERE `+probe("x.id", "pc.work_id")+` AND x.pool = $1 AND x.result IS NULL),
       EXISTS (SELECT 1 FROM {s}.pending_start p WHERE `+probe("p.work_id", "pc.work_id")+`),
       EXISTS (SELECT 1 FROM {s}.running r WHERE `+probe("r.work_id", "pc.work_id")+`)
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

	register("startWork", startWork(false))
	register("startWorkChecked", startWork(true))

	// unclaim gives back rows startWork claimed for this process when it
	// cannot vouch for them (see StartWork).
	register("unclaim", `
UPDATE {s}.running SET claimed_by = NULL, claimed_at = NULL, deadline = NULL
 WHERE work_id = ANY($1::bigint[]) AND claimed_by = $2 AND started_at = $3`)

	register("saveState", `
WITH n AS (
    SELECT pg_notify($14, $15) WHERE $15 <> ''
)
UPDATE {s}.internal_state
   SET generation = $2, start_cursor = $3, completion_cursor = $4, cancelation_cursor = $5,
       last_recovery = $6, last_activity = $7,
       report_completed = $8, report_succeeded = $9, report_failed = $10,
       report_retries = $11, report_canceled = $12, report_started_at = $13
 WHERE pool = $1
RETURNING (SELECT count(*) FROM n)`)

	register("tryKickLock", `SELECT pg_try_advisory_xact_lock($1)`)

	// recheck looks at the whole of each pending table, not from the
	// cursors: a producer transaction that ran longer than the cursor
	// buffer committed rows behind the cursors, and going idle must not
	// strand them. The earliest segment is read as ORDER BY ... LIMIT 1,
	// one index entry, rather than as min(), which the planner may compute
	// by reading every row of the pool when stale statistics say there is
	// about one (measured: 3.5 ms and 37,000 entries per iteration in a
	// drain after a vacuum had found the table nearly empty).
	register("recheck", `
SELECT (SELECT segment FROM {s}.pending_completion WHERE pool = $1 ORDER BY segment LIMIT 1),
       (SELECT segment FROM {s}.pending_cancelation WHERE pool = $1 ORDER BY segment LIMIT 1),
       (SELECT segment FROM {s}.pending_start WHERE pool = $1 ORDER BY segment LIMIT 1),
       {now}`)

	register("setRunStatus", `
UPDATE {s}.run_status SET state = $2, segment = $3, saturated = $4, generation = $5, updated_at = now()
 WHERE pool = $1`)

	register("readGeneration", `SELECT generation FROM {s}.internal_state WHERE pool = $1`)

	register("readRunStatus", `
SELECT state, COALESCE(segment, 0), saturated, generation, {now} FROM {s}.run_status WHERE pool = $1`)

	register("gauges", `
SELECT (SELECT count(*) FROM {s}.running WHERE pool = $1 AND NOT standby),
       (SELECT count(*) FROM {s}.pending_start WHERE pool = $1 AND segment <= {now}),
       (SELECT count(*) FROM {s}.pending_start WHERE pool = $1 AND segment > {now}),
       (SELECT count(*) FROM {s}.running WHERE pool = $1 AND claimed_by IS NULL),
       (SELECT count(*) FROM {s}.work WHERE pool = $1 AND result IS NOT NULL)`)

	register("counters", `
SELECT report_completed, report_succeeded, report_failed, report_retries, report_canceled, report_started_at
  FROM {s}.internal_state WHERE pool = $1`)
}

// startWork returns the statement that moves due pending_start rows into
// running, as many as the pool's limit allows given the running count that
// the statements before it in the transaction left (so it can be pipelined
// behind them), capped at $4. Up to $7 rows of the functions $6 (the
// leading process's own free slots, within its share) are claimed at once
// for worker $5 and returned with their arguments. It needs no work row
// otherwise: pending_start carries what the running row needs.
// running_count is kept in step.
//
// The arguments are read at pending_start.work_ctid, where the work row
// was when its pending_start row was written, and by work's key only when
// the row has moved since (any update writes a new version elsewhere, and
// the id is checked, so a reused location is never mistaken for it). A
// million future rows make the key one level deeper, which added an eighth
// to this statement's buffer visits in the backlog benchmark (9 to 10 per
// started row); the location costs one visit at any depth, and the
// statement now visits about 7 per row with or without the backlog.
//
// Work with a cancel that no iteration has taken yet is left where it is,
// for the iteration after this one, whose cancel phase ends it (this
// iteration's re-check sees the cancel): Cancel promises that pending work
// never starts, and an iteration that left its cancel phase out, or whose
// cancel phase ran before the cancel committed, would otherwise start it,
// and its handler would run until the cancel reached it. Most iterations
// find no cancel at all and probe nothing. The rows left out still count
// against the batch, so that a CancelAll of a large backlog, whose cancels
// the cancel phase takes a batch at a time, costs each iteration at most a
// batch of probes rather than one per canceled row ahead of the first due
// one; the iteration then starts fewer, and the next one goes on at once.
//
// Work with a pending_start row is never running: only the loop inserts
// running rows, under the internal_state lock, and it queues a retry only
// after the attempt's running row is gone. The plain statement relies on
// that, and a violation fails it on running's primary key, which is then
// the statement's only check (IsRunningConflict). The checked statement
// probes each row first and leaves out work that is already running, for
// a loop that has seen the invariant broken: the probe was a fifth of the
// statement's time in the drain benchmark, paid for a case that should not
// occur. A probe is cheaper than ON CONFLICT's speculative insertion.
func startWork(checked bool) string {
	checkedJoin := ""
	if checked {
		checkedJoin = `
      LEFT JOIN LATERAL (SELECT 1 AS found FROM {s}.running r WHERE r.work_id = pick.work_id LIMIT 1) r ON true
     WHERE r.found IS NULL`
	}
	return `WITH lim AS (
    -- Standbys only for a pool that this statement fills to its limit: a
    -- paused pool, or one whose limit was lowered below what runs, has
    -- no slot to hand on.
    SELECT LEAST($4::int, GREATEST(0, m - r)) AS n,
           CASE WHEN m > 0 AND r <= m THEN $15::int ELSE 0 END AS standbys
      FROM (SELECT (SELECT max_parallelism FROM {s}.config WHERE pool = $1) AS m,
                   (SELECT running_count FROM {s}.internal_state WHERE pool = $1) AS r) x
), cans AS (
    -- Whether the pool has cancels that no iteration has taken yet (see
    -- startWork): only then is each row probed for one.
    SELECT EXISTS (SELECT 1 FROM {s}.pending_cancelation WHERE pool = $1) AS found
), ps AS (
    DELETE FROM {s}.pending_start WHERE ctid = ANY(ARRAY(
        SELECT p.ctid FROM (
            SELECT ctid, work_id FROM {s}.pending_start
             WHERE pool = $1 AND segment >= $2 AND segment <= LEAST($3::bigint, {now})
             ORDER BY segment LIMIT (SELECT n FROM lim) + (SELECT standbys FROM lim)) p
         WHERE CASE WHEN (SELECT found FROM cans)
                    THEN NOT ` + cancelPending("p.work_id") + `
                    ELSE true END))
    RETURNING work_id, segment, fn_name, label, attempt, timeout_ms, work_ctid
), ord AS (
    -- Rows past the pool's free slots ($15 of them at most) become
    -- standbys of the local worker (see LocalClaim.Standby); those of
    -- functions it has not registered go back where they were.
    -- Two branches, so that the sort is not run when none is asked for.
    SELECT ps.*, false AS standby FROM ps WHERE (SELECT standbys FROM lim) = 0
    UNION ALL
    SELECT ps.*, row_number() OVER (ORDER BY segment, work_id) > (SELECT n FROM lim)
      FROM ps WHERE (SELECT standbys FROM lim) > 0
), back AS (
    INSERT INTO {s}.pending_start (work_id, pool, segment, fn_name, label, attempt, timeout_ms, work_ctid)
    SELECT work_id, $1, segment, fn_name, label, attempt, timeout_ms, work_ctid
      FROM ord WHERE standby AND NOT fn_name = ANY($6::text[])
), sel AS (
    SELECT * FROM ord WHERE NOT standby OR fn_name = ANY($6::text[])
), procs AS (
    -- The pool's started processes, counted by their LISTEN connections
    -- unless the caller passes a recent count ($10 > 0): pg_stat_activity
    -- copies every backend slot of the server, 45 of this statement's
    -- 220 µs in the slots benchmark. CASE evaluates the count only when it
    -- is asked for.
    SELECT GREATEST(1, CASE WHEN $10::int > 0 THEN $10::int
                            ELSE (SELECT count(*) FROM pg_stat_activity WHERE application_name = $9)::int END) AS n
), share AS (
    -- The local worker takes at most its share of the batch, so that other
    -- processes get work too.
    SELECT LEAST($7::int, ceil((SELECT n FROM lim)::numeric / (SELECT n FROM procs))) AS n
), fits AS (
    -- Whether every row of the local worker's functions fits its share,
    -- as all do in a busy single-process pool: then no row needs ranking,
    -- and the sort of the second branch below is never run.
    SELECT count(*) FILTER (WHERE fn_name = ANY($6::text[]) AND NOT standby) <= (SELECT n FROM share) AS yes FROM sel
), pick AS (
    SELECT sel.*, fn_name = ANY($6::text[]) AS mine
      FROM sel WHERE (SELECT yes FROM fits)
    UNION ALL
    SELECT sel.*, standby OR (fn_name = ANY($6::text[])
                  AND row_number() OVER (PARTITION BY fn_name = ANY($6::text[]), standby ORDER BY segment, work_id)
                      <= (SELECT n FROM share)) AS mine
      FROM sel WHERE NOT (SELECT yes FROM fits)
), ins AS (
    INSERT INTO {s}.running (work_id, pool, fn_name, label, attempt, segment, started_at, timeout_ms,
                             claimed_by, claimed_at, deadline, standby)
    SELECT pick.work_id, $1, fn_name, label, attempt, segment, statement_timestamp(), timeout_ms,
           CASE WHEN mine THEN $5::bigint END, CASE WHEN mine THEN statement_timestamp() END,
           CASE WHEN mine AND NOT standby THEN statement_timestamp() + timeout_ms * interval '1 millisecond' END,
           standby
      FROM pick` + checkedJoin + `
    RETURNING work_id, standby
), rc AS (
    UPDATE {s}.internal_state SET running_count = running_count + (SELECT count(*) FROM ins WHERE NOT standby) WHERE pool = $1
    RETURNING running_count
), hb AS (` + beatWorker("$1", "$5", "$11", "$12", "$8 AND EXISTS (SELECT 1 FROM pick WHERE mine)") + `
), sig AS (
    -- Work left for other processes' claimers: tell them at commit. It is
    -- sent here rather than with the state, which an iteration that
    -- commits in its first round trip does not write.
    SELECT count(*) AS n FROM (SELECT pg_notify($13, $14) FROM pick WHERE NOT mine LIMIT 1) x
)
SELECT pick.work_id, pick.segment, pick.fn_name, pick.label, pick.attempt, pick.timeout_ms, pick.mine, pick.standby,
       COALESCE(w.args::text, ''), COALESCE(w.on_complete IS NOT NULL, false),
       (SELECT count(*) FROM ins), (SELECT running_count FROM rc), (SELECT n FROM lim), statement_timestamp(),
       CASE WHEN pick.mine THEN (SELECT n FROM procs) ELSE 0 END, (SELECT n FROM sig)
  FROM pick LEFT JOIN LATERAL (
       SELECT args, on_complete FROM {s}.work WHERE ctid = pick.work_ctid AND id = pick.work_id AND pick.mine
       UNION ALL
       SELECT args, on_complete FROM {s}.work WHERE id = pick.work_id AND pick.mine
       LIMIT 1) w ON true`
}

// freeSlots returns the CTEs rn, which deletes the pool's running rows of
// the work ids that query yields (a column work_id) and returns their
// work_id, fn_name and label, and rc, which keeps running_count in step.
// Each row is found by its own primary-key probe (LATERAL ... LIMIT 1), so
// the cost follows the ids, never the dead rows and index entries the
// table gathers between vacuums (see PlanSettings); the pool is checked
// after the probe so that its index is not chosen instead.
//
// A standby's row frees no slot, as it holds none (see LocalClaim.Standby).
// counters, if set, are more assignments for rc's update of internal_state
// (the report counters of the slots freed); kept, if set, is a term added
// back to running_count for the slots handed to standbys (handedOver).
func freeSlots(query, counters, kept string) string {
	return `rn AS (
    DELETE FROM {s}.running r WHERE r.ctid = ANY(ARRAY(
        SELECT x.ctid FROM (` + query + `) i CROSS JOIN LATERAL (
            SELECT ctid, pool FROM {s}.running WHERE work_id = i.work_id LIMIT 1) x
         WHERE x.pool = $1))
    RETURNING r.work_id, r.fn_name, r.label, r.standby
), rc AS (
    UPDATE {s}.internal_state SET running_count = running_count - (SELECT count(*) FROM rn WHERE NOT standby)` + kept + counters + ` WHERE pool = $1
)`
}

// Counters are the report counters kept in internal_state between reports.
type Counters struct {
	Completed, Succeeded, Failed, Retries, Canceled int64
	Since                                           time.Time
}

// State is the loop's view of a pool at the start of an iteration.
type State struct {
	Found                                            bool // the pool has a state row
	Generation                                       int64
	StartCursor, CompletionCursor, CancelationCursor int64
	LastRecovery, LastActivity                       int64
	RunningCount                                     int
	Counters                                         Counters
	MaxParallelism                                   int
	LogLevel                                         string
	ConfigVersion                                    time.Time // when config was last updated
	NowSegment                                       int64
	Now                                              time.Time
	// RunStatus is run_status as the iteration holds it: running, or
	// what it was if the call left it (scheduled saturated). Only its
	// State, Segment and Saturated are set.
	RunStatus RunStatus
}

// LockStateOp locks the pool's state row for the iteration, sets a
// server-side statement timeout for the rest of the transaction, so an
// iteration abandoned by its client cannot hold locks on, and makes the
// transaction plan as PlanSettings says.
//
// With abortIfStale, a generation other than generation fails the
// statement (see IsStaleGeneration), and so the transaction, rather than
// being returned: an iteration that commits in its first round trip
// cannot look at it before the statements after it run.
func (s *Store) LockStateOp(pool string, generation int64, statementTimeout time.Duration, abortIfStale bool, st *State) Op {
	return s.op("lockState", func(r Row) error {
		var marked, stale int64
		var setting, state string
		st.Found = true
		if err := r.Scan(&st.Generation, &st.StartCursor, &st.CompletionCursor, &st.CancelationCursor, &st.LastRecovery,
			&st.LastActivity, &st.RunningCount, &st.Counters.Completed, &st.Counters.Succeeded, &st.Counters.Failed,
			&st.Counters.Retries, &st.Counters.Canceled, &st.Counters.Since, &st.MaxParallelism, &st.LogLevel,
			&st.ConfigVersion, &st.NowSegment, &st.Now, &marked,
			&state, &st.RunStatus.Segment, &st.RunStatus.Saturated, &setting, &stale); err != nil {
			return err
		}
		st.RunStatus.State = RunState(state)
		if marked > 0 { // this call moved it to running
			st.RunStatus = RunStatus{State: RunRunning}
		}
		return nil
	}, pool, generation, fmt.Sprintf("%dms", statementTimeout.Milliseconds()), abortIfStale)
}

// staleGeneration starts the text that lockState fails to read as an
// integer when it aborts a stale iteration: a cast is the one way a plain
// SQL statement can raise an error of its choosing, and the text says why
// in the server's log.
const staleGeneration = `'pgworkpool: stale loop generation, current '`

// IsStaleGeneration reports whether err is lockState aborting a stale
// iteration (see LockStateOp).
func IsStaleGeneration(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "22P02" && strings.Contains(pe.Message, "stale loop generation") // invalid_text_representation
}

// BumpGenerationOp moves the generation on, as SaveStateOp does, for an
// iteration that writes no other state.
func (s *Store) BumpGenerationOp(pool string, generation int64) Op {
	return s.op("bumpGeneration", nil, pool, generation)
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

// Completions collects what TakeCompletionsOp read.
type Completions struct {
	Rows []Completion
	// running holds the marker rows by work id: only what they add to a
	// completion, as the map is filled per iteration and its entries are
	// otherwise large.
	running map[int64]runningRow
}

// runningRow is what a marker row (a running row the statement deleted)
// tells about its completion.
type runningRow struct{ Fn, Label string }

// resolve attaches the marker rows (running rows deleted) to completions.
func (c *Completions) resolve() []Completion {
	for i := range c.Rows {
		if m, ok := c.running[c.Rows[i].WorkID]; ok {
			c.Rows[i].WasRunning, c.Rows[i].Fn, c.Rows[i].Label = true, m.Fn, m.Label
		}
	}
	return c.Rows
}

// TakeCompletionsOp deletes up to limit completions in r and their running
// rows (keeping running_count in step). Call Completions.Done after it ran.
func (s *Store) TakeCompletionsOp(pool string, r Range, limit int, out *Completions) Op {
	out.running = map[int64]runningRow{}
	var c Completion // scanned into once per statement (see RecordLocalResultsOp)
	var marker bool
	dest := []any{&c.WorkID, &c.Attempt, &c.Status, &c.Error, &c.Retry, &c.RunMs, &c.Segment,
		&marker, &c.WorkExists, &c.Canceled, &c.Attempts, &c.BackoffMs, &c.BackoffBase,
		&c.Fn, &c.Label, &c.CancelPending}
	return s.op("takeCompletions", func(rows Row) error {
		c = Completion{}
		if err := rows.Scan(dest...); err != nil {
			return err
		}
		if marker {
			out.running[c.WorkID] = runningRow{Fn: c.Fn, Label: c.Label}
		} else {
			out.Rows = append(out.Rows, c)
		}
		return nil
	}, pool, r.From, r.To, limit)
}

// Done returns the completions read, with WasRunning, Fn and Label set.
func (c *Completions) Done() []Completion { return c.resolve() }

// TakeCompletions runs TakeCompletionsOp on q.
func (s *Store) TakeCompletions(ctx context.Context, q Querier, pool string, r Range, limit int) ([]Completion, error) {
	var out Completions
	if err := Run(ctx, q, s.TakeCompletionsOp(pool, r, limit, &out)); err != nil {
		return nil, err
	}
	return out.Done(), nil
}

// InsertRetriesOp schedules retries; *inserted receives the ids actually
// inserted (a work id that already has a pending_start is skipped).
func (s *Store) InsertRetriesOp(pool string, ids, segments []int64, inserted *[]int64) Op {
	return s.op("insertRetries", scanIDs(inserted), pool, ids, segments)
}

// Cancelation is a pending_cancelation row the loop consumed.
type Cancelation struct {
	WorkID     int64
	Segment    int64
	Marked     bool // the work existed and is now marked canceled
	WasPending bool // its pending_start was deleted: it never starts
	IsRunning  bool // it holds a slot: its worker must cancel the handler
}

// TakeCancelationsOp deletes up to limit cancelations in r, marks their work
// canceled and deletes their pending_start rows.
func (s *Store) TakeCancelationsOp(pool string, r Range, limit int, out *[]Cancelation) Op {
	return s.op("takeCancelations", func(rows Row) error {
		var c Cancelation
		if err := rows.Scan(&c.WorkID, &c.Segment, &c.Marked, &c.WasPending, &c.IsRunning); err != nil {
			return err
		}
		*out = append(*out, c)
		return nil
	}, pool, r.From, r.To, limit)
}

// Ended is work the loop brought to its canceled terminal state.
type Ended struct {
	WorkID    int64
	Fn, Label string
	Attempts  int
	Finishing bool // waits for its onComplete in a worker process
}

// FinishCanceledOp ends the given (not running) work as canceled.
func (s *Store) FinishCanceledOp(pool string, ids []int64, out *[]Ended) Op {
	return s.op("finishCanceled", func(rows Row) error {
		var e Ended
		if err := rows.Scan(&e.WorkID, &e.Fn, &e.Label, &e.Attempts, &e.Finishing); err != nil {
			return err
		}
		*out = append(*out, e)
		return nil
	}, pool, ids)
}

// Start is one pending_start row the start phase consumed.
type Start struct {
	WorkID    int64
	Segment   int64
	Fn, Label string
	Attempt   int
	Timeout   time.Duration
	// Mine is set for rows claimed for the local worker; Args then holds
	// the work's arguments.
	Mine          bool
	Standby       bool
	Args          string
	HasOnComplete bool
}

// Starts collects what StartWorkOp read.
type Starts struct {
	Rows []Start
	// Inserted running rows; fewer than len(Rows) means some work was
	// already running (an invariant violation).
	Inserted int
	// Running is running_count after the phase; Limit the batch it allowed.
	Running, Limit int
	// StartedAt is the claim time of the Mine rows.
	StartedAt time.Time
	// Processes is the count of the pool's started processes that divided
	// the batch (zero when no row was claimed for the local worker).
	Processes int
	// Notified is 1 when the statement sent SignalStart.
	Notified int
}

// LocalClaim asks StartWorkOp to claim rows for a worker of this process.
type LocalClaim struct {
	Worker Worker
	Fns    []string
	Slots  int
	// Heartbeat refreshes the worker's lease in the same statement.
	Heartbeat bool
	// Listeners is the application_name of the pool's LISTEN connections,
	// one per started process: the local worker takes at most its share.
	Listeners string
	// Standby is how many rows beyond the free slots to claim as standbys:
	// attempts that a handler of this process starts in its own slot when
	// it ends, before the loop records the result (see Result.Successor).
	Standby int
	// Closed is set by the loop, for Deliver, when the pool is paused or
	// runs more than its limit: held standbys must not start.
	Closed bool
	// Processes, when positive, is a recent count of those connections,
	// which the statement then uses instead of counting them again.
	Processes int
}

// StartWorkOp moves up to limit due pending_start rows in r into running
// (fewer if the pool's limit says so) and claims some for the local worker.
// Unless checked, work that is already running fails the statement (see
// IsRunningConflict) rather than being left out. When it leaves rows for
// other claimers it sends SignalStart on channel, at commit.
func (s *Store) StartWorkOp(pool string, r Range, limit int, local LocalClaim, checked bool, channel string, out *Starts) Op {
	if local.Fns == nil {
		local.Fns = []string{}
	}
	var st Start // scanned into once per statement (see RecordLocalResultsOp)
	var timeoutMs int64
	var procs int // the same in every row that has it
	dest := []any{&st.WorkID, &st.Segment, &st.Fn, &st.Label, &st.Attempt, &timeoutMs, &st.Mine, &st.Standby, &st.Args,
		&st.HasOnComplete, &out.Inserted, &out.Running, &out.Limit, &out.StartedAt, &procs, &out.Notified}
	name := "startWork"
	if checked {
		name = "startWorkChecked"
	}
	return s.op(name, func(rows Row) error {
		st = Start{}
		if err := rows.Scan(dest...); err != nil {
			return err
		}
		st.Timeout = time.Duration(timeoutMs) * time.Millisecond
		out.Processes = max(out.Processes, procs)
		out.Rows = append(out.Rows, st)
		return nil
	}, pool, r.From, r.To, limit, local.Worker.ID, local.Fns, local.Slots, local.Heartbeat, local.Listeners, local.Processes,
		local.Worker.Host, local.Worker.PID, channel, string(SignalStart), local.Standby)
}

// IsRunningConflict reports whether err is the plain start statement
// failing on work that is already running (see StartWorkOp).
func IsRunningConflict(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "23505" && pe.TableName == "running" // unique_violation
}

// UnclaimOp gives back rows StartWorkOp claimed for workerID at startedAt.
func (s *Store) UnclaimOp(ids []int64, workerID int64, startedAt time.Time) Op {
	return s.op("unclaim", nil, ids, workerID, startedAt)
}

// SavedState is what an iteration writes back to internal_state
// (running_count is kept in step by the phases themselves).
type SavedState struct {
	Generation                                       int64
	StartCursor, CompletionCursor, CancelationCursor int64
	LastRecovery, LastActivity                       int64
	Counters                                         Counters
}

// SaveStateOp writes the iteration's state and sends payload on channel (at
// commit) unless payload is empty.
func (s *Store) SaveStateOp(pool string, st SavedState, channel, payload string) Op {
	return s.op("saveState", nil, pool, st.Generation, st.StartCursor, st.CompletionCursor,
		st.CancelationCursor, st.LastRecovery, st.LastActivity,
		st.Counters.Completed, st.Counters.Succeeded, st.Counters.Failed, st.Counters.Retries, st.Counters.Canceled,
		st.Counters.Since, channel, payload)
}

// TryKickLockOp tries to take the pool's kick lock exclusively for the rest
// of the transaction; it fails while any producer transaction holds it
// shared.
func (s *Store) TryKickLockOp(key int64, locked *bool) Op {
	return s.op("tryKickLock", func(r Row) error { return r.Scan(locked) }, key)
}

// Pending summarizes the pending tables of a pool: the earliest segment of
// each (invalid when the table has no row of the pool).
type Pending struct {
	Completion  sql.NullInt64
	Cancelation sql.NullInt64
	Start       sql.NullInt64
	NowSegment  int64
}

// RecheckOp reads the earliest row of each pending table (see the SQL).
func (s *Store) RecheckOp(pool string, p *Pending) Op {
	return s.op("recheck", func(r Row) error {
		return r.Scan(&p.Completion, &p.Cancelation, &p.Start, &p.NowSegment)
	}, pool)
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

// SetRunStatusOp writes run_status; the loop does it only on transitions.
func (s *Store) SetRunStatusOp(pool string, rs RunStatus) Op {
	var seg sql.NullInt64
	if rs.State == RunScheduled {
		seg = sql.NullInt64{Int64: rs.Segment, Valid: true}
	}
	return s.op("setRunStatus", nil, pool, string(rs.State), seg, rs.Saturated, rs.Generation)
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
