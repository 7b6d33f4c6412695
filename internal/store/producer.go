package store

import (
	"context"
	"database/sql"
	"fmt"
	"time"
)

// Statements run by producers: enqueue, cancel, the kick, status and config.
// They run inside the caller's transaction when there is one, so they only
// insert and, on a transition, update run_status: never a lock a long caller
// transaction could hold against everyone (the advisory lock they take is
// shared and conflicts only with the loop's try-lock).

func init() {
	register("ensurePool", `
WITH s AS (INSERT INTO {s}.internal_state (pool) VALUES ($1) ON CONFLICT DO NOTHING),
     r AS (INSERT INTO {s}.run_status (pool) VALUES ($1) ON CONFLICT DO NOTHING)
INSERT INTO {s}.config (pool, max_parallelism) VALUES ($1, $2) ON CONFLICT DO NOTHING`)

	// Ids are drawn before the insert so that the returned order matches the
	// input order (INSERT ... RETURNING promises no order).
	register("insertWork", `
WITH a AS (
    SELECT nextval('{s}.work_id_seq') AS id, t.label, t.args, t.ctx, t.ord
    FROM unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY AS t(label, args, ctx, ord)
), seg AS (
    -- Due no earlier than asked: a delay rounds up to the next segment
    -- boundary after now + delay, while undelayed work is due at once.
    SELECT GREATEST($4::bigint, CASE WHEN $5::bigint > 0
               THEN ceil((extract(epoch FROM statement_timestamp()) * 1000 + $5::bigint) / 100)::bigint
               ELSE {now} END) AS segment
), w AS (
    INSERT INTO {s}.work (id, pool, fn_name, label, args, max_attempts, initial_backoff_ms,
                          backoff_base, timeout_ms, on_complete, on_complete_context)
    SELECT a.id, $6, $7, a.label, a.args::jsonb, $8, $9, $10, $11, $12, NULLIF(a.ctx, '')::jsonb FROM a
    RETURNING id, label, ctid
), ps AS (
    INSERT INTO {s}.pending_start (work_id, pool, segment, fn_name, label, attempt, timeout_ms, work_ctid)
    SELECT w.id, $6, seg.segment, $7, w.label, 0, $11, w.ctid FROM w, seg
), lk AS (
    SELECT pg_advisory_xact_lock_shared($13) AS locked
)
SELECT a.id, seg.segment FROM a, seg, lk ORDER BY a.ord`)

	// The kick: wake the loop if it is idle, or scheduled later than the new
	// row is due, by a NOTIFY delivered at commit. It only reads run_status:
	// writing it (as Convex's kick does) would hold the row locked until the
	// caller's transaction ends and block every other producer and the loop
	// meanwhile; the loop marks itself running when it wakes. It must run in
	// a statement after the one that inserted the row and took the shared
	// lock, so that its snapshot is taken after the lock was granted. In
	// REPEATABLE READ or SERIALIZABLE the snapshot is older than the lock,
	// so there it always notifies.
	register("kick", `
SELECT pg_notify($4, 'k' || $5) FROM {s}.run_status
 WHERE pool = $1
   AND (current_setting('transaction_isolation') <> 'read committed'
        OR state = 'idle'
        OR (state = 'scheduled' AND segment > GREATEST($2::bigint, {now}) AND NOT ($3 AND saturated) AND NOT $6))`)

	register("insertCancelations", `
WITH c AS (
    INSERT INTO {s}.pending_cancelation (pool, segment, work_id)
    SELECT $1, {now}, w.id FROM {s}.work w
     WHERE w.id = ANY($2::bigint[]) AND w.pool = $1 AND NOT w.canceled AND w.result IS NULL
       AND NOT `+cancelPending("w.id")+`
    RETURNING work_id
), lk AS (
    SELECT pg_advisory_xact_lock_shared($3) AS locked
)
SELECT c.work_id FROM c, lk`)

	register("workPage", `
SELECT id FROM {s}.work WHERE pool = $1 AND id > $2 AND id <= $3 ORDER BY id LIMIT $4`)

	register("lastWorkID", `
SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END FROM {s}.work_id_seq`)

	// A missing row is "finished" only if the id was issued and no other
	// pool owns it; an id of another pool's live work is not found.
	register("status", `
SELECT i.id, w.id IS NOT NULL, COALESCE(w.attempts, 0), COALESCE(w.result IS NOT NULL, false),
       EXISTS (SELECT 1 FROM {s}.pending_start p WHERE `+probe("p.work_id", "i.id")+`),
       EXISTS (SELECT 1 FROM {s}.pending_completion c WHERE `+probe("c.work_id", "i.id")+` AND c.retry),
       i.id > 0 AND i.id <= (SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END
                               FROM {s}.work_id_seq)
                AND NOT EXISTS (SELECT 1 FROM {s}.work o WHERE `+probe("o.id", "i.id")+` AND o.pool <> $1)
  FROM unnest($2::bigint[]) WITH ORDINALITY AS i(id, ord)
  LEFT JOIN {s}.work w ON `+probe("w.id", "i.id")+` AND w.pool = $1
 ORDER BY i.ord`)

	register("setMaxParallelism", `
WITH old AS (SELECT max_parallelism FROM {s}.config WHERE pool = $1 FOR UPDATE)
INSERT INTO {s}.config (pool, max_parallelism) VALUES ($1, $2)
ON CONFLICT (pool) DO UPDATE SET max_parallelism = EXCLUDED.max_parallelism, updated_at = now()
RETURNING (SELECT max_parallelism FROM old)`)

	register("setLogLevel", `
INSERT INTO {s}.config (pool, max_parallelism, log_level) VALUES ($1, $2, $3)
ON CONFLICT (pool) DO UPDATE SET log_level = EXCLUDED.log_level, updated_at = now()
RETURNING updated_at`)

	register("readConfig", `SELECT max_parallelism, log_level, updated_at FROM {s}.config WHERE pool = $1`)

	register("notify", `SELECT pg_notify($1, $2)`)
}

// EnsurePool creates the pool's singleton rows if they are missing.
// maxParallelism only applies to a new pool.
func (s *Store) EnsurePool(ctx context.Context, q Querier, pool string, maxParallelism int) error {
	_, err := q.ExecContext(ctx, s.sql("ensurePool"), pool, maxParallelism)
	return err
}

// NewWork describes items of one function enqueued with the same options.
type NewWork struct {
	WorkOptions
	Labels   []string
	Args     []string // JSON texts
	Contexts []string // JSON texts, "" for none
}

// WorkOptions is what items written by one insert statement share. It is
// comparable, so that enqueues with equal options can share a statement.
type WorkOptions struct {
	Pool, Fn         string
	MaxAttempts      int
	InitialBackoffMs int64
	BackoffBase      float64
	TimeoutMs        int64
	OnComplete       string // "" for none
	// RunAtSegment is the earliest segment to start (0 for none); the item
	// starts at the later of it and the first segment boundary after now +
	// DelayMs.
	RunAtSegment int64
	DelayMs      int64
}

// Chunks splits w into parts of at most n items, in order, so that no
// statement carries an unbounded array.
func (w NewWork) Chunks(n int) []NewWork {
	var out []NewWork
	for start := 0; start < len(w.Args); start += n {
		end := min(start+n, len(w.Args))
		c := w
		c.Labels, c.Args, c.Contexts = w.Labels[start:end], w.Args[start:end], w.Contexts[start:end]
		out = append(out, c)
	}
	return out
}

// Inserted receives what InsertWorkOp returned.
type Inserted struct {
	IDs     []int64 // in input order
	Segment int64   // the segment the items become due
}

// InsertWorkOp inserts work rows and their pending_start rows and takes the
// pool's shared kick lock.
func (s *Store) InsertWorkOp(w NewWork, kickLock int64, out *Inserted) Op {
	var onComplete sql.NullString
	if w.OnComplete != "" {
		onComplete = sql.NullString{String: w.OnComplete, Valid: true}
	}
	return s.op("insertWork", func(r Row) error {
		var id int64
		if err := r.Scan(&id, &out.Segment); err != nil {
			return err
		}
		out.IDs = append(out.IDs, id)
		return nil
	}, w.Labels, w.Args, w.Contexts, w.RunAtSegment, w.DelayMs,
		w.Pool, w.Fn, w.MaxAttempts, w.InitialBackoffMs, w.BackoffBase, w.TimeoutMs, onComplete,
		kickLock)
}

// InsertWork runs InsertWorkOp on q and returns the ids in input order and
// the segment the items become due.
func (s *Store) InsertWork(ctx context.Context, q Querier, w NewWork, kickLock int64) ([]int64, int64, error) {
	var out Inserted
	if err := Run(ctx, q, s.InsertWorkOp(w, kickLock, &out)); err != nil {
		return nil, 0, err
	}
	return out.IDs, out.Segment, nil
}

// KickSource says what a producer added, which decides whether a scheduled
// loop must be woken early.
type KickSource struct {
	// Due is the segment from which the new row is actionable; 0 means now.
	Due int64
	// StartsOnly is true when the row can only start work (an enqueue): a
	// saturated loop could not act on it, so it is not woken.
	StartsOnly bool
	// Origin, when not empty, is the origin (decimal digits) of the
	// driver that the producer wakes directly once its transaction has
	// ended, whether or not the commit succeeded: that driver ignores the
	// notification while it leads (loop.DriverConfig.Origin), which would
	// otherwise cost it a second iteration right after the first. Leave it
	// empty when the caller commits (EnqueueTx).
	Origin string
	// Leading says the producer's process leads the loop and wakes its
	// driver after the commit (Origin is set): then only an idle loop is
	// notified, for the followers, which stop checking on the leader while
	// the loop is idle.
	Leading bool
}

// KickOp wakes the loop if the producer's new row needs it, setting
// *kicked when it sent a notification. It must follow the statement that
// inserted the row.
func (s *Store) KickOp(pool string, keys Keys, src KickSource, kicked *bool) Op {
	return s.op("kick", func(Row) error { *kicked = true; return nil }, pool, src.Due, src.StartsOnly, keys.Channel, src.Origin, src.Leading)
}

// Kick runs KickOp on q and reports whether it sent a notification.
func (s *Store) Kick(ctx context.Context, q Querier, pool string, keys Keys, src KickSource) (bool, error) {
	kicked := false
	if err := Run(ctx, q, s.KickOp(pool, keys, src, &kicked)); err != nil {
		return false, err
	}
	return kicked, nil
}

// InsertCancelations records cancel requests for the given work ids of the
// pool, skipping ids that are unknown, finished, already canceled or already
// being canceled. It returns the ids it recorded.
func (s *Store) InsertCancelations(ctx context.Context, q Querier, pool string, ids []int64, kickLock int64) ([]int64, error) {
	var out []int64
	err := Run(ctx, q, s.op("insertCancelations", scanIDs(&out), pool, ids, kickLock))
	return out, err
}

// WorkPage returns up to limit ids of the pool's work in (after, upTo], in
// id order, for paging through everything enqueued before a point in time.
func (s *Store) WorkPage(ctx context.Context, q Querier, pool string, after, upTo int64, limit int) ([]int64, error) {
	var out []int64
	err := Run(ctx, q, s.op("workPage", scanIDs(&out), pool, after, upTo, limit))
	return out, err
}

// LastWorkID returns the highest work id ever handed out (by any pool of the
// schema); ids above it were never issued.
func (s *Store) LastWorkID(ctx context.Context, q Querier) (int64, error) {
	var id int64
	err := q.QueryRowContext(ctx, s.sql("lastWorkID")).Scan(&id)
	return id, err
}

// WorkStatus is what the database knows about one work id.
type WorkStatus struct {
	ID        int64
	Exists    bool // a work row of this pool exists
	Attempts  int
	Finishing bool // outcome decided, onComplete not yet committed
	Pending   bool // waiting to start (first time or retry)
	Retrying  bool // failed, about to be rescheduled by the loop
	Issued    bool // handed out by the sequence, and not another pool's live work
}

// Status looks up the given ids of a pool, in input order.
func (s *Store) Status(ctx context.Context, q Querier, pool string, ids []int64) ([]WorkStatus, error) {
	out := make([]WorkStatus, 0, len(ids))
	err := Run(ctx, q, s.op("status", func(r Row) error {
		var st WorkStatus
		if err := r.Scan(&st.ID, &st.Exists, &st.Attempts, &st.Finishing, &st.Pending, &st.Retrying, &st.Issued); err != nil {
			return err
		}
		out = append(out, st)
		return nil
	}, pool, ids))
	if err != nil {
		return nil, fmt.Errorf("status: %w", err)
	}
	return out, nil
}

// SetMaxParallelism stores a new limit and returns the previous one (-1 if
// the pool had no config row).
func (s *Store) SetMaxParallelism(ctx context.Context, q Querier, pool string, n int) (int, error) {
	var old sql.NullInt64
	if err := q.QueryRowContext(ctx, s.sql("setMaxParallelism"), pool, n).Scan(&old); err != nil {
		return 0, fmt.Errorf("set max parallelism: %w", err)
	}
	if !old.Valid {
		return -1, nil
	}
	return int(old.Int64), nil
}

// SetLogLevel stores the pool's log level and returns the version (update
// time) it was stored at. maxParallelism is only used if the pool has no
// config row yet.
func (s *Store) SetLogLevel(ctx context.Context, q Querier, pool string, level string, maxParallelism int) (time.Time, error) {
	var version time.Time
	err := q.QueryRowContext(ctx, s.sql("setLogLevel"), pool, maxParallelism, level).Scan(&version)
	return version, err
}

// Config is a pool's runtime configuration.
type Config struct {
	MaxParallelism int
	LogLevel       string
	Version        time.Time // when it was last updated
}

// ReadConfig returns the pool's runtime configuration.
func (s *Store) ReadConfig(ctx context.Context, q Querier, pool string) (Config, error) {
	var c Config
	err := q.QueryRowContext(ctx, s.sql("readConfig"), pool).Scan(&c.MaxParallelism, &c.LogLevel, &c.Version)
	return c, err
}

// Notify sends a notification on a channel (delivered at commit when q is a
// transaction).
func (s *Store) Notify(ctx context.Context, q Querier, channel, payload string) error {
	_, err := q.ExecContext(ctx, s.sql("notify"), channel, payload)
	return err
}
