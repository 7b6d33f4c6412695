package stats_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/pgworkpool/pgworkpool/stats"
)

// exampleLogger returns a slog.Logger printing text lines without the time,
// so that the examples' output is reproducible.
func exampleLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stdout, &slog.HandlerOptions{
		Level: slog.LevelDebug,
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) == 0 && a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		},
	}))
}

func ExampleReport_ComputeRates() {
	// 21 attempts ended in the interval: 11 succeeded and 10 failed but
	// will be retried. Nothing failed for good.
	r := stats.Report{Completed: 21, Succeeded: 11, Retries: 10}
	r.ComputeRates()
	fmt.Println(r.FailureRate, r.PermanentFailureRate)

	// One of the 11 final outcomes was a permanent failure.
	r = stats.Report{Completed: 21, Succeeded: 10, Failed: 1, Retries: 10}
	r.ComputeRates()
	fmt.Println(r.FailureRate, r.PermanentFailureRate)
	// Output:
	// 0.4762 0
	// 0.5238 0.0909
}

func ExampleParseLevel() {
	l, err := stats.ParseLevel("INFO")
	fmt.Println(l, err)

	_, err = stats.ParseLevel("verbose")
	fmt.Println(errors.Is(err, stats.ErrInvalidLevel))
	// Output:
	// info <nil>
	// true
}

func ExampleLogger() {
	ctx := context.Background()
	log := stats.NewLogger(exampleLogger(), "emails", stats.LevelReport)

	// At the default level, events are dropped and the report is printed.
	log.Started(ctx, stats.Started{WorkID: 1, Fn: "send", Attempt: 1})
	r := stats.Report{
		IntervalStart: time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC),
		IntervalEnd:   time.Date(2025, 3, 1, 12, 0, 10, 0, time.UTC),
		Completed:     4, Succeeded: 3, Failed: 1, Running: 2,
		RunTime: stats.Percentiles{P50: 120 * time.Millisecond, P95: 900 * time.Millisecond, P99: time.Second},
	}
	r.ComputeRates()
	log.Report(ctx, r)

	// Raising the level to Info, for example after it changed in the
	// database, turns the events on.
	log.SetLevel(stats.LevelInfo)
	log.Completed(ctx, stats.Completed{WorkID: 1, Fn: "send", Label: "welcome",
		Status: stats.StatusSuccess, Attempts: 1, RunTime: 1500 * time.Microsecond})
	// Output:
	// level=INFO msg=report pool=emails event=report completed=4 succeeded=3 failed=1 retries=0 canceled=0 running=2 backlog=0 future=0 unclaimed=0 finishing=0 failure_rate=0.25 permanent_failure_rate=0.25 start_lag_p50_ms=0 start_lag_p95_ms=0 start_lag_p99_ms=0 run_time_p50_ms=120 run_time_p95_ms=900 run_time_p99_ms=1000 interval_start=2025-03-01T12:00:00.000Z interval_end=2025-03-01T12:00:10.000Z
	// level=INFO msg=completed pool=emails event=completed work_id=1 fn=send label=welcome status=success attempts=1 run_time_ms=1.5
}

func ExampleSampler() {
	s := stats.NewSampler(0)
	for ms := 1; ms <= 100; ms++ {
		s.Add(time.Duration(ms) * time.Millisecond)
	}
	p := s.Percentiles()
	fmt.Println(s.Count(), p.P50, p.P95, p.P99)

	// Start the next report interval.
	s.Reset()
	fmt.Println(s.Count(), s.Percentiles())
	// Output:
	// 100 50ms 95ms 99ms
	// 0 {0s 0s 0s}
}
