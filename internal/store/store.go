// Package store holds every SQL statement of pgworkpool, so that the
// statements touching a table can be read, reviewed and changed in one place.
//
// Statements are written once with a {s} placeholder for the schema and
// rendered per Store. They go through database/sql with real parameters
// (pgx encodes slices as Postgres arrays), never through bun's client-side
// interpolation, and batch work with unnest() so that one round trip carries
// thousands of rows.
package store

import (
	"context"
	"database/sql"
	"encoding/hex"
	"fmt"
	"hash/fnv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
)

// Querier is what every statement runs on: *sql.DB, *sql.Tx and *sql.Conn
// all satisfy it, so one function serves both our own transactions and the
// caller's.
type Querier interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// NowSegment is the SQL expression for the current 100 ms segment on the
// database clock. Every process uses the server's clock so that segments
// written by different hosts compare correctly.
const NowSegment = `(floor(extract(epoch FROM statement_timestamp()) * 10))::bigint`

// Store renders and runs the statements for one schema.
type Store struct {
	schema string
	q      map[string]string
}

// New returns a Store for an already validated schema name.
func New(schema string) *Store {
	s := &Store{schema: schema, q: make(map[string]string, len(statements))}
	r := strings.NewReplacer("{s}", pgx.Identifier{schema}.Sanitize(), "{now}", NowSegment)
	for name, text := range statements {
		s.q[name] = r.Replace(text)
	}
	return s
}

// Schema returns the schema the store's statements address.
func (s *Store) Schema() string { return s.schema }

// sql returns a rendered statement; a typo in a name is a programming error.
func (s *Store) sql(name string) string {
	q, ok := s.q[name]
	if !ok {
		panic("store: unknown statement " + name)
	}
	return q
}

// statements collects every statement by name; each file of this package
// registers the statements of its operation in an init function.
var statements = map[string]string{}

func register(name, text string) {
	if _, dup := statements[name]; dup {
		panic("store: duplicate statement " + name)
	}
	statements[name] = text
}

// Keys are the names derived from (schema, pool) that processes of one pool
// share: the NOTIFY channel and the advisory lock keys.
type Keys struct {
	// Channel carries every notification of the pool: kicks for the loop,
	// and start, cancel, finish and config signals for workers.
	Channel string
	// KickLock is taken shared by producers and exclusively (try) by the
	// loop when it goes idle; see the loop package for the argument.
	KickLock int64
	// LeaderLock is a session lock held by the one process that runs the
	// pool's loop.
	LeaderLock int64
}

// KeysFor derives the keys of a pool. Hashing keeps channel names within
// Postgres's 63-byte identifier limit whatever the pool is called.
func KeysFor(schema, pool string) Keys {
	return Keys{
		Channel:    "pgworkpool_" + hex.EncodeToString(hash("channel", schema, pool)),
		KickLock:   hashInt("kick", schema, pool),
		LeaderLock: hashInt("leader", schema, pool),
	}
}

func hash(parts ...string) []byte {
	h := fnv.New64a()
	for _, p := range parts {
		h.Write([]byte(p))
		h.Write([]byte{0})
	}
	return h.Sum(nil)
}

func hashInt(parts ...string) int64 {
	b := hash(parts...)
	var v uint64
	for _, c := range b {
		v = v<<8 | uint64(c)
	}
	return int64(v)
}

// Notification payloads. One NOTIFY carries a set of these letters so that a
// loop iteration that starts, cancels and finishes work sends one message.
// A kick may carry its origin as decimal digits (see KickSource.Origin).
const (
	SignalKick   = 'k' // the loop has something to do
	SignalStart  = 's' // running rows are waiting to be claimed
	SignalCancel = 'c' // some claimed work was canceled
	SignalFinish = 'f' // some work waits for its onComplete
	SignalConfig = 'g' // max_parallelism or log_level changed
)

// ParseNotification splits a notification payload into whether it kicks
// the loop, the kick's origin ("" for none) and the worker signals it
// carries (the other letters).
func ParseNotification(payload string) (kick bool, origin, signals string) {
	var o, sig []byte
	for i := 0; i < len(payload); i++ {
		switch c := payload[i]; {
		case c == SignalKick:
			kick = true
		case c >= '0' && c <= '9':
			o = append(o, c)
		default:
			sig = append(sig, c)
		}
	}
	return kick, string(o), string(sig)
}

// Operations ------------------------------------------------------------

// Row is what a statement's reader scans: both *sql.Rows and pgx.Rows.
type Row interface {
	Scan(dest ...any) error
}

// Op is one statement, its arguments and the code that reads its rows, so
// that the same statement runs either through database/sql (one round trip
// each, inside a caller's transaction) or queued in a pipeline.
type Op struct {
	name string
	sql  string
	args []any
	scan func(Row) error // nil: rows are discarded
}

// Raw returns an Op for literal SQL, such as "begin" or "commit".
func Raw(sql string) Op { return Op{name: sql, sql: sql} }

// PlanSettings makes the rest of the current transaction plan our
// statements for tables that churn: generic plans (our statements take
// arrays, for which Postgres would otherwise plan every execution afresh,
// at several times the cost of executing them), and no sequential or
// bitmap scans. A generic plan is made once per connection, while the
// queue tables may be nearly empty; a sequential scan chosen then would
// later read every dead row the table gathered between vacuums, at each
// execution, and a bitmap scan revisits dead index entries that a plain
// index scan marks and skips (measured: deleting 16 running rows cost
// 0.5 ms through a bitmap scan over 16,000 dead entries). And no JIT
// compilation, which costs milliseconds at every execution of a cached
// plan and pays off only for statements that run for seconds. The
// statements are written to plan well this way and whatever the tables'
// statistics say (index probes through LATERAL ... LIMIT 1 or probe,
// deletes by ctid, min through ORDER BY ... LIMIT 1). Only for our own
// transactions: in a caller's it would change the caller's plans too.
func PlanSettings() Op {
	return Op{name: "plan settings", sql: "SELECT " + planSettings}
}

// planSettings is the select list that applies PlanSettings.
const planSettings = `set_config('plan_cache_mode', 'force_generic_plan', true)
    || set_config('enable_seqscan', 'off', true) || set_config('enable_bitmapscan', 'off', true)
    || set_config('jit', 'off', true)`

// probe returns the join condition "col matches the outer row's v", for a
// column with a btree index, written as a range (col >= v AND col <= v)
// rather than as an equality. An equality lets the planner hash or merge a
// whole scan of the table instead of probing it once per outer row, and it
// does so when the table's statistics are stale: a queue table that a
// vacuum found nearly empty but left large, refilled by a burst, is
// estimated at a row or two. Measured on such a table of 50,000 rows, the
// loop's results statement for 1,000 results hashed all of work, and a
// test copy of it (work outer, results inner) took 8.8 s instead of 2 ms.
// A range can be neither hashed nor merged and gives no sort order to
// exploit, so the per-row index probe is the only plan left that does not
// read the whole table, whatever the statistics say; it reads the same
// single entry. (Its row estimate is a range's, a fraction of the table
// rather than one row, which is one reason PlanSettings turns JIT off.)
func probe(col, v string) string {
	return "(" + col + " >= " + v + " AND " + col + " <= " + v + ")"
}

// cancelPending is true while the work whose id workID names has a cancel
// in pending_cancelation that no iteration has taken yet. Three statements
// ask it (a retry, a start and a second cancel of the same work), so it is
// written once here; its alias is one no statement uses, so that workID
// always refers to the outer query.
func cancelPending(workID string) string {
	return "EXISTS (SELECT 1 FROM {s}.pending_cancelation pcx WHERE " + probe("pcx.work_id", workID) + ")"
}

func (s *Store) op(name string, scan func(Row) error, args ...any) Op {
	return Op{name: name, sql: s.sql(name), args: args, scan: scan}
}

// Run executes ops one by one on q.
func Run(ctx context.Context, q Querier, ops ...Op) error {
	for _, op := range ops {
		if err := runOne(ctx, q, op); err != nil {
			return fmt.Errorf("%s: %w", op.name, err)
		}
	}
	return nil
}

func runOne(ctx context.Context, q Querier, op Op) error {
	rows, err := q.QueryContext(ctx, op.sql, op.args...)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		if op.scan != nil {
			if err := op.scan(rows); err != nil {
				return err
			}
		}
	}
	return rows.Err()
}

// Pipeline executes ops in order on the pgx connection behind conn, in one
// round trip. Without a "begin" among them they run in one implicit
// transaction; after a "begin" (in this or an earlier pipeline on the same
// connection) they run in that transaction. It returns the first error; the
// statements after a failed one fail too, and the caller rolls back.
func Pipeline(ctx context.Context, conn *sql.Conn, ops ...Op) error {
	_, err := PipelineAt(ctx, conn, ops...)
	return err
}

// PipelineAt is Pipeline that also says which op failed first: its index
// in ops, len(ops) when none did, and 0 when the batch failed as a whole
// (nothing is then known to have run). A caller that put a transaction of
// its own ahead of others in one round trip learns from it whether that
// transaction's COMMIT ran.
func PipelineAt(ctx context.Context, conn *sql.Conn, ops ...Op) (int, error) {
	failedAt := -1
	err := conn.Raw(func(dc any) error {
		sc, ok := dc.(*stdlib.Conn)
		if !ok {
			return fmt.Errorf("pipeline: driver connection is %T, want pgx stdlib", dc)
		}
		var b pgx.Batch
		for _, op := range ops {
			b.Queue(op.sql, op.args...)
		}
		br := sc.Conn().SendBatch(ctx, &b)
		var first error
		for i, op := range ops {
			if err := readBatch(br, op); err != nil && first == nil {
				first, failedAt = fmt.Errorf("%s: %w", op.name, err), i
			}
		}
		if err := br.Close(); err != nil && first == nil {
			first = err
		}
		return first
	})
	switch {
	case err == nil:
		failedAt = len(ops)
	case failedAt < 0:
		failedAt = 0
	}
	return failedAt, err
}

func readBatch(br pgx.BatchResults, op Op) error {
	rows, err := br.Query()
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		if op.scan != nil {
			if err := op.scan(rows); err != nil {
				return err
			}
		}
	}
	return rows.Err()
}

// scanIDs appends each row's single bigint to out.
func scanIDs(out *[]int64) func(Row) error {
	return func(r Row) error {
		var id int64
		if err := r.Scan(&id); err != nil {
			return err
		}
		*out = append(*out, id)
		return nil
	}
}
