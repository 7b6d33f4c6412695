// Command multiprocess shows that a pool's MaxParallelism is global: it
// holds across every process working on the pool, not per process.
//
// The program re-executes itself as -workers worker processes (default 3)
// on one pool, each with more local handler slots (-slots, default twice
// the limit) than the pool's limit (-limit, default 5). The parent only
// enqueues: -items work items (default 500) whose handler records, with the
// database's clock_timestamp(), which process ran it and when it started
// and ended, and sleeps 5-20 ms in between. Once every item's onComplete
// has committed, the parent sweeps over the recorded start and end events
// to find the largest number of handlers that ran at the same time across
// all processes, prints it with per-process counts, and stops the workers
// with SIGTERM (each calls pool.Stop with a timeout and exits 0).
//
// It exits 1 if that maximum exceeds the limit, if any item ran twice or
// never, or if a worker did not stop cleanly. Run it with
//
//	go run ./examples/multiprocess [-workers 3] [-limit 5] [-items 500]
//
// It uses DATABASE_URL when set (tables go to the schema
// workpool_multiprocess, dropped before and after the run); otherwise it
// starts a throwaway Postgres that the worker processes share.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/uptrace/bun"

	"github.com/pgworkpool/pgworkpool/internal/pgtest"
	"github.com/pgworkpool/pgworkpool/migrations"
	"github.com/pgworkpool/pgworkpool/workpool"
)

const (
	schema   = "workpool_multiprocess"
	poolName = "multiprocess"
	// readyLine is what a worker prints on stdout once its pool started.
	readyLine = "ready"
)

var (
	workerMode = flag.Bool("worker", false, "run as a worker process (the parent starts these itself)")
	workers    = flag.Int("workers", 3, "worker processes to start")
	limit      = flag.Int("limit", 5, "the pool's MaxParallelism, summed over all processes")
	slots      = flag.Int("slots", 0, "handler slots per worker process (Config.Workers); default 2 × limit")
	items      = flag.Int("items", 500, "work items to enqueue")
	timeout    = flag.Duration("timeout", 25*time.Second, "give up if the items are not done by then")
)

// Item is the argument of the "record" function.
type Item struct {
	N int `json:"n"`
}

func main() {
	flag.Parse()
	if *slots == 0 {
		*slots = 2 * *limit
	}
	var err error
	if *workerMode {
		err = worker()
	} else {
		err = parent()
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "multiprocess (pid %d): %v\n", os.Getpid(), err)
		os.Exit(1)
	}
}

// newPool returns the pool every process uses, with the "record" function
// and the "done" onComplete registered.
func newPool(db *bun.DB, name string) (*workpool.Pool, *workpool.Func[Item, struct{}], *workpool.OnCompleteHandler[int, struct{}], error) {
	pool, err := workpool.New(db, workpool.Config{
		Name:           poolName,
		Schema:         schema,
		MaxParallelism: *limit,
		Workers:        *slots,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})).
			With("process", name),
	})
	if err != nil {
		return nil, nil, nil, err
	}
	pid := os.Getpid()
	// The handler: autocommit statements on the pool's own database, one
	// to read the database clock at the start and one to record the run
	// with the clock at the end. Both readings fall inside the time the
	// item holds one of the pool's slots.
	record, err := workpool.RegisterNoResult(pool, "record", func(ctx context.Context, it Item) error {
		var start time.Time
		if err := db.QueryRowContext(ctx, "SELECT clock_timestamp()").Scan(&start); err != nil {
			return err
		}
		select {
		case <-time.After(time.Duration(5+rand.IntN(16)) * time.Millisecond):
		case <-ctx.Done():
			return ctx.Err()
		}
		_, err := db.ExecContext(ctx, "INSERT INTO "+schema+".runs (item, pid, started_at, ended_at) VALUES (?, ?, ?, clock_timestamp())",
			it.N, pid, start)
		return err
	})
	if err != nil {
		return nil, nil, nil, err
	}
	// The onComplete: one row per item, in the transaction that ends it.
	done, err := workpool.RegisterOnComplete(pool, "done", func(ctx context.Context, tx bun.Tx, c workpool.Completion[int, struct{}]) error {
		_, err := tx.ExecContext(ctx, "INSERT INTO "+schema+".done (item, status, attempts, error, pid) VALUES (?, ?, ?, ?, ?)",
			c.Context, string(c.Status), c.Attempts, c.Error, pid)
		return err
	})
	if err != nil {
		return nil, nil, nil, err
	}
	return pool, record, done, nil
}

// worker runs the pool's handlers until SIGTERM, SIGINT or the end of its
// stdin (the parent went away), then stops the pool.
func worker() error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		stop()
	}()
	url := os.Getenv("DATABASE_URL")
	if url == "" {
		return errors.New("DATABASE_URL is not set")
	}
	db, err := pgtest.Open(url)
	if err != nil {
		return err
	}
	defer db.Close()
	pool, _, _, err := newPool(db, fmt.Sprintf("worker-%d", os.Getpid()))
	if err != nil {
		return err
	}
	if err := pool.Start(context.WithoutCancel(ctx)); err != nil {
		return err
	}
	fmt.Println(readyLine)
	<-ctx.Done()
	began := time.Now()
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	stopped := make(chan error, 1)
	go func() { stopped <- pool.Stop(sctx) }()
	select {
	case err := <-stopped:
		if err != nil {
			return fmt.Errorf("stop: %w", err)
		}
	case <-time.After(15 * time.Second):
		// Stop waits for results it is still writing, so it can outlast
		// its context while the database is unreachable (e.g. the parent
		// and its throwaway Postgres were killed): do not linger forever.
		return errors.New("stop: pool.Stop did not return within 15 s")
	}
	fmt.Printf("stopped cleanly in %v\n", time.Since(began).Round(time.Millisecond))
	return nil
}

// child is a started worker process.
type child struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan string // its stdout
	exit  chan error  // its Wait result
}

func parent() (err error) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *workers < 1 || *limit < 1 || *items < 1 {
		return errors.New("-workers, -limit and -items must be positive")
	}
	srv, err := pgtest.Start(ctx, pgtest.Options{})
	if err != nil {
		return err
	}
	defer srv.Stop()
	if srv.Owned() {
		fmt.Println("Started a throwaway Postgres (set DATABASE_URL to use your own).")
	}
	db, err := pgtest.Open(srv.URL())
	if err != nil {
		return err
	}
	defer db.Close()
	dropSchema := func() {
		_, _ = db.ExecContext(context.WithoutCancel(ctx), "DROP SCHEMA IF EXISTS "+schema+" CASCADE")
	}
	dropSchema() // leftovers of an interrupted run
	defer dropSchema()
	if _, err := migrations.Migrate(ctx, db, migrations.WithSchema(schema)); err != nil {
		return err
	}
	for _, ddl := range []string{
		"CREATE TABLE " + schema + ".runs (item int NOT NULL, pid int NOT NULL, started_at timestamptz NOT NULL, ended_at timestamptz NOT NULL)",
		"CREATE TABLE " + schema + ".done (item int NOT NULL, status text NOT NULL, attempts int NOT NULL, error text, pid int NOT NULL)",
	} {
		if _, err := db.ExecContext(ctx, ddl); err != nil {
			return err
		}
	}

	// Start the workers and wait until each has started its pool.
	exe, err := os.Executable()
	if err != nil {
		exe = os.Args[0]
	}
	var children []*child
	defer func() {
		if serr := stopChildren(children); serr != nil && err == nil {
			err = serr
		}
	}()
	for range *workers {
		c, err := startChild(exe, srv.URL())
		if err != nil {
			return err
		}
		children = append(children, c)
	}
	for _, c := range children {
		if err := c.waitReady(ctx, 15*time.Second); err != nil {
			return err
		}
	}
	pids := make([]string, len(children))
	for i, c := range children {
		pids[i] = fmt.Sprint(c.cmd.Process.Pid)
	}
	fmt.Printf("Started %d worker processes (pids %s), each with %d handler slots; the pool's MaxParallelism is %d.\n",
		len(children), strings.Join(pids, ", "), *slots, *limit)

	// The parent only enqueues: it registers the functions to get their
	// handles but never starts its pool.
	pool, record, done, err := newPool(db, "parent")
	if err != nil {
		return err
	}
	args := make([]Item, *items)
	for i := range args {
		args[i] = Item{N: i}
	}
	began := time.Now()
	// Each item carries its number as its onComplete context, so it is
	// enqueued on its own (EnqueueBatch shares one set of options), in
	// transactions of 100.
	for start := 0; start < len(args); start += 100 {
		end := min(start+100, len(args))
		err := db.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
			for _, a := range args[start:end] {
				if _, err := pool.EnqueueTx(ctx, tx, record, a, workpool.OnComplete(done, a.N)); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	fmt.Printf("Enqueued %d items in %v; waiting for them to finish.\n", *items, time.Since(began).Round(time.Millisecond))

	// Wait for every onComplete row.
	deadline := time.Now().Add(*timeout)
	last := time.Now()
	for {
		var n int
		if err := db.QueryRowContext(ctx, "SELECT count(*) FROM "+schema+".done").Scan(&n); err != nil {
			return err
		}
		if n >= *items {
			break
		}
		if time.Since(last) >= time.Second {
			fmt.Printf("  %d/%d done after %.1fs\n", n, *items, time.Since(began).Seconds())
			last = time.Now()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("only %d of %d items finished within %v", n, *items, *timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	elapsed := time.Since(began)
	fmt.Printf("All %d items finished in %.2fs.\n", *items, elapsed.Seconds())

	// Stop the workers before checking, so nothing runs any more.
	serr := stopChildren(children)
	children = nil
	if serr != nil {
		return serr
	}
	return check(ctx, db)
}

func startChild(exe, url string) (*child, error) {
	cmd := exec.Command(exe, "-worker",
		fmt.Sprintf("-limit=%d", *limit), fmt.Sprintf("-slots=%d", *slots))
	cmd.Env = append(os.Environ(), "DATABASE_URL="+url)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start worker: %w", err)
	}
	c := &child{cmd: cmd, stdin: stdin, lines: make(chan string, 16), exit: make(chan error, 1)}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			c.lines <- sc.Text()
		}
		close(c.lines)
		c.exit <- cmd.Wait()
	}()
	return c, nil
}

func (c *child) waitReady(ctx context.Context, d time.Duration) error {
	select {
	case line, ok := <-c.lines:
		switch {
		case !ok:
			return fmt.Errorf("worker %d exited before it was ready", c.cmd.Process.Pid)
		case line != readyLine:
			return fmt.Errorf("worker %d: got %q before it was ready", c.cmd.Process.Pid, line)
		}
		return nil
	case <-time.After(d):
		return fmt.Errorf("worker %d not ready after %v", c.cmd.Process.Pid, d)
	case <-ctx.Done():
		return ctx.Err()
	}
}

// stopChildren sends SIGTERM to every worker and waits for each to exit 0
// after printing that it stopped; a worker still running after 10 s is
// killed.
func stopChildren(children []*child) error {
	for _, c := range children {
		_ = c.cmd.Process.Signal(syscall.SIGTERM)
	}
	var errs []error
	for _, c := range children {
		pid := c.cmd.Process.Pid
		timer := time.NewTimer(10 * time.Second)
		var said []string
		lines := c.lines
		drain := func() { // lines is closed before exit is sent
			if lines != nil {
				for line := range lines {
					said = append(said, line)
				}
			}
		}
	wait:
		for {
			select {
			case line, ok := <-lines:
				if !ok {
					lines = nil
					continue
				}
				said = append(said, line)
			case err := <-c.exit:
				if err != nil {
					errs = append(errs, fmt.Errorf("worker %d: %v", pid, err))
				}
				drain()
				break wait
			case <-timer.C:
				_ = c.cmd.Process.Kill()
				errs = append(errs, fmt.Errorf("worker %d did not stop within 10 s; killed", pid))
				<-c.exit
				drain()
				break wait
			}
		}
		timer.Stop()
		_ = c.stdin.Close()
		fmt.Printf("  worker %d: %s\n", pid, strings.Join(said, "; "))
	}
	return errors.Join(errs...)
}

// check computes the largest number of handlers that ran at once and
// checks that every item ran and completed exactly once.
func check(ctx context.Context, db *bun.DB) error {
	type run struct {
		Item      int
		Pid       int
		StartedAt time.Time
		EndedAt   time.Time
	}
	rows, err := db.QueryContext(ctx, "SELECT item, pid, started_at, ended_at FROM "+schema+".runs")
	if err != nil {
		return err
	}
	var runs []run
	for rows.Next() {
		var r run
		if err := rows.Scan(&r.Item, &r.Pid, &r.StartedAt, &r.EndedAt); err != nil {
			return err
		}
		runs = append(runs, r)
	}
	if err := rows.Err(); err != nil {
		return err
	}

	// Sweep: +1 at each start, -1 at each end; at equal times ends come
	// first, since a handler that ended at t no longer held its slot.
	type event struct {
		at    time.Time
		delta int
		pid   int
	}
	events := make([]event, 0, 2*len(runs))
	for _, r := range runs {
		events = append(events, event{r.StartedAt, +1, r.Pid}, event{r.EndedAt, -1, r.Pid})
	}
	sort.Slice(events, func(i, j int) bool {
		if !events[i].at.Equal(events[j].at) {
			return events[i].at.Before(events[j].at)
		}
		return events[i].delta < events[j].delta
	})
	maxAll, cur := 0, 0
	perPid := map[int]int{}
	peakPid := map[int]int{}
	var maxAt time.Time
	for _, e := range events {
		cur += e.delta
		perPid[e.pid] += e.delta
		peakPid[e.pid] = max(peakPid[e.pid], perPid[e.pid])
		if cur > maxAll {
			maxAll, maxAt = cur, e.at
		}
	}

	counts := map[int]int{}
	ran := make([]int, *items)
	for _, r := range runs {
		counts[r.Pid]++
		if r.Item >= 0 && r.Item < *items {
			ran[r.Item]++
		}
	}
	var problems []string
	var twice, never []int
	for i, n := range ran {
		switch {
		case n == 0:
			never = append(never, i)
		case n > 1:
			twice = append(twice, i)
		}
	}
	if len(twice) > 0 {
		problems = append(problems, fmt.Sprintf("%d items ran more than once (e.g. %v)", len(twice), twice[:min(5, len(twice))]))
	}
	if len(never) > 0 {
		problems = append(problems, fmt.Sprintf("%d items never ran (e.g. %v)", len(never), never[:min(5, len(never))]))
	}
	var bad int
	if err := db.QueryRowContext(ctx, "SELECT count(*) FROM (SELECT item FROM "+schema+".done"+
		" GROUP BY item HAVING count(*) <> 1 OR bool_or(status <> 'success')) x").Scan(&bad); err != nil {
		return err
	}
	if bad > 0 {
		problems = append(problems, fmt.Sprintf("%d items did not complete exactly once with success", bad))
	}
	if maxAll > *limit {
		problems = append(problems, fmt.Sprintf("%d handlers ran at once, above the limit of %d", maxAll, *limit))
	}

	pids := make([]int, 0, len(counts))
	for pid := range counts {
		pids = append(pids, pid)
	}
	slices.Sort(pids)
	fmt.Println("\nPer process:")
	for _, pid := range pids {
		fmt.Printf("  pid %-7d ran %4d items, at most %d at once\n", pid, counts[pid], peakPid[pid])
	}
	fmt.Printf("\nMost handlers running at the same time, across all processes: %d (limit %d, at %s).\n",
		maxAll, *limit, maxAt.Format("15:04:05.000000"))
	fmt.Printf("%d runs recorded for %d items: %d ran twice, %d never.\n", len(runs), *items, len(twice), len(never))
	if len(problems) > 0 {
		for _, p := range problems {
			fmt.Println("  PROBLEM:", p)
		}
		return fmt.Errorf("%d problems", len(problems))
	}
	fmt.Println("The limit held across processes and every item ran exactly once.")
	return nil
}
