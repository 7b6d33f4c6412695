package workpool

import (
	"context"
	"time"
)

// QueuedEnqueues reports how many Enqueue calls of p wait for a commit in
// flight to end, so that tests can hold calls in the queue.
func QueuedEnqueues(p *Pool) int { return p.enqueues.queued() }

// MaxCommitsInFlight is maxCommitsInFlight, for tests.
const MaxCommitsInFlight = maxCommitsInFlight

// Leads reports whether p is started and its driver holds the pool's
// leadership, so that tests can tell which process runs the loop.
func Leads(p *Pool) bool { return p.leading() }

// NotCarried returns ctx for an Enqueue whose rows commit in a transaction
// of their own, never in an iteration of the loop (as from an onComplete).
func NotCarried(ctx context.Context) context.Context {
	return context.WithValue(ctx, holdingWorkRows{}, true)
}

// BeforeLeadingWrite sets a function that an Enqueue of p runs when it
// found p leading, before its transaction.
func BeforeLeadingWrite(p *Pool, f func()) { p.beforeLeadingWrite = f }

// WorkerID returns the id of the started p's row in the workers table.
func WorkerID(p *Pool) int64 { return p.runState().worker.ID }

// SetStandbyHold sets how long p's standbys wait for a slot; call it
// before Start.
func SetStandbyHold(p *Pool, d time.Duration) { p.standbyHold = d }

// HandOffs counts the slots p's handlers handed straight to a standby.
func HandOffs(p *Pool) int64 { return p.handOffs.Load() }
