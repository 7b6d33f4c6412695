package workpool_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/stretchr/testify/require"
	"github.com/uptrace/bun"

	"github.com/pgworkpool/pgworkpool/workpool"
)

// TestUnstorableResults: a handler error text that Postgres text cannot
// store (a NUL byte, invalid UTF-8), or a success value that jsonb cannot
// store (a string with NUL), must end only its own item (failed) and leave
// every other result of the process alone. Once, such a value failed the
// whole result batch, and the flusher (or the leading loop, which records
// its own workers' results) retried that batch forever, so no later result
// of the process was recorded and no work of the pool started.
func TestUnstorableResults(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name           string
		errOf          string // error text returned by the poisoned handler
		value          string // or success value
		withOnComplete bool
	}{
		{name: "error text with NUL", errOf: "bad\x00byte"},
		{name: "error text with NUL and onComplete", errOf: "bad\x00byte", withOnComplete: true},
		{name: "error text with invalid UTF-8", errOf: "bad \xff\xfe byte"},
		{name: "error text with invalid UTF-8 and onComplete", errOf: "bad \xff\xfe byte", withOnComplete: true},
		{name: "success value with NUL and onComplete", value: "a\x00b", withOnComplete: true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			e := newAPIEnv(t)
			p := e.pool(workpool.Config{MaxParallelism: 4})
			ran := make(chan struct{}, 1)
			poison := mustRegister(t, p, "poison", func(ctx context.Context, a num) (string, error) {
				ran <- struct{}{}
				if c.errOf != "" {
					return "", errors.New(c.errOf)
				}
				return c.value, nil
			})
			completions := make(chan workpool.Completion[string, string], 1)
			done, err := workpool.RegisterOnComplete(p, "done", func(ctx context.Context, tx bun.Tx, cpl workpool.Completion[string, string]) error {
				completions <- cpl
				return nil
			})
			require.NoError(t, err)
			ok := mustRegister(t, p, "ok", func(ctx context.Context, a num) (int, error) { return a.N, nil })
			start(t, p)

			okDone := mustOnComplete(t, e, p, "okDone")
			opts := []workpool.Option{workpool.NoRetry()}
			if c.withOnComplete {
				opts = append(opts, workpool.OnComplete(done, "ctx"))
			}
			bad := enqueue(t, p, poison, num{}, opts...)
			<-ran // its result is on its way while the others are enqueued
			var ids []workpool.WorkID
			for i := range 6 {
				if i%2 == 0 {
					ids = append(ids, enqueue(t, p, ok, num{N: i}))
				} else {
					ids = append(ids, enqueue(t, p, ok, num{N: i}, workpool.OnComplete(okDone, "ok")))
				}
			}
			waitFor(t, 15*time.Second, "the healthy items to finish", func() bool {
				for _, id := range ids {
					if st, err := p.Status(context.Background(), id); err != nil || st.State != workpool.StateFinished {
						return false
					}
				}
				return true
			})
			waitFor(t, 15*time.Second, "the poisoned item to finish", func() bool {
				st, err := p.Status(context.Background(), bad)
				return err == nil && st.State == workpool.StateFinished
			})
			if c.withOnComplete {
				cpl := <-completions
				require.Equal(t, workpool.Failed, cpl.Status)
				require.True(t, utf8.ValidString(cpl.Error) && !strings.Contains(cpl.Error, "\x00"), "error text %q", cpl.Error)
				require.NotEmpty(t, cpl.Error)
			}
		})
	}
}
