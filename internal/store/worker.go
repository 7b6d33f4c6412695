package store

import (
	"context"
	"database/sql"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Statements run by worker processes: claiming started work, recording the
// results of attempts (also used by recovery), running onComplete later
// ("finishing"), releasing claims and heartbeats.

// recordFenced is the common part of recordResults and recordLocalResults:
// it fences each result on work.attempts, decides retry or terminal,
// deletes terminal work that has no onComplete, marks terminal work with an
// onComplete as finishing (result set) and bumps attempts of retried work.
// Results of stale attempts match nothing and are left out of fenced.
//
// The decision reads only the work row's own columns, so each of del and
// upd states it in its WHERE clause and visits the row once: upd skips the
// results that del took before it looks their rows up (a busy loop records
// hundreds of results per iteration, and looking each row up once to
// decide and again to write was a tenth of that statement). Rows are
// matched by id, not by ctid: under READ COMMITTED a concurrent update (a
// cancel marking the row) gives the row a new ctid, and a recheck on the
// old one would drop a valid result as stale, leaving its work claimed and
// unfinished; the recheck of the WHERE clause on the row's latest version
// is the fence against a competing result.
//
// updMay is a condition on r alone that every result upd can match
// satisfies ("true" when nothing narrower is known): filtering r before
// the anti-join spares its hash of del when no result qualifies, as in a
// busy iteration of the loop that records hundreds of successes.
func recordFenced(updMay string) string {
	return `
WITH r AS (
    SELECT * FROM unnest($2::bigint[], $3::int[], $4::text[], $5::text[], $6::bool[], $7::text[], $8::bigint[])
        AS r(work_id, attempt, status, error, nonretryable, value, run_ms)
), del AS (
    DELETE FROM {s}.work w USING r
     WHERE ` + attemptLive + ` AND w.pool = $1
       AND w.on_complete IS NULL AND NOT ` + retryRule + `
    RETURNING w.id, w.attempts + 1 AS attempts, r.attempt, ` + finalStatus + ` AS status,
              NULLIF(r.error, '') AS error, false AS retry, r.run_ms,
              NULL::text AS on_complete, NULL::jsonb AS ctx
), upd AS (
    UPDATE {s}.work w
       SET attempts = w.attempts + 1,
           result = CASE WHEN ` + retryRule + ` THEN NULL
                    ELSE jsonb_build_object('status', ` + finalStatus + `,
                                            'error', NULLIF(r.error, ''), 'value', NULLIF(r.value, '')::jsonb) END,
           finish_after = CASE WHEN ` + retryRule + ` THEN NULL ELSE now() END
      FROM r
     WHERE (` + updMay + `)
       AND NOT EXISTS (SELECT 1 FROM del WHERE del.id = r.work_id)
       AND ` + attemptLive + ` AND w.pool = $1
       AND (w.on_complete IS NOT NULL OR ` + retryRule + `)
    -- RETURNING sees the updated row: result is NULL exactly for a retry.
    RETURNING w.id, w.attempts, r.attempt, ` + finalStatus + `,
              NULLIF(r.error, ''), w.result IS NULL, r.run_ms,
              CASE WHEN w.result IS NULL THEN NULL ELSE w.on_complete END,
              CASE WHEN w.result IS NULL THEN NULL ELSE w.on_complete_context END
), fenced AS (
    SELECT * FROM del UNION ALL SELECT * FROM upd
)`
}

// retryRule says, for a result r and its work row w as they stand before
// the result is recorded, whether the attempt is retried. recordFenced
// states it in four places, so it is written once here.
const retryRule = `(r.status = 'failed' AND NOT r.nonretryable AND NOT w.canceled AND w.attempts + 1 < w.max_attempts)`

// attemptLive matches the work row w of r, a result or a running row, only
// while r's attempt is the work's current one and no result is recorded:
// the fence that a late or second result of an attempt fails, and that
// tells a claim or running row its attempt outlived. Six statements state
// it, so it is written once here.
var attemptLive = probe("w.id", "r.work_id") + ` AND w.attempts = r.attempt AND w.result IS NULL`

// finalStatus is the status a result records: a failure of work that was
// canceled meanwhile ends as canceled.
const finalStatus = `(CASE WHEN r.status = 'failed' AND w.canceled THEN 'canceled' ELSE r.status END)`

// beatWorker returns the statement, for a CTE, that refreshes a worker's
// heartbeat when cond holds, re-creating the worker's row under its own id
// if recovery removed it; pool, id, host and pid are the statement's
// parameters that hold them. Recovery removes the rows of processes that
// have not heartbeated for a long time (recovery.WorkerRetention), which
// includes live ones that sat idle, as idle processes send nothing. Such a
// process's next claim always carries a heartbeat (one is due after half a
// heartbeat interval, far less than the retention), so the claim and the
// row it needs commit together, and recovery never takes the claim for
// that of a process that is gone.
func beatWorker(pool, id, host, pid, cond string) string {
	return `
    INSERT INTO {s}.workers (id, pool, host, pid) OVERRIDING SYSTEM VALUE
    SELECT ` + id + `, ` + pool + `, ` + host + `, ` + pid + ` WHERE ` + cond + `
    ON CONFLICT (id) DO UPDATE SET heartbeat_at = now()`
}

func init() {
	register("registerWorker", `
INSERT INTO {s}.workers (pool, host, pid) VALUES ($1, $2, $3) RETURNING id`)
	// heartbeat extends the lease and lists the attempts claimed by the
	// worker that have not reported: the worker compares them with what it
	// runs, to find claims whose commit succeeded while their answer was
	// lost (a broken connection after the server committed).
	register("heartbeat", `
WITH hb AS (`+beatWorker("$2", "$1", "$3", "$4", "true")+`
)
SELECT r.work_id, r.attempt FROM {s}.running r
 WHERE r.pool = $2 AND r.claimed_by = $1
   AND EXISTS (SELECT 1 FROM {s}.work w WHERE `+attemptLive+`)`)
	register("deregisterWorker", `DELETE FROM {s}.workers WHERE id = $1`)
	// deleteStaleWorkers removes the rows of processes that have not
	// heartbeated for longer than the retention (the recovery pass): a
	// process killed without a Stop leaves its row behind. A live process
	// that sat idle that long loses its row too and re-creates it with its
	// next claim (see beatWorker).
	register("deleteStaleWorkers", `
DELETE FROM {s}.workers
 WHERE pool = $1 AND heartbeat_at < now() - $2 * interval '1 millisecond'
RETURNING id`)

	// The heartbeat rides along with a claim when it is due, so that a
	// process that was idle for longer than the lease is not declared lost
	// the moment it takes work.
	register("claim", `
WITH hb AS (`+beatWorker("$1", "$4", "$6", "$7", "$5")+`
), c AS (
    SELECT ctid FROM {s}.running
     WHERE pool = $1 AND claimed_by IS NULL AND fn_name = ANY($2::text[]) AND NOT standby
     LIMIT $3
       FOR UPDATE SKIP LOCKED
), u AS (
    UPDATE {s}.running r
       SET claimed_by = $4, claimed_at = now(), deadline = now() + r.timeout_ms * interval '1 millisecond'
      FROM c WHERE r.ctid = c.ctid
    RETURNING r.work_id, r.attempt, r.fn_name, r.timeout_ms
)
SELECT u.work_id, u.attempt, u.fn_name, u.timeout_ms, COALESCE(w.args::text, ''), COALESCE(w.label, ''),
       COALESCE(w.canceled, false), w.args IS NOT NULL, COALESCE(w.on_complete IS NOT NULL, false)
  FROM u LEFT JOIN LATERAL (SELECT args, label, canceled, on_complete FROM {s}.work WHERE id = u.work_id LIMIT 1) w ON true`)

	// recordResults queues a pending_completion for the loop for every
	// fenced result (see recordFenced) and takes the shared kick lock.
	register("recordResults", recordFenced("true")+`, pc AS (
    INSERT INTO {s}.pending_completion (pool, segment, work_id, attempt, status, error, retry, run_ms, successor)
    SELECT $1, {now}, f.id, f.attempt, f.status, f.error, f.retry, f.run_ms, h.successor
      FROM fenced f LEFT JOIN unnest($10::bigint[], $11::bigint[]) AS h(work_id, successor) ON h.work_id = f.id
), lk AS (
    SELECT pg_advisory_xact_lock_shared($9) AS locked
)
SELECT f.id, f.attempts, f.status, f.retry, COALESCE(f.on_complete, ''), COALESCE(f.ctx::text, '')
  FROM fenced f, lk`)

	// recordLocalResults is recordResults for the loop's own transaction
	// (loop.LocalWorkers.TakeResults): a terminal result frees its slot
	// here (freeSlots) instead of going through a pending_completion row
	// that the same transaction would insert and delete again. Only
	// retries are queued, for the completion phase to schedule. No kick
	// lock: the loop re-checks in its own transaction, which sees these
	// rows. Its results run no onComplete (see RecordLocalResultsOp), so
	// only a failure, which may retry, can end by an update. It adds the
	// ended results to the report counters itself, for an iteration that
	// writes no state (see loop.fastPath).
	//
	// It returns a row per fenced result that is not a success, and one
	// summary row (summary true) that lists the ids of the fenced
	// successes and of the running rows it deleted, as text (a bigint[]
	// column would not scan through database/sql). Everything else about
	// a fenced success is what the caller sent, so a busy iteration that
	// records hundreds of successes reads one row instead of two per
	// result (the two CTEs are not joined; see takeCompletions): those
	// rows were about 5% of a drain iteration's time.
	register("recordLocalResults", recordFenced("r.status = 'failed'")+`, pc AS (
    INSERT INTO {s}.pending_completion (pool, segment, work_id, attempt, status, error, retry, run_ms)
    SELECT $1, {now}, id, attempt, status, error, retry, run_ms FROM fenced WHERE retry
), ended AS (
    SELECT count(*) FILTER (WHERE status = 'success') AS succeeded,
           count(*) FILTER (WHERE status = 'failed') AS failed,
           count(*) FILTER (WHERE status = 'canceled') AS canceled
      FROM fenced WHERE NOT retry
), `+handOver(fencedSuccessors("$9", "$10"))+`, `+freeSlots("SELECT id AS work_id FROM fenced WHERE NOT retry", `,
           report_completed = report_completed + (SELECT count(*) FROM rn),
           report_succeeded = report_succeeded + (SELECT succeeded FROM ended),
           report_failed = report_failed + (SELECT failed FROM ended),
           report_canceled = report_canceled + (SELECT canceled FROM ended)`, handedOver)+`
SELECT false, f.id, f.attempts, f.status, f.retry, COALESCE(f.on_complete, ''), COALESCE(f.ctx::text, ''),
       f.attempt, COALESCE(f.error, ''), COALESCE(f.run_ms, -1), '', ''
  FROM fenced f WHERE f.status <> 'success'
UNION ALL
SELECT `+localSummary("SELECT id FROM fenced WHERE status = 'success'"))

	// recordLocalSuccesses is recordLocalResults for a batch of successes
	// only, as a busy pool's iterations record: its plan leaves out the
	// update, the retries and the per-status counts, and initializing the
	// general statement's larger plan at each execution was a measurable
	// part of an iteration that records a few results (the slots
	// benchmark). It returns only the summary row, with the same columns.
	register("recordLocalSuccesses", `
WITH r AS (
    SELECT * FROM unnest($2::bigint[], $3::int[]) AS r(work_id, attempt)
), fenced AS (
    DELETE FROM {s}.work w USING r
     WHERE `+attemptLive+` AND w.pool = $1
       AND w.on_complete IS NULL
    RETURNING w.id
), `+handOver(fencedSuccessors("$4", "$5"))+`, `+freeSlots("SELECT id AS work_id FROM fenced", `,
           report_completed = report_completed + (SELECT count(*) FROM rn),
           report_succeeded = report_succeeded + (SELECT count(*) FROM fenced)`, handedOver)+`
SELECT `+localSummary("SELECT id FROM fenced"))

	register("finishDelete", `
DELETE FROM {s}.work WHERE id = ANY($1::bigint[]) AND result IS NOT NULL`)

	register("finishFailed", `
UPDATE {s}.work
   SET finish_attempts = finish_attempts + 1,
       finish_error = $2,
       finish_after = CASE WHEN finish_attempts + 1 >= $3 THEN NULL
                      ELSE now() + $4 * interval '1 millisecond' END
 WHERE id = $1 AND result IS NOT NULL
RETURNING finish_attempts, finish_after IS NULL`)

	register("claimFinishing", `
SELECT id, fn_name, label, attempts, on_complete, COALESCE(on_complete_context::text, ''), result::text,
       finish_attempts
  FROM {s}.work
 WHERE pool = $1 AND result IS NOT NULL AND finish_after <= now() AND on_complete = ANY($2::text[])
 ORDER BY finish_after
 LIMIT $3
   FOR UPDATE SKIP LOCKED`)

	register("nextFinishing", `
SELECT EXTRACT(epoch FROM (
    SELECT finish_after FROM {s}.work
     WHERE pool = $1 AND result IS NOT NULL AND finish_after IS NOT NULL AND on_complete = ANY($2::text[])
     ORDER BY finish_after LIMIT 1) - now()) * 1000`)

	register("release", `
UPDATE {s}.running SET claimed_by = NULL, claimed_at = NULL, deadline = NULL
 WHERE pool = $1 AND claimed_by = $2 AND work_id = ANY($3::bigint[]) AND NOT standby`)

	// releaseStranded un-claims attempts of the worker that it does not
	// run, unless they reported meanwhile (the attempt fence of
	// recordResults), so another worker claims them.
	register("releaseStranded", `
UPDATE {s}.running r SET claimed_by = NULL, claimed_at = NULL, deadline = NULL
  FROM unnest($3::bigint[], $4::int[]) AS u(work_id, attempt)
 WHERE r.pool = $1 AND r.claimed_by = $2 AND r.work_id = u.work_id AND r.attempt = u.attempt AND NOT r.standby
   AND EXISTS (SELECT 1 FROM {s}.work w WHERE `+attemptLive+`)
RETURNING r.work_id`)

	// releaseStandbys gives standbys of the worker that it did not start
	// back to pending_start, where they were (see LocalClaim.Standby), and
	// takes the shared kick lock. A standby is not counted as running, so
	// no count changes. The segment is kept, for the order of the backlog,
	// unless it has fallen far behind the loop's start cursor.
	register("releaseStandbys", `
WITH d AS (
    DELETE FROM {s}.running r
     WHERE r.pool = $1 AND r.claimed_by = $2 AND r.work_id = ANY($3::bigint[]) AND r.standby
    RETURNING r.work_id, r.segment, r.fn_name, r.label, r.attempt, r.timeout_ms
), ins AS (
    INSERT INTO {s}.pending_start (work_id, pool, segment, fn_name, label, attempt, timeout_ms)
    SELECT work_id, $1, GREATEST(segment, {now} - 50), fn_name, label, attempt, timeout_ms FROM d
    RETURNING work_id
), lk AS (
    SELECT pg_advisory_xact_lock_shared($4) AS locked
)
SELECT ins.work_id FROM ins, lk`)

	register("canceledAmong", `
SELECT id FROM {s}.work WHERE id = ANY($1::bigint[]) AND canceled`)
}

// Worker identifies a worker process's row in the workers table: the id
// RegisterWorker returned, and what the row says about the process, which
// the statements that heartbeat need to re-create it (see beatWorker).
type Worker struct {
	ID   int64
	Host string
	PID  int
}

// RegisterWorker records a live worker process and returns its id.
func (s *Store) RegisterWorker(ctx context.Context, q Querier, pool, host string, pid int) (int64, error) {
	var id int64
	if err := q.QueryRowContext(ctx, s.sql("registerWorker"), pool, host, pid).Scan(&id); err != nil {
		return 0, fmt.Errorf("register worker: %w", err)
	}
	return id, nil
}

// ClaimedAttempt is an attempt claimed by a worker that has not reported.
type ClaimedAttempt struct {
	WorkID  int64
	Attempt int
}

// Heartbeat extends a worker's lease and returns the attempts it holds
// claimed that have not reported.
func (s *Store) Heartbeat(ctx context.Context, q Querier, pool string, w Worker) ([]ClaimedAttempt, error) {
	var out []ClaimedAttempt
	err := Run(ctx, q, s.op("heartbeat", func(r Row) error {
		var c ClaimedAttempt
		if err := r.Scan(&c.WorkID, &c.Attempt); err != nil {
			return err
		}
		out = append(out, c)
		return nil
	}, w.ID, pool, w.Host, w.PID))
	return out, err
}

// ReleaseStranded un-claims the given attempts of workerID that have not
// reported and returns the work ids it released.
func (s *Store) ReleaseStranded(ctx context.Context, q Querier, pool string, workerID int64, attempts []ClaimedAttempt) ([]int64, error) {
	ids, nums := make([]int64, len(attempts)), make([]int32, len(attempts))
	for i, a := range attempts {
		ids[i], nums[i] = a.WorkID, int32(a.Attempt)
	}
	var out []int64
	err := Run(ctx, q, s.op("releaseStranded", scanIDs(&out), pool, workerID, ids, nums))
	return out, err
}

// DeregisterWorker removes a worker row on a clean stop.
func (s *Store) DeregisterWorker(ctx context.Context, q Querier, workerID int64) error {
	_, err := q.ExecContext(ctx, s.sql("deregisterWorker"), workerID)
	return err
}

// DeleteStaleWorkers removes the pool's workers rows whose last heartbeat
// is older than retention and returns their ids.
func (s *Store) DeleteStaleWorkers(ctx context.Context, q Querier, pool string, retention time.Duration) ([]int64, error) {
	var out []int64
	if err := Run(ctx, q, s.op("deleteStaleWorkers", scanIDs(&out), pool, retention.Milliseconds())); err != nil {
		return nil, fmt.Errorf("delete stale workers: %w", err)
	}
	return out, nil
}

// Claimed is one started attempt a worker took.
type Claimed struct {
	WorkID      int64
	Attempt     int
	Fn          string
	Timeout     time.Duration
	Args        string
	Label       string
	Canceled    bool // canceled before the worker claimed it
	WorkMissing bool // the work row is gone (a bug elsewhere); report and skip
	// HasOnComplete tells the worker whether recording this attempt's end
	// may have to run an onComplete in the same transaction.
	HasOnComplete bool
}

// ClaimOp takes up to limit unclaimed running rows of the given functions
// for worker w, refreshing its heartbeat first when refreshHeartbeat is set.
func (s *Store) ClaimOp(pool string, fns []string, limit int, w Worker, refreshHeartbeat bool, out *[]Claimed) Op {
	return s.op("claim", func(r Row) error {
		var c Claimed
		var timeoutMs int64
		var exists bool
		if err := r.Scan(&c.WorkID, &c.Attempt, &c.Fn, &timeoutMs, &c.Args, &c.Label, &c.Canceled, &exists, &c.HasOnComplete); err != nil {
			return err
		}
		c.Timeout = time.Duration(timeoutMs) * time.Millisecond
		c.WorkMissing = !exists
		*out = append(*out, c)
		return nil
	}, pool, fns, limit, w.ID, refreshHeartbeat, w.Host, w.PID)
}

// Claim runs ClaimOp on q.
func (s *Store) Claim(ctx context.Context, q Querier, pool string, fns []string, limit int, w Worker, refreshHeartbeat bool) ([]Claimed, error) {
	var out []Claimed
	if err := Run(ctx, q, s.ClaimOp(pool, fns, limit, w, refreshHeartbeat, &out)); err != nil {
		return nil, err
	}
	return out, nil
}

// Result is the outcome of one attempt as a worker or recovery saw it.
type Result struct {
	WorkID       int64
	Attempt      int
	Status       string // "success", "failed" or "canceled"
	Error        string
	NonRetryable bool
	Value        string // JSON text of a success value, "" for none
	RunMs        int64
	// OnComplete says the work has an onComplete; it is not written, it
	// tells a worker whether recording may need a transaction of its own.
	OnComplete bool
	// Successor is the standby this attempt's slot was handed to.
	Successor int64
	// Fn and Label are the attempt's, for the loop's events when it
	// records the result itself (RecordLocalResultsOp); they are not
	// written either.
	Fn, Label string
}

// Recorded is a result that passed the attempt fence.
type Recorded struct {
	WorkID   int64
	Attempts int    // attempts completed, including this one
	Status   string // final status: a failure of canceled work becomes "canceled"
	Retry    bool
	// OnComplete and Context are set when the work is now finishing: its
	// onComplete must commit before the work row is deleted.
	OnComplete string
	Context    string
}

// RecordResultsOp applies attempt results in one statement (see the SQL for
// the rules) and takes the shared kick lock. Results for stale attempts are
// absent from *out. Each work id must appear at most once.
func (s *Store) RecordResultsOp(pool string, results []Result, kickLock int64, out *[]Recorded) Op {
	preds, succs := handOvers(results)
	return s.op("recordResults", func(r Row) error {
		var rec Recorded
		if err := r.Scan(&rec.WorkID, &rec.Attempts, &rec.Status, &rec.Retry, &rec.OnComplete, &rec.Context); err != nil {
			return err
		}
		*out = append(*out, rec)
		return nil
	}, append(resultArgs(pool, results), kickLock, preds, succs)...)
}

// resultArgs returns the parameters $1-$8 of the record statements.
func resultArgs(pool string, results []Result) []any {
	n := len(results)
	ids, attempts, statuses := make([]int64, n), make([]int32, n), make([]string, n)
	errs, nonRetry, values, runMs := make([]string, n), make([]bool, n), make([]string, n), make([]int64, n)
	for i, r := range results {
		ids[i], attempts[i], statuses[i] = r.WorkID, int32(r.Attempt), r.Status
		errs[i], nonRetry[i], values[i], runMs[i] = StorableText(r.Error), r.NonRetryable, r.Value, r.RunMs
	}
	return []any{pool, ids, attempts, statuses, errs, nonRetry, values, runMs}
}

// LocalRecorded collects what RecordLocalResultsOp returned.
type LocalRecorded struct {
	// Recorded are the results that passed the attempt fence.
	Recorded []Recorded
	// Completions are the terminal ones among them, as the completion
	// phase would have read them (call Completions.Done).
	Completions Completions
}

// RecordLocalResultsOp records results in the loop's own transaction: like
// RecordResultsOp, but a terminal result frees its slot at once instead of
// queueing a completion (see the SQL), and no kick lock is taken. The
// results must be of work that has no onComplete, as the loop's workers
// hand over (loop.LocalWorkers.TakeResults): the statement looks for a
// work row to update only for a failure, and a result of work with an
// onComplete would find nothing to match and be taken for stale. Each
// result's Fn and Label are those of its completion, as the running row
// it frees is not read back. A batch of successes only, the common case,
// runs a leaner statement (recordLocalSuccesses).
func (s *Store) RecordLocalResultsOp(pool string, results []Result, out *LocalRecorded) Op {
	// Sized for every result at once: the loop records thousands per
	// iteration in a drain, and growing these by doubling was a third of
	// the bytes the process allocated there.
	out.Recorded = make([]Recorded, 0, len(results))
	out.Completions.Rows = make([]Completion, 0, len(results))
	out.Completions.running = make(map[int64]runningRow, len(results))
	// Scanned into through one dest slice per statement, not per row:
	// per-row variables whose addresses Scan takes, and Scan's variadic
	// slice, would each be a heap allocation per row.
	var (
		summary          bool
		rec              Recorded
		c                Completion
		succeeded, freed string
	)
	dest := []any{&summary, &rec.WorkID, &rec.Attempts, &rec.Status, &rec.Retry, &rec.OnComplete, &rec.Context,
		&c.Attempt, &c.Error, &c.RunMs, &succeeded, &freed}
	name, args := "recordLocalSuccesses", successArgs(pool, results)
	if args == nil {
		name, args = "recordLocalResults", resultArgs(pool, results)
	}
	preds, succs := handOvers(results)
	args = append(args, preds, succs)
	return s.op(name, func(r Row) error {
		rec, c = Recorded{}, Completion{}
		if err := r.Scan(dest...); err != nil {
			return err
		}
		if summary {
			return out.summarize(results, succeeded, freed)
		}
		out.Recorded = append(out.Recorded, rec)
		if !rec.Retry {
			c.WorkID, c.Status = rec.WorkID, rec.Status
			out.Completions.Rows = append(out.Completions.Rows, c)
		}
		return nil
	}, args...)
}

// handOver returns the CTE tr, which turns into running attempts the
// standbys that the query successors (a column successor) names, as results
// handed their slots to them (see Result.Successor). Both the loop's own
// recording of results and its completion phase, for results recorded
// outside it, hand over through it.
func handOver(successors string) string {
	return `tr AS (
    UPDATE {s}.running x
       SET standby = false, deadline = statement_timestamp() + x.timeout_ms * interval '1 millisecond'
     WHERE x.work_id IN (` + successors + `) AND x.standby AND x.pool = $1
    RETURNING x.work_id
)`
}

// fencedSuccessors returns the query for handOver of the successors that
// the (result, successor) pairs in the parameters preds and succs name
// (handOvers), for the results that passed the fence: one that fails it
// hands nothing over, as its slot was freed already.
func fencedSuccessors(preds, succs string) string {
	return `SELECT h.successor FROM unnest(` + preds + `::bigint[], ` + succs + `::bigint[]) AS h(work_id, successor)
         WHERE h.work_id IN (SELECT id FROM fenced)`
}

// handedOver is the term of freeSlots that keeps a slot handed over
// counted.
const handedOver = ` + (SELECT count(*) FROM tr)`

// handOvers returns the (result, successor) pairs of results that handed
// their slots over, as two arrays.
func handOvers(results []Result) (preds, succs []int64) {
	preds, succs = []int64{}, []int64{}
	for _, r := range results {
		if r.Successor != 0 {
			preds, succs = append(preds, r.WorkID), append(succs, r.Successor)
		}
	}
	return preds, succs
}

// localSummary returns the select list of the summary row that both
// statements of RecordLocalResultsOp end with, in the columns its scan
// reads: the ids that successes yields (one column), and those of the
// running rows freed (the CTE rn of freeSlots), each as a comma-separated
// list.
func localSummary(successes string) string {
	return `true, 0, 0, '', false, '', '', 0, '', 0,
       COALESCE((SELECT string_agg(id::text, ',') FROM (` + successes + `) s(id)), ''),
       COALESCE((SELECT string_agg(work_id::text, ',') FROM rn), '')`
}

// successArgs returns the parameters of recordLocalSuccesses, or nil when
// a result is not a success.
func successArgs(pool string, results []Result) []any {
	if slices.ContainsFunc(results, func(r Result) bool { return r.Status != "success" }) {
		return nil // before allocating: a mixed batch allocates resultArgs's arrays instead
	}
	ids, attempts := make([]int64, len(results)), make([]int32, len(results))
	for i, r := range results {
		ids[i], attempts[i] = r.WorkID, int32(r.Attempt)
	}
	return []any{pool, ids, attempts}
}

// summarize adds what recordLocalResults's summary row lists: the fenced
// successes, as recorded from the results sent, and the running rows
// freed.
func (out *LocalRecorded) summarize(results []Result, succeeded, freed string) error {
	byID := make(map[int64]*Result, len(results))
	for i := range results {
		byID[results[i].WorkID] = &results[i]
	}
	err := eachID(succeeded, func(id int64) error {
		res, ok := byID[id]
		if !ok {
			return fmt.Errorf("recorded success of work %d that was not sent", id)
		}
		out.Recorded = append(out.Recorded, Recorded{WorkID: id, Attempts: res.Attempt + 1, Status: res.Status})
		out.Completions.Rows = append(out.Completions.Rows, Completion{WorkID: id, Attempt: res.Attempt,
			Status: res.Status, Error: StorableText(res.Error), RunMs: res.RunMs})
		return nil
	})
	if err != nil {
		return err
	}
	return eachID(freed, func(id int64) error {
		res, ok := byID[id]
		if !ok {
			return fmt.Errorf("freed the slot of work %d that was not sent", id)
		}
		out.Completions.running[id] = runningRow{Fn: res.Fn, Label: res.Label}
		return nil
	})
}

// eachID calls fn with each id of a comma-separated list.
func eachID(list string, fn func(int64) error) error {
	for list != "" {
		item, rest, _ := strings.Cut(list, ",")
		id, err := strconv.ParseInt(item, 10, 64)
		if err != nil {
			return fmt.Errorf("id list: %w", err)
		}
		if err := fn(id); err != nil {
			return err
		}
		list = rest
	}
	return nil
}

// RecordResults runs RecordResultsOp on q.
func (s *Store) RecordResults(ctx context.Context, q Querier, pool string, results []Result, kickLock int64) ([]Recorded, error) {
	var out []Recorded
	if err := Run(ctx, q, s.RecordResultsOp(pool, results, kickLock, &out)); err != nil {
		return nil, err
	}
	return out, nil
}

// FinishDelete deletes finishing work whose onComplete committed in the same
// transaction: the terminal state.
func (s *Store) FinishDelete(ctx context.Context, q Querier, ids []int64) error {
	_, err := q.ExecContext(ctx, s.sql("finishDelete"), ids)
	return err
}

// FinishFailed records a failed onComplete attempt. After maxAttempts the
// row keeps its result and error but is no longer retried (gaveUp).
func (s *Store) FinishFailed(ctx context.Context, q Querier, workID int64, errText string, maxAttempts int, backoff time.Duration) (attempts int, gaveUp bool, err error) {
	err = q.QueryRowContext(ctx, s.sql("finishFailed"), workID, StorableText(errText), maxAttempts, backoff.Milliseconds()).Scan(&attempts, &gaveUp)
	return attempts, gaveUp, err
}

// Finishing is a work item waiting for its onComplete.
type Finishing struct {
	WorkID         int64
	Fn, Label      string
	Attempts       int
	OnComplete     string
	Context        string
	Result         string // {"status":..., "error":..., "value":...}
	FinishAttempts int
}

// ClaimFinishing locks up to limit due finishing items whose onComplete is
// one of handlers. The locks last until the transaction ends.
func (s *Store) ClaimFinishing(ctx context.Context, q Querier, pool string, handlers []string, limit int) ([]Finishing, error) {
	var out []Finishing
	err := Run(ctx, q, s.op("claimFinishing", func(r Row) error {
		var f Finishing
		if err := r.Scan(&f.WorkID, &f.Fn, &f.Label, &f.Attempts, &f.OnComplete, &f.Context, &f.Result, &f.FinishAttempts); err != nil {
			return err
		}
		out = append(out, f)
		return nil
	}, pool, handlers, limit))
	if err != nil {
		return nil, fmt.Errorf("claim finishing: %w", err)
	}
	return out, nil
}

// NextFinishing returns how long until the earliest finishing item of the
// given handlers is due (negative if overdue), and false if there is none.
func (s *Store) NextFinishing(ctx context.Context, q Querier, pool string, handlers []string) (time.Duration, bool, error) {
	var ms sql.NullFloat64
	if err := q.QueryRowContext(ctx, s.sql("nextFinishing"), pool, handlers).Scan(&ms); err != nil {
		return 0, false, fmt.Errorf("next finishing: %w", err)
	}
	if !ms.Valid {
		return 0, false, nil
	}
	return time.Duration(ms.Float64 * float64(time.Millisecond)), true, nil
}

// Release un-claims attempts a stopping worker gives up, so another process
// can claim them at once instead of after the lease expires.
func (s *Store) Release(ctx context.Context, q Querier, pool string, workerID int64, ids []int64) error {
	_, err := q.ExecContext(ctx, s.sql("release"), pool, workerID, ids)
	return err
}

// ReleaseStandbys gives the given standbys of workerID back to
// pending_start and returns the work ids it gave back.
func (s *Store) ReleaseStandbys(ctx context.Context, q Querier, pool string, workerID int64, ids []int64, kickLock int64) ([]int64, error) {
	var out []int64
	err := Run(ctx, q, s.op("releaseStandbys", scanIDs(&out), pool, workerID, ids, kickLock))
	return out, err
}

// CanceledAmong returns which of ids have been marked canceled.
func (s *Store) CanceledAmong(ctx context.Context, q Querier, ids []int64) ([]int64, error) {
	var out []int64
	err := Run(ctx, q, s.op("canceledAmong", scanIDs(&out), ids))
	return out, err
}
