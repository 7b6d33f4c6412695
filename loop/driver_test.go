package loop_test

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgworkpool/pgworkpool/internal/pgtest"
	"github.com/pgworkpool/pgworkpool/internal/store"
	"github.com/pgworkpool/pgworkpool/loop"
	"github.com/pgworkpool/pgworkpool/stats"
)

// process is one driver as a separate process would run it: its own Loop,
// its own LISTEN connection, and channels fed by the driver's hooks.
type process struct {
	name    string
	driver  *loop.Driver
	cancel  context.CancelFunc
	done    chan struct{}
	leader  chan bool
	started chan struct{} // one value per iteration that started work
	fenced  chan struct{} // one value per "g" notification (see fence)
}

func (h *harness) startProcess(t *testing.T, name string) *process {
	return h.startProcessFrom(t, name, "")
}

// startProcessFrom starts a process whose driver ignores, while it leads,
// kicks of the given origin (DriverConfig.Origin).
func (h *harness) startProcessFrom(t *testing.T, name, origin string) *process {
	t.Helper()
	cfg, err := pgx.ParseConfig(pgtest.Shared(t).URL())
	require.NoError(t, err)
	logger := stats.NewLogger(slog.New(slog.NewTextHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelDebug})), pool, stats.LevelWarn)
	lp := loop.New(loop.Config{Pool: pool, Store: h.st, DB: h.sqlDB, Logger: logger})
	p := &process{name: name, done: make(chan struct{}), leader: make(chan bool, 16),
		started: make(chan struct{}, 100000), fenced: make(chan struct{}, 16)}
	p.driver = loop.NewDriver(loop.DriverConfig{
		Loop: lp, ConnConfig: cfg, Logger: logger, Origin: origin,
		HealthcheckInterval: 200 * time.Millisecond,
		GatherDelay:         h.gatherDelay,
		OnLeaderChange:      func(l bool) { p.leader <- l },
		OnSignal: func(s string) {
			// Only the iteration's in-process signal carries exactly "s"
			// once per start; reconnects send every letter.
			switch s {
			case "s":
				p.started <- struct{}{}
			case "g":
				p.fenced <- struct{}{}
			}
		},
	})
	ctx, cancel := context.WithCancel(context.Background())
	p.cancel = cancel
	go func() {
		defer close(p.done)
		p.driver.Run(ctx)
	}()
	t.Cleanup(p.stop)
	return p
}

func (p *process) stop() {
	p.cancel()
	<-p.done
}

// fence returns once p's LISTEN connection has handled every notification
// committed before the call: notifications reach a listener in commit
// order, and this one comes last.
func (h *harness) fence(t *testing.T, p *process) {
	t.Helper()
	_, err := h.sqlDB.ExecContext(h.ctx, "SELECT pg_notify($1, 'g')", h.keys.Channel)
	require.NoError(t, err)
	select {
	case <-p.fenced:
	case <-time.After(5 * time.Second):
		t.Fatal("the fence notification did not arrive")
	}
}

// enqueue adds one due item the way Pool.Enqueue does: insert (with the
// shared kick lock), then the kick, in one transaction.
func (h *harness) enqueue(t *testing.T) int64 {
	t.Helper()
	return h.enqueueFrom(t, "")
}

// enqueueFrom is enqueue with a kick of the given origin.
func (h *harness) enqueueFrom(t *testing.T, origin string) int64 {
	t.Helper()
	return h.enqueueMany(t, 1, origin)[0]
}

// enqueueMany is enqueueFrom for n items in one transaction.
func (h *harness) enqueueMany(t *testing.T, n int, origin string) []int64 {
	t.Helper()
	var ids []int64
	require.NoError(t, withTx(h.ctx, h.sqlDB, func(tx *sql.Tx) error {
		labels, args, ctxs := make([]string, n), make([]string, n), make([]string, n)
		for i := range args {
			args[i] = "{}"
		}
		var seg int64
		var err error
		ids, seg, err = h.st.InsertWork(h.ctx, tx, store.NewWork{
			WorkOptions: store.WorkOptions{Pool: pool, Fn: "fn", MaxAttempts: 1, BackoffBase: 1, TimeoutMs: 60000},
			Labels:      labels, Args: args, Contexts: ctxs,
		}, h.keys.KickLock)
		if err != nil {
			return err
		}
		_, err = h.st.Kick(h.ctx, tx, pool, h.keys, store.KickSource{Due: seg, StartsOnly: true, Origin: origin})
		return err
	}))
	return ids
}

func waitLeader(t *testing.T, procs []*process, timeout time.Duration) *process {
	t.Helper()
	deadline := time.After(timeout)
	for {
		for _, p := range procs {
			select {
			case l := <-p.leader:
				if l {
					return p
				}
			default:
			}
		}
		select {
		case <-deadline:
			t.Fatalf("no process became leader within %v", timeout)
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// waitRunning waits, on the start signals of p, until n rows are running.
// A signal may be stale (the NOTIFY echo of one already counted), so the
// count decides; a missing signal times out.
func (h *harness) waitRunning(t *testing.T, p *process, n int64, what string) {
	t.Helper()
	const timeout = 5 * time.Second
	for h.scalar("SELECT count(*) FROM {s}.running") < n {
		select {
		case <-p.started:
		case <-time.After(timeout):
			t.Fatalf("%s: %d of %d running after %v without a start (lost wake-up?)",
				what, h.scalar("SELECT count(*) FROM {s}.running"), n, timeout)
		}
	}
}

// newLeader starts one process on a fresh pool and waits until it leads.
func newLeader(t *testing.T) (*harness, *process) {
	t.Helper()
	h := newHarness(t, harnessOpts{maxParallelism: 1000})
	p := h.startProcess(t, "only")
	waitLeader(t, []*process{p}, 10*time.Second)
	return h, p
}

// settleLead lets the iterations of taking the lead pass and returns the
// iteration count after them (at most one more may still be counted).
func settleLead(t *testing.T, p *process) int64 {
	t.Helper()
	before := p.driver.Iterations()
	p.driver.Kick()
	require.Eventually(t, func() bool { return p.driver.Iterations() > before }, 5*time.Second, time.Millisecond)
	return p.driver.Iterations()
}

func TestDriversElectOneLeaderAndFailOver(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOpts{maxParallelism: 100000})
	procs := []*process{h.startProcess(t, "a"), h.startProcess(t, "b"), h.startProcess(t, "c")}
	leader := waitLeader(t, procs, 10*time.Second)

	before := map[string]int64{}
	for _, p := range procs {
		before[p.name] = p.driver.Iterations()
	}
	for i := range 20 {
		h.enqueue(t)
		h.waitRunning(t, leader, int64(i+1), fmt.Sprintf("item %d", i))
	}
	for _, p := range procs {
		n := p.driver.Iterations() - before[p.name]
		if p == leader {
			assert.Positive(t, n, "the leader iterates")
		} else {
			assert.Zero(t, n, "process %s iterated while %s leads", p.name, leader.name)
			assert.False(t, p.driver.Leader())
		}
	}

	// Close the leader: another process takes over at once (handover kick).
	closed := time.Now()
	leader.stop()
	var rest []*process
	for _, p := range procs {
		if p != leader {
			rest = append(rest, p)
		}
	}
	next := waitLeader(t, rest, 5*time.Second)
	t.Logf("failover after close took %v", time.Since(closed))
	h.enqueue(t)
	h.waitRunning(t, next, 21, "after failover")
	h.checkRunningCount()
}

func TestLeaderLosesListenConnection(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOpts{maxParallelism: 100000})
	procs := []*process{h.startProcess(t, "a"), h.startProcess(t, "b")}
	waitLeader(t, procs, 10*time.Second)
	// Kill every LISTEN connection of this pool's channel: the drivers
	// must reconnect, re-elect, and keep serving kicks.
	n := h.scalar(`SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = ?`, h.keys.Channel)
	require.Positive(t, n)
	leader := waitLeader(t, procs, 15*time.Second)
	for i := range 5 {
		h.enqueue(t)
		h.waitRunning(t, leader, int64(i+1), fmt.Sprintf("item %d after reconnect", i))
	}
}

// TestKickRace races enqueues against the loop's move to idle thousands of
// times: each item is enqueued right after the previous one started, while
// the loop is finishing the iteration in which it will decide to go idle.
// A lost wake-up leaves an item unstarted and fails the test.
func TestKickRace(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOpts{maxParallelism: 1000000})
	p := h.startProcess(t, "only")
	waitLeader(t, []*process{p}, 10*time.Second)
	rounds := 3000
	if testing.Short() {
		rounds = 300
	}
	const producers = 3
	for i := 0; i < rounds; i += producers {
		var wg sync.WaitGroup
		for range producers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				h.enqueue(t)
			}()
		}
		wg.Wait()
		h.waitRunning(t, p, int64(i+producers), fmt.Sprintf("round %d", i))
	}
	assert.Zero(t, h.scalar("SELECT count(*) FROM {s}.pending_start"))
	h.checkRunningCount()
}

// TestOwnKicksCostOneIteration: a producer of the leading process wakes its
// driver itself once it commits (Pool.kickLocal); the notification of its
// kick, which carries its origin, must not cost the leader a second, empty
// iteration. A kick of another origin still wakes the leader on its own.
func TestOwnKicksCostOneIteration(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOpts{maxParallelism: 1000})
	p := h.startProcessFrom(t, "only", "42")
	waitLeader(t, []*process{p}, 10*time.Second)
	start := settleLead(t, p)
	const rounds = 10
	for i := range rounds {
		h.enqueueFrom(t, "42")
		// Had the driver acted on the notification, its iteration would
		// be under way by now, and the kick below would make another.
		h.fence(t, p)
		p.driver.Kick()
		h.waitRunning(t, p, int64(i+1), fmt.Sprintf("round %d", i))
	}
	// One iteration per round, give or take the one of taking the lead
	// and the last round's count lagging its commit; acting on the
	// notifications too would make about two per round.
	assert.LessOrEqual(t, p.driver.Iterations()-start, int64(rounds+2))

	h.enqueueFrom(t, "7")
	h.waitRunning(t, p, rounds+1, "a kick of another origin")
	h.checkRunningCount()
}

// TestLongProducerTransactionKeepsLoopAwake: a producer that holds its
// transaction open blocks nobody (other enqueues start meanwhile), and its
// own item starts as soon as it commits, with no further kick.
func TestLongProducerTransactionKeepsLoopAwake(t *testing.T) {
	t.Parallel()
	h, p := newLeader(t)

	tx, err := h.sqlDB.BeginTx(h.ctx, nil)
	require.NoError(t, err)
	defer tx.Rollback()
	ids, seg, err := h.st.InsertWork(h.ctx, tx, store.NewWork{WorkOptions: store.WorkOptions{Pool: pool, Fn: "fn", MaxAttempts: 1, BackoffBase: 1, TimeoutMs: 1000},
		Labels: []string{""}, Args: []string{"{}"}, Contexts: []string{""}}, h.keys.KickLock)
	require.NoError(t, err)
	_, err = h.st.Kick(h.ctx, tx, pool, h.keys, store.KickSource{Due: seg, StartsOnly: true})
	require.NoError(t, err)

	// Meanwhile other producers enqueue and their work starts.
	for i := range 5 {
		h.enqueue(t)
		h.waitRunning(t, p, int64(i+1), fmt.Sprintf("concurrent item %d", i))
	}
	assert.Equal(t, store.RunRunning, h.runStatus().State, "the loop cannot go idle while a producer is in flight")
	require.NoError(t, tx.Commit())
	h.waitRunning(t, p, 6, "the long transaction's item")
	assert.Equal(t, int64(1), h.scalar("SELECT count(*) FROM {s}.running WHERE work_id = ?", ids[0]))
}

// carriedOps returns the insert of one enqueue as Pool.Enqueue hands it to
// Driver.RunInIteration, followed by extra.
func (h *harness) carriedOps(out *store.Inserted, extra ...store.Op) []store.Op {
	return append([]store.Op{h.st.InsertWorkOp(store.NewWork{
		WorkOptions: store.WorkOptions{Pool: pool, Fn: "fn", MaxAttempts: 1, BackoffBase: 1, TimeoutMs: 60000},
		Labels:      []string{""}, Args: []string{"{}"}, Contexts: []string{""},
	}, h.keys.KickLock, out)}, extra...)
}

// runInIteration offers ops to p's driver until it takes them, which it
// does only while it leads and waits for work.
func runInIteration(t *testing.T, p *process, ops []store.Op) error {
	t.Helper()
	var err error
	require.Eventually(t, func() bool {
		var ran bool
		ran, err = p.driver.RunInIteration(ops)
		return ran
	}, 5*time.Second, time.Millisecond, "the leading driver never took statements to carry")
	return err
}

// TestRunInIterationStartsWorkInTheSameTransaction: an enqueue carried by
// an iteration commits with it, and that iteration starts its work: one
// iteration per item, and no kick.
func TestRunInIterationStartsWorkInTheSameTransaction(t *testing.T) {
	t.Parallel()
	h, p := newLeader(t)
	start := settleLead(t, p)
	const rounds = 10
	for i := range rounds {
		var out store.Inserted
		require.NoError(t, runInIteration(t, p, h.carriedOps(&out)))
		require.Len(t, out.IDs, 1)
		// Committed with the iteration that started it: running already.
		assert.Equal(t, int64(1), h.scalar("SELECT count(*) FROM {s}.running WHERE work_id = ?", out.IDs[0]), "round %d", i)
		h.waitRunning(t, p, int64(i+1), fmt.Sprintf("round %d", i))
	}
	assert.LessOrEqual(t, p.driver.Iterations()-start, int64(rounds+1))
	assert.Zero(t, h.scalar("SELECT count(*) FROM {s}.pending_start"))
	h.checkRunningCount()
}

// TestRunInIterationFailureWritesNothing: carried statements that fail are
// reported to their producer, commit nothing, and leave the driver serving
// kicks.
func TestRunInIterationFailureWritesNothing(t *testing.T) {
	t.Parallel()
	h, p := newLeader(t)

	var out store.Inserted
	err := runInIteration(t, p, h.carriedOps(&out, store.Raw("SELECT 1/0")))
	var pgErr *pgconn.PgError
	require.ErrorAs(t, err, &pgErr)
	assert.Equal(t, "22012", pgErr.Code, "division by zero")
	assert.Zero(t, h.scalar("SELECT count(*) FROM {s}.work"))
	assert.Zero(t, h.scalar("SELECT count(*) FROM {s}.pending_start"))

	h.enqueue(t)
	h.waitRunning(t, p, 1, "an enqueue after the failure")
	require.NoError(t, runInIteration(t, p, h.carriedOps(&store.Inserted{})))
	h.waitRunning(t, p, 2, "a carried enqueue after the failure")
	h.checkRunningCount()
}

// TestRunInIterationStaleGenerationDeclines: an iteration that finds its
// generation stale rolls back, carried statements included, and declines
// them, so that their producer commits them by itself.
func TestRunInIterationStaleGenerationDeclines(t *testing.T) {
	t.Parallel()
	h, p := newLeader(t)

	var out store.Inserted
	var ran bool
	require.Eventually(t, func() bool {
		// Another leader's iteration, as far as this driver can tell.
		h.exec("UPDATE {s}.internal_state SET generation = generation + 1")
		var err error
		ran, err = p.driver.RunInIteration(h.carriedOps(&out))
		require.NoError(t, err)
		return len(out.IDs) > 0 // the insert ran: the driver took it
	}, 5*time.Second, time.Millisecond)
	assert.False(t, ran)
	assert.Zero(t, h.scalar("SELECT count(*) FROM {s}.work"), "rolled back with the stale iteration")

	// The driver carries on with the current generation.
	h.enqueue(t)
	h.waitRunning(t, p, 1, "an enqueue after the stale iteration")
}

// TestRunInIterationOnlyOnTheLeader: a driver that does not lead declines
// at once.
func TestRunInIterationOnlyOnTheLeader(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOpts{maxParallelism: 1000})
	procs := []*process{h.startProcess(t, "a"), h.startProcess(t, "b")}
	leader := waitLeader(t, procs, 10*time.Second)
	follower := procs[0]
	if follower == leader {
		follower = procs[1]
	}
	var out store.Inserted
	ran, err := follower.driver.RunInIteration(h.carriedOps(&out))
	require.NoError(t, err)
	assert.False(t, ran)
	assert.Empty(t, out.IDs)
	assert.Zero(t, h.scalar("SELECT count(*) FROM {s}.work"))
}

// TestResultKickLeavesOutEmptyPhasesAndMissesNothing: an iteration woken
// only for the results of its own process's workers leaves out the
// completion and cancelation phases that the last re-check found empty. A
// row that reaches one of those tables without a kick of its own (a
// producer whose kick found the loop running) is still seen by that
// iteration's re-check, and the next iteration takes it. Woken by Kick,
// as every producer wakes it, one iteration takes it.
func TestResultKickLeavesOutEmptyPhasesAndMissesNothing(t *testing.T) {
	t.Parallel()
	h, p := newLeader(t)
	for _, tc := range []struct {
		name       string
		kick       func()
		iterations int64
	}{
		{"Kick", p.driver.Kick, 1},
		{"KickForResults", p.driver.KickForResults, 2},
	} {
		// Idle after an iteration: a new pool's run status starts idle, and
		// the iteration of taking the lead, run late, would be counted.
		require.Eventually(t, func() bool {
			return p.driver.Iterations() > 0 && h.runStatus().State == store.RunIdle
		}, 5*time.Second, time.Millisecond, tc.name)
		done, canceled := h.work(workOpts{}), h.work(workOpts{})
		h.running(done, 0, nil)
		h.pendingStart(canceled, h.now()+600)
		generation := h.generation()
		h.pendingCompletion(done, 0, "success", false, h.now())
		h.pendingCancel(canceled, h.now())
		tc.kick()
		require.Eventually(t, func() bool {
			return h.scalar("SELECT count(*) FROM {s}.pending_completion")+h.scalar("SELECT count(*) FROM {s}.pending_cancelation") == 0
		}, 5*time.Second, time.Millisecond, tc.name)
		// The iteration that took them found nothing else and went idle
		// in the same commit.
		assert.Equal(t, generation+tc.iterations, h.generation(), "%s: iterations to take the rows", tc.name)
		assert.Equal(t, store.RunIdle, h.runStatus().State, tc.name)
		assert.Zero(t, h.scalar("SELECT count(*) FROM {s}.running"), "%s: the completion freed its slot", tc.name)
		assert.Zero(t, h.scalar("SELECT count(*) FROM {s}.pending_start"), "%s: the cancel took the start back", tc.name)
		h.checkRunningCount()
	}
}

// TestGatherWaitsAfterABusyIteration: an iteration that follows one that
// started many items, with slots left, waits until GatherDelay after it,
// so that what arrives meanwhile shares it; with gathering disabled, the
// same iteration runs at once. Only the wait's lower bound is asserted in
// the first case (a sleep guarantees it); the second allows 350 ms for an
// iteration that takes a few.
func TestGatherWaitsAfterABusyIteration(t *testing.T) {
	t.Parallel()
	const delay = 400 * time.Millisecond
	for _, c := range []struct {
		name   string
		gather time.Duration
		waits  bool
	}{
		{"gathering", delay, true},
		{"disabled", -1, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, harnessOpts{maxParallelism: 1000, gatherDelay: c.gather})
			p := h.startProcess(t, "only")
			waitLeader(t, []*process{p}, 10*time.Second)
			settleLead(t, p)
			// Waits out a gather the settling iterations may have left.
			time.Sleep(delay)

			h.enqueueMany(t, 10, "")
			h.waitRunning(t, p, 10, "the busy iteration")
			busyEnded := time.Now()
			h.enqueue(t)
			h.waitRunning(t, p, 11, "the next iteration")
			if took := time.Since(busyEnded); c.waits {
				assert.GreaterOrEqual(t, took, delay-50*time.Millisecond)
			} else {
				assert.Less(t, took, delay-50*time.Millisecond)
			}
		})
	}
}

// TestGatherRule: which outcomes make the next iteration wait.
func TestGatherRule(t *testing.T) {
	t.Parallel()
	busy := loop.Outcome{Started: 5, Completions: 3}
	on := loop.NewDriver(loop.DriverConfig{GatherDelay: time.Millisecond})
	off := loop.NewDriver(loop.DriverConfig{GatherDelay: -1})
	assert.True(t, on.Gathers(busy), "started and completed enough, slots left")
	assert.False(t, off.Gathers(busy), "disabled")
	for name, change := range map[string]func(*loop.Outcome){
		"saturated":       func(o *loop.Outcome) { o.Saturated = true },
		"batch full":      func(o *loop.Outcome) { o.BatchFull = true },
		"stale":           func(o *loop.Outcome) { o.Stale = true },
		"too few items":   func(o *loop.Outcome) { o.Completions = 2 },
		"nothing started": func(o *loop.Outcome) { o.Started, o.Completions = 0, 20 },
	} {
		o := busy
		change(&o)
		assert.False(t, on.Gathers(o), name)
	}
	assert.True(t, loop.NewDriver(loop.DriverConfig{}).Gathers(busy), "on by default")
}

// busyHarness is a pool with n items due to start and a batch of 2, so
// that every iteration fills its batch and the loop stays busy.
func busyHarness(t *testing.T, n int) *harness {
	t.Helper()
	h := newHarness(t, harnessOpts{maxParallelism: 100, batchSize: 2})
	h.recoveredNow()
	now := h.now()
	for range n {
		h.pendingStart(h.work(workOpts{}), now)
	}
	return h
}

// mainFast runs an iteration as the driver does, with generation.
func (h *harness) mainFast(generation int64) loop.Outcome {
	h.t.Helper()
	out, err := h.loop.MainFast(h.ctx, generation)
	require.NoError(h.t, err)
	require.False(h.t, out.Stale)
	return out
}

// notifications listens on the pool's channel and returns a function that
// returns the payloads that arrived since the last call.
func (h *harness) notifications() func() []string {
	h.t.Helper()
	conn, err := pgx.Connect(h.ctx, pgtest.Shared(h.t).URL())
	require.NoError(h.t, err)
	h.t.Cleanup(func() { _ = conn.Close(context.Background()) })
	_, err = conn.Exec(h.ctx, "LISTEN "+pgx.Identifier{h.keys.Channel}.Sanitize())
	require.NoError(h.t, err)
	return func() []string {
		h.t.Helper()
		h.exec("SELECT pg_notify(?, 'end')", h.keys.Channel)
		ctx, cancel := context.WithTimeout(h.ctx, 10*time.Second)
		defer cancel()
		var got []string
		for {
			n, err := conn.WaitForNotification(ctx)
			require.NoError(h.t, err, "our own notification did not arrive")
			if n.Payload == "end" {
				return got
			}
			got = append(got, n.Payload)
		}
	}
}

// TestFastIterationWhileBusy: after an iteration that filled its batch,
// the next commits in its first round trip. It moves the generation on,
// keeps running_count in step and still tells other processes' claimers
// about the work it started for them; and a leader that takes over from
// the state it left unwritten misses nothing.
func TestFastIterationWhileBusy(t *testing.T) {
	t.Parallel()
	h := busyHarness(t, 7)
	since := h.notifications()

	first := h.mainFast(h.generation())
	assert.False(t, first.Fast, "the first iteration has no state of its own to go on")
	assert.Equal(t, loop.NextNow, first.Next)
	assert.Equal(t, []string{string(store.SignalStart)}, since())

	second := h.mainFast(first.Generation)
	assert.True(t, second.Fast)
	assert.Equal(t, 2, second.Started)
	assert.Equal(t, second.Generation, h.generation())
	assert.Equal(t, int64(4), h.scalar("SELECT count(*) FROM {s}.running"))
	h.checkRunningCount()
	assert.Equal(t, []string{string(store.SignalStart)}, since(), "the start statement sent it")

	// Another leader, which has only the database's state, starts the
	// rest and goes quiet.
	logger := stats.NewLogger(slog.New(slog.NewTextHandler(h.logs, nil)), pool, stats.LevelDebug)
	successor := loop.New(loop.Config{Pool: pool, Store: h.st, DB: h.sqlDB, Logger: logger, BatchSize: 2})
	generation := second.Generation
	for range 4 {
		out, err := successor.Main(h.ctx, generation)
		require.NoError(t, err)
		generation = out.Generation
		if out.Next != loop.NextNow {
			break
		}
	}
	assert.Equal(t, int64(7), h.scalar("SELECT count(*) FROM {s}.running"))
	assert.Zero(t, h.scalar("SELECT count(*) FROM {s}.pending_start"))
	assert.Equal(t, store.RunScheduled, h.runStatus().State)
	h.checkRunningCount()
}

// TestFastIterationLeavesCanceledWorkPending: a cancel that commits after
// the last re-check, for work that is due, reaches a busy loop whose next
// iteration commits in its first round trip and so leaves the cancel phase
// out. That iteration must not start the work (Cancel promises pending work
// never starts); the one after it, which the re-check makes run at once,
// ends it canceled.
func TestFastIterationLeavesCanceledWorkPending(t *testing.T) {
	t.Parallel()
	h := busyHarness(t, 7)
	first := h.mainFast(h.generation())
	require.Equal(t, 2, first.Started)
	require.Equal(t, loop.NextNow, first.Next)
	var pending []int64
	require.NoError(t, h.db.NewRaw("SELECT work_id FROM "+h.schema+".pending_start").Scan(h.ctx, &pending))
	require.Len(t, pending, 5)
	for _, id := range pending[:4] {
		require.Equal(t, []int64{id}, h.cancel(id))
	}

	second := h.mainFast(first.Generation)
	require.True(t, second.Fast, "the case under test: the cancel phase is left out")
	assert.LessOrEqual(t, second.Started, 1, "only the work not canceled may start")
	assert.Equal(t, loop.NextNow, second.Next, "the re-check saw the cancels")
	for _, id := range pending[:4] {
		c := h.observe(id)
		assert.True(t, c.Work && c.PendingStart == 1 && c.Running == 0 && c.Cancelations == 1, "work %d is still pending: %+v", id, c)
	}

	generation := second.Generation
	for range 5 {
		out := h.mainFast(generation)
		generation = out.Generation
		if out.Next != loop.NextNow {
			break
		}
	}
	for _, id := range pending[:4] {
		assert.Equal(t, composite{}, h.observe(id), "work %d ended canceled without starting", id)
	}
	assert.Equal(t, int64(3), h.scalar("SELECT count(*) FROM {s}.running"))
	assert.Zero(t, h.scalar("SELECT count(*) FROM {s}.pending_start"))
	h.checkRunningCount()
}

// TestFastIterationStaleGenerationCommitsNothing: an iteration that would
// commit in its first round trip, called with a stale generation, fails
// in its state lock before anything else runs, and says it could not read
// the generation.
func TestFastIterationStaleGenerationCommitsNothing(t *testing.T) {
	t.Parallel()
	h := busyHarness(t, 6)
	first := h.mainFast(h.generation())
	require.Equal(t, loop.NextNow, first.Next)
	h.exec("UPDATE {s}.internal_state SET generation = generation + 1") // another leader's iteration

	out, err := h.loop.MainFast(h.ctx, first.Generation)
	require.NoError(t, err)
	assert.True(t, out.Stale)
	assert.Equal(t, int64(-1), out.Generation)
	assert.Equal(t, first.Generation+1, h.generation())
	assert.Equal(t, int64(2), h.scalar("SELECT count(*) FROM {s}.running"), "nothing started")
	assert.Equal(t, int64(4), h.scalar("SELECT count(*) FROM {s}.pending_start"))
	h.checkRunningCount()
}

// TestFastIterationKeepsReportCounters: the report counters of the
// results a fast iteration records reach the database although it writes
// no state; a failed result, which may retry, takes the full iteration.
func TestFastIterationKeepsReportCounters(t *testing.T) {
	t.Parallel()
	h := busyHarness(t, 10)
	done := []int64{h.runningWork(workOpts{}), h.runningWork(workOpts{}), h.runningWork(workOpts{})}
	src := &resultSource{}
	h.loop.SetLocal(src)
	first := h.mainFast(h.generation())
	require.Equal(t, loop.NextNow, first.Next)

	src.results = []store.Result{{WorkID: done[0], Status: "success"}, {WorkID: done[1], Status: "success"}}
	second := h.mainFast(first.Generation)
	assert.True(t, second.Fast)
	assert.Equal(t, 2, second.Recorded)
	c := h.counters()
	assert.Equal(t, int64(2), c.Completed)
	assert.Equal(t, int64(2), c.Succeeded)
	h.checkRunningCount()

	src.results = []store.Result{{WorkID: done[2], Status: "failed", Error: "boom", NonRetryable: true}}
	third := h.mainFast(second.Generation)
	assert.False(t, third.Fast)
	c = h.counters()
	assert.Equal(t, int64(3), c.Completed)
	assert.Equal(t, int64(2), c.Succeeded)
	assert.Equal(t, int64(1), c.Failed)
	h.checkRunningCount()
}

// TestFastIterationGoingQuietWritesRunStatusNext: a fast iteration that
// finds nothing left does not go quiet, which would need a run status
// written under its own try-lock and re-check; the iteration after it
// does, at once.
func TestFastIterationGoingQuietWritesRunStatusNext(t *testing.T) {
	t.Parallel()
	h := busyHarness(t, 4)
	first := h.mainFast(h.generation())
	second := h.mainFast(first.Generation)
	require.True(t, second.Fast)
	require.Equal(t, loop.NextNow, second.Next, "its batch was full")

	third := h.mainFast(second.Generation)
	assert.True(t, third.Fast)
	assert.Zero(t, third.Started)
	assert.Equal(t, loop.NextNow, third.Next)
	assert.Equal(t, store.RunRunning, h.runStatus().State)

	fourth := h.mainFast(third.Generation)
	assert.False(t, fourth.Fast)
	assert.Equal(t, loop.NextScheduled, fourth.Next, "work runs: until the recovery pass")
	assert.Equal(t, store.RunScheduled, h.runStatus().State)
	assert.Equal(t, fourth.Generation, h.generation())
}
