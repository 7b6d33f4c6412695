package workpool_test

import (
	"context"
	"fmt"
	"math"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/uptrace/bun"

	"github.com/pgworkpool/pgworkpool/workpool"
)

// TestBadInput misuses every public entry point and checks that each call
// returns the documented typed error (errors.Is) and wrote nothing: every
// table of the schema, the work id sequence and the list of schemas are
// compared (row counts and an md5 of the rows) before and after the call.
// Each case gets a fresh schema with two pools ("bad" and "other"), each
// holding one pending item due in an hour.
func TestBadInput(t *testing.T) {
	t.Parallel()
	biRun(t, biCases())
}

// biMaxPayload is the MaxPayloadBytes of the fixture's pool "bad".
const biMaxPayload = 256

// biFixture is one case's schema and pools.
type biFixture struct {
	t     *testing.T
	e     *env
	p     *workpool.Pool // "bad": MaxPayloadBytes biMaxPayload
	other *workpool.Pool // "other", same schema
	f     *workpool.Func[num, int]
	s     *workpool.Func[string, int]
	fl    *workpool.Func[float64, int]
	g     *workpool.Func[num, int] // registered with other
	done  *workpool.OnCompleteHandler[string, int]
	doneF *workpool.OnCompleteHandler[float64, int]
	wrong *workpool.OnCompleteHandler[string, string] // result type is not f's
	oDone *workpool.OnCompleteHandler[string, int]    // registered with other
	// issued is p's pending item, otherID other's.
	issued, otherID workpool.WorkID
	// unmigrated is a pool on a schema that does not exist; um is its function.
	unmigrated *workpool.Pool
	um         *workpool.Func[num, int]
}

// biCase is one misuse. call makes the call and returns its error; for
// calls that also return a value (a handle, a pool) it returns an error
// without %w when that value is non-nil, so the case fails.
type biCase struct {
	name string
	want []error // every one must match with errors.Is
	// stopped runs the case after p was started and stopped.
	stopped bool
	call    func(ctx context.Context, x *biFixture) error
}

func biNewFixture(t *testing.T, stopped bool) *biFixture {
	t.Helper()
	e := newAPIEnv(t)
	x := &biFixture{t: t, e: e}
	x.p = e.pool(workpool.Config{Name: "bad", MaxPayloadBytes: biMaxPayload, HeartbeatInterval: time.Second, Lease: 5 * time.Second})
	x.other = e.pool(workpool.Config{Name: "other"})
	x.f = mustRegister(t, x.p, "f", func(ctx context.Context, a num) (int, error) { return a.N, nil })
	x.s = mustRegister(t, x.p, "s", func(ctx context.Context, a string) (int, error) { return len(a), nil })
	x.fl = mustRegister(t, x.p, "fl", func(ctx context.Context, a float64) (int, error) { return int(a), nil })
	x.g = mustRegister(t, x.other, "g", func(ctx context.Context, a num) (int, error) { return a.N, nil })
	x.done = mustOnComplete(t, e, x.p, "done")
	x.oDone = mustOnComplete(t, e, x.other, "done")
	var err error
	x.doneF, err = workpool.RegisterOnComplete(x.p, "doneF", func(ctx context.Context, tx bun.Tx, c workpool.Completion[float64, int]) error { return nil })
	require.NoError(t, err)
	x.wrong, err = workpool.RegisterOnComplete(x.p, "wrong", func(ctx context.Context, tx bun.Tx, c workpool.Completion[string, string]) error { return nil })
	require.NoError(t, err)
	ctx := context.Background()
	x.issued = enqueue(t, x.p, x.f, num{N: 1}, workpool.RunAfter(time.Hour), workpool.OnComplete(x.done, "ctx"))
	x.otherID = enqueue(t, x.other, x.g, num{N: 2}, workpool.RunAfter(time.Hour))
	x.unmigrated, err = workpool.New(e.db, workpool.Config{Schema: e.schema + "_none", Logger: testLogger(t)})
	require.NoError(t, err)
	x.um = mustRegister(t, x.unmigrated, "um", func(ctx context.Context, a num) (int, error) { return 0, nil })
	if stopped {
		require.NoError(t, x.p.Start(ctx))
		stopCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		require.NoError(t, x.p.Stop(stopCtx))
		e.settle()
	}
	return x
}

// biTables are the tables whose contents a misuse must leave alone.
var biTables = []string{"work", "pending_start", "pending_completion", "pending_cancelation", "running",
	"internal_state", "run_status", "config", "workers", "completions"}

// snapshot describes everything a call could write: each table's row
// count and the md5 of its rows, the work id sequence (a failed insert
// that drew ids changes what Status reports for them), and the schemas
// whose name starts with the fixture's (ensure must not create the
// unmigrated pool's schema).
func (x *biFixture) snapshot() map[string]string {
	x.t.Helper()
	ctx := context.Background()
	out := map[string]string{}
	q := func(key, query string, args ...any) {
		var s string
		require.NoError(x.t, x.e.db.DB.QueryRowContext(ctx, query, args...).Scan(&s), key)
		out[key] = s
	}
	for _, tb := range biTables {
		q(tb, "SELECT count(*)::text || ' rows, md5 ' || COALESCE(md5(string_agg(t::text, E'\\n' ORDER BY t::text)), '-') FROM "+
			x.e.schema+"."+tb+" t")
	}
	q("work_id_seq", "SELECT last_value::text || ' ' || is_called::text FROM "+x.e.schema+".work_id_seq")
	q("schemas", "SELECT COALESCE(string_agg(nspname::text, ',' ORDER BY nspname), '') FROM pg_namespace WHERE starts_with(nspname, $1)", x.e.schema)
	return out
}

// inTx runs fn in a transaction of the caller's and commits it even when fn
// failed, so that whatever a failed EnqueueTx wrote would become visible.
func (x *biFixture) inTx(fn func(tx bun.Tx) error) error {
	tx, err := x.e.db.BeginTx(context.Background(), nil)
	require.NoError(x.t, err)
	callErr := fn(tx)
	if err := tx.Commit(); err != nil {
		_ = tx.Rollback()
		if callErr == nil {
			return fmt.Errorf("commit: %v", err)
		}
	}
	return callErr
}

// fresh returns a pool of the fixture's schema whose rows (config,
// internal_state, run_status) do not exist yet: reads and no-op calls on it
// must not create them.
func (x *biFixture) fresh() *workpool.Pool {
	p, err := workpool.New(x.e.db, workpool.Config{Name: "fresh", Schema: x.e.schema, Logger: testLogger(x.t)})
	require.NoError(x.t, err)
	return p
}

// biNoValue turns "a value along with an error" into a failure.
func biNoValue(v any, err error) error {
	if err != nil && v != nil && !reflect.ValueOf(v).IsNil() {
		return fmt.Errorf("returned a non-nil %T along with the error %q", v, err.Error())
	}
	return err
}

// biRun runs each case on its own fixture, in parallel.
func biRun(t *testing.T, cases []biCase) {
	t.Helper()
	names := map[string]bool{}
	for _, c := range cases {
		require.False(t, names[c.name], "duplicate case name %q", c.name)
		names[c.name] = true
		require.NotEmpty(t, c.want, c.name)
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			x := biNewFixture(t, c.stopped)
			before := x.snapshot()
			err := biCall(x, c)
			require.Error(t, err, "the call succeeded")
			for _, want := range c.want {
				assert.ErrorIs(t, err, want, "error %q (%T) is not %v", err.Error(), err, want)
			}
			after := x.snapshot()
			for _, k := range append(append([]string(nil), biTables...), "work_id_seq", "schemas") {
				assert.Equal(t, before[k], after[k], "the call wrote to %s (error: %v)", k, err)
			}
		})
	}
}

// biCall runs the case, turning a panic into an error that matches nothing.
func biCall(x *biFixture, c biCase) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic: %v", r)
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return c.call(ctx, x)
}

func canceledCtx(ctx context.Context) context.Context {
	c, cancel := context.WithCancel(ctx)
	cancel()
	return c
}

// biFakeIDB is a bun.IDB that is none of bun's own handles.
type biFakeIDB struct{ bun.IDB }

type biOther struct{ X string }

func biCases() []biCase {
	var (
		invalidConfig = []error{workpool.ErrInvalidConfig}
		invalidOption = []error{workpool.ErrInvalidOption}
		invalidName   = []error{workpool.ErrInvalidName}
		argsMismatch  = []error{workpool.ErrArgsMismatch}
		unknownFn     = []error{workpool.ErrUnknownFunction}
		tooLarge      = []error{workpool.ErrPayloadTooLarge}
		notFound      = []error{workpool.ErrWorkNotFound}
		closed        = []error{workpool.ErrPoolClosed}
		notMigrated   = []error{workpool.ErrNotMigrated}
		unsupportedDB = []error{workpool.ErrUnsupportedDB}
		ctxCanceled   = []error{context.Canceled}
		duplicate     = []error{workpool.ErrDuplicateName}
		big           = strings.Repeat("x", biMaxPayload+1)
		okFn          = func(ctx context.Context, a num) (int, error) { return 0, nil }
		okOnComplete  = func(ctx context.Context, tx bun.Tx, c workpool.Completion[string, int]) error { return nil }
		enqueueOpts   = func(opts ...workpool.Option) func(ctx context.Context, x *biFixture) error {
			return func(ctx context.Context, x *biFixture) error {
				_, err := x.p.Enqueue(ctx, x.f, num{N: 3}, opts...)
				return err
			}
		}
		newConfig = func(cfg workpool.Config) func(ctx context.Context, x *biFixture) error {
			return func(ctx context.Context, x *biFixture) error {
				if cfg.Schema == "" {
					cfg.Schema = x.e.schema
				}
				return biNoValue(workpool.New(x.e.db, cfg))
			}
		}
		register = func(name string) func(ctx context.Context, x *biFixture) error {
			return func(ctx context.Context, x *biFixture) error {
				return biNoValue(workpool.Register(x.p, name, okFn))
			}
		}
		registerOnComplete = func(name string) func(ctx context.Context, x *biFixture) error {
			return func(ctx context.Context, x *biFixture) error {
				return biNoValue(workpool.RegisterOnComplete(x.p, name, okOnComplete))
			}
		}
	)
	return []biCase{
		// Arguments of the wrong type.
		{name: "args of another type", want: argsMismatch, call: func(ctx context.Context, x *biFixture) error {
			_, err := x.p.Enqueue(ctx, x.f, "not a num")
			return err
		}},
		{name: "args nil", want: argsMismatch, call: func(ctx context.Context, x *biFixture) error {
			_, err := x.p.Enqueue(ctx, x.f, nil)
			return err
		}},
		{name: "args pointer to another type", want: argsMismatch, call: func(ctx context.Context, x *biFixture) error {
			_, err := x.p.Enqueue(ctx, x.f, &biOther{X: "x"})
			return err
		}},
		{name: "args nil pointer of the right type", want: argsMismatch, call: func(ctx context.Context, x *biFixture) error {
			_, err := x.p.Enqueue(ctx, x.f, (*num)(nil))
			return err
		}},
		{name: "args pointer to pointer", want: argsMismatch, call: func(ctx context.Context, x *biFixture) error {
			n := &num{N: 1}
			_, err := x.p.Enqueue(ctx, x.f, &n)
			return err
		}},
		{name: "args int for float64", want: argsMismatch, call: func(ctx context.Context, x *biFixture) error {
			_, err := x.p.Enqueue(ctx, x.fl, 1)
			return err
		}},
		{name: "args not encodable (NaN)", want: []error{workpool.ErrNotEncodable}, call: func(ctx context.Context, x *biFixture) error {
			_, err := x.p.Enqueue(ctx, x.fl, math.NaN())
			return err
		}},
		{name: "onComplete context not encodable (Inf)", want: []error{workpool.ErrNotEncodable}, call: func(ctx context.Context, x *biFixture) error {
			_, err := x.p.Enqueue(ctx, x.f, num{}, workpool.OnComplete(x.doneF, math.Inf(1)))
			return err
		}},

		// Handles.
		{name: "nil Handle", want: unknownFn, call: func(ctx context.Context, x *biFixture) error {
			_, err := x.p.Enqueue(ctx, nil, num{})
			return err
		}},
		{name: "nil *Func", want: unknownFn, call: func(ctx context.Context, x *biFixture) error {
			_, err := x.p.Enqueue(ctx, (*workpool.Func[num, int])(nil), num{})
			return err
		}},
		{name: "unregistered zero Func", want: unknownFn, call: func(ctx context.Context, x *biFixture) error {
			_, err := x.p.Enqueue(ctx, &workpool.Func[num, int]{}, num{})
			return err
		}},
		{name: "handle of another pool", want: unknownFn, call: func(ctx context.Context, x *biFixture) error {
			_, err := x.p.Enqueue(ctx, x.g, num{})
			return err
		}},
		{name: "handle of another pool in EnqueueBatch", want: unknownFn, call: func(ctx context.Context, x *biFixture) error {
			_, err := x.p.EnqueueBatch(ctx, x.g, []num{{1}, {2}})
			return err
		}},
		{name: "handle of another pool in EnqueueTx", want: unknownFn, call: func(ctx context.Context, x *biFixture) error {
			return x.inTx(func(tx bun.Tx) error {
				_, err := x.p.EnqueueTx(ctx, tx, x.g, num{})
				return err
			})
		}},

		// Payload size.
		{name: "args over MaxPayloadBytes", want: tooLarge, call: func(ctx context.Context, x *biFixture) error {
			_, err := x.p.Enqueue(ctx, x.s, big)
			return err
		}},
		{name: "onComplete context over MaxPayloadBytes", want: tooLarge, call: func(ctx context.Context, x *biFixture) error {
			_, err := x.p.Enqueue(ctx, x.f, num{}, workpool.OnComplete(x.done, big))
			return err
		}},
		{name: "one oversized item in EnqueueBatch", want: tooLarge, call: func(ctx context.Context, x *biFixture) error {
			_, err := x.p.EnqueueBatch(ctx, x.s, []string{"a", "b", big, "c"})
			return err
		}},
		{name: "oversized args in a committed EnqueueTx", want: tooLarge, call: func(ctx context.Context, x *biFixture) error {
			return x.inTx(func(tx bun.Tx) error {
				_, err := x.p.EnqueueTx(ctx, tx, x.s, big)
				return err
			})
		}},
		{name: "oversized onComplete context in EnqueueBatchTx", want: tooLarge, call: func(ctx context.Context, x *biFixture) error {
			return x.inTx(func(tx bun.Tx) error {
				_, err := x.p.EnqueueBatchTx(ctx, tx, x.f, []num{{1}}, workpool.OnComplete(x.done, big))
				return err
			})
		}},

		// Names.
		{name: "Register empty name", want: invalidName, call: register("")},
		{name: "Register name with a space", want: invalidName, call: register("has space")},
		{name: "Register name with a tab", want: invalidName, call: register("a\tb")},
		{name: "Register name too long", want: invalidName, call: register(strings.Repeat("n", 201))},
		{name: "Register non-ASCII name", want: invalidName, call: register("résumé")},
		{name: "Register name with NUL", want: invalidName, call: register("a\x00b")},
		{name: "RegisterOnComplete empty name", want: invalidName, call: registerOnComplete("")},
		{name: "RegisterOnComplete name with a space", want: invalidName, call: registerOnComplete("on done")},
		{name: "RegisterOnComplete name too long", want: invalidName, call: registerOnComplete(strings.Repeat("n", 201))},
		{name: "RegisterOnComplete non-ASCII name", want: invalidName, call: registerOnComplete("fertig✓")},
		{name: "RegisterNoResult invalid name", want: invalidName, call: func(ctx context.Context, x *biFixture) error {
			return biNoValue(workpool.RegisterNoResult(x.p, "no result", func(ctx context.Context, a num) error { return nil }))
		}},
		{name: "Register duplicate function", want: duplicate, call: register("f")},
		{name: "Register duplicate with another type", want: duplicate, call: func(ctx context.Context, x *biFixture) error {
			return biNoValue(workpool.Register(x.p, "s", func(ctx context.Context, a biOther) (string, error) { return "", nil }))
		}},
		{name: "RegisterNoResult duplicate", want: duplicate, call: func(ctx context.Context, x *biFixture) error {
			return biNoValue(workpool.RegisterNoResult(x.p, "fl", func(ctx context.Context, a num) error { return nil }))
		}},
		{name: "RegisterOnComplete duplicate", want: duplicate, call: registerOnComplete("done")},
		{name: "Register with nil pool", want: unknownFn, call: func(ctx context.Context, x *biFixture) error {
			return biNoValue(workpool.Register(nil, "x", okFn))
		}},
		{name: "RegisterOnComplete with nil pool", want: unknownFn, call: func(ctx context.Context, x *biFixture) error {
			return biNoValue(workpool.RegisterOnComplete(nil, "x", okOnComplete))
		}},
		// A nil function is reported as ErrInvalidName (register.go); the
		// error variable's doc only mentions bad names.
		{name: "Register nil function", want: invalidName, call: func(ctx context.Context, x *biFixture) error {
			return biNoValue(workpool.Register[num, int](x.p, "nilfn", nil))
		}},
		{name: "RegisterOnComplete nil handler", want: invalidName, call: func(ctx context.Context, x *biFixture) error {
			return biNoValue(workpool.RegisterOnComplete[string, int](x.p, "nilh", nil))
		}},

		// Options.
		{name: "RunAt with RunAfter", want: invalidOption, call: enqueueOpts(workpool.RunAt(time.Now()), workpool.RunAfter(time.Second))},
		{name: "RunAfter negative", want: invalidOption, call: enqueueOpts(workpool.RunAfter(-time.Nanosecond))},
		{name: "RunAfter over 4 years", want: invalidOption, call: enqueueOpts(workpool.RunAfter(5 * 365 * 24 * time.Hour))},
		{name: "RunAt zero", want: invalidOption, call: enqueueOpts(workpool.RunAt(time.Time{}))},
		{name: "Timeout zero", want: invalidOption, call: enqueueOpts(workpool.Timeout(0))},
		{name: "Timeout negative", want: invalidOption, call: enqueueOpts(workpool.Timeout(-time.Second))},
		{name: "Timeout over a year", want: invalidOption, call: enqueueOpts(workpool.Timeout(400 * 24 * time.Hour))},
		{name: "Retry MaxAttempts 0", want: invalidOption, call: enqueueOpts(workpool.Retry(workpool.RetryBehavior{MaxAttempts: 0, InitialBackoff: time.Second, Base: 2}))},
		{name: "Retry MaxAttempts negative", want: invalidOption, call: enqueueOpts(workpool.Retry(workpool.RetryBehavior{MaxAttempts: -3, Base: 2}))},
		{name: "Retry MaxAttempts absurd", want: invalidOption, call: enqueueOpts(workpool.Retry(workpool.RetryBehavior{MaxAttempts: 1_000_000, Base: 2}))},
		{name: "Retry Base below 1", want: invalidOption, call: enqueueOpts(workpool.Retry(workpool.RetryBehavior{MaxAttempts: 3, Base: 0.5}))},
		{name: "Retry Base zero", want: invalidOption, call: enqueueOpts(workpool.Retry(workpool.RetryBehavior{MaxAttempts: 3, InitialBackoff: time.Second}))},
		{name: "Retry Base NaN", want: invalidOption, call: enqueueOpts(workpool.Retry(workpool.RetryBehavior{MaxAttempts: 3, Base: math.NaN()}))},
		{name: "Retry Base +Inf", want: invalidOption, call: enqueueOpts(workpool.Retry(workpool.RetryBehavior{MaxAttempts: 3, Base: math.Inf(1)}))},
		{name: "Retry negative backoff", want: invalidOption, call: enqueueOpts(workpool.Retry(workpool.RetryBehavior{MaxAttempts: 3, InitialBackoff: -time.Millisecond, Base: 2}))},
		{name: "Retry backoff over a day", want: invalidOption, call: enqueueOpts(workpool.Retry(workpool.RetryBehavior{MaxAttempts: 3, InitialBackoff: 25 * time.Hour, Base: 2}))},
		{name: "nil option", want: invalidOption, call: enqueueOpts(workpool.Label("ok"), nil)},
		{name: "nil onComplete handler", want: invalidOption, call: enqueueOpts(workpool.OnComplete[string, int](nil, "x"))},
		{name: "zero onComplete handler", want: invalidOption, call: enqueueOpts(workpool.OnComplete(&workpool.OnCompleteHandler[string, int]{}, "x"))},
		{name: "onComplete result type mismatch", want: invalidOption, call: func(ctx context.Context, x *biFixture) error {
			_, err := x.p.Enqueue(ctx, x.f, num{}, workpool.OnComplete(x.wrong, "x"))
			return err
		}},
		{name: "onComplete of another pool", want: invalidOption, call: func(ctx context.Context, x *biFixture) error {
			_, err := x.p.Enqueue(ctx, x.f, num{}, workpool.OnComplete(x.oDone, "x"))
			return err
		}},
		{name: "Label invalid UTF-8", want: invalidOption, call: enqueueOpts(workpool.Label("order-\xff\xfe"))},
		{name: "Label truncated rune", want: invalidOption, call: enqueueOpts(workpool.Label("caf\xc3"))},
		{name: "Label over 256 bytes", want: invalidOption, call: enqueueOpts(workpool.Label(strings.Repeat("é", 129)))},
		{name: "bad option in EnqueueBatch", want: invalidOption, call: func(ctx context.Context, x *biFixture) error {
			_, err := x.p.EnqueueBatch(ctx, x.f, []num{{1}, {2}}, workpool.Timeout(-1))
			return err
		}},
		{name: "bad option in a committed EnqueueTx", want: invalidOption, call: func(ctx context.Context, x *biFixture) error {
			return x.inTx(func(tx bun.Tx) error {
				_, err := x.p.EnqueueTx(ctx, tx, x.f, num{}, workpool.RunAfter(-time.Hour))
				return err
			})
		}},

		// Canceled contexts.
		{name: "Enqueue canceled ctx", want: ctxCanceled, call: func(ctx context.Context, x *biFixture) error {
			_, err := x.p.Enqueue(canceledCtx(ctx), x.f, num{})
			return err
		}},
		{name: "Enqueue expired deadline", want: []error{context.DeadlineExceeded}, call: func(ctx context.Context, x *biFixture) error {
			dctx, cancel := context.WithDeadline(ctx, time.Now().Add(-time.Second))
			defer cancel()
			_, err := x.p.Enqueue(dctx, x.f, num{})
			return err
		}},
		{name: "EnqueueBatch canceled ctx", want: ctxCanceled, call: func(ctx context.Context, x *biFixture) error {
			_, err := x.p.EnqueueBatch(canceledCtx(ctx), x.f, []num{{1}, {2}})
			return err
		}},
		{name: "EnqueueTx canceled ctx", want: ctxCanceled, call: func(ctx context.Context, x *biFixture) error {
			return x.inTx(func(tx bun.Tx) error {
				_, err := x.p.EnqueueTx(canceledCtx(ctx), tx, x.f, num{})
				return err
			})
		}},
		{name: "Cancel canceled ctx", want: ctxCanceled, call: func(ctx context.Context, x *biFixture) error {
			return x.p.Cancel(canceledCtx(ctx), x.issued)
		}},
		{name: "CancelAll canceled ctx", want: ctxCanceled, call: func(ctx context.Context, x *biFixture) error {
			_, err := x.p.CancelAll(canceledCtx(ctx))
			return err
		}},
		{name: "Status canceled ctx", want: ctxCanceled, call: func(ctx context.Context, x *biFixture) error {
			_, err := x.p.Status(canceledCtx(ctx), x.issued)
			return err
		}},
		{name: "StatusBatch canceled ctx", want: ctxCanceled, call: func(ctx context.Context, x *biFixture) error {
			_, err := x.p.StatusBatch(canceledCtx(ctx), []workpool.WorkID{x.issued})
			return err
		}},

		// A stopped pool.
		{name: "Enqueue after Stop", stopped: true, want: closed, call: func(ctx context.Context, x *biFixture) error {
			_, err := x.p.Enqueue(ctx, x.f, num{})
			return err
		}},
		{name: "EnqueueBatch after Stop", stopped: true, want: closed, call: func(ctx context.Context, x *biFixture) error {
			_, err := x.p.EnqueueBatch(ctx, x.f, []num{{1}})
			return err
		}},
		{name: "EnqueueTx after Stop", stopped: true, want: closed, call: func(ctx context.Context, x *biFixture) error {
			return x.inTx(func(tx bun.Tx) error {
				_, err := x.p.EnqueueTx(ctx, tx, x.f, num{})
				return err
			})
		}},
		{name: "Cancel after Stop", stopped: true, want: closed, call: func(ctx context.Context, x *biFixture) error {
			return x.p.Cancel(ctx, x.issued)
		}},
		{name: "CancelAll after Stop with work", stopped: true, want: closed, call: func(ctx context.Context, x *biFixture) error {
			n, err := x.p.CancelAll(ctx)
			if n != 0 {
				return fmt.Errorf("CancelAll recorded %d cancelations", n)
			}
			return err
		}},
		{name: "SetMaxParallelism after Stop", stopped: true, want: closed, call: func(ctx context.Context, x *biFixture) error {
			return x.p.SetMaxParallelism(ctx, 3)
		}},
		{name: "SetLogLevel after Stop", stopped: true, want: closed, call: func(ctx context.Context, x *biFixture) error {
			return x.p.SetLogLevel(ctx, workpool.LogInfo)
		}},
		{name: "Start after Stop", stopped: true, want: closed, call: func(ctx context.Context, x *biFixture) error {
			return x.p.Start(ctx)
		}},
		{name: "Start after Stop of a never-started pool", want: closed, call: func(ctx context.Context, x *biFixture) error {
			if err := x.other.Stop(ctx); err != nil {
				return fmt.Errorf("stop: %v", err)
			}
			return x.other.Start(ctx)
		}},

		// Config.
		{name: "New with nil db", want: unsupportedDB, call: func(ctx context.Context, x *biFixture) error {
			return biNoValue(workpool.New(nil, workpool.Config{}))
		}},
		{name: "Config MaxParallelism negative", want: invalidConfig, call: newConfig(workpool.Config{MaxParallelism: -1})},
		{name: "Config MaxParallelism absurd", want: invalidConfig, call: newConfig(workpool.Config{MaxParallelism: workpool.MaxParallelismLimit + 1})},
		{name: "Config Workers negative", want: invalidConfig, call: newConfig(workpool.Config{Workers: -1})},
		{name: "Config Workers absurd", want: invalidConfig, call: newConfig(workpool.Config{Workers: math.MaxInt32})},
		{name: "Config Name with a space", want: invalidConfig, call: newConfig(workpool.Config{Name: "my pool"})},
		{name: "Config Name too long", want: invalidConfig, call: newConfig(workpool.Config{Name: strings.Repeat("p", 129)})},
		{name: "Config Name non-ASCII", want: invalidConfig, call: newConfig(workpool.Config{Name: "pööl"})},
		{name: "Config Schema upper case", want: []error{workpool.ErrInvalidSchema}, call: newConfig(workpool.Config{Schema: "Bad-Schema"})},
		{name: "Config Schema injection", want: []error{workpool.ErrInvalidSchema}, call: newConfig(workpool.Config{Schema: "x; DROP TABLE y"})},
		{name: "Config Schema pg_ prefix", want: []error{workpool.ErrInvalidSchema}, call: newConfig(workpool.Config{Schema: "pg_catalog"})},
		{name: "Config Schema too long", want: []error{workpool.ErrInvalidSchema}, call: newConfig(workpool.Config{Schema: strings.Repeat("s", 64)})},
		{name: "Config HeartbeatInterval equals Lease", want: invalidConfig, call: newConfig(workpool.Config{HeartbeatInterval: time.Minute, Lease: time.Minute})},
		{name: "Config HeartbeatInterval above default Lease", want: invalidConfig, call: newConfig(workpool.Config{HeartbeatInterval: time.Hour})},
		{name: "Config negative DefaultTimeout", want: invalidConfig, call: newConfig(workpool.Config{DefaultTimeout: -time.Second})},
		{name: "Config negative Lease", want: invalidConfig, call: newConfig(workpool.Config{Lease: -time.Second})},
		{name: "Config negative PollInterval", want: invalidConfig, call: newConfig(workpool.Config{PollInterval: -time.Millisecond})},
		{name: "Config absurd GatherDelay", want: invalidConfig, call: newConfig(workpool.Config{GatherDelay: time.Minute})},
		{name: "Config negative RecoveryPeriod", want: invalidConfig, call: newConfig(workpool.Config{RecoveryPeriod: -time.Minute})},
		{name: "Config negative OnCompleteBackoff", want: invalidConfig, call: newConfig(workpool.Config{OnCompleteBackoff: -1})},
		{name: "Config absurd ReportInterval", want: invalidConfig, call: newConfig(workpool.Config{ReportInterval: math.MaxInt64})},
		{name: "Config negative MaxPayloadBytes", want: invalidConfig, call: newConfig(workpool.Config{MaxPayloadBytes: -1})},
		{name: "Config negative BatchSize", want: invalidConfig, call: newConfig(workpool.Config{BatchSize: -5})},
		{name: "Config invalid LogLevel", want: invalidConfig, call: newConfig(workpool.Config{LogLevel: 42})},
		{name: "Config invalid DefaultRetry", want: invalidConfig, call: newConfig(workpool.Config{DefaultRetry: workpool.RetryBehavior{MaxAttempts: 0, Base: 2}})},

		// Runtime settings.
		{name: "SetMaxParallelism negative", want: invalidConfig, call: func(ctx context.Context, x *biFixture) error {
			return x.p.SetMaxParallelism(ctx, -1)
		}},
		{name: "SetMaxParallelism absurd", want: invalidConfig, call: func(ctx context.Context, x *biFixture) error {
			return x.p.SetMaxParallelism(ctx, math.MaxInt)
		}},
		{name: "SetLogLevel zero", want: invalidConfig, call: func(ctx context.Context, x *biFixture) error {
			return x.p.SetLogLevel(ctx, 0)
		}},
		{name: "SetLogLevel out of range", want: invalidConfig, call: func(ctx context.Context, x *biFixture) error {
			return x.p.SetLogLevel(ctx, workpool.LogError+1)
		}},

		// IDs this pool never issued.
		{name: "Status never-issued ID", want: notFound, call: func(ctx context.Context, x *biFixture) error {
			_, err := x.p.Status(ctx, x.otherID+1000)
			return err
		}},
		{name: "Status ID zero", want: notFound, call: func(ctx context.Context, x *biFixture) error {
			_, err := x.p.Status(ctx, 0)
			return err
		}},
		{name: "Status negative ID", want: notFound, call: func(ctx context.Context, x *biFixture) error {
			_, err := x.p.Status(ctx, -7)
			return err
		}},
		{name: "Status ID of another pool", want: notFound, call: func(ctx context.Context, x *biFixture) error {
			_, err := x.p.Status(ctx, x.otherID)
			return err
		}},
		{name: "StatusBatch with one unknown ID", want: notFound, call: func(ctx context.Context, x *biFixture) error {
			_, err := x.p.StatusBatch(ctx, []workpool.WorkID{x.issued, math.MaxInt64})
			return err
		}},
		{name: "Cancel never-issued ID", want: notFound, call: func(ctx context.Context, x *biFixture) error {
			return x.p.Cancel(ctx, x.otherID+1000)
		}},
		{name: "Cancel ID of another pool", want: notFound, call: func(ctx context.Context, x *biFixture) error {
			return x.p.Cancel(ctx, x.otherID)
		}},

		// Database handles.
		{name: "EnqueueTx nil tx", want: unsupportedDB, call: func(ctx context.Context, x *biFixture) error {
			_, err := x.p.EnqueueTx(ctx, nil, x.f, num{})
			return err
		}},
		{name: "EnqueueTx unsupported IDB", want: unsupportedDB, call: func(ctx context.Context, x *biFixture) error {
			_, err := x.p.EnqueueTx(ctx, biFakeIDB{IDB: x.e.db}, x.f, num{})
			return err
		}},
		{name: "EnqueueBatchTx nil tx", want: unsupportedDB, call: func(ctx context.Context, x *biFixture) error {
			_, err := x.p.EnqueueBatchTx(ctx, nil, x.f, []num{{1}})
			return err
		}},

		// Batches.
		{name: "EnqueueBatch non-slice", want: argsMismatch, call: func(ctx context.Context, x *biFixture) error {
			_, err := x.p.EnqueueBatch(ctx, x.f, num{N: 1})
			return err
		}},
		{name: "EnqueueBatch nil", want: argsMismatch, call: func(ctx context.Context, x *biFixture) error {
			_, err := x.p.EnqueueBatch(ctx, x.f, nil)
			return err
		}},
		{name: "EnqueueBatch map", want: argsMismatch, call: func(ctx context.Context, x *biFixture) error {
			_, err := x.p.EnqueueBatch(ctx, x.f, map[int]num{1: {1}})
			return err
		}},
		{name: "EnqueueBatch slice of another type", want: argsMismatch, call: func(ctx context.Context, x *biFixture) error {
			_, err := x.p.EnqueueBatch(ctx, x.f, []string{"a"})
			return err
		}},
		{name: "EnqueueBatch one bad element last", want: argsMismatch, call: func(ctx context.Context, x *biFixture) error {
			_, err := x.p.EnqueueBatch(ctx, x.f, []any{num{1}, &num{2}, biOther{}})
			return err
		}},
		{name: "EnqueueBatchTx non-slice", want: argsMismatch, call: func(ctx context.Context, x *biFixture) error {
			return x.inTx(func(tx bun.Tx) error {
				_, err := x.p.EnqueueBatchTx(ctx, tx, x.f, "abc")
				return err
			})
		}},

		// Schema not migrated.
		{name: "Enqueue unmigrated", want: notMigrated, call: func(ctx context.Context, x *biFixture) error {
			_, err := x.unmigrated.Enqueue(ctx, x.um, num{})
			return err
		}},
		{name: "Status unmigrated", want: notMigrated, call: func(ctx context.Context, x *biFixture) error {
			_, err := x.unmigrated.Status(ctx, 1)
			return err
		}},
		{name: "Cancel unmigrated", want: notMigrated, call: func(ctx context.Context, x *biFixture) error {
			return x.unmigrated.Cancel(ctx, 1)
		}},
		{name: "SetMaxParallelism unmigrated", want: notMigrated, call: func(ctx context.Context, x *biFixture) error {
			return x.unmigrated.SetMaxParallelism(ctx, 4)
		}},
		{name: "Start unmigrated", want: notMigrated, call: func(ctx context.Context, x *biFixture) error {
			return x.unmigrated.Start(ctx)
		}},
		// Typed nil handles must not panic deep in database/sql.
		{name: "EnqueueTx typed nil *bun.Tx", want: []error{workpool.ErrUnsupportedDB}, call: func(ctx context.Context, x *biFixture) error {
			_, err := x.p.EnqueueTx(ctx, (*bun.Tx)(nil), x.f, num{})
			return err
		}},
		{name: "EnqueueTx typed nil *bun.DB", want: []error{workpool.ErrUnsupportedDB}, call: func(ctx context.Context, x *biFixture) error {
			_, err := x.p.EnqueueTx(ctx, (*bun.DB)(nil), x.f, num{})
			return err
		}},
		{name: "EnqueueTx typed nil *bun.Conn", want: []error{workpool.ErrUnsupportedDB}, call: func(ctx context.Context, x *biFixture) error {
			_, err := x.p.EnqueueTx(ctx, (*bun.Conn)(nil), x.f, num{})
			return err
		}},
		// Postgres text cannot hold NUL and jsonb cannot hold \u0000: caught
		// before any id is drawn, so EnqueueTx leaves the caller's
		// transaction usable.
		{name: "Label with NUL", want: []error{workpool.ErrInvalidOption}, call: func(ctx context.Context, x *biFixture) error {
			_, err := x.p.Enqueue(ctx, x.f, num{}, workpool.Label("order\x0042"))
			return err
		}},
		{name: "Label with NUL in EnqueueTx", want: []error{workpool.ErrInvalidOption}, call: func(ctx context.Context, x *biFixture) error {
			return x.inTx(func(tx bun.Tx) error {
				_, err := x.p.EnqueueTx(ctx, tx, x.f, num{}, workpool.Label("a\x00"))
				return err
			})
		}},
		{name: "args string with NUL", want: []error{workpool.ErrNotEncodable}, call: func(ctx context.Context, x *biFixture) error {
			_, err := x.p.Enqueue(ctx, x.s, "a\x00b")
			return err
		}},
		{name: "onComplete context with NUL", want: []error{workpool.ErrNotEncodable}, call: func(ctx context.Context, x *biFixture) error {
			_, err := x.p.Enqueue(ctx, x.f, num{}, workpool.OnComplete(x.done, "\x00"))
			return err
		}},
		// A read or a no-op cancel must not create a pool's rows.
		{name: "Status never-issued ID on a fresh pool", want: []error{workpool.ErrWorkNotFound}, call: func(ctx context.Context, x *biFixture) error {
			_, err := x.fresh().Status(ctx, 999_999)
			return err
		}},
		{name: "Cancel never-issued ID on a fresh pool", want: []error{workpool.ErrWorkNotFound}, call: func(ctx context.Context, x *biFixture) error {
			return x.fresh().Cancel(ctx, 999_999)
		}},
		// A stopped pool refuses CancelAll even when it has no work.
		{name: "CancelAll after Stop without work", want: []error{workpool.ErrPoolClosed}, call: func(ctx context.Context, x *biFixture) error {
			p := x.fresh()
			if err := p.Stop(ctx); err != nil {
				return fmt.Errorf("stop: %v", err)
			}
			_, err := p.CancelAll(ctx)
			return err
		}},
	}
}

// TestBadInputCaseCount keeps the table above the minimum.
func TestBadInputCaseCount(t *testing.T) {
	if n := len(biCases()); n < 25 {
		t.Fatalf("%d bad-input cases, want at least 25", n)
	}
}
