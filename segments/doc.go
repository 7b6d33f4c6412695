// Package segments buckets wall-clock time into 100 ms segments, the unit in
// which the work pool schedules, indexes and scans its work.
//
// Segment n covers the half-open interval [n*100ms, (n+1)*100ms) measured
// from the Unix epoch. Storing a segment number instead of a timestamp lets
// every table the pool polls carry an ordinary B-tree index on an integer
// column, so "everything due up to now" is one cheap index range scan, and
// everything that became due in the same 100 ms is handled as one batch.
//
// The pool's main loop remembers, per table, a cursor: the last segment it
// has processed. Each pass scans forward from the cursor rather than from
// the beginning, so already-processed prefixes of the table are skipped.
// Transactions, however, commit in a different order from the segments they
// write: a transaction that started at segment n may become visible only
// after the loop has moved its cursor past n. Every cursor scan therefore
// starts CursorBuffer (15 s) before the cursor. A transaction that takes
// longer than that to commit can still be missed by the cursor scans, so
// once every RecoveryPeriod (1 min) the loop performs a recovery pass that
// scans the whole table and picks up anything left behind.
//
// Every function takes the current time as a parameter instead of reading a
// clock, so callers decide which clock to trust and tests control time.
//
// Segments are 64-bit integers. Conversions saturate at MinSegment and
// MaxSegment (about ±292 million years around 1970), a range chosen so that
// Segment.Millis never overflows an int64. Every time.Time that Go can parse
// or format (years 1 to 9999) lies well inside it.
package segments
