package workpool_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/uptrace/bun"

	"github.com/pgworkpool/pgworkpool/internal/pgtest"
	"github.com/pgworkpool/pgworkpool/migrations"
	"github.com/pgworkpool/pgworkpool/workpool"
)

// Pair is the argument of the examples' "add" function.
type Pair struct{ A, B int }

// Email is the argument of the examples' "send-email" function.
type Email struct{ Order int }

func ExamplePool_Enqueue() {
	db, schema, cleanup := exampleDB()
	defer cleanup()
	ctx := context.Background()

	pool, err := workpool.New(db, workpool.Config{Schema: schema, MaxParallelism: 4})
	check(err)
	sums := make(chan int, 1)
	add, err := workpool.Register(pool, "add", func(ctx context.Context, p Pair) (int, error) {
		sums <- p.A + p.B
		return p.A + p.B, nil
	})
	check(err)
	check(pool.Start(ctx))
	defer pool.Stop(ctx)

	_, err = pool.Enqueue(ctx, add, Pair{A: 2, B: 3}, workpool.Label("first sum"))
	check(err)
	fmt.Println("sum:", <-sums)
	// Output: sum: 5
}

func ExamplePool_EnqueueTx() {
	db, schema, cleanup := exampleDB()
	defer cleanup()
	ctx := context.Background()

	pool, err := workpool.New(db, workpool.Config{Schema: schema})
	check(err)
	sent := make(chan int, 1)
	sendEmail, err := workpool.Register(pool, "send-email", func(ctx context.Context, e Email) (struct{}, error) {
		sent <- e.Order
		return struct{}{}, nil
	})
	check(err)
	check(pool.Start(ctx))
	defer pool.Stop(ctx)
	_, err = db.ExecContext(ctx, "CREATE TABLE "+schema+".orders (id int PRIMARY KEY)")
	check(err)

	// The order and its confirmation email commit together, or not at all.
	err = db.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		if _, err := tx.ExecContext(ctx, "INSERT INTO "+schema+".orders (id) VALUES (?)", 42); err != nil {
			return err
		}
		_, err := pool.EnqueueTx(ctx, tx, sendEmail, Email{Order: 42}, workpool.Retry(workpool.RetryBehavior{}))
		return err
	})
	check(err)
	fmt.Println("confirmation sent for order", <-sent)
	// Output: confirmation sent for order 42
}

func ExampleRegisterOnComplete() {
	db, schema, cleanup := exampleDB()
	defer cleanup()
	ctx := context.Background()

	pool, err := workpool.New(db, workpool.Config{Schema: schema})
	check(err)
	double, err := workpool.Register(pool, "double", func(ctx context.Context, n int) (int, error) {
		return 2 * n, nil
	})
	check(err)
	_, err = db.ExecContext(ctx, "CREATE TABLE "+schema+".answers (name text PRIMARY KEY, value int)")
	check(err)
	completed := make(chan workpool.Completion[string, int], 1)
	// The handler runs in the transaction that ends the work, exactly once:
	// write with tx and your rows commit together with the outcome.
	save, err := workpool.RegisterOnComplete(pool, "save-answer",
		func(ctx context.Context, tx bun.Tx, c workpool.Completion[string, int]) error {
			if c.Status != workpool.Succeeded {
				return nil // failed or canceled: nothing to save
			}
			_, err := tx.ExecContext(ctx, "INSERT INTO "+schema+".answers (name, value) VALUES (?, ?)", c.Context, c.Value)
			if err == nil {
				completed <- c
			}
			return err
		})
	check(err)
	check(pool.Start(ctx))
	defer pool.Stop(ctx)

	_, err = pool.Enqueue(ctx, double, 21, workpool.OnComplete(save, "the answer"))
	check(err)
	c := <-completed
	fmt.Printf("%s: %s, value %d after %d attempt(s)\n", c.Context, c.Status, c.Value, c.Attempts)
	// Output: the answer: success, value 42 after 1 attempt(s)
}

func ExamplePool_Cancel() {
	db, schema, cleanup := exampleDB()
	defer cleanup()
	ctx := context.Background()

	pool, err := workpool.New(db, workpool.Config{Schema: schema})
	check(err)
	remind, err := workpool.Register(pool, "remind", func(ctx context.Context, who string) (struct{}, error) {
		fmt.Println("reminding", who) // never printed: canceled before it runs
		return struct{}{}, nil
	})
	check(err)
	ended := make(chan workpool.Completion[string, struct{}], 1)
	done, err := workpool.RegisterOnComplete(pool, "done",
		func(ctx context.Context, tx bun.Tx, c workpool.Completion[string, struct{}]) error {
			ended <- c
			return nil
		})
	check(err)
	check(pool.Start(ctx))
	defer pool.Stop(ctx)

	id, err := pool.Enqueue(ctx, remind, "ada", workpool.RunAfter(time.Hour), workpool.OnComplete(done, "reminder for ada"))
	check(err)
	check(pool.Cancel(ctx, id))
	c := <-ended
	fmt.Printf("%s: %s after %d attempts\n", c.Context, c.Status, c.Attempts)
	// Output: reminder for ada: canceled after 0 attempts
}

func ExamplePool_Status() {
	db, schema, cleanup := exampleDB()
	defer cleanup()
	ctx := context.Background()

	pool, err := workpool.New(db, workpool.Config{Schema: schema})
	check(err)
	started, release := make(chan struct{}), make(chan struct{})
	work, err := workpool.Register(pool, "work", func(ctx context.Context, n int) (int, error) {
		close(started)
		<-release
		return n, nil
	})
	check(err)
	check(pool.Start(ctx))
	defer pool.Stop(ctx)

	later, err := pool.Enqueue(ctx, work, 1, workpool.RunAfter(time.Hour))
	check(err)
	now, err := pool.Enqueue(ctx, work, 2)
	check(err)
	<-started
	statuses, err := pool.StatusBatch(ctx, []workpool.WorkID{later, now})
	check(err)
	fmt.Println(statuses[0].State, statuses[1].State)

	close(release)
	st, err := pool.Status(ctx, now)
	for i := 0; err == nil && st.State != workpool.StateFinished && i < 1000; i++ {
		time.Sleep(10 * time.Millisecond)
		st, err = pool.Status(ctx, now)
	}
	check(err)
	fmt.Println(st.State)

	_, err = pool.Status(ctx, 1<<40)
	fmt.Println(errors.Is(err, workpool.ErrWorkNotFound))
	// Output:
	// pending running
	// finished
	// true
}

// check stops an example on an unexpected error.
func check(err error) {
	if err != nil {
		panic(err)
	}
}

// exampleDB returns a database on the test server with a fresh, migrated
// schema, and a cleanup that drops it.
func exampleDB() (db *bun.DB, schema string, cleanup func()) {
	url := pgtest.Shared(exampleTB{}).URL()
	ctx := context.Background()
	var b [4]byte
	_, _ = rand.Read(b[:])
	schema = "example_" + hex.EncodeToString(b[:])
	tb := &exampleCleanups{}
	db = pgtest.OpenBun(tb, url)
	_, err := migrations.Migrate(ctx, db, migrations.WithSchema(schema))
	check(err)
	return db, schema, func() {
		// Wait until the stopped pool's statements have ended in the
		// server (see newAPIEnv), then drop the schema.
		for i := 0; i < 1000; i++ {
			var n int
			err := db.DB.QueryRowContext(ctx, "SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid() "+
				"AND state <> 'idle' AND position($1 in query) > 0", schema).Scan(&n)
			if err != nil || n == 0 {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		_, err := db.ExecContext(ctx, "DROP SCHEMA IF EXISTS "+schema+" CASCADE")
		check(err)
		tb.run()
	}
}

// exampleTB lets the examples, which get no *testing.T, ask pgtest for
// the server TestMain started: pgtest.Shared only reports failures.
type exampleTB struct{ testing.TB }

func (exampleTB) Helper()                   {}
func (exampleTB) Fatal(args ...any)         { panic(fmt.Sprint(args...)) }
func (exampleTB) Fatalf(f string, a ...any) { panic(fmt.Sprintf(f, a...)) }

// exampleCleanups collects the cleanups pgtest.OpenBun registers.
type exampleCleanups struct {
	exampleTB
	fns []func()
}

func (c *exampleCleanups) Cleanup(f func()) { c.fns = append(c.fns, f) }

func (c *exampleCleanups) run() {
	for i := len(c.fns) - 1; i >= 0; i-- {
		c.fns[i]()
	}
}
