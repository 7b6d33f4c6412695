package loop

import "context"

// Gathers exposes the gather rule to the external tests.
func (d *Driver) Gathers(out Outcome) bool { return d.gathers(out) }

// MainFast runs an iteration as the driver does, allowed to commit in its
// first round trip (see Loop.fastPath).
func (l *Loop) MainFast(ctx context.Context, generation int64) (Outcome, error) {
	return l.main(ctx, generation, nil, true)
}

// RunKicked runs on the calling goroutine, as the leader, the iterations
// that the driver's goroutine runs when woken, and reports whether a kick
// is left waiting for it afterwards.
func (d *Driver) RunKicked(ctx context.Context) (kickLeft bool) {
	d.leader.Store(true)
	defer d.leader.Store(false)
	d.iterateUntilQuiet(ctx, -1, nil)
	return len(d.kickCh) > 0
}
