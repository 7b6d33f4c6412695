package segments

import (
	"math"
	"testing"
	"time"
)

// ms returns the instant ms milliseconds after the Unix epoch, in UTC.
func ms(n int64) time.Time { return time.UnixMilli(n).UTC() }

func TestConstants(t *testing.T) {
	tests := []struct {
		name string
		got  Segment
		want Segment
	}{
		{"Second", Second, 10},
		{"Minute", Minute, 600},
		{"Year", Year, 315_360_000},
		{"CursorBuffer", CursorBuffer, 150},
		{"RecoveryPeriod", RecoveryPeriod, 600},
		{"MaxSegment", MaxSegment, 92_233_720_368_547_758},
		{"MinSegment", MinSegment, -92_233_720_368_547_758},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("%s = %d, want %d", tt.name, tt.got, tt.want)
		}
	}
	if Duration != 100*time.Millisecond {
		t.Errorf("Duration = %v, want 100ms", Duration)
	}
	if got := duration(Year); got != 365*24*time.Hour {
		t.Errorf("duration(Year) = %v, want 365 days", got)
	}
}

func TestOf(t *testing.T) {
	tests := []struct {
		d    time.Duration
		want Segment
	}{
		{0, 0},
		{1, 1},
		{99 * time.Millisecond, 1},
		{100*time.Millisecond - 1, 1},
		{100 * time.Millisecond, 1},
		{100*time.Millisecond + 1, 2},
		{150 * time.Millisecond, 2},
		{200 * time.Millisecond, 2},
		{15 * time.Second, CursorBuffer},
		{time.Minute, RecoveryPeriod},
		{-1, 0},
		{-100 * time.Millisecond, -1},
		{-150 * time.Millisecond, -1},
		{-200 * time.Millisecond, -2},
		{math.MaxInt64, 92_233_720_369},
		{math.MinInt64, -92_233_720_368},
	}
	for _, tt := range tests {
		if got := Of(tt.d); got != tt.want {
			t.Errorf("Of(%v) = %d, want %d", tt.d, got, tt.want)
		}
	}
}

func TestFromTime(t *testing.T) {
	tests := []struct {
		name string
		t    time.Time
		want Segment
	}{
		{"epoch", ms(0), 0},
		{"1ns after epoch", ms(0).Add(1), 0},
		{"1ns before segment 1", ms(100).Add(-1), 0},
		{"exactly segment 1", ms(100), 1},
		{"middle of segment 1", ms(150), 1},
		{"1ns before epoch", ms(0).Add(-1), -1},
		{"exactly segment -1", ms(-100), -1},
		{"1ns before segment -1", ms(-100).Add(-1), -2},
		{"middle of segment -2", ms(-150), -2},
		{"2024", time.Date(2024, 1, 2, 3, 4, 5, 678_000_000, time.UTC), 17_041_646_456},
		{"location ignored", time.Date(2024, 1, 2, 4, 4, 5, 678_000_000, time.FixedZone("CET", 3600)), 17_041_646_456},
		{"year 1", time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC), -621_355_968_000},
		{"year 1, 1ns before", time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC).Add(-1), -621_355_968_001},
		{"year 9999", time.Date(9999, 12, 31, 23, 59, 59, 999_999_999, time.UTC), 2_534_023_007_999},
		{"zero time", time.Time{}, -621_355_968_000},
		{"far future saturates", time.Unix(math.MaxInt64/2, 0), MaxSegment},
		{"far past saturates", time.Unix(math.MinInt64/2, 0), MinSegment},
		{"last in range", time.Unix(int64(MaxSegment)/10, 999_999_999), MaxSegment},
		{"first in range", time.Unix(int64(MinSegment)/10-1, 200_000_000), MinSegment},
		{"just before first in range", time.Unix(int64(MinSegment)/10-1, 199_999_999), MinSegment},
	}
	for _, tt := range tests {
		if got := FromTime(tt.t); got != tt.want {
			t.Errorf("%s: FromTime(%v) = %d, want %d", tt.name, tt.t, got, tt.want)
		}
		if got := Current(tt.t); got != tt.want {
			t.Errorf("%s: Current(%v) = %d, want %d", tt.name, tt.t, got, tt.want)
		}
	}
}

func TestTime(t *testing.T) {
	tests := []struct {
		s    Segment
		want time.Time
	}{
		{0, ms(0)},
		{1, ms(100)},
		{-1, ms(-100)},
		{-15, ms(-1500)},
		{17_041_646_456, time.Date(2024, 1, 2, 3, 4, 5, 600_000_000, time.UTC)},
		{-621_355_968_000, time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC)},
		{MaxSegment, time.Unix(int64(MaxSegment)/10, 800_000_000)},
		{math.MaxInt64, time.Unix(int64(MaxSegment)/10, 800_000_000)},
		{MinSegment, time.Unix(int64(MinSegment)/10-1, 200_000_000)},
		{math.MinInt64, time.Unix(int64(MinSegment)/10-1, 200_000_000)},
	}
	for _, tt := range tests {
		got := tt.s.Time()
		if !got.Equal(tt.want) {
			t.Errorf("Segment(%d).Time() = %v, want %v", tt.s, got, tt.want)
		}
		if got.Location() != time.UTC {
			t.Errorf("Segment(%d).Time() location = %v, want UTC", tt.s, got.Location())
		}
	}
}

func TestNext(t *testing.T) {
	tests := []struct {
		now  time.Time
		want Segment
	}{
		{ms(0), 1},
		{ms(99), 1},
		{ms(100), 2},
		{ms(-1), 0},
		{ms(-100), 0},
		{ms(-101), -1},
		{time.Unix(math.MaxInt64/2, 0), MaxSegment},
	}
	for _, tt := range tests {
		if got := Next(tt.now); got != tt.want {
			t.Errorf("Next(%v) = %d, want %d", tt.now, got, tt.want)
		}
	}
}

func TestFromMillis(t *testing.T) {
	tests := []struct {
		ms   int64
		want Segment
	}{
		{0, 0},
		{1, 0},
		{99, 0},
		{100, 1},
		{199, 1},
		{-1, -1},
		{-99, -1},
		{-100, -1},
		{-101, -2},
		{1_704_164_645_678, 17_041_646_456},
		{math.MaxInt64, MaxSegment},
		{math.MinInt64, MinSegment},
		{math.MinInt64 + 8, MinSegment},
		{math.MinInt64 + 7, MinSegment},
	}
	for _, tt := range tests {
		if got := FromMillis(tt.ms); got != tt.want {
			t.Errorf("FromMillis(%d) = %d, want %d", tt.ms, got, tt.want)
		}
	}
}

func TestMillis(t *testing.T) {
	tests := []struct {
		s    Segment
		want int64
	}{
		{0, 0},
		{1, 100},
		{-1, -100},
		{17_041_646_456, 1_704_164_645_600},
		{MaxSegment, math.MaxInt64 - 7},
		{math.MaxInt64, math.MaxInt64 - 7},
		{MinSegment, math.MinInt64 + 8},
		{math.MinInt64, math.MinInt64 + 8},
	}
	for _, tt := range tests {
		if got := tt.s.Millis(); got != tt.want {
			t.Errorf("Segment(%d).Millis() = %d, want %d", tt.s, got, tt.want)
		}
	}
}

func TestUntil(t *testing.T) {
	tests := []struct {
		s    Segment
		now  time.Time
		want time.Duration
	}{
		{1, ms(0), 100 * time.Millisecond},
		{1, ms(100), 0},
		{1, ms(150), -50 * time.Millisecond},
		{0, ms(0).Add(-1), 1},
		{-1, ms(0), -100 * time.Millisecond},
		{Next(ms(1234)), ms(1234), 66 * time.Millisecond},
		{MaxSegment, ms(0), math.MaxInt64},
		{MinSegment, ms(0), math.MinInt64},
	}
	for _, tt := range tests {
		if got := tt.s.Until(tt.now); got != tt.want {
			t.Errorf("Segment(%d).Until(%v) = %v, want %v", tt.s, tt.now, got, tt.want)
		}
	}
}

func TestBound(t *testing.T) {
	now := time.Date(2024, 6, 1, 12, 0, 0, 0, time.UTC)
	year := 365 * 24 * time.Hour
	tests := []struct {
		name       string
		t          time.Time
		want       time.Time
		wantReason BoundReason
	}{
		{"now", now, now, InRange},
		{"an hour ago", now.Add(-time.Hour), now.Add(-time.Hour), InRange},
		{"exactly 1 year old", now.Add(-year), now.Add(-year), InRange},
		{"1 year + 1ns old", now.Add(-year - 1), now, TooOld},
		{"zero time", time.Time{}, now, TooOld},
		{"exactly 4 years ahead", now.Add(4 * year), now.Add(4 * year), InRange},
		{"4 years + 1ns ahead", now.Add(4*year + 1), now.Add(year), TooFar},
		{"year 9999", time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC), now.Add(year), TooFar},
		{"seconds mistaken for ms", time.UnixMilli(now.Unix() * 1000 * 1000), now.Add(year), TooFar},
	}
	for _, tt := range tests {
		got, reason := Bound(tt.t, now)
		if !got.Equal(tt.want) || reason != tt.wantReason {
			t.Errorf("%s: Bound(%v, now) = %v, %v; want %v, %v", tt.name, tt.t, got, reason, tt.want, tt.wantReason)
		}
	}
}

func TestBoundSegment(t *testing.T) {
	now := FromTime(time.Date(2024, 6, 1, 12, 0, 0, 0, time.UTC))
	tests := []struct {
		name       string
		s          Segment
		want       Segment
		wantReason BoundReason
	}{
		{"now", now, now, InRange},
		{"exactly 1 year old", now - Year, now - Year, InRange},
		{"1 year + 1 segment old", now - Year - 1, now, TooOld},
		{"exactly 4 years ahead", now + 4*Year, now + 4*Year, InRange},
		{"4 years + 1 segment ahead", now + 4*Year + 1, now + Year, TooFar},
		{"MinInt64", math.MinInt64, now, TooOld},
		{"MaxInt64", math.MaxInt64, now + Year, TooFar},
	}
	for _, tt := range tests {
		got, reason := BoundSegment(tt.s, now)
		if got != tt.want || reason != tt.wantReason {
			t.Errorf("%s: BoundSegment(%d, %d) = %d, %v; want %d, %v", tt.name, tt.s, now, got, reason, tt.want, tt.wantReason)
		}
	}

	// Near the ends of the range the bounds saturate instead of wrapping.
	edges := []struct {
		name       string
		s, now     Segment
		want       Segment
		wantReason BoundReason
	}{
		{"max now, max s", MaxSegment, MaxSegment, MaxSegment, InRange},
		{"max now, MaxInt64 s", math.MaxInt64, MaxSegment, MaxSegment, TooFar},
		{"min now, min s", MinSegment, MinSegment, MinSegment, InRange},
		{"min now, MinInt64 s", math.MinInt64, MinSegment, MinSegment, TooOld},
	}
	for _, tt := range edges {
		got, reason := BoundSegment(tt.s, tt.now)
		if got != tt.want || reason != tt.wantReason {
			t.Errorf("%s: BoundSegment(%d, %d) = %d, %v; want %d, %v", tt.name, tt.s, tt.now, got, reason, tt.want, tt.wantReason)
		}
	}
}

func TestBoundReasonString(t *testing.T) {
	tests := []struct {
		r    BoundReason
		want string
	}{
		{InRange, "scheduled time is in range"},
		{TooOld, "scheduled time is too old, defaulting to now"},
		{TooFar, "scheduled time is too far in the future, defaulting to 1 year from now"},
		{BoundReason(42), "unknown bound reason"},
	}
	for _, tt := range tests {
		if got := tt.r.String(); got != tt.want {
			t.Errorf("BoundReason(%d).String() = %q, want %q", int(tt.r), got, tt.want)
		}
	}
}

func TestAdd(t *testing.T) {
	tests := []struct {
		s, d, want Segment
	}{
		{1, 2, 3},
		{1, -2, -1},
		{MaxSegment, 1, MaxSegment},
		{MaxSegment - 1, 1, MaxSegment},
		{MinSegment, -1, MinSegment},
		{MinSegment + 1, -1, MinSegment},
		{math.MaxInt64, math.MaxInt64, MaxSegment},
		{math.MinInt64, math.MinInt64, MinSegment},
		{math.MaxInt64, math.MinInt64, 0},
	}
	for _, tt := range tests {
		if got := add(tt.s, tt.d); got != tt.want {
			t.Errorf("add(%d, %d) = %d, want %d", tt.s, tt.d, got, tt.want)
		}
	}
}

// fuzzMillisLimit bounds the inputs of the fuzz targets to ±1e15 ms (about
// ±31,700 years), far beyond any real clock yet well inside the range.
const fuzzMillisLimit = 1e15

// fuzzMillis folds any int64 into [-fuzzMillisLimit, fuzzMillisLimit],
// leaving values already inside unchanged, so that no fuzz input is wasted.
func fuzzMillis(n int64) int64 { return n % (fuzzMillisLimit + 1) }

func FuzzRoundTrip(f *testing.F) {
	f.Add(int64(0), int64(0))
	f.Add(int64(-1), int64(0))
	f.Add(int64(99), int64(100))
	f.Add(int64(-101), int64(-100))
	f.Add(int64(1_704_164_645_678), int64(1_704_164_645_699))
	f.Fuzz(func(t *testing.T, a, b int64) {
		a, b = fuzzMillis(a), fuzzMillis(b)
		s := FromMillis(a)
		if m := s.Millis(); !(m <= a && a < m+100) {
			t.Fatalf("FromMillis(%d).Millis() = %d, want in (%d, %d]", a, m, a-100, a)
		}
		if got := FromTime(s.Time()); got != s {
			t.Fatalf("FromTime(Segment(%d).Time()) = %d", s, got)
		}
		if got := FromTime(time.UnixMilli(a)); got != s {
			t.Fatalf("FromTime(UnixMilli(%d)) = %d, FromMillis = %d", a, got, s)
		}
		if got := s.Time(); !got.Equal(time.UnixMilli(s.Millis())) {
			t.Fatalf("Segment(%d).Time() = %v, Millis() = %d", s, got, s.Millis())
		}
		lo, hi := min(a, b), max(a, b)
		if FromMillis(lo) > FromMillis(hi) {
			t.Fatalf("not monotonic: FromMillis(%d) = %d > FromMillis(%d) = %d", lo, FromMillis(lo), hi, FromMillis(hi))
		}
		d := time.Duration(hi-lo) * time.Millisecond
		if n := Of(d); time.Duration(n)*Duration < d || time.Duration(n-1)*Duration >= d {
			t.Fatalf("Of(%v) = %d, not the smallest count covering it", d, n)
		}
	})
}

func FuzzBound(f *testing.F) {
	f.Add(int64(0), int64(0))
	f.Add(int64(1_717_243_200_000), int64(1_717_243_200_000-365*24*3600*1000-1))
	f.Add(int64(1_717_243_200_000), int64(1_717_243_200_000+4*365*24*3600*1000+1))
	f.Fuzz(func(t *testing.T, nowMs, tMs int64) {
		nowMs, tMs = fuzzMillis(nowMs), fuzzMillis(tMs)
		now, in := time.UnixMilli(nowMs), time.UnixMilli(tMs)
		lo, hi := now.Add(-duration(Year)), now.Add(duration(4*Year))

		got, reason := Bound(in, now)
		if got.Before(lo) || got.After(hi) {
			t.Fatalf("Bound(%v, %v) = %v, outside [%v, %v]", in, now, got, lo, hi)
		}
		switch reason {
		case InRange:
			if !got.Equal(in) {
				t.Fatalf("Bound(%v, %v) = %v, InRange but changed", in, now, got)
			}
		case TooOld:
			if !in.Before(lo) || !got.Equal(now) {
				t.Fatalf("Bound(%v, %v) = %v, TooOld", in, now, got)
			}
		case TooFar:
			if !in.After(hi) || !got.Equal(now.Add(duration(Year))) {
				t.Fatalf("Bound(%v, %v) = %v, TooFar", in, now, got)
			}
		default:
			t.Fatalf("Bound(%v, %v) gave unknown reason %d", in, now, reason)
		}
		if again, r := Bound(got, now); r != InRange || !again.Equal(got) {
			t.Fatalf("Bound not idempotent: Bound(%v, %v) = %v, %v", got, now, again, r)
		}

		s, nowSeg := FromMillis(tMs), FromMillis(nowMs)
		gs, sreason := BoundSegment(s, nowSeg)
		if gs < nowSeg-Year || gs > nowSeg+4*Year {
			t.Fatalf("BoundSegment(%d, %d) = %d, outside bounds", s, nowSeg, gs)
		}
		if sreason == InRange && gs != s {
			t.Fatalf("BoundSegment(%d, %d) = %d, InRange but changed", s, nowSeg, gs)
		}
		if again, r := BoundSegment(gs, nowSeg); r != InRange || again != gs {
			t.Fatalf("BoundSegment not idempotent: BoundSegment(%d, %d) = %d, %v", gs, nowSeg, again, r)
		}
	})
}

func TestSegmentDuration(t *testing.T) {
	cases := []struct {
		s    Segment
		want time.Duration
	}{
		{0, 0},
		{1, 100 * time.Millisecond},
		{RecoveryPeriod, time.Minute},
		{CursorBuffer, 15 * time.Second},
		{-3, -300 * time.Millisecond},
		{MaxSegment, math.MaxInt64},
		{MinSegment, math.MinInt64},
	}
	for _, c := range cases {
		if got := c.s.Duration(); got != c.want {
			t.Errorf("Segment(%d).Duration() = %v, want %v", c.s, got, c.want)
		}
		if c.s > 0 && c.s < MaxSegment && Of(c.s.Duration()) != c.s {
			t.Errorf("Of(Segment(%d).Duration()) != %d", c.s, c.s)
		}
	}
}
