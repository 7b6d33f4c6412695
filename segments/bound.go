package segments

import "time"

// Limits applied by Bound and BoundSegment, the same as in Convex.
const (
	// maxAge is how far in the past a scheduled time may lie.
	maxAge = Year
	// maxLead is how far in the future a scheduled time may lie.
	maxLead = 4 * Year
	// farDefault is how far in the future a too-distant time is moved to.
	farDefault = Year
)

// duration converts a count of segments to a time.Duration. It is only used
// for the bounds above, which are far from overflowing.
func duration(n Segment) time.Duration {
	return time.Duration(n) * Duration
}

// BoundReason says whether and why Bound changed a scheduled time. Bound
// does not log; it returns the reason so that the caller can log it with
// its own context.
type BoundReason int

const (
	// InRange means the time was within bounds and returned unchanged.
	InRange BoundReason = iota
	// TooOld means the time was more than a year before now and was
	// replaced by now, so that the work runs immediately.
	TooOld
	// TooFar means the time was more than four years after now and was
	// replaced by one year from now. Such a time is usually a mistake (a
	// unit mix-up, say) and would otherwise keep the work waiting for
	// decades.
	TooFar
)

// String returns a sentence suitable for a log message.
func (r BoundReason) String() string {
	switch r {
	case InRange:
		return "scheduled time is in range"
	case TooOld:
		return "scheduled time is too old, defaulting to now"
	case TooFar:
		return "scheduled time is too far in the future, defaulting to 1 year from now"
	}
	return "unknown bound reason"
}

// Bound clamps a scheduled time t to a sane window around now, so that a
// nonsensical timestamp (a zero time, a unit mix-up) is corrected before it
// reaches the pool's tables. If t is more than a year (365 days) before
// now, it returns now and TooOld. If t is more than four years after now, it
// returns now plus one year and TooFar. Otherwise it returns t unchanged and
// InRange; exactly one year before or exactly four years after now is still
// in range.
//
// A result of Bound is always InRange when bounded again with the same now.
// Bound assumes that now lies at least four years inside the range of
// time.Time, which holds for any real clock.
func Bound(t, now time.Time) (bounded time.Time, reason BoundReason) {
	switch {
	case t.Before(now.Add(-duration(maxAge))):
		return now, TooOld
	case t.After(now.Add(duration(maxLead))):
		return now.Add(duration(farDefault)), TooFar
	}
	return t, InRange
}

// BoundSegment is Bound for segments, for callers that have already
// converted to segments: s more than Year before nowSeg becomes nowSeg
// (TooOld), s more than 4*Year after nowSeg becomes nowSeg+Year (TooFar),
// and anything else is returned unchanged (InRange). Arithmetic saturates at
// MinSegment and MaxSegment.
func BoundSegment(s, nowSeg Segment) (Segment, BoundReason) {
	switch {
	case s < add(nowSeg, -maxAge):
		return nowSeg, TooOld
	case s > add(nowSeg, maxLead):
		return add(nowSeg, farDefault), TooFar
	}
	return s, InRange
}
