package workpool_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgworkpool/pgworkpool/internal/store"
	"github.com/pgworkpool/pgworkpool/workpool"
)

// kickLockHolder holds the pool's kick lock exclusively on a connection of
// its own, so that every enqueue's insert waits for it inside its
// transaction: a way to keep commits in flight for as long as a test
// needs.
type kickLockHolder struct {
	e    *env
	conn *sql.Conn
	key  int64
}

func holdKickLock(t *testing.T, e *env, pool string) *kickLockHolder {
	t.Helper()
	conn, err := e.db.DB.Conn(context.Background())
	require.NoError(t, err)
	h := &kickLockHolder{e: e, conn: conn, key: store.KeysFor(e.schema, pool).KickLock}
	_, err = conn.ExecContext(context.Background(), "SELECT pg_advisory_lock($1)", h.key)
	require.NoError(t, err)
	t.Cleanup(func() { h.release(); _ = conn.Close() })
	return h
}

// waitingEnqueues counts the transactions waiting for the lock.
func (h *kickLockHolder) waitingEnqueues() int {
	return h.e.count("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "+
		"AND ((classid::bigint << 32) | objid::bigint) = ?", h.key)
}

func (h *kickLockHolder) release() {
	_, _ = h.conn.ExecContext(context.Background(), "SELECT pg_advisory_unlock_all()")
}

// newCombineEnv returns a pool named "combine" with a function "fn", one
// item enqueued, and the pool's kick lock held. The item makes the pool's
// rows exist before the lock is held: creating them takes no kick lock,
// but it must not be the statement a test blocks.
func newCombineEnv(t *testing.T) (*env, *workpool.Pool, *workpool.Func[num, int], *kickLockHolder) {
	t.Helper()
	e := newAPIEnv(t)
	p := e.pool(workpool.Config{Name: "combine"})
	fn := mustRegister(t, p, "fn", func(ctx context.Context, a num) (int, error) { return a.N, nil })
	enqueue(t, p, fn, num{N: -1})
	return e, p, fn, holdKickLock(t, e, "combine")
}

type enqueueOutcome struct {
	n   int
	id  workpool.WorkID
	err error
}

// enqueueAsync enqueues num{n} on a goroutine and reports on out.
func enqueueAsync(ctx context.Context, p *workpool.Pool, fn workpool.Handle, n int, out chan<- enqueueOutcome) {
	go func() {
		id, err := p.Enqueue(ctx, fn, num{N: n})
		out <- enqueueOutcome{n: n, id: id, err: err}
	}()
}

// fillCommits starts as many enqueues as may commit at once and waits
// until each waits for the held kick lock in its transaction; the next
// enqueue must queue.
func fillCommits(t *testing.T, p *workpool.Pool, fn workpool.Handle, h *kickLockHolder, out chan<- enqueueOutcome) {
	t.Helper()
	for i := range workpool.MaxCommitsInFlight {
		enqueueAsync(context.Background(), p, fn, 1000+i, out)
	}
	waitFor(t, 10*time.Second, "the first enqueues waiting for the kick lock", func() bool {
		return h.waitingEnqueues() == workpool.MaxCommitsInFlight
	})
}

// TestAPIConcurrentEnqueuesShareCommits: calls made while commits are in
// flight are written together afterwards, each with its own ID, function
// and arguments. Rows written by one transaction share their xmin.
func TestAPIConcurrentEnqueuesShareCommits(t *testing.T) {
	t.Parallel()
	e, p, fn, h := newCombineEnv(t)
	other := mustRegister(t, p, "other", func(ctx context.Context, a num) (int, error) { return a.N, nil })

	out := make(chan enqueueOutcome, 100)
	fillCommits(t, p, fn, h, out)
	const queued = 20
	for n := range queued {
		f := workpool.Handle(fn) // odd items with other options: a statement of their own
		if n%2 == 1 {
			f = other
		}
		enqueueAsync(context.Background(), p, f, n, out)
	}
	waitFor(t, 10*time.Second, "the later enqueues queued", func() bool { return workpool.QueuedEnqueues(p) == queued })
	assert.Equal(t, workpool.MaxCommitsInFlight, h.waitingEnqueues(), "queued calls send nothing")
	h.release()

	ids := map[workpool.WorkID]int{}
	for range queued + workpool.MaxCommitsInFlight {
		o := recv(t, out, 10*time.Second, "an enqueue's outcome")
		require.NoError(t, o.err)
		ids[o.id] = o.n
	}
	require.Len(t, ids, queued+workpool.MaxCommitsInFlight, "every call has its own ID")
	for id, n := range ids {
		assert.Equal(t, n, e.count("SELECT (args->>'N')::int FROM "+e.schema+".work WHERE id = ?", int64(id)),
			"work %d holds its own call's arguments", id)
		wantFn := "fn"
		if n%2 == 1 && n < queued {
			wantFn = "other"
		}
		assert.Equal(t, 1, e.count("SELECT count(*) FROM "+e.schema+".work WHERE id = ? AND fn_name = ?", int64(id), wantFn),
			"work %d is of its own call's function", id)
	}
	// The first commit to end hands the whole queue to one transaction.
	transactions := e.count("SELECT count(DISTINCT xmin::text) FROM " + e.schema + ".work WHERE (args->>'N')::int BETWEEN 0 AND 19")
	assert.Equal(t, 1, transactions, "the queued calls share one commit")
}

// TestAPIEnqueueCanceledWhileQueuedWritesNothing: a call whose context ends
// while it waits in the queue returns the context's error and is never
// written; the calls queued behind it are.
func TestAPIEnqueueCanceledWhileQueuedWritesNothing(t *testing.T) {
	t.Parallel()
	e, p, fn, h := newCombineEnv(t)

	out := make(chan enqueueOutcome, 10)
	fillCommits(t, p, fn, h, out)
	ctx, cancel := context.WithCancel(context.Background())
	canceled := make(chan enqueueOutcome, 1)
	enqueueAsync(ctx, p, fn, 7, canceled)
	waitFor(t, 10*time.Second, "the call queued", func() bool { return workpool.QueuedEnqueues(p) == 1 })
	cancel()
	o := recv(t, canceled, 10*time.Second, "the canceled call's outcome")
	require.ErrorIs(t, o.err, context.Canceled)
	assert.Zero(t, o.id)

	enqueueAsync(context.Background(), p, fn, 8, out)
	waitFor(t, 10*time.Second, "the next call queued", func() bool { return workpool.QueuedEnqueues(p) == 2 })
	h.release()
	for range workpool.MaxCommitsInFlight + 1 {
		require.NoError(t, recv(t, out, 10*time.Second, "an enqueue's outcome").err)
	}
	assert.Equal(t, 0, e.count("SELECT count(*) FROM "+e.schema+".work WHERE args->>'N' = '7'"), "the canceled call wrote nothing")
	assert.Equal(t, 1, e.count("SELECT count(*) FROM "+e.schema+".work WHERE args->>'N' = '8'"))
	assert.Equal(t, workpool.MaxCommitsInFlight+2, e.workCount())
}

// TestAPIEnqueueRefusedByDatabaseFailsOnlyItsCall: when Postgres refuses
// one call's rows in a shared commit, the others are written all the same
// and only that call gets the error.
func TestAPIEnqueueRefusedByDatabaseFailsOnlyItsCall(t *testing.T) {
	t.Parallel()
	e, p, fn, h := newCombineEnv(t)
	// A trigger of the application's that refuses one kind of row.
	e.exec(fmt.Sprintf(`CREATE FUNCTION %[1]s.refuse_13() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'thirteen refused'; END $$`, e.schema))
	e.exec(fmt.Sprintf(`CREATE TRIGGER refuse_13 BEFORE INSERT ON %[1]s.work FOR EACH ROW
WHEN (NEW.args->>'N' = '13') EXECUTE FUNCTION %[1]s.refuse_13()`, e.schema))

	out := make(chan enqueueOutcome, 20)
	fillCommits(t, p, fn, h, out)
	for _, n := range []int{11, 12, 13, 14, 15} {
		enqueueAsync(context.Background(), p, fn, n, out)
	}
	waitFor(t, 10*time.Second, "the calls queued", func() bool { return workpool.QueuedEnqueues(p) == 5 })
	h.release()
	for range workpool.MaxCommitsInFlight + 5 {
		o := recv(t, out, 10*time.Second, "an enqueue's outcome")
		if o.n != 13 {
			require.NoError(t, o.err, "call %d", o.n)
			continue
		}
		var pgErr *pgconn.PgError
		require.True(t, errors.As(o.err, &pgErr), "the database's error: %v", o.err)
		assert.Contains(t, pgErr.Message, "thirteen refused")
	}
	assert.Equal(t, 0, e.count("SELECT count(*) FROM "+e.schema+".work WHERE args->>'N' = '13'"))
	assert.Equal(t, 1+workpool.MaxCommitsInFlight+4, e.workCount())
	assert.Equal(t, 1+workpool.MaxCommitsInFlight+4, e.count("SELECT count(*) FROM "+e.schema+".pending_start"))
}
