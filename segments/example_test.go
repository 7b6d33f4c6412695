package segments_test

import (
	"fmt"
	"time"

	"github.com/pgworkpool/pgworkpool/segments"
)

func ExampleFromTime() {
	t := time.Date(2024, 1, 2, 3, 4, 5, 678_000_000, time.UTC)
	s := segments.FromTime(t)
	fmt.Println(s)
	fmt.Println(s.Time())
	fmt.Println(s.Millis())

	// Times before 1970 round down too, so t is always inside its segment.
	fmt.Println(segments.FromTime(time.UnixMilli(-1)))
	// Output:
	// 17041646456
	// 2024-01-02 03:04:05.6 +0000 UTC
	// 1704164645600
	// -1
}

func ExampleBound() {
	now := time.Date(2024, 6, 1, 12, 0, 0, 0, time.UTC)
	for _, t := range []time.Time{
		now.Add(time.Hour),
		time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(2099, 1, 1, 0, 0, 0, 0, time.UTC),
	} {
		bounded, reason := segments.Bound(t, now)
		if reason != segments.InRange {
			fmt.Printf("%v: %v\n", reason, t)
		}
		fmt.Println(bounded)
	}
	// Output:
	// 2024-06-01 13:00:00 +0000 UTC
	// scheduled time is too old, defaulting to now: 2020-01-01 00:00:00 +0000 UTC
	// 2024-06-01 12:00:00 +0000 UTC
	// scheduled time is too far in the future, defaulting to 1 year from now: 2099-01-01 00:00:00 +0000 UTC
	// 2025-06-01 12:00:00 +0000 UTC
}
