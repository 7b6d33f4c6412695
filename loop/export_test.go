package loop

import "context"

// Gathers exposes the gather rule to the external tests.
func (d *Driver) Gathers(out Outcome) bool { return d.gathers(out) }

// MainFast runs an iteration as the driver does, allowed to commit in its
// first round trip (see Loop.fastPath).
func (l *Loop) MainFast(ctx context.Context, generation int64) (Outcome, error) {
	return l.main(ctx, generation, nil, true)
}
