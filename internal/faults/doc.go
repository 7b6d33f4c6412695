// Package faults holds the fault suite of issue 7: a long multi-process run
// of one pool while worker processes are SIGKILLed and replaced, the
// Postgres server restarts, and the pool's LISTEN connections and the
// connections of the process that runs the loop are terminated. It then
// checks the promises of DESIGN.md §1 against what the run left in the
// database: every item reached exactly one terminal state, its onComplete
// committed exactly once, the handler runs never overlapped more than
// MaxParallelism deep, and the loop went idle.
//
// The suite needs its own Postgres server (it restarts it), so it never
// uses DATABASE_URL, and it takes a few minutes; it is behind the build tag
// faults:
//
//	make test-faults
//	go test -tags faults -count=1 -timeout 20m -v ./internal/faults/
//
// FAULTS_ITEMS sets the number of items (default 20,000) for quick local
// runs, FAULTS_SEED fixes the plan's random seed, and FAULTS_KEEP_LOGS=1
// keeps the worker and server logs of a passing run.
package faults
