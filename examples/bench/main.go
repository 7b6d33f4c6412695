// Command bench measures pgworkpool against River (github.com/riverqueue/river)
// side by side, on the same Postgres server and database, one system at a
// time: throughput of a pre-filled queue (drain), end-to-end throughput under
// concurrent producers (steady), start latency at a low rate (latency), the
// transactions an idle system costs (idle), the effect of a large backlog of
// future work (backlog) and how well slow jobs keep the slots busy (slots).
//
// See README.md for what each mode measures and how to read the ratios.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/pprof"
	"time"

	"github.com/pgworkpool/pgworkpool/internal/pgtest"
)

func main() {
	o, err := parseFlags(os.Args[1:], os.Stderr)
	if err != nil {
		os.Exit(2)
	}
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt)
	defer cancel()
	stopProfile, err := startCPUProfile(o.cpuProfile)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
	err = runMain(ctx, o, os.Stdout, os.Stderr)
	stopProfile()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// startCPUProfile writes a CPU profile of the whole run to path (nothing
// when path is empty), for `go tool pprof`: the bench's own process holds
// both systems' client side, so profile one system at a time (-system).
func startCPUProfile(path string) (stop func(), err error) {
	if path == "" {
		return func() {}, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}, nil
}

// runMain starts the throwaway server (or uses DATABASE_URL), runs the
// benchmark and stops the server.
func runMain(ctx context.Context, o options, stdout, stderr io.Writer) error {
	srv, err := pgtest.Start(ctx, pgtest.Options{Fsync: true})
	if err != nil {
		return fmt.Errorf("start postgres: %w", err)
	}
	defer srv.Stop()
	return run(ctx, o, srv.URL(), stdout, stderr)
}

// options are the parsed flags. Zero values mean the mode's default.
type options struct {
	mode        string
	system      string
	n           int
	parallelism int
	producers   int
	// producerTx makes steady's producers open and commit a transaction
	// per job themselves.
	producerTx bool
	seconds    float64
	sleep      time.Duration
	json       bool
	riverTuned bool
	repeat     int

	conns         int
	timeout       time.Duration
	backlogRows   int
	backlogSettle bool
	checkpoint    bool
	settle        time.Duration
	riverCooldown time.Duration
	riverPoll     time.Duration
	// wpCooldown and wpPoll set our Config.Cooldown and PollInterval;
	// zero keeps the library defaults.
	wpCooldown time.Duration
	wpPoll     time.Duration
	// cpuProfile is where to write a CPU profile of the run ("": none).
	cpuProfile string
}

// modeDefaults are the values a mode uses for flags left unset.
var modeDefaults = map[string]struct {
	n, parallelism int
	seconds        float64
}{
	"drain":   {n: 50_000, parallelism: 1000},
	"steady":  {parallelism: 100, seconds: 10},
	"latency": {parallelism: 10, seconds: 10},
	"idle":    {parallelism: 10, seconds: 30},
	"backlog": {n: 50_000, parallelism: 1000},
	"slots":   {n: 20_000, parallelism: 50},
}

func parseFlags(args []string, errOut io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(errOut)
	fs.StringVar(&o.mode, "mode", "drain", "drain|steady|latency|idle|backlog|slots")
	fs.StringVar(&o.system, "system", "both", "pgworkpool|river|both")
	fs.IntVar(&o.n, "n", 0, "jobs (default: drain 50000, backlog 50000, slots 20000)")
	fs.IntVar(&o.parallelism, "parallelism", 0, "our MaxParallelism and Workers, River's MaxWorkers (default: drain 1000, steady 100, latency 10, idle 10, backlog 1000, slots 50)")
	fs.IntVar(&o.producers, "producers", 8, "producer goroutines in steady mode")
	fs.BoolVar(&o.producerTx, "producer-tx", false, "steady mode: each producer opens and commits a transaction per job (ours EnqueueTx, River InsertTx), so no library can share one commit among producers (false: Enqueue / Insert, as most callers would)")
	fs.Float64Var(&o.seconds, "seconds", 0, "measurement window (default: steady 10, latency 10, idle 30)")
	fs.DurationVar(&o.sleep, "sleep", 20*time.Millisecond, "handler sleep in slots mode")
	fs.BoolVar(&o.json, "json", false, "print one JSON line per system on stdout (the table goes to stderr)")
	fs.BoolVar(&o.riverTuned, "river-tuned", true, "use River's best settings for the mode (false: River's defaults)")
	fs.IntVar(&o.repeat, "repeat", 1, "run both systems this many rounds, alternating which goes first, and report medians")
	fs.IntVar(&o.conns, "conns", 40, "connection pool size of each system (pgxpool MaxConns for River, database/sql MaxOpenConns and MaxIdleConns for us)")
	fs.DurationVar(&o.timeout, "timeout", 5*time.Minute, "give up on a phase (drain, wait for completions) after this long and report the system's state")
	fs.IntVar(&o.backlogRows, "backlog-rows", 1_000_000, "future-scheduled rows inserted in backlog mode")
	fs.BoolVar(&o.backlogSettle, "backlog-settle", true, "backlog mode: CHECKPOINT and VACUUM (ANALYZE) the system's tables after inserting the future rows, so the timed drain measures their presence rather than the write-back of a million fresh rows (false: drain at once)")
	fs.BoolVar(&o.checkpoint, "checkpoint", true, "CHECKPOINT before each system's run, so that a checkpoint that the earlier runs' WAL made due does not fall inside this one's timed phase (false: leave checkpoints to the server)")
	fs.DurationVar(&o.settle, "settle", 12*time.Second, "idle mode: wait after start before the window (Postgres 15 flushes an idle backend's pending statistics up to 10 s late)")
	fs.DurationVar(&o.riverCooldown, "river-cooldown", 0, "override River's FetchCooldown")
	fs.DurationVar(&o.riverPoll, "river-poll", 0, "override River's FetchPollInterval")
	fs.DurationVar(&o.wpCooldown, "cooldown", 0, "pgworkpool only: Config.Cooldown, how long the loop keeps polling after activity before it goes idle (default: the library's, 0)")
	fs.DurationVar(&o.wpPoll, "poll-interval", 0, "pgworkpool only: Config.PollInterval, the polling period during a cooldown (default: the library's, 20ms)")
	fs.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile of the whole run to this file (go tool pprof); best with one -system")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	d, ok := modeDefaults[o.mode]
	if !ok {
		fmt.Fprintf(errOut, "unknown -mode %q\n", o.mode)
		return o, fmt.Errorf("unknown mode %q", o.mode)
	}
	switch o.system {
	case "both", sysPgworkpool, sysRiver:
	default:
		fmt.Fprintf(errOut, "unknown -system %q\n", o.system)
		return o, fmt.Errorf("unknown system %q", o.system)
	}
	if o.n == 0 {
		o.n = d.n
	}
	if o.parallelism == 0 {
		o.parallelism = d.parallelism
	}
	if o.seconds == 0 {
		o.seconds = d.seconds
	}
	if o.wpCooldown < 0 || o.wpPoll < 0 {
		fmt.Fprintln(errOut, "-cooldown and -poll-interval must not be negative")
		return o, fmt.Errorf("bad flags")
	}
	if o.n < 0 || o.parallelism < 1 || o.producers < 1 || o.seconds < 0 || o.conns < 2 || o.repeat < 1 {
		fmt.Fprintln(errOut, "-n, -parallelism, -producers, -seconds, -conns and -repeat must be positive")
		return o, fmt.Errorf("bad flags")
	}
	if o.mode == "steady" && o.seconds <= 1 {
		fmt.Fprintln(errOut, "steady mode needs -seconds > 1 (the first second is warm-up)")
		return o, fmt.Errorf("bad flags")
	}
	return o, nil
}
