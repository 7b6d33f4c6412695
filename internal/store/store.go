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
	"hash/fnv"
	"strings"

	"github.com/jackc/pgx/v5"
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
const (
	SignalKick   = 'k' // the loop has something to do
	SignalStart  = 's' // running rows are waiting to be claimed
	SignalCancel = 'c' // some claimed work was canceled
	SignalFinish = 'f' // some work waits for its onComplete
	SignalConfig = 'g' // max_parallelism or log_level changed
)

// Scan helpers ---------------------------------------------------------------

// collect runs a query and scans every row with scan.
func collect(ctx context.Context, q Querier, query string, args []any, scan func(*sql.Rows) error) error {
	rows, err := q.QueryContext(ctx, query, args...)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		if err := scan(rows); err != nil {
			return err
		}
	}
	return rows.Err()
}
