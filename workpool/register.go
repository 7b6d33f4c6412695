package workpool

import (
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"regexp"

	"github.com/uptrace/bun"

	"github.com/pgworkpool/pgworkpool/internal/store"
)

// Handle is a registered function, as returned by Register and
// RegisterNoResult. Its method is unexported so that only those functions
// make one.
type Handle interface {
	info() *funcInfo
}

// funcInfo is the untyped face of a registered function.
type funcInfo struct {
	pool       *Pool
	name       string
	argsType   reflect.Type
	resultType reflect.Type
	// encodeArgs type-checks args (A or a non-nil *A) and encodes them.
	encodeArgs func(args any) ([]byte, error)
	// run decodes args, calls the handler and encodes its result.
	run func(ctx context.Context, args []byte) (value []byte, err error)
}

// Func is a function registered with a pool under a name. Enqueue it with
// Pool.Enqueue; a process runs it only if it registered it.
type Func[A, R any] struct{ f *funcInfo }

func (f *Func[A, R]) info() *funcInfo {
	if f == nil {
		return nil
	}
	return f.f
}

// Name returns the name the function is stored and logged under.
func (f *Func[A, R]) Name() string { return f.f.name }

var namePattern = regexp.MustCompile(`^[\x21-\x7e]{1,200}$`)

func validateName(kind, name string) error {
	if !namePattern.MatchString(name) {
		return fmt.Errorf("%w: %s name %q (want 1-200 printable ASCII characters, no spaces)", ErrInvalidName, kind, name)
	}
	return nil
}

// Register makes fn runnable by the pool under name. Arguments and results
// cross the database as JSON, so A and R must round-trip through
// encoding/json. Register the function in every process that enqueues it
// (to get the handle) or runs it (to claim it); the name, not the Go
// identity, ties the two together, so keep it stable across deploys.
func Register[A, R any](p *Pool, name string, fn func(ctx context.Context, args A) (R, error)) (*Func[A, R], error) {
	if p == nil {
		return nil, fmt.Errorf("%w: nil pool", ErrUnknownFunction)
	}
	if fn == nil {
		return nil, fmt.Errorf("%w: nil function for %q", ErrInvalidName, name)
	}
	if err := validateName("function", name); err != nil {
		return nil, err
	}
	f := &funcInfo{
		pool:       p,
		name:       name,
		argsType:   reflect.TypeFor[A](),
		resultType: reflect.TypeFor[R](),
		encodeArgs: func(args any) ([]byte, error) {
			v, err := typed[A](args)
			if err != nil {
				return nil, err
			}
			b, err := json.Marshal(v)
			if err != nil {
				return nil, fmt.Errorf("%w: arguments of %q: %v", ErrNotEncodable, name, err)
			}
			if store.JSONHasNUL(b) {
				return nil, fmt.Errorf("%w: arguments of %q hold a NUL character, which Postgres cannot store", ErrNotEncodable, name)
			}
			return b, nil
		},
		run: func(ctx context.Context, raw []byte) ([]byte, error) {
			var args A
			if err := json.Unmarshal(raw, &args); err != nil {
				return nil, NonRetryable(fmt.Errorf("decode arguments of %q: %w", name, err))
			}
			r, err := fn(ctx, args)
			if err != nil {
				return nil, err
			}
			b, err := json.Marshal(r)
			if err != nil {
				return nil, NonRetryable(fmt.Errorf("encode result of %q: %w", name, err))
			}
			if store.JSONHasNUL(b) {
				// Retrying would compute the same value: fail for good.
				return nil, NonRetryable(fmt.Errorf("result of %q holds a NUL character, which Postgres cannot store", name))
			}
			return b, nil
		},
	}
	if err := p.addFunc(f); err != nil {
		return nil, err
	}
	return &Func[A, R]{f: f}, nil
}

// RegisterNoResult registers a function that returns only an error. Its
// onComplete handlers take struct{} as the result type.
func RegisterNoResult[A any](p *Pool, name string, fn func(ctx context.Context, args A) error) (*Func[A, struct{}], error) {
	if fn == nil {
		return nil, fmt.Errorf("%w: nil function for %q", ErrInvalidName, name)
	}
	return Register(p, name, func(ctx context.Context, args A) (struct{}, error) {
		return struct{}{}, fn(ctx, args)
	})
}

// typed accepts a value of type T or a non-nil *T.
func typed[T any](v any) (T, error) {
	if t, ok := v.(T); ok {
		return t, nil
	}
	if p, ok := v.(*T); ok && p != nil {
		return *p, nil
	}
	var zero T
	return zero, fmt.Errorf("%w: got %T, want %v", ErrArgsMismatch, v, reflect.TypeFor[T]())
}

// ResultStatus is how a work item ended.
type ResultStatus string

// The terminal outcomes of a work item.
const (
	Succeeded ResultStatus = "success"
	Failed    ResultStatus = "failed"
	Canceled  ResultStatus = "canceled"
)

// Completion is what an onComplete handler receives, exactly once per work
// item, in the transaction that records the item's terminal state.
type Completion[C, R any] struct {
	WorkID WorkID
	// Context is the value given to the OnComplete option.
	Context C
	Status  ResultStatus
	// Value is the function's result when Status is Succeeded.
	Value R
	// Error is the last attempt's error text when Status is Failed.
	Error string
	// Attempts counts the runs that reported (0 if canceled before it ran).
	Attempts int
}

// OnCompleteHandler is a registered onComplete handler; pass it to the
// OnComplete option.
type OnCompleteHandler[C, R any] struct{ h *onCompleteInfo }

// storedResult is the outcome kept on a work row while its onComplete has
// not committed.
type storedResult struct {
	Status string          `json:"status"`
	Error  *string         `json:"error"`
	Value  json.RawMessage `json:"value"`
}

// decodeStoredResult reads the result column of a finishing work row.
func decodeStoredResult(raw string) (storedResult, error) {
	var sr storedResult
	if err := json.Unmarshal([]byte(raw), &sr); err != nil {
		return storedResult{}, fmt.Errorf("decode stored result: %w", err)
	}
	switch ResultStatus(sr.Status) {
	case Succeeded, Failed, Canceled:
		return sr, nil
	}
	return storedResult{}, fmt.Errorf("decode stored result: unknown status %q", sr.Status)
}

type onCompleteInfo struct {
	pool        *Pool
	name        string
	resultType  reflect.Type
	contextType reflect.Type
	run         func(ctx context.Context, tx bun.Tx, workID int64, attempts int, contextJSON string, res storedResult) error
}

// RegisterOnComplete registers fn to run when work enqueued with
// OnComplete(handler, value) ends: succeeded, failed after its retries, or
// canceled. fn runs in the transaction that deletes the work, so what it
// writes with tx commits exactly once, together with the terminal state. If
// fn returns an error that transaction rolls back and the onComplete is
// tried again later with backoff (Config.OnCompleteAttempts); after the last
// try the failure stays in the database and is logged, never dropped.
// A call whose transaction never commits, because its process died or its
// connection dropped, is followed by another, so what fn does outside tx
// may happen more than once and should be idempotent (the fault suite,
// killing processes and restarting Postgres, counts 0-3 such calls in
// 20,000).
//
// Register it in every process that runs workers: the process that
// finishes the work runs the handler if it has it, and otherwise leaves it
// to one that does.
func RegisterOnComplete[C, R any](p *Pool, name string, fn func(ctx context.Context, tx bun.Tx, c Completion[C, R]) error) (*OnCompleteHandler[C, R], error) {
	if p == nil {
		return nil, fmt.Errorf("%w: nil pool", ErrUnknownFunction)
	}
	if fn == nil {
		return nil, fmt.Errorf("%w: nil onComplete handler for %q", ErrInvalidName, name)
	}
	if err := validateName("onComplete", name); err != nil {
		return nil, err
	}
	h := &onCompleteInfo{
		pool:        p,
		name:        name,
		resultType:  reflect.TypeFor[R](),
		contextType: reflect.TypeFor[C](),
		run: func(ctx context.Context, tx bun.Tx, workID int64, attempts int, contextJSON string, res storedResult) error {
			c := Completion[C, R]{WorkID: WorkID(workID), Status: ResultStatus(res.Status), Attempts: attempts}
			if contextJSON != "" {
				if err := json.Unmarshal([]byte(contextJSON), &c.Context); err != nil {
					return fmt.Errorf("decode onComplete context: %w", err)
				}
			}
			if res.Error != nil {
				c.Error = *res.Error
			}
			if c.Status == Succeeded && len(res.Value) > 0 {
				if err := json.Unmarshal(res.Value, &c.Value); err != nil {
					return fmt.Errorf("decode result value: %w", err)
				}
			}
			return fn(ctx, tx, c)
		},
	}
	if err := p.addOnComplete(h); err != nil {
		return nil, err
	}
	return &OnCompleteHandler[C, R]{h: h}, nil
}
