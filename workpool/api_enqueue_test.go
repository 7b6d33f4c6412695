package workpool_test

import (
	"context"
	"database/sql"
	"errors"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/uptrace/bun"

	"github.com/pgworkpool/pgworkpool/workpool"
)

// TestAPIEnqueue: Enqueue runs the function with its arguments (a value or
// a pointer to one) and hands the result and the OnComplete context value
// to the onComplete handler.
func TestAPIEnqueue(t *testing.T) {
	t.Parallel()
	e := newAPIEnv(t)
	p := e.pool(workpool.Config{MaxParallelism: 3})
	double := mustRegister(t, p, "double", func(ctx context.Context, a num) (int, error) { return 2 * a.N, nil })
	done := mustOnComplete(t, e, p, "done")
	type orderCtx struct {
		Order int
		Tags  []string
	}
	gotCtx := make(chan workpool.Completion[orderCtx, int], 10)
	typed, err := workpool.RegisterOnComplete(p, "typed", func(ctx context.Context, tx bun.Tx, c workpool.Completion[orderCtx, int]) error {
		gotCtx <- c
		return nil
	})
	require.NoError(t, err)
	start(t, p)

	byValue := enqueue(t, p, double, num{N: 21}, workpool.OnComplete(done, "by value"))
	byPointer := enqueue(t, p, double, &num{N: 5}, workpool.OnComplete(done, "by pointer"))
	withStruct := enqueue(t, p, double, num{N: 7}, workpool.OnComplete(typed, orderCtx{Order: 42, Tags: []string{"a", "b"}}))
	assert.NotEqual(t, byValue, byPointer)

	c := e.waitCompletion(byValue, 10*time.Second)
	assert.Equal(t, apiCompletion{Status: "success", Value: "42", Context: "by value", Attempts: 1}, c)
	c = e.waitCompletion(byPointer, 10*time.Second)
	assert.Equal(t, apiCompletion{Status: "success", Value: "10", Context: "by pointer", Attempts: 1}, c)

	tc := recv(t, gotCtx, 10*time.Second, "the typed onComplete")
	assert.Equal(t, withStruct, tc.WorkID)
	assert.Equal(t, workpool.Succeeded, tc.Status)
	assert.Equal(t, 14, tc.Value)
	assert.Equal(t, orderCtx{Order: 42, Tags: []string{"a", "b"}}, tc.Context)
	assert.Equal(t, 1, tc.Attempts)
	assert.Empty(t, tc.Error)
	waitFor(t, 10*time.Second, "every work row to be deleted", func() bool { return e.workCount() == 0 })
	assert.Len(t, gotCtx, 0, "the typed onComplete ran more than once")
}

// TestAPIEnqueueErrors: misuse is reported with errors.Is-able errors and
// writes nothing.
func TestAPIEnqueueErrors(t *testing.T) {
	t.Parallel()
	e := newAPIEnv(t)
	p := e.pool(workpool.Config{MaxPayloadBytes: 100})
	other := e.pool(workpool.Config{Name: "other"})
	f := mustRegister(t, p, "f", func(ctx context.Context, a num) (int, error) { return a.N, nil })
	g := mustRegister(t, other, "g", func(ctx context.Context, a num) (int, error) { return a.N, nil })
	s := mustRegister(t, p, "s", func(ctx context.Context, a string) (string, error) { return a, nil })
	type unencodable struct{ C chan int }
	u := mustRegister(t, p, "u", func(ctx context.Context, a unencodable) (int, error) { return 0, nil })
	done := mustOnComplete(t, e, p, "done")
	otherDone := mustOnComplete(t, e, other, "done")
	wrongResult, err := workpool.RegisterOnComplete(p, "wrong", func(ctx context.Context, tx bun.Tx, c workpool.Completion[string, string]) error { return nil })
	require.NoError(t, err)
	ctx := context.Background()

	_, err = workpool.Register(p, "f", func(ctx context.Context, a num) (int, error) { return 0, nil })
	assert.ErrorIs(t, err, workpool.ErrDuplicateName)
	_, err = workpool.Register(p, "has space", func(ctx context.Context, a num) (int, error) { return 0, nil })
	assert.ErrorIs(t, err, workpool.ErrInvalidName)
	_, err = workpool.RegisterOnComplete(p, "done", apiRecorder(e.schema))
	assert.ErrorIs(t, err, workpool.ErrDuplicateName)

	cases := []struct {
		name string
		fn   workpool.Handle
		args any
		opts []workpool.Option
		want error
	}{
		{"nil handle", nil, num{}, nil, workpool.ErrUnknownFunction},
		{"other pool's function", g, num{}, nil, workpool.ErrUnknownFunction},
		{"wrong argument type", f, "x", nil, workpool.ErrArgsMismatch},
		{"nil pointer argument", f, (*num)(nil), nil, workpool.ErrArgsMismatch},
		{"payload too large", s, strings.Repeat("x", 200), nil, workpool.ErrPayloadTooLarge},
		{"context too large", f, num{}, []workpool.Option{workpool.OnComplete(done, strings.Repeat("x", 200))}, workpool.ErrPayloadTooLarge},
		{"not encodable", u, unencodable{C: make(chan int)}, nil, workpool.ErrNotEncodable},
		{"onComplete result type", f, num{}, []workpool.Option{workpool.OnComplete(wrongResult, "")}, workpool.ErrInvalidOption},
		{"onComplete of other pool", f, num{}, []workpool.Option{workpool.OnComplete(otherDone, "")}, workpool.ErrInvalidOption},
		{"nil onComplete", f, num{}, []workpool.Option{workpool.OnComplete[string, int](nil, "")}, workpool.ErrInvalidOption},
		{"nil option", f, num{}, []workpool.Option{nil}, workpool.ErrInvalidOption},
		{"RunAt and RunAfter", f, num{}, []workpool.Option{workpool.RunAt(time.Now()), workpool.RunAfter(time.Second)}, workpool.ErrInvalidOption},
		{"negative RunAfter", f, num{}, []workpool.Option{workpool.RunAfter(-time.Second)}, workpool.ErrInvalidOption},
		{"zero RunAt", f, num{}, []workpool.Option{workpool.RunAt(time.Time{})}, workpool.ErrInvalidOption},
		{"zero Timeout", f, num{}, []workpool.Option{workpool.Timeout(0)}, workpool.ErrInvalidOption},
		{"label too long", f, num{}, []workpool.Option{workpool.Label(strings.Repeat("x", 300))}, workpool.ErrInvalidOption},
		{"label not UTF-8", f, num{}, []workpool.Option{workpool.Label(string([]byte{0xff}))}, workpool.ErrInvalidOption},
		{"retry MaxAttempts 0", f, num{}, []workpool.Option{workpool.Retry(workpool.RetryBehavior{MaxAttempts: 0, Base: 2})}, workpool.ErrInvalidOption},
		{"retry Base below 1", f, num{}, []workpool.Option{workpool.Retry(workpool.RetryBehavior{MaxAttempts: 2, Base: 0.5})}, workpool.ErrInvalidOption},
	}
	for _, c := range cases {
		_, err := p.Enqueue(ctx, c.fn, c.args, c.opts...)
		assert.ErrorIs(t, err, c.want, c.name)
		_, err = p.EnqueueBatch(ctx, c.fn, []any{c.args}, c.opts...)
		assert.ErrorIs(t, err, c.want, c.name+" (batch)")
	}
	canceled, cancel := context.WithCancel(ctx)
	cancel()
	_, err = p.Enqueue(canceled, f, num{})
	assert.ErrorIs(t, err, context.Canceled)
	_, err = p.EnqueueTx(ctx, nil, f, num{})
	assert.ErrorIs(t, err, workpool.ErrUnsupportedDB)
	assert.Equal(t, 0, e.workCount(), "a failed enqueue wrote work")
	assert.Equal(t, 0, e.count("SELECT count(*) FROM "+e.schema+".pending_start"))

	_, err = workpool.New(e.db, workpool.Config{MaxParallelism: -1})
	assert.ErrorIs(t, err, workpool.ErrInvalidConfig)
	_, err = workpool.New(e.db, workpool.Config{Name: "bad name"})
	assert.ErrorIs(t, err, workpool.ErrInvalidConfig)
	_, err = workpool.New(e.db, workpool.Config{Schema: "Bad-Schema"})
	assert.ErrorIs(t, err, workpool.ErrInvalidSchema)
	_, err = workpool.New(e.db, workpool.Config{HeartbeatInterval: time.Minute, Lease: time.Second})
	assert.ErrorIs(t, err, workpool.ErrInvalidConfig)
	_, err = workpool.New(nil, workpool.Config{})
	assert.ErrorIs(t, err, workpool.ErrUnsupportedDB)
	_, err = workpool.New(e.db, workpool.Config{GatherDelay: time.Minute})
	assert.ErrorIs(t, err, workpool.ErrInvalidConfig)
	_, err = workpool.New(e.db, workpool.Config{Schema: e.schema, GatherDelay: -1})
	assert.NoError(t, err, "a negative GatherDelay disables gathering")

	unmigrated, err := workpool.New(e.db, workpool.Config{Schema: e.schema + "_none", Logger: testLogger(t)})
	require.NoError(t, err)
	h := mustRegister(t, unmigrated, "h", func(ctx context.Context, a num) (int, error) { return 0, nil })
	_, err = unmigrated.Enqueue(ctx, h, num{})
	assert.ErrorIs(t, err, workpool.ErrNotMigrated)

	start(t, p)
	assert.ErrorIs(t, p.Start(ctx), workpool.ErrAlreadyStarted)
}

// TestAPIEnqueueTx: work enqueued in the caller's transaction exists only
// if the caller commits, and does not run before the commit.
func TestAPIEnqueueTx(t *testing.T) {
	t.Parallel()
	e := newAPIEnv(t)
	p := e.pool(workpool.Config{MaxParallelism: 4})
	ran := make(chan int, 10)
	f := mustRegister(t, p, "f", func(ctx context.Context, a num) (int, error) {
		ran <- a.N
		return 10 * a.N, nil
	})
	done := mustOnComplete(t, e, p, "done")
	start(t, p)
	ctx := context.Background()
	e.exec("CREATE TABLE " + e.schema + ".orders (id int PRIMARY KEY)")

	errRollback := errors.New("roll back")
	var rolledBack workpool.WorkID
	err := e.db.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		if _, err := tx.ExecContext(ctx, "INSERT INTO "+e.schema+".orders (id) VALUES (1)"); err != nil {
			return err
		}
		id, err := p.EnqueueTx(ctx, tx, f, num{N: 1}, workpool.OnComplete(done, "rolled back"))
		rolledBack = id
		if err != nil {
			return err
		}
		return errRollback
	})
	require.ErrorIs(t, err, errRollback)
	require.NotZero(t, rolledBack)

	var committed workpool.WorkID
	err = e.db.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		if _, err := tx.ExecContext(ctx, "INSERT INTO "+e.schema+".orders (id) VALUES (2)"); err != nil {
			return err
		}
		id, err := p.EnqueueTx(ctx, tx, f, num{N: 2}, workpool.OnComplete(done, "committed"))
		committed = id
		if err != nil {
			return err
		}
		// Not visible to the pool until the commit: it must not run yet.
		select {
		case n := <-ran:
			t.Errorf("item %d ran before its transaction committed", n)
		case <-time.After(300 * time.Millisecond):
		}
		return nil
	})
	require.NoError(t, err)
	assert.Equal(t, 2, recv(t, ran, 10*time.Second, "the committed item to run"))
	c := e.waitCompletion(committed, 10*time.Second)
	assert.Equal(t, apiCompletion{Status: "success", Value: "20", Context: "committed", Attempts: 1}, c)

	// The rolled back item left nothing behind and never runs. Its id was
	// drawn from the sequence, so Status reports it as finished: a missing
	// row of an issued id is all the database knows.
	stayFor(t, 300*time.Millisecond, "no other item running", func() bool { return len(ran) == 0 })
	_, ok := e.completion(rolledBack)
	assert.False(t, ok, "onComplete ran for rolled back work")
	assert.Equal(t, 0, e.workCount())
	assert.Equal(t, 1, e.count("SELECT count(*) FROM "+e.schema+".orders"))
	st, err := p.Status(ctx, rolledBack)
	require.NoError(t, err)
	assert.Equal(t, workpool.StateFinished, st.State)

	// In REPEATABLE READ and SERIALIZABLE transactions too.
	for _, level := range []sql.IsolationLevel{sql.LevelRepeatableRead, sql.LevelSerializable} {
		var id workpool.WorkID
		err := e.db.RunInTx(ctx, &sql.TxOptions{Isolation: level}, func(ctx context.Context, tx bun.Tx) error {
			var err error
			id, err = p.EnqueueTx(ctx, tx, f, num{N: 5}, workpool.OnComplete(done, level.String()))
			return err
		})
		require.NoError(t, err)
		assert.Equal(t, "50", e.waitCompletion(id, 10*time.Second).Value, level.String())
		assert.Equal(t, 5, recv(t, ran, time.Second, "the handler"))
	}

	// EnqueueTx also takes the *bun.DB itself (autocommit) and a bun.Conn.
	id, err := p.EnqueueTx(ctx, e.db, f, num{N: 3}, workpool.OnComplete(done, "db"))
	require.NoError(t, err)
	conn, err := e.db.Conn(ctx)
	require.NoError(t, err)
	defer conn.Close()
	id2, err := p.EnqueueTx(ctx, conn, f, num{N: 4}, workpool.OnComplete(done, "conn"))
	require.NoError(t, err)
	assert.Equal(t, "30", e.waitCompletion(id, 10*time.Second).Value)
	assert.Equal(t, "40", e.waitCompletion(id2, 10*time.Second).Value)
	assert.ElementsMatch(t, []int{3, 4}, []int{recv(t, ran, time.Second, "the handler"), recv(t, ran, time.Second, "the handler")})
}

// TestAPIEnqueueBatch: the returned IDs are in input order, a batch is one
// transaction, and a large batch is fast.
func TestAPIEnqueueBatch(t *testing.T) {
	t.Parallel()
	e := newAPIEnv(t)
	p := e.pool(workpool.Config{MaxParallelism: 10})
	var calls atomic.Int64
	f := mustRegister(t, p, "f", func(ctx context.Context, a num) (int, error) {
		calls.Add(1)
		return a.N, nil
	})
	done := mustOnComplete(t, e, p, "done")
	ctx := context.Background()

	// 10,000 items on a stopped pool: check the id ↔ argument mapping in the
	// work table.
	const big = 10_000
	args := make([]num, big)
	for i := range args {
		args[i] = num{N: i}
	}
	began := time.Now()
	ids, err := p.EnqueueBatch(ctx, f, args)
	require.NoError(t, err)
	t.Logf("EnqueueBatch of %d items took %v", big, time.Since(began))
	require.Len(t, ids, big)
	rows, err := e.db.DB.QueryContext(ctx, "SELECT id, (args->>'N')::int FROM "+e.schema+".work")
	require.NoError(t, err)
	byID := map[workpool.WorkID]int{}
	for rows.Next() {
		var id int64
		var n int
		require.NoError(t, rows.Scan(&id, &n))
		byID[workpool.WorkID(id)] = n
	}
	require.NoError(t, rows.Err())
	rows.Close()
	require.Len(t, byID, big)
	mismatches := 0
	for i, id := range ids {
		if n, ok := byID[id]; !ok || n != i {
			mismatches++
		}
	}
	assert.Zero(t, mismatches, "ids not in input order")
	assert.Equal(t, big, e.count("SELECT count(*) FROM "+e.schema+".pending_start"))
	n, err := p.CancelAll(ctx)
	require.NoError(t, err)
	assert.Equal(t, big, n)
	// Nothing is started yet, so the cancels are only recorded.
	e.exec("DELETE FROM " + e.schema + ".pending_cancelation")
	e.exec("DELETE FROM " + e.schema + ".pending_start")
	e.exec("DELETE FROM " + e.schema + ".work")

	// A small batch that runs: []any and a typed slice, pointers accepted.
	start(t, p)
	small, err := p.EnqueueBatch(ctx, f, []any{num{N: 100}, &num{N: 101}, num{N: 102}}, workpool.OnComplete(done, "any"))
	require.NoError(t, err)
	typed, err := p.EnqueueBatch(ctx, f, []num{{N: 200}, {N: 201}}, workpool.OnComplete(done, "typed"))
	require.NoError(t, err)
	for i, id := range small {
		assert.Equal(t, apiCompletion{Status: "success", Value: itoa(100 + i), Context: "any", Attempts: 1}, e.waitCompletion(id, 10*time.Second))
	}
	for i, id := range typed {
		assert.Equal(t, apiCompletion{Status: "success", Value: itoa(200 + i), Context: "typed", Attempts: 1}, e.waitCompletion(id, 10*time.Second))
	}

	empty, err := p.EnqueueBatch(ctx, f, []num{})
	require.NoError(t, err)
	assert.Empty(t, empty)
	_, err = p.EnqueueBatch(ctx, f, num{N: 1})
	assert.ErrorIs(t, err, workpool.ErrArgsMismatch)
	_, err = p.EnqueueBatch(ctx, f, []any{num{N: 1}, "not a num"})
	assert.ErrorIs(t, err, workpool.ErrArgsMismatch)
	assert.Equal(t, int64(5), calls.Load())
}

// TestAPIEnqueueBatchTx: a batch in the caller's transaction is all or
// nothing with it.
func TestAPIEnqueueBatchTx(t *testing.T) {
	t.Parallel()
	e := newAPIEnv(t)
	p := e.pool(workpool.Config{MaxParallelism: 10})
	var calls atomic.Int64
	f := mustRegister(t, p, "f", func(ctx context.Context, a num) (int, error) {
		calls.Add(1)
		return a.N, nil
	})
	done := mustOnComplete(t, e, p, "done")
	start(t, p)
	ctx := context.Background()
	args := make([]num, 100)
	for i := range args {
		args[i] = num{N: i}
	}

	errRollback := errors.New("roll back")
	var rolled []workpool.WorkID
	err := e.db.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		ids, err := p.EnqueueBatchTx(ctx, tx, f, args, workpool.OnComplete(done, "rolled back"))
		if err != nil {
			return err
		}
		rolled = ids
		return errRollback
	})
	require.ErrorIs(t, err, errRollback)
	require.Len(t, rolled, len(args))

	var ids []workpool.WorkID
	err = e.db.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		var err error
		ids, err = p.EnqueueBatchTx(ctx, tx, f, args, workpool.OnComplete(done, "committed"))
		return err
	})
	require.NoError(t, err)
	waitFor(t, 20*time.Second, "100 completions", func() bool { return e.completionsCount() == len(args) })
	for i, id := range ids {
		c, ok := e.completion(id)
		require.True(t, ok)
		assert.Equal(t, apiCompletion{Status: "success", Value: itoa(i), Context: "committed", Attempts: 1}, c)
	}
	assert.Equal(t, 0, e.count("SELECT count(*) FROM "+e.schema+".completions WHERE context = 'rolled back'"))
	assert.Equal(t, int64(len(args)), calls.Load())
	statuses, err := p.StatusBatch(ctx, rolled[:3])
	require.NoError(t, err)
	for _, st := range statuses {
		assert.Equal(t, workpool.StateFinished, st.State)
	}
}

// TestAPIRunAtRunAfter: scheduled work is pending until it is due, never
// starts early, and starts promptly then.
func TestAPIRunAtRunAfter(t *testing.T) {
	t.Parallel()
	e := newAPIEnv(t)
	p := e.pool(workpool.Config{MaxParallelism: 4})
	started := make(chan struct {
		n  int
		at time.Time
	}, 10)
	f := mustRegister(t, p, "f", func(ctx context.Context, a num) (int, error) {
		started <- struct {
			n  int
			at time.Time
		}{a.N, time.Now()}
		return a.N, nil
	})
	start(t, p)
	ctx := context.Background()

	runAt := time.Now().Add(1500 * time.Millisecond)
	atID := enqueue(t, p, f, num{N: 1}, workpool.RunAt(runAt))
	afterBase := time.Now()
	afterID := enqueue(t, p, f, num{N: 2}, workpool.RunAfter(time.Second))
	past := enqueue(t, p, f, num{N: 3}, workpool.RunAt(time.Now().Add(-time.Hour)))

	// More than four years ahead means a year from now.
	far := enqueue(t, p, f, num{N: 4}, workpool.RunAt(time.Now().AddDate(10, 0, 0)))
	assert.Equal(t, 1, e.count("SELECT count(*) FROM "+e.schema+".pending_start WHERE work_id = ? "+
		"AND segment BETWEEN extract(epoch FROM now() + interval '364 days') * 10 AND extract(epoch FROM now() + interval '366 days') * 10", int64(far)))

	got := recv(t, started, 5*time.Second, "the item due in the past")
	assert.Equal(t, 3, got.n)
	assert.Equal(t, workpool.StateFinished, waitState(t, p, past, workpool.StateFinished))
	sts, err := p.StatusBatch(ctx, []workpool.WorkID{atID, afterID})
	require.NoError(t, err)
	assert.Equal(t, []workpool.Status{{State: workpool.StatePending}, {State: workpool.StatePending}}, sts)
	stats, err := p.Stats(ctx)
	require.NoError(t, err)
	assert.Equal(t, int64(3), stats.Future)
	assert.Equal(t, int64(0), stats.Backlog)

	for range 2 {
		got := recv(t, started, 5*time.Second, "a scheduled item")
		switch got.n {
		case 1:
			assert.False(t, got.at.Before(runAt), "RunAt item started %v before its time", runAt.Sub(got.at))
			assert.Less(t, got.at.Sub(runAt), time.Second, "RunAt item started late")
		case 2:
			due := afterBase.Add(time.Second)
			assert.False(t, got.at.Before(due), "RunAfter item started %v before its time", due.Sub(got.at))
			assert.Less(t, got.at.Sub(due), time.Second, "RunAfter item started late")
		default:
			t.Errorf("unexpected item %d", got.n)
		}
	}
}

// waitState polls Status until id reaches want.
func waitState(t *testing.T, p *workpool.Pool, id workpool.WorkID, want workpool.State) workpool.State {
	t.Helper()
	var st workpool.Status
	waitFor(t, 10*time.Second, "work "+id.String()+" to be "+want.String(), func() bool {
		var err error
		st, err = p.Status(context.Background(), id)
		require.NoError(t, err)
		return st.State == want
	})
	return st.State
}

// TestAPILabel: the label is stored and carried by every event of the item.
func TestAPILabel(t *testing.T) {
	t.Parallel()
	e := newAPIEnv(t)
	logs := &logCapture{}
	p := e.pool(workpool.Config{MaxParallelism: 2, LogLevel: workpool.LogInfo, Logger: logs.logger()})
	release := make(chan struct{})
	f := mustRegister(t, p, "labeled", func(ctx context.Context, a num) (int, error) {
		<-release
		return a.N, nil
	})
	start(t, p)
	id := enqueue(t, p, f, num{N: 1}, workpool.Label("order-42"))
	assert.Equal(t, "order-42", scanString(t, e, "SELECT label FROM "+e.schema+".work WHERE id = $1", int64(id)))
	close(release)
	waitFor(t, 10*time.Second, "the completed event", func() bool { return len(logs.events("completed", id)) > 0 })
	for _, ev := range []string{"enqueued", "started", "completed"} {
		lines := logs.events(ev, id)
		if assert.Len(t, lines, 1, ev) {
			assert.Equal(t, "order-42", lines[0].Attrs["label"], ev)
			assert.Equal(t, "labeled", lines[0].Attrs["fn"], ev)
			assert.Equal(t, p.Name(), lines[0].Attrs["pool"], ev)
		}
	}
	if lines := logs.events("completed", id); assert.Len(t, lines, 1) {
		assert.Equal(t, "success", lines[0].Attrs["status"])
		assert.Equal(t, "1", lines[0].Attrs["attempts"])
	}
}

func scanString(t *testing.T, e *env, query string, args ...any) string {
	t.Helper()
	var s string
	require.NoError(t, e.db.DB.QueryRowContext(context.Background(), query, args...).Scan(&s))
	return s
}

func itoa(i int) string { return strconv.Itoa(i) }

// TestAPITimeout: an attempt that outlives its timeout has its context
// canceled and fails with "timed out", whether or not the handler honours
// its context; Config.DefaultTimeout applies without the option.
func TestAPITimeout(t *testing.T) {
	t.Parallel()
	e := newAPIEnv(t)
	p := e.pool(workpool.Config{MaxParallelism: 4, DefaultTimeout: 300 * time.Millisecond})
	type seen struct {
		n        int
		deadline time.Duration // from handler start; -1 if none
		err      error
		calls    int
	}
	results := make(chan seen, 10)
	var calls [4]atomic.Int32
	stuck := make(chan struct{})
	t.Cleanup(func() { close(stuck) })
	f := mustRegister(t, p, "slow", func(ctx context.Context, a num) (int, error) {
		c := int(calls[a.N].Add(1))
		began := time.Now()
		d := time.Duration(-1)
		if dl, ok := ctx.Deadline(); ok {
			d = dl.Sub(began)
		}
		switch a.N {
		case 3: // ignores its context
			<-stuck
			return 0, nil
		case 0: // fast enough
			results <- seen{n: a.N, deadline: d, calls: c}
			return 1, nil
		}
		<-ctx.Done()
		results <- seen{n: a.N, deadline: d, err: ctx.Err(), calls: c}
		return 0, ctx.Err()
	})
	done := mustOnComplete(t, e, p, "done")
	start(t, p)

	fast := enqueue(t, p, f, num{N: 0}, workpool.Timeout(5*time.Second), workpool.OnComplete(done, "fast"))
	honours := enqueue(t, p, f, num{N: 1}, workpool.Timeout(200*time.Millisecond), workpool.OnComplete(done, "honours"))
	byDefault := enqueue(t, p, f, num{N: 2}, workpool.OnComplete(done, "default"))
	ignores := enqueue(t, p, f, num{N: 3}, workpool.Timeout(100*time.Millisecond), workpool.OnComplete(done, "ignores"))

	for range 3 {
		s := recv(t, results, 10*time.Second, "a handler to return")
		switch s.n {
		case 0:
			assert.InDelta(t, 5*time.Second, s.deadline, float64(500*time.Millisecond))
		case 1:
			assert.ErrorIs(t, s.err, context.DeadlineExceeded)
			assert.InDelta(t, 200*time.Millisecond, s.deadline, float64(100*time.Millisecond))
		case 2:
			assert.ErrorIs(t, s.err, context.DeadlineExceeded)
			assert.InDelta(t, 300*time.Millisecond, s.deadline, float64(100*time.Millisecond))
		}
	}
	assert.Equal(t, apiCompletion{Status: "success", Value: "1", Context: "fast", Attempts: 1}, e.waitCompletion(fast, 10*time.Second))
	for id, ctxValue := range map[workpool.WorkID]string{honours: "honours", byDefault: "default", ignores: "ignores"} {
		assert.Equal(t, apiCompletion{Status: "failed", Value: "0", Error: "timed out", Context: ctxValue, Attempts: 1},
			e.waitCompletion(id, 10*time.Second), ctxValue)
	}
	for i := range calls {
		assert.Equal(t, int32(1), calls[i].Load(), "item %d ran more than once (NoRetry is the default)", i)
	}
}

// TestAPIRegisterNoResult: an error-only function reports success or its
// error; its onComplete takes struct{} results.
func TestAPIRegisterNoResult(t *testing.T) {
	t.Parallel()
	e := newAPIEnv(t)
	p := e.pool(workpool.Config{MaxParallelism: 2})
	f, err := workpool.RegisterNoResult(p, "notify", func(ctx context.Context, a num) error {
		if a.N < 0 {
			return errors.New("negative")
		}
		return nil
	})
	require.NoError(t, err)
	assert.Equal(t, "notify", f.Name())
	ended := make(chan workpool.Completion[int, struct{}], 4)
	done, err := workpool.RegisterOnComplete(p, "done", func(ctx context.Context, tx bun.Tx, c workpool.Completion[int, struct{}]) error {
		ended <- c
		return nil
	})
	require.NoError(t, err)
	_, err = workpool.RegisterNoResult[num](p, "nil", nil)
	assert.ErrorIs(t, err, workpool.ErrInvalidName)
	start(t, p)
	ok := enqueue(t, p, f, num{N: 1}, workpool.OnComplete(done, 1))
	bad := enqueue(t, p, f, num{N: -1}, workpool.OnComplete(done, 2))
	got := map[workpool.WorkID]workpool.Completion[int, struct{}]{}
	for range 2 {
		c := recv(t, ended, 10*time.Second, "a completion")
		got[c.WorkID] = c
	}
	assert.Equal(t, workpool.Completion[int, struct{}]{WorkID: ok, Context: 1, Status: workpool.Succeeded, Attempts: 1}, got[ok])
	assert.Equal(t, workpool.Completion[int, struct{}]{WorkID: bad, Context: 2, Status: workpool.Failed, Error: "negative", Attempts: 1}, got[bad])
}
