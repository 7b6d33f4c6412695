package workpool_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgworkpool/pgworkpool/internal/store"
	"github.com/pgworkpool/pgworkpool/workpool"
)

// TestStrandedClaimReleased: a claim can commit on the server while its
// answer never reaches the process (the connection breaks after the
// commit). The work is then claimed by a live, heartbeating process that
// does not run it, so recovery never calls it lost: before the fix it held
// a global slot, unrun, until its deadline. The test leaves exactly that
// state behind by running the claim statement itself under the process's
// worker id, while the process's only slot is busy, and checks that the
// process gives the claim back and then runs the work once. (The process
// itself must not claim the item meanwhile: its only slot is busy; see
// TestLocalSlotsNeverOversubscribed.)
func TestStrandedClaimReleased(t *testing.T) {
	t.Parallel()
	e := newAPIEnv(t)
	p := e.pool(workpool.Config{MaxParallelism: 4, Workers: 1, HeartbeatInterval: 100 * time.Millisecond,
		Lease: time.Minute, RecoveryPeriod: time.Hour})
	started := make(chan struct{}, 1)
	release := make(chan struct{})
	block := mustRegister(t, p, "block", func(ctx context.Context, a num) (int, error) {
		started <- struct{}{}
		<-release
		return a.N, nil
	})
	var quickRuns atomic.Int32
	quick := mustRegister(t, p, "quick", func(ctx context.Context, a num) (int, error) {
		quickRuns.Add(1)
		return a.N, nil
	})
	done := mustOnComplete(t, e, p, "done")
	start(t, p)

	enqueue(t, p, block, num{N: 1})
	recv(t, started, 10*time.Second, "the blocking handler to start")
	id := enqueue(t, p, quick, num{N: 2}, workpool.NoRetry(), workpool.OnComplete(done, ""))
	waitFor(t, 10*time.Second, "the quick item to start, unclaimed (the only slot is busy)", func() bool {
		return e.count("SELECT count(*) FROM "+e.schema+".running WHERE work_id = ? AND claimed_by IS NULL", int64(id)) == 1
	})

	// The lost answer: the process's claim, committed, never seen by it.
	var w store.Worker
	require.NoError(t, e.db.DB.QueryRowContext(context.Background(),
		"SELECT id, host, pid FROM "+e.schema+".workers WHERE pool = $1", p.Name()).Scan(&w.ID, &w.Host, &w.PID))
	var claimed []store.Claimed
	require.NoError(t, store.Run(context.Background(), e.db.DB,
		store.New(e.schema).ClaimOp(p.Name(), []string{"quick"}, 1, w, false, &claimed)))
	require.Len(t, claimed, 1)
	require.Equal(t, int64(id), claimed[0].WorkID)

	waitFor(t, 10*time.Second, "the process to release the claim it never received", func() bool {
		return e.count("SELECT count(*) FROM "+e.schema+".running WHERE work_id = ? AND claimed_by IS NULL", int64(id)) == 1
	})
	assert.Equal(t, int32(0), quickRuns.Load())
	close(release)
	assert.Equal(t, apiCompletion{Status: "success", Value: "2", Attempts: 1}, e.waitCompletion(id, 10*time.Second))
	assert.Equal(t, int32(1), quickRuns.Load())
}
