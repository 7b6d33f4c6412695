package store

import (
	"context"
	"fmt"
	"time"
)

// Statements of the recovery pass. Both read only the pool's running rows
// (bounded by MaxParallelism), never the backlog.

func init() {
	// lostAttempts finds claimed attempts whose worker's lease expired (or
	// whose worker row is gone) or whose deadline passed by more than the
	// grace period, and that have no result queued yet. Unclaimed rows are
	// left alone: no live process has registered their function.
	register("lostAttempts", `
SELECT r.work_id, r.attempt,
       CASE WHEN r.deadline < now() - $3 * interval '1 millisecond' THEN 'timed out' ELSE 'worker lost' END
  FROM {s}.running r
  LEFT JOIN {s}.workers k ON k.id = r.claimed_by
 WHERE r.pool = $1 AND r.claimed_by IS NOT NULL
   AND (k.id IS NULL
        OR k.heartbeat_at < now() - $2 * interval '1 millisecond'
        OR r.deadline < now() - $3 * interval '1 millisecond')
   AND NOT EXISTS (SELECT 1 FROM {s}.pending_completion pc WHERE `+probe("pc.work_id", "r.work_id")+`)
 ORDER BY r.work_id
 LIMIT $4`)

	// deleteOrphans removes running rows no completion will ever clear: the
	// work is gone, finished, or already past this attempt, and no result
	// for it is queued.
	register("deleteOrphans", `
WITH o AS (
    DELETE FROM {s}.running r
     WHERE r.pool = $1
       AND NOT EXISTS (SELECT 1 FROM {s}.work w
                        WHERE `+attemptLive+`)
       AND NOT EXISTS (SELECT 1 FROM {s}.pending_completion pc WHERE `+probe("pc.work_id", "r.work_id")+`)
    RETURNING r.work_id, r.standby
), rc AS (
    UPDATE {s}.internal_state SET running_count = running_count - (SELECT count(*) FROM o WHERE NOT standby) WHERE pool = $1
)
SELECT work_id FROM o`)
}

// Lost is an attempt recovery will complete as failed.
type Lost struct {
	WorkID  int64
	Attempt int
	Reason  string // "worker lost" or "timed out"
}

// LostAttempts lists up to limit lost attempts of the pool.
func (s *Store) LostAttempts(ctx context.Context, q Querier, pool string, lease, grace time.Duration, limit int) ([]Lost, error) {
	var out []Lost
	err := Run(ctx, q, s.op("lostAttempts", func(r Row) error {
		var l Lost
		if err := r.Scan(&l.WorkID, &l.Attempt, &l.Reason); err != nil {
			return err
		}
		out = append(out, l)
		return nil
	}, pool, lease.Milliseconds(), grace.Milliseconds(), limit))

	if err != nil {
		return nil, fmt.Errorf("lost attempts: %w", err)
	}
	return out, nil
}

// DeleteOrphans deletes running rows that no completion will clear and
// returns their work ids.
func (s *Store) DeleteOrphans(ctx context.Context, q Querier, pool string) ([]int64, error) {
	var out []int64
	err := Run(ctx, q, s.op("deleteOrphans", scanIDs(&out), pool))
	return out, err
}
