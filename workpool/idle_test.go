package workpool_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgworkpool/pgworkpool/internal/pgtest"
	"github.com/pgworkpool/pgworkpool/migrations"
	"github.com/pgworkpool/pgworkpool/workpool"
)

// TestIdlePoolSendsNoQueries: a started pool (driver, workers, heartbeat,
// finisher) that has finished its work sends zero queries. It runs on a
// database of its own and counts that database's transactions from another
// database, so the measurement does not count itself.
func TestIdlePoolSendsNoQueries(t *testing.T) {
	if testing.Short() {
		t.Skip("takes about 45 s")
	}
	t.Parallel()
	ctx := context.Background()
	url := pgtest.NewDatabase(t)
	db := pgtest.OpenBun(t, url)
	_, err := migrations.Migrate(ctx, db)
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
	counter := pgtest.Shared(t)
	meter := pgtest.OpenBun(t, counter.URL())
	var dbName string
	require.NoError(t, db.NewRaw("SELECT current_database()").Scan(ctx, &dbName))
	waitFor(t, 10*time.Second, "the loop to go idle", func() bool {
		var state string
		_ = db.NewRaw("SELECT state FROM workpool.run_status").Scan(ctx, &state)
		return state == "idle"
	})
	// Backends report their statistics within 10 s of going idle; wait for
	// that before the first reading.
	time.Sleep(12 * time.Second)
	xacts := func() int64 {
		var n int64
		require.NoError(t, meter.NewRaw("SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = ?", dbName).Scan(ctx, &n))
		return n
	}
	before := xacts()
	require.Positive(t, before, "the meter must see the pool's earlier transactions")
	time.Sleep(30 * time.Second)
	after := xacts()
	assert.Equal(t, before, after, "an idle started pool sent %d transactions in 30 s", after-before)
}
