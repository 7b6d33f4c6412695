package workpool_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgworkpool/pgworkpool/internal/pgtest"
	"github.com/pgworkpool/pgworkpool/internal/store"
	"github.com/pgworkpool/pgworkpool/workpool"
)

// listenKicks listens on the pool's channel and returns a function that,
// after a fence notification of its own, returns the payloads of the
// kicks (payloads "k...") that arrived before the fence.
func listenKicks(t *testing.T, e *env) (kicksSoFar func() []string) {
	t.Helper()
	ctx := context.Background()
	channel := store.KeysFor(e.schema, workpool.NameDefault).Channel
	conn, err := pgx.Connect(ctx, pgtest.Shared(t).URL())
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	_, err = conn.Exec(ctx, "LISTEN "+pgx.Identifier{channel}.Sanitize())
	require.NoError(t, err)
	var kicks []string
	return func() []string {
		t.Helper()
		_, err := e.db.DB.ExecContext(ctx, "SELECT pg_notify($1, 'fence')", channel)
		require.NoError(t, err)
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		for {
			n, err := conn.WaitForNotification(wctx)
			require.NoError(t, err, "the fence notification did not arrive")
			if n.Payload == "fence" {
				return kicks
			}
			if strings.HasPrefix(n.Payload, "k") {
				kicks = append(kicks, n.Payload)
			}
		}
	}
}

// blocking registers on p a function whose item runs until the test ends
// and returns a function that enqueues one and waits for it to start: the
// pool then has work running, and its loop is scheduled rather than idle.
func blocking(t *testing.T, p *workpool.Pool) (runOne func()) {
	t.Helper()
	started, release := make(chan struct{}, 1), make(chan struct{})
	t.Cleanup(func() { close(release) }) // before the pools' Stop: cleanups run last first
	block := mustRegister(t, p, "block", func(ctx context.Context, a num) (int, error) {
		started <- struct{}{}
		<-release
		return 0, nil
	})
	return func() {
		t.Helper()
		enqueue(t, p, block, num{})
		recv(t, started, 10*time.Second, "the blocking item to start")
	}
}

// TestLeaderEnqueueSendsNoKickWhileWorkRuns: an enqueue that commits on
// its own in the leading process wakes its driver in the process, so while
// work runs (the loop is scheduled, not idle) it sends no NOTIFY, which the
// leader would ignore and no follower needs; its work still starts.
// (store.KickSource.Leading; the loop package tests the rule itself.)
func TestLeaderEnqueueSendsNoKickWhileWorkRuns(t *testing.T) {
	t.Parallel()
	e := newAPIEnv(t)
	p := e.pool(workpool.Config{})
	ran := make(chan int, 10)
	f := mustRegister(t, p, "f", func(ctx context.Context, a num) (int, error) {
		ran <- a.N
		return a.N, nil
	})
	runBlocking := blocking(t, p)
	start(t, p)
	waitFor(t, 10*time.Second, "the pool to lead", func() bool { return workpool.Leads(p) })
	runBlocking()
	kicks := listenKicks(t, e)
	for i := range 3 {
		_, err := p.Enqueue(workpool.NotCarried(context.Background()), f, num{N: i})
		require.NoError(t, err)
		assert.Equal(t, i, recv(t, ran, 10*time.Second, "the enqueued work to run"))
	}
	assert.Empty(t, kicks(), "the leader's enqueues kicked while work ran")
	assert.True(t, workpool.Leads(p))
}

// TestEnqueueAfterLosingTheLeadKicks: the leading process enqueues
// counting on its own driver to see the rows, and before they commit it
// stops leading, and the new leader runs its iteration and is scheduled
// for later (work runs). The old leader's driver can no longer run the
// iteration, so it kicks after the commit, and the work starts on the new
// leader at once.
func TestEnqueueAfterLosingTheLeadKicks(t *testing.T) {
	t.Parallel()
	e := newAPIEnv(t)
	old := e.pool(workpool.Config{})
	f := mustRegister(t, old, "f", func(ctx context.Context, a num) (int, error) { return a.N, nil })
	start(t, old)
	waitFor(t, 10*time.Second, "the first process to lead", func() bool { return workpool.Leads(old) })
	successor := e.pool(workpool.Config{})
	ran := make(chan int, 1)
	mustRegister(t, successor, "f", func(ctx context.Context, a num) (int, error) {
		ran <- a.N
		return a.N, nil
	})
	runBlocking := blocking(t, successor)
	start(t, successor)
	runBlocking() // claimed by the successor, which alone has the function

	reached, proceed := make(chan struct{}), make(chan struct{})
	workpool.BeforeLeadingWrite(old, func() {
		close(reached)
		<-proceed
	})
	enqueued := make(chan error, 1)
	go func() {
		_, err := old.Enqueue(workpool.NotCarried(context.Background()), f, num{N: 3})
		enqueued <- err
	}()
	recv(t, reached, 10*time.Second, "the enqueue to find its process leading")
	generation := e.count("SELECT generation FROM " + e.schema + ".internal_state")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, old.Stop(ctx))
	waitFor(t, 10*time.Second, "the successor to lead and be scheduled", func() bool {
		return workpool.Leads(successor) &&
			e.count("SELECT generation FROM "+e.schema+".internal_state") > generation &&
			e.count("SELECT count(*) FROM "+e.schema+".run_status WHERE state = 'scheduled'") == 1
	})
	close(proceed)
	require.NoError(t, recv(t, enqueued, 10*time.Second, "the enqueue to return"))
	assert.Equal(t, 3, recv(t, ran, 10*time.Second, "the work to run on the new leader"))
}
