package segments

import (
	"math"
	"time"
)

// Segment is a 100 ms bucket of time: segment n covers [n*100ms, (n+1)*100ms)
// since the Unix epoch. The work pool stores segments rather than timestamps
// so that its tables can be scanned in cheap integer index ranges and so that
// work becoming due within the same 100 ms is processed as one batch.
//
// A Segment is also used as a count of segments (a length of time), as in
// CursorBuffer or Year.
type Segment int64

// Duration is the length of one segment. It is the granularity of every
// schedule in the pool: nothing is scheduled more precisely than this.
const Duration = 100 * time.Millisecond

// Lengths of time counted in segments. They exist so that intervals in the
// pool's tables and loop are written in words rather than magic numbers.
// A Year is 365 days, as in Convex; calendar irregularities do not matter
// for the coarse bounds it is used for.
const (
	Second Segment = 10
	Minute Segment = 60 * Second
	Hour   Segment = 60 * Minute
	Day    Segment = 24 * Hour
	Year   Segment = 365 * Day // 315,360,000 segments
)

// CursorBuffer is how far before its cursor each incremental scan starts
// (150 segments, 15 s). Commit order differs from segment order, so a row
// for an earlier segment can become visible after the cursor has passed it;
// the buffer rescans that window. A transaction that takes longer than this
// to commit may be missed until the next recovery pass.
const CursorBuffer Segment = 15 * Second

// RecoveryPeriod is the time between recovery passes (600 segments, 1 min).
// A recovery pass scans a whole table from the start, picking up rows that
// committed too late for the CursorBuffer to catch.
const RecoveryPeriod Segment = Minute

// MinSegment and MaxSegment bound the supported range. Conversions that
// would leave it saturate at the nearer end instead of overflowing. The
// range is the largest for which Millis fits in an int64, about ±292
// million years around 1970; every practical time.Time is far inside it.
const (
	MaxSegment Segment = math.MaxInt64 / 100
	MinSegment Segment = -MaxSegment
)

// segmentMillis is the length of a segment in milliseconds.
const segmentMillis = int64(Duration / time.Millisecond)

// segmentsPerSecond is the number of segments in one second.
const segmentsPerSecond = int64(time.Second / Duration)

// Of converts a length of time into a count of segments, rounding toward
// positive infinity: the result is the smallest n for which n segments last
// at least d. Positive durations therefore round up, so a delay is never
// shortened (150 ms is 2 segments, 1 ns is 1 segment); zero is 0; negative
// durations round toward zero (-150 ms is -1 segment). Every time.Duration
// converts without overflow.
func Of(d time.Duration) Segment {
	n := d / Duration
	if d%Duration > 0 {
		n++
	}
	return Segment(n)
}

// Duration returns how long s segments last: the inverse of Of for whole
// segments. Counts beyond what a time.Duration holds (about 292 years)
// saturate rather than wrap.
func (s Segment) Duration() time.Duration {
	const limit = Segment(math.MaxInt64 / int64(Duration))
	switch {
	case s > limit:
		return math.MaxInt64
	case s < -limit:
		return math.MinInt64
	}
	return time.Duration(s) * Duration
}

// FromTime returns the segment containing t. It rounds down (toward the
// past), also for times before 1970, so t always lies within the returned
// segment. The location and monotonic reading of t are irrelevant. Times
// outside the supported range saturate to MinSegment or MaxSegment.
func FromTime(t time.Time) Segment {
	// t.Unix() is already floored and t.Nanosecond() is in [0, 1e9), so
	// this is exact floor division without going through UnixNano, which
	// would overflow outside the years 1678 to 2262.
	sec := t.Unix()
	switch {
	case sec > int64(MaxSegment)/segmentsPerSecond:
		return MaxSegment
	case sec < int64(MinSegment)/segmentsPerSecond-1:
		return MinSegment
	}
	s := sec*segmentsPerSecond + int64(t.Nanosecond())/int64(Duration)
	return clamp(Segment(s))
}

// Time returns the instant at which s starts, in UTC. Segments outside the
// supported range are first saturated to it.
func (s Segment) Time() time.Time {
	s = clamp(s)
	sec := int64(s) / segmentsPerSecond
	rem := int64(s) % segmentsPerSecond // negative for negative s; time.Unix normalises it
	return time.Unix(sec, rem*int64(Duration)).UTC()
}

// Current returns the segment containing now. It is FromTime under a name
// that reads well at call sites that ask "which segment are we in".
func Current(now time.Time) Segment {
	return FromTime(now)
}

// Next returns the segment after the one containing now: the earliest
// segment that has not started yet. It is for scheduling something as soon
// as possible but strictly after the segment that is in progress.
func Next(now time.Time) Segment {
	return add(Current(now), 1)
}

// FromMillis returns the segment containing the instant ms milliseconds
// after the Unix epoch, rounding down also for negative ms. It is the Go
// side of conversions done in SQL. Beware that Postgres integer division
// truncates toward zero, so SQL that must agree with FromMillis for times
// before 1970 needs floor(ms / 100.0) rather than ms / 100.
func FromMillis(ms int64) Segment {
	q := ms / segmentMillis
	if ms%segmentMillis < 0 {
		q--
	}
	return clamp(Segment(q))
}

// Millis returns the start of s in milliseconds since the Unix epoch, for
// passing to SQL. Segments outside the supported range are first saturated
// to it, so the result never overflows.
func (s Segment) Millis() int64 {
	return int64(clamp(s)) * segmentMillis
}

// Until returns the time from now until s starts, negative if s has already
// started. It is meant for arming timers that wake the loop at a segment.
// The result saturates at the limits of time.Duration (about ±292 years).
func (s Segment) Until(now time.Time) time.Duration {
	return s.Time().Sub(now)
}

// clamp saturates s to [MinSegment, MaxSegment].
func clamp(s Segment) Segment {
	return min(max(s, MinSegment), MaxSegment)
}

// add returns s+d saturated to [MinSegment, MaxSegment], so that arithmetic
// near the ends of the range cannot wrap around.
func add(s, d Segment) Segment {
	s, d = clamp(s), clamp(d)
	switch {
	case d > 0 && s > MaxSegment-d:
		return MaxSegment
	case d < 0 && s < MinSegment-d:
		return MinSegment
	}
	return s + d
}
