// Package soak holds the soak test of issue 7: mixed load on one pool for a
// long time (ten minutes by default), to find what a short test cannot: a
// slow leak of memory or goroutines in the library, or a pending table that
// grows because some path adds rows faster than the loop consumes them.
//
// It samples the heap (after a GC), the goroutine count and every table of
// the schema at regular intervals, prints them, compares the end of the run
// with its beginning (after a warm-up), and checks that everything drains
// once the producers stop, without a single warning logged (there are no
// faults, so a warning is a bug). It is behind the build tag soak:
//
//	make soak
//	SOAK_DURATION=1m make soak
//
// SOAK_DURATION sets the length of the load (default 10m) and SOAK_RATE the
// enqueues per second (default 200).
package soak
