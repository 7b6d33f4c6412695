package workpool_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/uptrace/bun"
	"github.com/uptrace/bun/dialect/pgdialect"

	"github.com/pgworkpool/pgworkpool/internal/pgtest"
	"github.com/pgworkpool/pgworkpool/internal/store"
	"github.com/pgworkpool/pgworkpool/migrations"
	"github.com/pgworkpool/pgworkpool/workpool"
)

// TestIdlePoolSendsNoQueries: a started pool (driver, workers, heartbeat,
// finisher) that has finished its work sends zero queries for 30 s. Every
// connection of the pool is tagged (the database/sql pool by its
// application_name, the LISTEN connection by the pool's channel name), and
// pg_stat_activity must show none of them starting a query in the window,
// and no new one. (Counting pg_stat_database transactions instead would
// also count autovacuum's.)
func TestIdlePoolSendsNoQueries(t *testing.T) {
	if testing.Short() {
		t.Skip("takes about 35 s")
	}
	t.Parallel()
	ctx := context.Background()
	url := pgtest.NewDatabase(t)
	cfg, err := pgx.ParseConfig(url)
	require.NoError(t, err)
	const appName = "pgworkpool idle test"
	cfg.RuntimeParams["application_name"] = appName
	db := bun.NewDB(stdlib.OpenDB(*cfg), pgdialect.New())
	t.Cleanup(func() { _ = db.Close() })
	_, err = migrations.Migrate(ctx, db)
	require.NoError(t, err)
	p, err := workpool.New(db, workpool.Config{MaxParallelism: 4, HeartbeatInterval: time.Second, Lease: 3 * time.Second,
		HealthcheckInterval: 500 * time.Millisecond, Logger: testLogger(t)})
	require.NoError(t, err)
	done := make(chan struct{}, 10)
	fn, err := workpool.Register(p, "f", func(ctx context.Context, n int) (int, error) {
		done <- struct{}{}
		return n, nil
	})
	require.NoError(t, err)
	require.NoError(t, p.Start(ctx))
	t.Cleanup(func() { _ = p.Stop(context.Background()) })
	for i := range 10 {
		_, err := p.Enqueue(ctx, fn, i)
		require.NoError(t, err)
	}
	for range 10 {
		<-done
	}
	waitFor(t, 10*time.Second, "the loop to go idle", func() bool {
		var state string
		_ = db.NewRaw("SELECT state FROM workpool.run_status").Scan(ctx, &state)
		return state == "idle"
	})
	meter := pgtest.OpenBun(t, pgtest.Shared(t).URL())
	channel := store.KeysFor(workpool.SchemaDefault, workpool.NameDefault).Channel
	type backend struct {
		PID        int       `bun:"pid"`
		QueryStart time.Time `bun:"query_start"`
	}
	ours := func() map[int]time.Time {
		var rows []backend
		require.NoError(t, meter.NewRaw(`SELECT pid, query_start FROM pg_stat_activity
			WHERE application_name IN (?, ?) AND query_start IS NOT NULL`, appName, channel).Scan(ctx, &rows))
		out := map[int]time.Time{}
		for _, r := range rows {
			out[r.PID] = r.QueryStart
		}
		return out
	}
	// Let the idle iteration's own statements finish.
	time.Sleep(time.Second)
	before := ours()
	require.NotEmpty(t, before, "the meter must see the pool's connections")
	time.Sleep(30 * time.Second)
	after := ours()
	assert.Equal(t, before, after, "an idle started pool sent queries (or opened connections) in 30 s")
}
