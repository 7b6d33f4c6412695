package workpool

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/uptrace/bun"

	"github.com/pgworkpool/pgworkpool/internal/store"
)

// errOnCompleteFailed makes a completion transaction roll back and redo its
// onCompletes one savepoint at a time.
var errOnCompleteFailed = errors.New("pgworkpool: onComplete failed")

// finishItem is one work item whose onComplete must run in the current
// transaction before its row is deleted.
type finishItem struct {
	workID         int64
	attempts       int
	onComplete     string
	context        string
	result         storedResult
	finishAttempts int
}

// runOnCompletes runs the onComplete of each item in tx and deletes the
// items whose handler succeeded: their terminal state and the handler's
// writes commit together. Items whose handler is not registered here are
// left finishing (deferred). Without careful, the first handler error fails
// the call (the caller rolls back and retries carefully); with careful, each
// handler runs under a savepoint and a failure is recorded on its row for a
// later retry, or kept for good after Config.OnCompleteAttempts.
func (p *Pool) runOnCompletes(ctx context.Context, tx bun.Tx, items []finishItem, careful bool) (deferred bool, err error) {
	var done []int64
	for _, it := range items {
		h := p.lookupOnComplete(it.onComplete)
		if h == nil {
			deferred = true
			continue
		}
		if !careful {
			if err := callOnComplete(ctx, h, tx, it); err != nil {
				return false, fmt.Errorf("%w: %v", errOnCompleteFailed, err)
			}
			done = append(done, it.workID)
			continue
		}
		if _, err := tx.Tx.ExecContext(ctx, "SAVEPOINT pgworkpool_on_complete"); err != nil {
			return false, err
		}
		if herr := callOnComplete(ctx, h, tx, it); herr != nil {
			if _, err := tx.Tx.ExecContext(ctx, "ROLLBACK TO SAVEPOINT pgworkpool_on_complete"); err != nil {
				return false, err
			}
			backoff := min(p.cfg.OnCompleteBackoff<<min(it.finishAttempts, 20), time.Hour)
			attempts, gaveUp, err := p.store.FinishFailed(ctx, tx.Tx, it.workID, herr.Error(), p.cfg.OnCompleteAttempts, backoff)
			if err != nil {
				return false, err
			}
			if gaveUp {
				p.log.Error(ctx, "onComplete failed for good; the work row keeps its result and error",
					"work_id", it.workID, "on_complete", it.onComplete, "tries", attempts, "error", herr)
			} else {
				p.log.Warn(ctx, "onComplete failed; it will be retried", "work_id", it.workID,
					"on_complete", it.onComplete, "tries", attempts, "backoff", backoff, "error", herr)
			}
			deferred = true
			continue
		}
		if _, err := tx.Tx.ExecContext(ctx, "RELEASE SAVEPOINT pgworkpool_on_complete"); err != nil {
			return false, err
		}
		done = append(done, it.workID)
	}
	if len(done) > 0 {
		if err := p.store.FinishDelete(ctx, tx.Tx, done); err != nil {
			return false, err
		}
	}
	return deferred, nil
}

// holdingWorkRows marks the context of code that runs inside a transaction
// of ours holding work rows (an onComplete): an enqueue made there commits
// on its own rather than inside an iteration of the loop, which could wait
// for one of those rows (a cancel or a recovery of the same work) while
// the transaction that holds it waits for the enqueue.
type holdingWorkRows struct{}

// callOnComplete runs one handler, turning a panic into an error.
func callOnComplete(ctx context.Context, h *onCompleteInfo, tx bun.Tx, it finishItem) (err error) {
	defer func() {
		if rec := recover(); rec != nil {
			err = fmt.Errorf("panic: %v", rec)
		}
	}()
	return h.run(context.WithValue(ctx, holdingWorkRows{}, true), tx, it.workID, it.attempts, it.context, it.result)
}

// finishLoop runs onCompletes that could not run when their work ended:
// canceled before it started, recovered, failed earlier, or finished by a
// process without the handler. It wakes on a signal or when the earliest
// retry is due, and sends nothing otherwise.
func (r *running) finishLoop() {
	defer r.claimersWG.Done()
	p := r.p
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		select {
		case <-r.stopClaims:
			timer.Stop()
			return
		case <-r.finishWake:
		case <-timer.C:
		}
		names := p.onCompleteNames()
		if len(names) == 0 {
			continue
		}
		for {
			n, err := r.finishOnce(names)
			if err != nil {
				if r.bgCtx.Err() == nil {
					p.log.Warn(r.bgCtx, "finisher: running onCompletes failed", "error", err)
				}
				break
			}
			if n < finishBatch {
				break
			}
		}
		wait, ok, err := p.store.NextFinishing(r.bgCtx, p.sqlDB, p.cfg.Name, names)
		timer.Stop()
		switch {
		case err != nil:
			if r.bgCtx.Err() == nil {
				p.log.Warn(r.bgCtx, "finisher: cannot read next onComplete time", "error", err)
			}
			timer.Reset(time.Second)
		case ok:
			timer.Reset(max(wait, 10*time.Millisecond))
		}
	}
}

func (r *running) finishOnce(names []string) (int, error) {
	p := r.p
	n := 0
	err := p.db.RunInTx(r.bgCtx, nil, func(ctx context.Context, tx bun.Tx) error {
		if err := store.Run(ctx, tx.Tx, store.PlanSettings()); err != nil {
			return err
		}
		rows, err := p.store.ClaimFinishing(ctx, tx.Tx, p.cfg.Name, names, finishBatch)
		if err != nil {
			return err
		}
		n = len(rows)
		items := make([]finishItem, 0, len(rows))
		for _, f := range rows {
			sr, err := decodeStoredResult(f.Result)
			if err != nil {
				// Skip it rather than fail the batch: one bad row must not
				// hold back the others. It stays finishing, visible.
				p.log.Error(ctx, "finisher: cannot decode stored result", "work_id", f.WorkID, "error", err)
				continue
			}
			items = append(items, finishItem{workID: f.WorkID, attempts: f.Attempts, onComplete: f.OnComplete,
				context: f.Context, result: sr, finishAttempts: f.FinishAttempts})
		}
		_, err = p.runOnCompletes(ctx, tx, items, true)
		return err
	})
	return n, err
}
