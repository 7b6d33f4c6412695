package loop

// Gathers exposes the gather rule to the external tests.
func (d *Driver) Gathers(out Outcome) bool { return d.gathers(out) }
