package workpool

import (
	"context"
	"database/sql"
	"fmt"
)

// State is where a work item is in its life.
type State int

// The states of a work item.
const (
	// StatePending: waiting to start, for the first time or for a retry.
	StatePending State = iota + 1
	// StateRunning: started (holding one of the pool's slots), or between
	// an attempt's end and the loop's handling of it.
	StateRunning
	// StateFinishing: its outcome is decided and its onComplete has not
	// committed yet (it is being retried, or no live process has the
	// handler, or it failed for good and is kept for inspection).
	StateFinishing
	// StateFinished: it reached its terminal state; its row is gone.
	StateFinished
)

func (s State) String() string {
	switch s {
	case StatePending:
		return "pending"
	case StateRunning:
		return "running"
	case StateFinishing:
		return "finishing"
	case StateFinished:
		return "finished"
	}
	return fmt.Sprintf("State(%d)", int(s))
}

// Status describes a work item.
type Status struct {
	State State
	// PreviousAttempts counts the attempts that already reported.
	PreviousAttempts int
}

// Status returns the state of one work item.
func (p *Pool) Status(ctx context.Context, id WorkID) (Status, error) {
	st, err := p.StatusBatch(ctx, []WorkID{id})
	if err != nil {
		return Status{}, err
	}
	return st[0], nil
}

// StatusBatch returns the states of many work items in one query, in the
// order of ids. An ID this database never issued is ErrWorkNotFound. A
// finished item has no row left, so Finished is all that is known of it.
func (p *Pool) StatusBatch(ctx context.Context, ids []WorkID) ([]Status, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("pgworkpool: status: %w", err)
	}
	// No p.ensure: a read must not create the pool's rows.
	raw, err := p.store.Status(ctx, p.sqlDB, p.cfg.Name, toInt64(ids))
	if err != nil {
		return nil, p.wrapDBError("status", err)
	}
	out := make([]Status, len(raw))
	for i, r := range raw {
		switch {
		case !r.Exists && !r.Issued:
			return nil, fmt.Errorf("%w: %d", ErrWorkNotFound, r.ID)
		case !r.Exists:
			out[i] = Status{State: StateFinished}
		case r.Finishing:
			out[i] = Status{State: StateFinishing, PreviousAttempts: r.Attempts}
		case r.Pending || r.Retrying:
			out[i] = Status{State: StatePending, PreviousAttempts: r.Attempts}
		default:
			out[i] = Status{State: StateRunning, PreviousAttempts: r.Attempts}
		}
	}
	return out, nil
}

// Cancel asks for a work item to end as canceled: if it has not started by
// the time Cancel returns, it never will, even if a slot frees before the
// loop has taken the cancel; if it runs, its handler's context is canceled
// and it is not retried. Its onComplete runs with Status Canceled (or with
// the outcome, if it finished first). Canceling finished or already
// canceled work is a no-op; an ID this database never issued is
// ErrWorkNotFound.
func (p *Pool) Cancel(ctx context.Context, id WorkID) error {
	n, err := p.cancel(ctx, []int64{int64(id)})
	if err != nil || n > 0 {
		return err
	}
	// Nothing recorded: finished, already canceled, or unknown.
	_, err = p.Status(ctx, id)
	return err
}

// CancelAll cancels every work item of the pool enqueued before the call,
// page by page (each page its own transaction), and returns how many cancel
// requests it recorded.
func (p *Pool) CancelAll(ctx context.Context) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("pgworkpool: cancel all: %w", err)
	}
	if p.closed.Load() {
		return 0, ErrPoolClosed
	}
	upTo, err := p.store.LastWorkID(ctx, p.sqlDB)
	if err != nil {
		return 0, p.wrapDBError("cancel all", err)
	}
	const page = 1000
	total := 0
	for after := int64(0); ; {
		ids, err := p.store.WorkPage(ctx, p.sqlDB, p.cfg.Name, after, upTo, page)
		if err != nil {
			return total, p.wrapDBError("cancel all", err)
		}
		if len(ids) == 0 {
			return total, nil
		}
		n, err := p.cancel(ctx, ids)
		total += n
		if err != nil {
			return total, err
		}
		after = ids[len(ids)-1]
	}
}

func (p *Pool) cancel(ctx context.Context, ids []int64) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("pgworkpool: cancel: %w", err)
	}
	if p.closed.Load() {
		return 0, ErrPoolClosed
	}
	// No p.ensure: a cancel that records anything names work of this pool,
	// whose enqueue created the pool's rows; one that names nothing must
	// write nothing.
	var n int
	err := p.writeAndKick(ctx, "cancel", func(tx *sql.Tx) (bool, error) {
		recorded, err := p.store.InsertCancelations(ctx, tx, p.cfg.Name, ids, p.keys.KickLock)
		if err != nil {
			return false, p.wrapDBError("cancel", err)
		}
		n = len(recorded)
		return n > 0, nil
	})
	return n, err
}

func toInt64(ids []WorkID) []int64 {
	out := make([]int64, len(ids))
	for i, id := range ids {
		out[i] = int64(id)
	}
	return out
}
