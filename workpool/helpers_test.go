package workpool_test

import (
	"context"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/uptrace/bun"

	"github.com/pgworkpool/pgworkpool/internal/pgtest"
	"github.com/pgworkpool/pgworkpool/migrations"
	"github.com/pgworkpool/pgworkpool/workpool"
)

func TestMain(m *testing.M) { pgtest.Main(m, pgtest.Options{}) }

// env is one test's database: a fresh schema with our tables and a table
// for onComplete handlers to write to.
type env struct {
	t      *testing.T
	db     *bun.DB
	schema string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	db, schema := pgtest.NewSchema(t)
	_, err := migrations.Migrate(context.Background(), db, migrations.WithSchema(schema))
	require.NoError(t, err)
	_, err = db.ExecContext(context.Background(), "CREATE TABLE "+schema+".completions "+
		"(work_id bigint PRIMARY KEY, status text NOT NULL, value text, error text, context text, attempts int)")
	require.NoError(t, err)
	return &env{t: t, db: db, schema: schema}
}

// pool creates a pool in the env's schema; Stop runs at cleanup.
func (e *env) pool(cfg workpool.Config) *workpool.Pool {
	e.t.Helper()
	cfg.Schema = e.schema
	if cfg.Logger == nil {
		cfg.Logger = testLogger(e.t)
	}
	p, err := workpool.New(e.db, cfg)
	require.NoError(e.t, err)
	e.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = p.Stop(ctx)
	})
	return p
}

func (e *env) count(query string, args ...any) int {
	e.t.Helper()
	var n int
	require.NoError(e.t, e.db.NewRaw(query, args...).Scan(context.Background(), &n))
	return n
}

// testLogger sends pool logs to the test log only when -v is given and
// PGWORKPOOL_TEST_LOGS is set, to keep failures readable.
func testLogger(t *testing.T) *slog.Logger {
	if os.Getenv("PGWORKPOOL_TEST_LOGS") == "" {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(b []byte) (int, error) {
	w.t.Log(string(b))
	return len(b), nil
}

// waitFor polls an external condition (rows in the database) until it holds
// or the deadline passes; database state has no signal to wait on.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
