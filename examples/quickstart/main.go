// Command quickstart shows pgworkpool end to end: it registers two
// functions, enqueues a few hundred work items with a mix of outcomes
// (successes, failures that succeed on retry, non-retryable failures,
// delayed starts and cancelations), shows progress while they run, prints
// what the onComplete handler recorded and exits 0 only if every item ended
// in the state it should have.
//
// It uses DATABASE_URL when set (tables go to the schema workpool_quickstart,
// dropped at the end); otherwise it starts a throwaway Postgres.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"sync"
	"time"

	"github.com/uptrace/bun"

	"github.com/pgworkpool/pgworkpool/internal/pgtest"
	"github.com/pgworkpool/pgworkpool/migrations"
	"github.com/pgworkpool/pgworkpool/workpool"
)

const (
	schema    = "workpool_quickstart"
	items     = 300
	delayed   = 10 // started 2 s after enqueue
	canceled  = 5  // of the delayed ones, canceled before they start
	failEvery = 7  // these fail once, then succeed on their retry
	fatalEvry = 50 // these fail with a non-retryable error
)

// Thumbnail is the argument of the "thumbnail" function.
type Thumbnail struct {
	Image int `json:"image"`
	Size  int `json:"size"`
}

// Outcome is what the onComplete handler stores per work item.
type Outcome struct {
	Status   string
	Value    string
	Error    string
	Attempts int
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "quickstart:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context) error {
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
	defer db.ExecContext(context.WithoutCancel(ctx), "DROP SCHEMA IF EXISTS "+schema+" CASCADE")

	if _, err := migrations.Migrate(ctx, db, migrations.WithSchema(schema)); err != nil {
		return err
	}
	if _, err := db.ExecContext(ctx, "CREATE TABLE "+schema+".outcomes "+
		"(work_id bigint PRIMARY KEY, status text, value text, error text, attempts int)"); err != nil {
		return err
	}

	pool, err := workpool.New(db, workpool.Config{
		Schema:         schema,
		MaxParallelism: 10,
		Logger:         slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		return err
	}

	// A function: fails its first attempt for some images, fails for good
	// for others, and takes a few milliseconds otherwise.
	thumbnail, err := workpool.Register(pool, "thumbnail", func(ctx context.Context, t Thumbnail) (string, error) {
		select {
		case <-time.After(time.Duration(5+t.Image%20) * time.Millisecond):
		case <-ctx.Done():
			return "", ctx.Err()
		}
		switch {
		case t.Image%fatalEvry == 0:
			return "", workpool.NonRetryable(fmt.Errorf("image %d is corrupt", t.Image))
		case t.Image%failEvery == 0 && firstTry(ctx, t.Image):
			return "", fmt.Errorf("storage busy for image %d", t.Image)
		}
		return fmt.Sprintf("thumb-%d-%dpx.jpg", t.Image, t.Size), nil
	})
	if err != nil {
		return err
	}
	// The onComplete handler writes the outcome in the same transaction
	// that ends the work item, so it is recorded exactly once.
	record, err := workpool.RegisterOnComplete(pool, "record", func(ctx context.Context, tx bun.Tx, c workpool.Completion[int, string]) error {
		_, err := tx.NewInsert().Model(&map[string]any{
			"work_id": int64(c.WorkID), "status": string(c.Status), "value": c.Value, "error": c.Error, "attempts": c.Attempts,
		}).TableExpr(schema + ".outcomes").Exec(ctx)
		return err
	})
	if err != nil {
		return err
	}
	if err := pool.Start(ctx); err != nil {
		return err
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = pool.Stop(sctx)
	}()

	// Enqueue: most items now, a few two seconds from now; cancel some of
	// the delayed ones before they can start.
	expected := map[workpool.WorkID]string{}
	retry := workpool.Retry(workpool.RetryBehavior{MaxAttempts: 3, InitialBackoff: 100 * time.Millisecond, Base: 2})
	for i := 1; i <= items; i++ {
		opts := []workpool.Option{retry, workpool.OnComplete(record, i), workpool.Label(fmt.Sprintf("image-%d", i))}
		if i > items-delayed {
			opts = append(opts, workpool.RunAfter(2*time.Second))
		}
		id, err := pool.Enqueue(ctx, thumbnail, Thumbnail{Image: i, Size: 128}, opts...)
		if err != nil {
			return err
		}
		expected[id] = want(i)
		if i > items-canceled {
			if err := pool.Cancel(ctx, id); err != nil {
				return err
			}
			expected[id] = string(workpool.Canceled)
		}
	}
	fmt.Printf("Enqueued %d items (%d delayed by 2 s, %d of those canceled).\n", items, delayed, canceled)

	if err := showProgress(ctx, db, pool); err != nil {
		return err
	}
	return verify(ctx, db, pool, expected)
}

// tried remembers which images already failed once in this process.
var (
	triedMu sync.Mutex
	tried   = map[int]bool{}
)

func firstTry(_ context.Context, image int) bool {
	triedMu.Lock()
	defer triedMu.Unlock()
	if tried[image] {
		return false
	}
	tried[image] = true
	return true
}

func want(i int) string {
	if i%fatalEvry == 0 {
		return string(workpool.Failed)
	}
	return string(workpool.Succeeded)
}

// showProgress prints a status line until every outcome is recorded: in
// place on a terminal, one line per second otherwise.
func showProgress(ctx context.Context, db *bun.DB, pool *workpool.Pool) error {
	fi, _ := os.Stdout.Stat()
	tty := fi != nil && fi.Mode()&os.ModeCharDevice != 0
	start := time.Now()
	last := time.Time{}
	for {
		var done int
		if err := db.NewSelect().TableExpr(schema+".outcomes").ColumnExpr("count(*)").Scan(ctx, &done); err != nil {
			return err
		}
		st, err := pool.Stats(ctx)
		if err != nil {
			return err
		}
		const width = 30
		bar := strings.Repeat("#", done*width/items) + strings.Repeat(".", width-done*width/items)
		line := fmt.Sprintf("[%s] %3d/%d done  running %-3d waiting %-3d later %-3d  %4.1fs",
			bar, done, items, st.Running, st.Backlog, st.Future, time.Since(start).Seconds())
		switch {
		case tty:
			fmt.Printf("\r%s", line)
		case time.Since(last) >= time.Second || done == items:
			fmt.Println(line)
			last = time.Now()
		}
		if done == items {
			if tty {
				fmt.Println()
			}
			return nil
		}
		if time.Since(start) > 25*time.Second {
			return errors.New("timed out waiting for the work to finish")
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// verify compares every recorded outcome with what each item should have
// done, and prints a summary and the pool's report figures.
func verify(ctx context.Context, db *bun.DB, pool *workpool.Pool, expected map[workpool.WorkID]string) error {
	var rows []struct {
		WorkID   int64 `bun:"work_id"`
		Status   string
		Value    string
		Error    string
		Attempts int
	}
	if err := db.NewSelect().TableExpr(schema+".outcomes").Column("work_id", "status", "value", "error", "attempts").
		Order("work_id").Scan(ctx, &rows); err != nil {
		return err
	}
	counts := map[string]int{}
	retried := 0
	var wrong []string
	for _, r := range rows {
		counts[r.Status]++
		if r.Attempts > 1 {
			retried++
		}
		if want := expected[workpool.WorkID(r.WorkID)]; want != r.Status {
			wrong = append(wrong, fmt.Sprintf("work %d ended %s, want %s", r.WorkID, r.Status, want))
		}
	}
	fmt.Println("\nonComplete recorded (a sample):")
	for _, r := range rows {
		if r.WorkID%60 == 0 || r.Status != "success" && r.WorkID%3 == 0 {
			fmt.Printf("  work %-4d %-8s attempts=%d %s%s\n", r.WorkID, r.Status, r.Attempts, r.Value, r.Error)
		}
	}
	st, err := pool.Stats(ctx)
	if err != nil {
		return err
	}
	fmt.Printf("\nFinal: %d succeeded (%d after a retry), %d failed, %d canceled; %d rows recorded for %d items.\n",
		counts["success"], retried, counts["failed"], counts["canceled"], len(rows), len(expected))
	fmt.Printf("Pool now: running %d, waiting %d, later %d; since the last report: %d completed, %d retries, failure rate %.4f.\n",
		st.Running, st.Backlog, st.Future, st.Completed, st.Retries, st.FailureRate)
	if len(rows) != len(expected) || len(wrong) > 0 {
		for _, w := range wrong {
			fmt.Println("  MISMATCH:", w)
		}
		return fmt.Errorf("%d of %d items did not end as expected", len(wrong)+len(expected)-len(rows), len(expected))
	}
	fmt.Println("Every item reached the expected terminal state.")
	return nil
}
