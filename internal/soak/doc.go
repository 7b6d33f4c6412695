// Package soak holds the soak test: mixed load on one pool for a long time
// (ten minutes by default), to find what the short tests cannot see. A leak
// of one goroutine or a few bytes per item, or a pending table that some
// path fills a little faster than the loop empties it, goes unnoticed in a
// test of a few seconds, but after a hundred thousand items it is plain.
//
// Two Pool values of the same pool run in one process, each with its own
// database connections, so they behave like two processes: each has its own
// driver, workers and heartbeat, and only one of them leads the loop.
// Producers enqueue at a steady rate (SOAK_RATE, 200 items a second by
// default) a mix of items: most succeed after a short sleep, some fail once
// and are retried, some fail for good, some are scheduled a few seconds
// ahead, some are canceled right after their enqueue, some come in batches
// of 50, and about a third have an onComplete that writes a row of the
// test's own table in the terminal transaction.
//
// Every sample (every 10 s, more often for short runs) records the heap
// after a garbage collection, the number of goroutines, and the rows and
// bytes of every table of the schema; the test logs each sample and prints
// the table sizes before the load and after the pool drained. After a
// warm-up of a fifth of the run it checks that the goroutine count stays
// within a small slack of its value at the end of the warm-up, that the
// heap and the pending tables at the end of the run are not much larger
// than at its beginning, and, once the producers stop, that everything
// drains within a minute: every item reaches its terminal state, every
// onComplete committed exactly once, the pending tables are empty, and the
// goroutines of the pools are gone after Stop. A warning or an error logged
// by a pool fails the test: the run has no faults, so a warning means that a
// path meant for failures ran (a result dropped as stale, a claim released
// as stranded), which is a bug.
//
// The test is behind the build tag soak because it takes as long as its
// load runs:
//
//	make soak
//	SOAK_DURATION=1m make soak
//	go test -tags soak -count=1 -timeout 30m -v -run TestSoak ./internal/soak/
//
// SOAK_DURATION sets how long the load runs (a Go duration, default 10m)
// and SOAK_RATE the enqueues per second. The test uses DATABASE_URL when it
// is set (make soak sets it to a throwaway server) and otherwise starts its
// own throwaway server.
package soak
