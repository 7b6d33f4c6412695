package workpool_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgworkpool/pgworkpool/workpool"
)

// TestEnqueueTxOpenTransactionBlocksNoOne: a caller transaction that stays
// open after EnqueueTx blocks neither other producers nor the loop. (The
// kick used to update run_status inside the caller's transaction and held
// that row locked until the caller ended.)
func TestEnqueueTxOpenTransactionBlocksNoOne(t *testing.T) {
	t.Parallel()
	e := newAPIEnv(t)
	p := e.pool(workpool.Config{MaxParallelism: 2})
	f := mustRegister(t, p, "f", func(ctx context.Context, a num) (int, error) { return a.N, nil })
	start(t, p)
	ctx := context.Background()
	waitFor(t, 10*time.Second, "the loop to go idle", func() bool {
		return e.count("SELECT count(*) FROM "+e.schema+".run_status WHERE state = 'idle'") == 1
	})

	tx, err := e.db.BeginTx(ctx, nil)
	require.NoError(t, err)
	defer tx.Rollback()
	_, err = p.EnqueueTx(ctx, tx, f, num{N: 1})
	require.NoError(t, err)

	// Another producer, while the caller's transaction is open.
	short, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	began := time.Now()
	_, err = p.Enqueue(short, f, num{N: 2})
	assert.NoError(t, err, "Enqueue blocked for %v behind an open EnqueueTx transaction", time.Since(began))
	require.NoError(t, tx.Commit())
	waitFor(t, 10*time.Second, "both items to finish", func() bool {
		return e.count("SELECT count(*) FROM "+e.schema+".work") == 0
	})
}
