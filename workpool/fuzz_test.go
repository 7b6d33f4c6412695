package workpool

import (
	"context"
	"database/sql"
	"encoding/json"
	"reflect"
	"testing"

	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" driver
	"github.com/uptrace/bun"
	"github.com/uptrace/bun/dialect/pgdialect"

	"github.com/pgworkpool/pgworkpool/internal/store"
)

// The fuzz targets feed stored text (arguments, onComplete contexts and
// results as read back from the database) to the decoders a worker and a
// finisher use. Stored text is normally what we wrote, but a row can
// outlive a deploy that changed a function's types, or be edited by hand:
// decoding must then fail the attempt for good (arguments) or report an
// error (onComplete), never panic and never hand the handler a half-decoded
// value. None of them touches the database.

// fuzzArgs is an argument type with the shapes JSON decoding trips on:
// nested values, pointers, slices, maps and numbers of fixed size.
type fuzzArgs struct {
	Name  string            `json:"name"`
	N     int32             `json:"n"`
	F     float64           `json:"f"`
	Tags  []string          `json:"tags"`
	Attrs map[string]uint8  `json:"attrs"`
	Next  *fuzzArgs         `json:"next"`
	Raw   json.RawMessage   `json:"raw"`
	Flags map[string][]bool `json:"flags"`
}

// fuzzPool is a pool whose database is never contacted.
func fuzzPool(t testing.TB) *Pool {
	t.Helper()
	sqlDB, err := sql.Open("pgx", "postgres://fuzz@127.0.0.1:1/none")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sqlDB.Close() })
	p, err := New(bun.NewDB(sqlDB, pgdialect.New()), Config{})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func FuzzDecodeArgs(f *testing.F) {
	for _, seed := range []string{
		`{"name":"a","n":1,"tags":["x"],"attrs":{"k":2},"next":{"n":2}}`,
		`{}`, `null`, `[]`, `"text"`, `{"n":2147483648}`, `{"attrs":{"k":300}}`,
		`{"next":{"next":{"next":null}}}`, `{"raw":[1,{"a":null}]}`, `{"n":1.5}`, `{`, ``,
		`{"name":"\u00e9\ud800"}`, `{"flags":{"a":[true,false,null]}}`,
	} {
		f.Add([]byte(seed))
	}
	p := fuzzPool(f)
	var got fuzzArgs
	var calls int
	fn, err := Register(p, "fuzz", func(ctx context.Context, a fuzzArgs) (fuzzArgs, error) {
		calls++
		got = a
		return a, nil
	})
	if err != nil {
		f.Fatal(err)
	}
	run := fn.f.run
	f.Fuzz(func(t *testing.T, raw []byte) {
		calls = 0
		value, err := run(context.Background(), raw)
		var want fuzzArgs
		decodeErr := json.Unmarshal(raw, &want)
		switch {
		case decodeErr != nil:
			if err == nil || !IsNonRetryable(err) {
				t.Fatalf("undecodable arguments %q: error %v, want a non-retryable error", raw, err)
			}
			if calls != 0 {
				t.Fatalf("undecodable arguments %q reached the handler", raw)
			}
		case err != nil:
			// Only a result Postgres cannot store may fail, for good.
			if enc, _ := json.Marshal(want); calls != 1 || !IsNonRetryable(err) || !store.JSONHasNUL(enc) {
				t.Fatalf("decodable arguments %q failed: %v", raw, err)
			}
		default:
			if calls != 1 || !reflect.DeepEqual(got, want) {
				t.Fatalf("arguments %q: handler got %+v, want %+v", raw, got, want)
			}
			// The result goes back to the database as jsonb: it must be
			// JSON that decodes to the same value.
			var back fuzzArgs
			if err := json.Unmarshal(value, &back); err != nil {
				t.Fatalf("result %q of arguments %q is not JSON: %v", value, raw, err)
			}
		}
	})
}

func FuzzDecodeCompletion(f *testing.F) {
	for _, seed := range []struct{ ctx, result string }{
		{`"order-1"`, `{"status":"success","value":{"name":"a","n":3}}`},
		{`""`, `{"status":"failed","error":"boom","value":null}`},
		{``, `{"status":"canceled"}`},
		{`42`, `{"status":"success","value":"not an object"}`},
		{`"x"`, `{"status":"retrying"}`},
		{`"x"`, `[]`},
		{`{"a":1}`, `{"status":"success","value":{"attrs":{"k":-1}}}`},
		{`"x"`, `{"status":"failed","error":null}`},
	} {
		f.Add(seed.ctx, seed.result)
	}
	p := fuzzPool(f)
	var got Completion[string, fuzzArgs]
	var calls int
	h, err := RegisterOnComplete(p, "done", func(ctx context.Context, tx bun.Tx, c Completion[string, fuzzArgs]) error {
		calls++
		got = c
		return nil
	})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, contextJSON, result string) {
		sr, err := decodeStoredResult(result)
		if err != nil {
			return // the finisher logs and skips such a row
		}
		switch ResultStatus(sr.Status) {
		case Succeeded, Failed, Canceled:
		default:
			t.Fatalf("decodeStoredResult(%q) accepted status %q", result, sr.Status)
		}
		calls = 0
		err = h.h.run(context.Background(), bun.Tx{}, 7, 2, contextJSON, sr)
		if err != nil {
			if calls != 0 {
				t.Fatalf("the handler ran although decoding failed: %v", err)
			}
			return
		}
		if calls != 1 || got.WorkID != 7 || got.Attempts != 2 || got.Status != ResultStatus(sr.Status) {
			t.Fatalf("handler got %+v for context %q, result %q", got, contextJSON, result)
		}
		if sr.Error != nil && got.Error != *sr.Error {
			t.Fatalf("error %q, want %q", got.Error, *sr.Error)
		}
		if got.Status != Succeeded && !reflect.DeepEqual(got.Value, fuzzArgs{}) {
			t.Fatalf("a %s completion carries a value: %+v", got.Status, got.Value)
		}
	})
}
