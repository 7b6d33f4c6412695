// Package recovery finds work whose attempt will never report a result and
// completes it as a failed attempt, so that its retry behavior (or its
// onComplete) takes over.
//
// An attempt is lost when the process that claimed it stopped heartbeating
// for longer than the lease (it crashed, or it lost the database), or when
// the attempt ran past its deadline by more than a grace period (the handler
// ignored its context and the process cannot report). Rows that were started
// but never claimed are left alone: no live process has registered their
// function, which the report shows as unclaimed.
//
// Verdicts are fenced by attempt number exactly like a worker's result: the
// same statement records them, so a lost worker that reports late finds its
// attempt already counted and its result is ignored, and an attempt is never
// completed twice.
//
// The pass also removes the workers rows of processes that have not
// heartbeated for Config.WorkerRetention (ten leases by default): a
// process killed without a Stop leaves its row behind.
//
// The pass runs inside the loop's recovery iteration (at most once per
// recovery period while anything runs). Its cost is the pool's running rows,
// which MaxParallelism bounds, never the backlog.
package recovery

import (
	"context"
	"fmt"
	"time"

	"github.com/pgworkpool/pgworkpool/internal/store"
	"github.com/pgworkpool/pgworkpool/stats"
)

// Defaults for [Config].
const (
	// LeaseDefault is how long a worker may go without a heartbeat while
	// holding work before its attempts are declared lost.
	LeaseDefault = 30 * time.Second
	// HeartbeatIntervalDefault is how often a worker holding work
	// heartbeats; a third of the lease tolerates two missed beats.
	HeartbeatIntervalDefault = 10 * time.Second
	// GraceDefault is how long past its deadline an attempt may run before
	// recovery ends it: workers report timeouts themselves, so this only
	// catches a process that cannot.
	GraceDefault = 5 * time.Second
	// BatchDefault bounds the attempts one pass completes.
	BatchDefault = 1000
	// WorkerRetentionLeases is the default WorkerRetention in leases. The
	// retention must be far longer than half a heartbeat interval (see
	// Config.WorkerRetention); ten leases are thirty heartbeat intervals
	// with the defaults.
	WorkerRetentionLeases = 10
)

// Reasons recorded as the error of a recovered attempt.
const (
	ReasonWorkerLost = "worker lost"
	ReasonTimedOut   = "timed out"
)

// Config configures the recovery pass.
type Config struct {
	Lease time.Duration
	Grace time.Duration
	Batch int
	// WorkerRetention is how long after its last heartbeat a process's
	// workers row is removed; default WorkerRetentionLeases times Lease.
	// A process killed without a Stop leaves its row behind, and rows
	// would otherwise pile up with every crash. An idle process sends no
	// heartbeat, so a live one loses its row too once idle that long; it
	// re-creates it in the statement of its next claim, which always
	// refreshes the heartbeat after half a heartbeat interval without
	// one. The retention must therefore be longer than half the
	// heartbeat interval of every process of the pool, with a margin.
	WorkerRetention time.Duration
}

// WithDefaults fills zero fields with the package defaults.
func (c Config) WithDefaults() Config {
	if c.Lease <= 0 {
		c.Lease = LeaseDefault
	}
	if c.Grace <= 0 {
		c.Grace = GraceDefault
	}
	if c.Batch <= 0 {
		c.Batch = BatchDefault
	}
	if c.WorkerRetention <= 0 {
		c.WorkerRetention = WorkerRetentionLeases * c.Lease
	}
	return c
}

// Result reports one pass.
type Result struct {
	// Recorded are the lost attempts whose failure was recorded; their
	// pending completions are consumed by the next loop iteration.
	Recorded []store.Recorded
	// Ignored counts lost attempts whose result arrived first.
	Ignored int
	// Orphans are running rows deleted because no completion will ever
	// clear them (their work ended or moved on).
	Orphans []int64
	// WorkersRemoved are the ids of the workers rows removed because
	// their process stopped heartbeating (see Config.WorkerRetention).
	WorkersRemoved []int64
}

// Run executes one recovery pass in the loop's transaction.
func Run(ctx context.Context, q store.Querier, s *store.Store, pool string, cfg Config, log *stats.Logger) (Result, error) {
	cfg = cfg.WithDefaults()
	var res Result
	lost, err := s.LostAttempts(ctx, q, pool, cfg.Lease, cfg.Grace, cfg.Batch)
	if err != nil {
		return res, fmt.Errorf("recovery: %w", err)
	}
	if len(lost) > 0 {
		results := make([]store.Result, len(lost))
		for i, l := range lost {
			results[i] = store.Result{WorkID: l.WorkID, Attempt: l.Attempt, Status: "failed", Error: l.Reason, RunMs: -1}
		}
		keys := store.KeysFor(s.Schema(), pool)
		res.Recorded, err = s.RecordResults(ctx, q, pool, results, keys.KickLock)
		if err != nil {
			return res, fmt.Errorf("recovery: %w", err)
		}
		res.Ignored = len(lost) - len(res.Recorded)
		recorded := make(map[int64]bool, len(res.Recorded))
		for _, r := range res.Recorded {
			recorded[r.WorkID] = true
		}
		for _, l := range lost {
			if recorded[l.WorkID] {
				log.Warn(ctx, "recovery: attempt failed", "work_id", l.WorkID, "attempt", l.Attempt+1, "reason", l.Reason)
			}
		}
	}
	res.Orphans, err = s.DeleteOrphans(ctx, q, pool)
	if err != nil {
		return res, fmt.Errorf("recovery: %w", err)
	}
	for _, id := range res.Orphans {
		log.Warn(ctx, "recovery: removed a running row whose work already ended", "work_id", id)
	}
	res.WorkersRemoved, err = s.DeleteStaleWorkers(ctx, q, pool, cfg.WorkerRetention)
	if err != nil {
		return res, fmt.Errorf("recovery: %w", err)
	}
	if len(res.WorkersRemoved) > 0 {
		log.Debug(ctx, "recovery: removed the rows of processes that stopped heartbeating",
			"worker_ids", res.WorkersRemoved, "retention", cfg.WorkerRetention)
	}
	return res, nil
}
