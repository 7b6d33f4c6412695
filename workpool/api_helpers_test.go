package workpool_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/uptrace/bun"

	"github.com/pgworkpool/pgworkpool/workpool"
)

// Helpers shared by the api_*_test.go files.

// concurrency counts the handlers running at once and keeps the peak, for
// the tests of a concurrency limit. Handlers call enter when they begin
// and leave when they return.
type concurrency struct{ now, peak atomic.Int32 }

func (c *concurrency) enter() {
	n := c.now.Add(1)
	for {
		m := c.peak.Load()
		if n <= m || c.peak.CompareAndSwap(m, n) {
			return
		}
	}
}

func (c *concurrency) leave() { c.now.Add(-1) }

// newAPIEnv is newEnv plus a cleanup that runs after the test's pools have
// stopped and before the schema is dropped: it waits until no server
// backend is still executing a statement on the schema. Stop cancels an
// in-flight loop iteration by closing its connection (pgx sends the
// server's cancel request asynchronously, and one that arrives between two
// statements is lost), so the server may still run that statement after
// Stop returned, and DROP SCHEMA could deadlock with it.
func newAPIEnv(t *testing.T) *env {
	t.Helper()
	e := newEnv(t)
	t.Cleanup(e.settle)
	return e
}

func (e *env) settle() {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		var n int
		err := e.db.DB.QueryRowContext(context.Background(),
			"SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND state <> 'idle' "+
				"AND position($1 in query) > 0", e.schema).Scan(&n)
		if err != nil || n == 0 {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// num is the argument type of most test functions: N tells items apart.
type num struct{ N int }

// apiCompletion is a row of the env's completions table.
type apiCompletion struct {
	Status   string
	Value    string
	Error    string
	Context  string
	Attempts int
}

// apiRecorder returns an onComplete handler that writes each completion to
// the env's completions table in the terminal transaction. work_id is the
// primary key, so a second commit for the same item fails the handler.
func apiRecorder(schema string) func(ctx context.Context, tx bun.Tx, c workpool.Completion[string, int]) error {
	return func(ctx context.Context, tx bun.Tx, c workpool.Completion[string, int]) error {
		_, err := tx.Tx.ExecContext(ctx, "INSERT INTO "+schema+".completions (work_id, status, value, error, context, attempts) "+
			"VALUES ($1, $2, $3, $4, $5, $6)",
			int64(c.WorkID), string(c.Status), fmt.Sprint(c.Value), c.Error, c.Context, c.Attempts)
		return err
	}
}

// completion reads the completions row of id; ok is false if there is none.
func (e *env) completion(id workpool.WorkID) (c apiCompletion, ok bool) {
	e.t.Helper()
	err := e.db.DB.QueryRowContext(context.Background(),
		"SELECT status, COALESCE(value, ''), COALESCE(error, ''), COALESCE(context, ''), COALESCE(attempts, -1) FROM "+
			e.schema+".completions WHERE work_id = $1", int64(id)).
		Scan(&c.Status, &c.Value, &c.Error, &c.Context, &c.Attempts)
	if errors.Is(err, sql.ErrNoRows) {
		return c, false
	}
	require.NoError(e.t, err)
	return c, true
}

// waitCompletion waits for the completions row of id and returns it.
func (e *env) waitCompletion(id workpool.WorkID, timeout time.Duration) apiCompletion {
	e.t.Helper()
	var c apiCompletion
	waitFor(e.t, timeout, fmt.Sprintf("the completion of work %d", id), func() bool {
		var ok bool
		c, ok = e.completion(id)
		return ok
	})
	return c
}

// exec runs a statement on the env's database.
func (e *env) exec(query string, args ...any) {
	e.t.Helper()
	_, err := e.db.DB.ExecContext(context.Background(), query, args...)
	require.NoError(e.t, err)
}

// completionsCount counts the rows of the completions table.
func (e *env) completionsCount() int {
	return e.count("SELECT count(*) FROM " + e.schema + ".completions")
}

// workCount counts the work rows of the schema.
func (e *env) workCount() int {
	return e.count("SELECT count(*) FROM " + e.schema + ".work")
}

// mustRegister registers fn or fails the test.
func mustRegister[A, R any](t *testing.T, p *workpool.Pool, name string, fn func(context.Context, A) (R, error)) *workpool.Func[A, R] {
	t.Helper()
	f, err := workpool.Register(p, name, fn)
	require.NoError(t, err)
	return f
}

// mustOnComplete registers the completions-table recorder under name.
func mustOnComplete(t *testing.T, e *env, p *workpool.Pool, name string) *workpool.OnCompleteHandler[string, int] {
	t.Helper()
	h, err := workpool.RegisterOnComplete(p, name, apiRecorder(e.schema))
	require.NoError(t, err)
	return h
}

// start starts p or fails the test.
func start(t *testing.T, p *workpool.Pool) {
	t.Helper()
	require.NoError(t, p.Start(context.Background()))
}

// enqueue enqueues one item or fails the test.
func enqueue(t *testing.T, p *workpool.Pool, fn workpool.Handle, args any, opts ...workpool.Option) workpool.WorkID {
	t.Helper()
	id, err := p.Enqueue(context.Background(), fn, args, opts...)
	require.NoError(t, err)
	return id
}

// recv waits for a value on ch, failing the test after timeout. It is the
// Go-signal counterpart of waitFor: handlers report through channels.
func recv[T any](t *testing.T, ch <-chan T, timeout time.Duration, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(timeout):
		t.Fatalf("timed out after %v waiting for %s", timeout, what)
		panic("unreachable")
	}
}

// stayFor checks that cond keeps holding for d (polling the database), for
// assertions that something does NOT happen.
func stayFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if !cond() {
			t.Fatalf("%s stopped holding", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// logCapture records a pool's log lines for assertions.
type logCapture struct {
	mu   sync.Mutex
	recs []capturedLine
}

type capturedLine struct {
	Level slog.Level
	Msg   string
	Attrs map[string]string
}

func (c *logCapture) logger() *slog.Logger { return slog.New(&captureHandler{c: c}) }

// lines returns the captured lines whose message is msg.
func (c *logCapture) lines(msg string) []capturedLine {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []capturedLine
	for _, r := range c.recs {
		if r.Msg == msg {
			out = append(out, r)
		}
	}
	return out
}

// events returns the captured lines of an event about work id.
func (c *logCapture) events(event string, id workpool.WorkID) []capturedLine {
	var out []capturedLine
	for _, l := range c.lines(event) {
		if l.Attrs["work_id"] == id.String() {
			out = append(out, l)
		}
	}
	return out
}

type captureHandler struct {
	c     *logCapture
	attrs []slog.Attr
}

func (h *captureHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h *captureHandler) Handle(_ context.Context, r slog.Record) error {
	line := capturedLine{Level: r.Level, Msg: r.Message, Attrs: map[string]string{}}
	for _, a := range h.attrs {
		line.Attrs[a.Key] = a.Value.String()
	}
	r.Attrs(func(a slog.Attr) bool {
		line.Attrs[a.Key] = a.Value.String()
		return true
	})
	h.c.mu.Lock()
	h.c.recs = append(h.c.recs, line)
	h.c.mu.Unlock()
	return nil
}

func (h *captureHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &captureHandler{c: h.c, attrs: append(append([]slog.Attr(nil), h.attrs...), attrs...)}
}

func (h *captureHandler) WithGroup(string) slog.Handler { return h }

// forceRecovery makes the pool's next loop iteration run the recovery pass
// (normally at most once a minute while anything runs) by moving its last
// recovery far into the past. The new generation, as if another process
// had led meanwhile, makes the loop read the state rather than trust the
// copy it wrote last. The caller then kicks the loop.
func (e *env) forceRecovery(pool string) {
	e.t.Helper()
	e.exec("UPDATE "+e.schema+".internal_state SET last_recovery = 0, generation = generation + 1 WHERE pool = $1", pool)
}
