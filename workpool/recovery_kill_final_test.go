package workpool_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgworkpool/pgworkpool/recovery"
	"github.com/pgworkpool/pgworkpool/workpool"
)

// TestRecoveryAfterSIGKILLFinalAttempt: a worker process holding an item
// without retries (and with an onComplete) is SIGKILLed. Recovery records
// the final "worker lost" failure, and the surviving process's finisher
// must be woken to run the onComplete once (it once was not: the loop sent
// the finish signal only for work it canceled).
func TestRecoveryAfterSIGKILLFinalAttempt(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	rkCompletionTable(e)
	const name = "killed-final"
	p := e.pool(workpool.Config{
		Name: name, MaxParallelism: 10,
		Lease: killLease, HeartbeatInterval: killHeartbeat, RecoveryPeriod: killRecovery,
		HealthcheckInterval: 200 * time.Millisecond,
	})
	block, err := workpool.Register(p, "block", func(ctx context.Context, n int) (int, error) { return n, nil })
	require.NoError(t, err)
	var onCompleteCalls atomic.Int64
	record, err := workpool.RegisterOnComplete(p, "record", rkRecordCompletion(e.schema, &onCompleteCalls))
	require.NoError(t, err)
	id, err := p.Enqueue(ctx, block, 0, workpool.NoRetry(), workpool.OnComplete(record, "final"))
	require.NoError(t, err)
	_, err = e.db.ExecContext(ctx, "UPDATE "+e.schema+".work SET args = to_jsonb(id) WHERE id = ?", int64(id))
	require.NoError(t, err)

	killedAt := rkKillWorkerHolding(t, e, name, []int64{int64(id)})
	require.NoError(t, p.Start(ctx))
	waitFor(t, killLease+killRecovery+20*time.Second, "the onComplete of the recovered attempt", func() bool {
		return len(rkCompletions(e)) > 0
	})
	t.Logf("onComplete ran %v after the kill", time.Since(killedAt))
	time.Sleep(300 * time.Millisecond) // a second onComplete would need a moment
	assert.Equal(t, []rkCompletion{{WorkID: int64(id), Status: "failed", Error: recovery.ReasonWorkerLost, Context: "final", Attempts: 1}},
		rkCompletions(e))
	assert.EqualValues(t, 1, onCompleteCalls.Load())
	assert.Zero(t, e.count("SELECT count(*) FROM "+e.schema+".work"))
}
