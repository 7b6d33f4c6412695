// Command bunapp shows pgworkpool inside an existing bun application: a
// small shop with its own Order model and its own bun/migrate Go
// migrations (the 2025*.go files next to this one).
//
//   - The shop adds pgworkpool's migrations to its own migration set with
//     migrations.Register, so one migrator.Init + Migrate applies the shop's
//     tables and the pool's tables as one migration group.
//   - Placing an order is one db.RunInTx: the same transaction inserts the
//     order with bun and enqueues the "send confirmation e-mail" work with
//     pool.EnqueueTx. If the transaction rolls back (a declined payment
//     here), neither the order nor the work exists, and no e-mail is sent.
//   - When the e-mail work ends, its onComplete handler updates the order's
//     status using the bun.Tx it receives: the transaction that records the
//     work's terminal state. Each committed order's status is updated exactly
//     once, even for an e-mail that failed once and was retried.
//
// Run it with
//
//	go run ./examples/bunapp
//
// It uses DATABASE_URL when set (the shop lives in schema bunapp and the
// pool in schema bunapp_jobs, both dropped before and after the run);
// otherwise it starts a throwaway Postgres. It exits 1 if any of the above
// does not hold.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/uptrace/bun"
	"github.com/uptrace/bun/migrate"

	"github.com/pgworkpool/pgworkpool/internal/pgtest"
	"github.com/pgworkpool/pgworkpool/migrations"
	"github.com/pgworkpool/pgworkpool/workpool"
)

const (
	appSchema  = "bunapp"      // the shop's tables and its migrations bookkeeping
	poolSchema = "bunapp_jobs" // pgworkpool's tables
	bulkOrders = 20            // orders placed besides the named ones
)

// appMigrations is the shop's migration set; each 2025*.go file registers
// one migration on it.
var appMigrations = migrate.NewMigrations()

// Order is the shop's model.
type Order struct {
	bun.BaseModel `bun:"table:bunapp.orders,alias:o"`

	ID             int64     `bun:",pk,autoincrement"`
	Customer       string    `bun:",notnull"`
	Email          string    `bun:",notnull"`
	TotalCents     int64     `bun:",notnull"`
	Status         string    `bun:",nullzero,notnull,default:'placed'"`
	ConfirmationID string    `bun:",nullzero"`
	StatusUpdates  int       `bun:",notnull,default:0"` // how often onComplete changed the status
	CreatedAt      time.Time `bun:",nullzero,notnull,default:current_timestamp"`
}

// ConfirmationEmail is the argument of the e-mail work.
type ConfirmationEmail struct {
	OrderID int64  `json:"order_id"`
	To      string `json:"to"`
}

var errPaymentDeclined = errors.New("payment declined")

// placed is a committed order, its e-mail work and the status it should
// end in.
type placed struct {
	order Order
	work  workpool.WorkID
	want  string
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "bunapp:", err)
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

	dropSchemas := func() {
		_, _ = db.ExecContext(context.WithoutCancel(ctx), "DROP SCHEMA IF EXISTS "+appSchema+", "+poolSchema+" CASCADE")
	}
	dropSchemas() // leftovers of an interrupted run
	defer dropSchemas()

	if err := migrateAll(ctx, db); err != nil {
		return err
	}

	pool, err := workpool.New(db, workpool.Config{
		Name:           "shop",
		Schema:         poolSchema,
		MaxParallelism: 4,
		Logger:         slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		return err
	}
	mail := &mailer{sent: map[int64]int{}, tries: map[int64]int{}}
	sendEmail, err := workpool.Register(pool, "send-confirmation-email", mail.send)
	if err != nil {
		return err
	}
	// The onComplete handler: it runs in the transaction that ends the
	// e-mail work and updates the order with that transaction, so the
	// status changes if and only if the work's end commits, exactly once.
	orderConfirmed, err := workpool.RegisterOnComplete(pool, "order-confirmed",
		func(ctx context.Context, tx bun.Tx, c workpool.Completion[int64, string]) error {
			q := tx.NewUpdate().Model((*Order)(nil)).
				Set("status_updates = status_updates + 1").
				Where("id = ?", c.Context)
			switch c.Status {
			case workpool.Succeeded:
				q = q.Set("status = 'confirmed'").Set("confirmation_id = ?", c.Value)
			case workpool.Failed:
				q = q.Set("status = 'confirmation_failed'")
			case workpool.Canceled:
				q = q.Set("status = 'confirmation_canceled'")
			}
			res, err := q.Exec(ctx)
			if err != nil {
				return err
			}
			if n, _ := res.RowsAffected(); n != 1 {
				return fmt.Errorf("order %d: updated %d rows", c.Context, n)
			}
			return nil
		})
	if err != nil {
		return err
	}
	if err := pool.Start(ctx); err != nil {
		return err
	}
	stopped := false
	stopPool := func() error {
		if stopped {
			return nil
		}
		stopped = true
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		return pool.Stop(sctx)
	}
	defer stopPool()

	// placeOrder is the shop's checkout: one transaction for the order and
	// its e-mail. A declined payment returns an error after both were
	// written, so RunInTx rolls both back.
	placeOrder := func(customer, email string, cents int64, declined bool) (Order, workpool.WorkID, error) {
		var (
			o  Order
			id workpool.WorkID
		)
		err := db.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
			o = Order{Customer: customer, Email: email, TotalCents: cents}
			if _, err := tx.NewInsert().Model(&o).Returning("id, status").Exec(ctx); err != nil {
				return err
			}
			var err error
			id, err = pool.EnqueueTx(ctx, tx, sendEmail, ConfirmationEmail{OrderID: o.ID, To: email},
				workpool.OnComplete(orderConfirmed, o.ID),
				workpool.Label(fmt.Sprintf("order-%d", o.ID)),
				workpool.Retry(workpool.RetryBehavior{MaxAttempts: 3, InitialBackoff: 100 * time.Millisecond, Base: 2}))
			if err != nil {
				return err
			}
			if declined {
				return errPaymentDeclined
			}
			return nil
		})
		return o, id, err
	}

	fmt.Println("\nPlacing orders (each one transaction: INSERT the order + EnqueueTx its confirmation e-mail):")
	var committed []placed
	named := []struct {
		customer, email string
		cents           int64
		want            string
		note            string
	}{
		{"Alice", "alice@example.com", 4200, "confirmed", ""},
		{"Bob", "bob@example.com", 1999, "confirmed", ""},
		{"Carol", "carol@flaky.example.com", 7350, "confirmed", "her mail server fails the first try; the work is retried"},
		{"Dave", "dave@bounce.example.com", 1200, "confirmation_failed", "his address bounces; the failure is final"},
	}
	for _, n := range named {
		o, id, err := placeOrder(n.customer, n.email, n.cents, false)
		if err != nil {
			return fmt.Errorf("place order for %s: %w", n.customer, err)
		}
		committed = append(committed, placed{o, id, n.want})
		note := ""
		if n.note != "" {
			note = " (" + n.note + ")"
		}
		fmt.Printf("  committed   order %-3d %-7s %8s  e-mail work %d%s\n", o.ID, n.customer, money(n.cents), id, note)
		if len(committed) == 1 {
			st, err := pool.Status(ctx, id)
			if err != nil {
				return err
			}
			fmt.Printf("              (pool.Status right after the commit: work %d is %s; the order is %s)\n", id, st.State, o.Status)
		}
	}

	// A checkout whose payment is declined after the order and its e-mail
	// were written: RunInTx rolls back both.
	ghost, ghostWork, err := placeOrder("Mallory", "mallory@example.com", 99900, true)
	if !errors.Is(err, errPaymentDeclined) {
		return fmt.Errorf("declined checkout: got %v, want %v", err, errPaymentDeclined)
	}
	fmt.Printf("  rolled back order %-3d %-7s %8s  e-mail work %d (RunInTx returned %q)\n",
		ghost.ID, "Mallory", money(99900), ghostWork, err)

	for i := 1; i <= bulkOrders; i++ {
		customer := fmt.Sprintf("customer%02d", i)
		o, id, err := placeOrder(customer, customer+"@example.com", int64(1000+37*i), false)
		if err != nil {
			return fmt.Errorf("place order for %s: %w", customer, err)
		}
		committed = append(committed, placed{o, id, "confirmed"})
	}
	fmt.Printf("  committed   %d more orders the same way.\n", bulkOrders)

	// The rolled-back checkout left nothing behind: no order row, no work
	// row, nothing waiting to start. (We look at the tables rather than
	// pool.Status: the work ID came from a sequence, which does not roll
	// back, and Status reports any issued ID without a row as finished.)
	var ghostOrders, ghostWorkRows int
	if err := db.NewSelect().Model((*Order)(nil)).ColumnExpr("count(*)").Where("id = ?", ghost.ID).Scan(ctx, &ghostOrders); err != nil {
		return err
	}
	if err := db.NewSelect().ColumnExpr("(SELECT count(*) FROM "+poolSchema+".work WHERE id = ?0)"+
		" + (SELECT count(*) FROM "+poolSchema+".pending_start WHERE work_id = ?0)", int64(ghostWork)).
		Scan(ctx, &ghostWorkRows); err != nil {
		return err
	}
	fmt.Printf("\nAfter the rollback: %d rows for order %d, %d rows for work %d in %s.work and %s.pending_start.\n",
		ghostOrders, ghost.ID, ghostWorkRows, ghostWork, poolSchema, poolSchema)
	if ghostOrders != 0 || ghostWorkRows != 0 {
		return fmt.Errorf("the rolled-back checkout left %d order rows and %d work rows", ghostOrders, ghostWorkRows)
	}

	// Wait for every committed order to leave "placed".
	deadline := time.Now().Add(20 * time.Second)
	for {
		var waiting int
		if err := db.NewSelect().Model((*Order)(nil)).ColumnExpr("count(*)").Where("status = 'placed'").Scan(ctx, &waiting); err != nil {
			return err
		}
		if waiting == 0 {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d orders still placed after 20 s", waiting)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	// The pool agrees: every e-mail work item has finished.
	works := make([]workpool.WorkID, len(committed))
	for i, p := range committed {
		works[i] = p.work
	}
	states, err := pool.StatusBatch(ctx, works)
	if err != nil {
		return err
	}
	// Stop the pool before checking, so nothing can still change an order.
	if err := stopPool(); err != nil {
		return fmt.Errorf("stop the pool: %w", err)
	}
	return verify(ctx, db, mail, committed, states, ghost.ID)
}

// migrateAll runs the shop's migrations and pgworkpool's with the shop's
// own migrator, as one group.
func migrateAll(ctx context.Context, db *bun.DB) error {
	// The shop keeps its migrations bookkeeping in its own schema, which
	// must exist before Init creates the bookkeeping tables.
	if _, err := db.ExecContext(ctx, "CREATE SCHEMA IF NOT EXISTS "+appSchema); err != nil {
		return err
	}
	if err := migrations.Register(appMigrations, migrations.WithSchema(poolSchema)); err != nil {
		return err
	}
	migrator := migrate.NewMigrator(db, appMigrations,
		migrate.WithTableName(appSchema+".bun_migrations"),
		migrate.WithLocksTableName(appSchema+".bun_migration_locks"),
		migrate.WithMarkAppliedOnSuccess(true))
	if err := migrator.Init(ctx); err != nil {
		return err
	}
	group, err := migrator.Migrate(ctx)
	if err != nil {
		return err
	}
	fmt.Printf("The shop's migrator applied migration group %d:\n", group.ID)
	var names []string
	for _, m := range group.Migrations {
		fmt.Printf("  %s_%s\n", m.Name, m.Comment)
		names = append(names, m.Name+"_"+m.Comment)
	}
	// The shop's two migrations, then pgworkpool's (as many as it ships),
	// in version order.
	ours := 0
	for _, n := range names {
		if strings.Contains(n, "pgworkpool") {
			ours++
		}
	}
	if len(names) < 3 || ours != len(names)-2 || !strings.Contains(names[2], "pgworkpool") {
		return fmt.Errorf("want the shop's two migrations and pgworkpool's in one group, got %v", names)
	}
	again, err := migrator.Migrate(ctx)
	if err != nil {
		return err
	}
	if len(again.Migrations) != 0 {
		return fmt.Errorf("a second Migrate applied %d migrations", len(again.Migrations))
	}
	fmt.Println("A second Migrate has nothing to do.")
	return nil
}

// mailer is a fake e-mail provider: it remembers what it sent, fails the
// first try for addresses at flaky.example.com and rejects addresses at
// bounce.example.com for good.
type mailer struct {
	mu    sync.Mutex
	sent  map[int64]int // order id → e-mails delivered
	tries map[int64]int // order id → handler runs
}

func (m *mailer) send(ctx context.Context, e ConfirmationEmail) (string, error) {
	m.mu.Lock()
	m.tries[e.OrderID]++
	try := m.tries[e.OrderID]
	m.mu.Unlock()
	select {
	case <-time.After(5 * time.Millisecond):
	case <-ctx.Done():
		return "", ctx.Err()
	}
	switch {
	case strings.HasSuffix(e.To, "@bounce.example.com"):
		return "", workpool.NonRetryable(fmt.Errorf("550 mailbox %s unavailable", e.To))
	case strings.HasSuffix(e.To, "@flaky.example.com") && try == 1:
		return "", fmt.Errorf("421 try again later")
	}
	m.mu.Lock()
	m.sent[e.OrderID]++
	m.mu.Unlock()
	return fmt.Sprintf("msg-%d-%d", e.OrderID, try), nil
}

// verify checks the end state and prints the orders.
func verify(ctx context.Context, db *bun.DB, mail *mailer, committed []placed, states []workpool.Status, ghost int64) error {
	want := map[int64]string{}
	for _, p := range committed {
		want[p.order.ID] = p.want
	}
	var orders []Order
	if err := db.NewSelect().Model(&orders).Order("id").Scan(ctx); err != nil {
		return err
	}
	var problems []string
	fmt.Println("\nOrders (status set by the onComplete handler, in the transaction that ended the e-mail work):")
	for _, o := range orders {
		if o.ID <= 5 || o.ID%10 == 0 {
			fmt.Printf("  order %-3d %-11s %-20s updates=%d  confirmation=%-9s (e-mail handler ran %d×)\n",
				o.ID, o.Customer, o.Status, o.StatusUpdates, orNone(o.ConfirmationID), mail.runs(o.ID))
		}
		w, ok := want[o.ID]
		switch {
		case !ok:
			problems = append(problems, fmt.Sprintf("order %d should not exist", o.ID))
		case o.Status != w:
			problems = append(problems, fmt.Sprintf("order %d is %s, want %s", o.ID, o.Status, w))
		case o.StatusUpdates != 1:
			problems = append(problems, fmt.Sprintf("order %d: status updated %d times, want 1", o.ID, o.StatusUpdates))
		}
	}
	fmt.Printf("  ... %d orders in all.\n", len(orders))
	if len(orders) != len(want) {
		problems = append(problems, fmt.Sprintf("%d orders, want %d", len(orders), len(want)))
	}
	if n := mail.runs(ghost); n != 0 {
		problems = append(problems, fmt.Sprintf("the rolled-back order %d had its e-mail handler run %d times", ghost, n))
	}
	retried := 0
	for id := range want {
		if mail.runs(id) > 1 {
			retried++
		}
	}

	for i, st := range states {
		if st.State != workpool.StateFinished {
			problems = append(problems, fmt.Sprintf("work %d is %s, want finished", committed[i].work, st.State))
		}
	}
	var left int
	if err := db.NewSelect().TableExpr(poolSchema+".work").ColumnExpr("count(*)").Scan(ctx, &left); err != nil {
		return err
	}
	if left != 0 {
		problems = append(problems, fmt.Sprintf("%d work rows left", left))
	}

	counts := map[string]int{}
	for _, o := range orders {
		counts[o.Status]++
	}
	if n := mail.delivered(); n != counts["confirmed"] {
		problems = append(problems, fmt.Sprintf("%d e-mails delivered for %d confirmed orders", n, counts["confirmed"]))
	}
	fmt.Printf("\n%d confirmed, %d confirmation_failed; every status was updated exactly once (%d e-mail retried first);\n",
		counts["confirmed"], counts["confirmation_failed"], retried)
	fmt.Printf("%d e-mails delivered; the declined checkout (order %d) left no order, no work and sent no e-mail; %d work rows left.\n",
		mail.delivered(), ghost, left)
	if len(problems) > 0 {
		slices.Sort(problems)
		for _, p := range problems {
			fmt.Println("  PROBLEM:", p)
		}
		return fmt.Errorf("%d problems", len(problems))
	}
	fmt.Println("All checks passed.")
	return nil
}

func (m *mailer) delivered() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for _, c := range m.sent {
		n += c
	}
	return n
}

func (m *mailer) runs(orderID int64) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.tries[orderID]
}

func money(cents int64) string { return fmt.Sprintf("$%d.%02d", cents/100, cents%100) }

func orNone(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
