package workpool_test

import (
	"bufio"
	"bytes"
	"context"
	"database/sql"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/pgworkpool/pgworkpool/internal/pgtest"
	"github.com/pgworkpool/pgworkpool/workpool"
)

// Multi-process test: the test binary runs itself as worker processes
// (TestWorkerProcess), which share one pool with the parent's enqueues.
const (
	mpEnvURL    = "PGWORKPOOL_MP_URL"
	mpEnvSchema = "PGWORKPOOL_MP_SCHEMA"
	mpPool      = "mp"
	mpItems     = 2000
	mpLimit     = 7
	mpProcesses = 3
	mpWorkers   = 20 // per process: together far above the limit
	mpReady     = "pgworkpool worker ready"
)

// mpRegister registers the multi-process test's function and onComplete.
// The function records when it ran, on the database's clock, in mp_runs
// (autocommit, outside the pool's transactions).
func mpRegister(p *workpool.Pool, db *sql.DB, schema string) (*workpool.Func[num, int], *workpool.OnCompleteHandler[string, int], error) {
	f, err := workpool.Register(p, "mp.work", func(ctx context.Context, a num) (int, error) {
		var began time.Time
		if err := db.QueryRowContext(ctx, "SELECT clock_timestamp()").Scan(&began); err != nil {
			return 0, err
		}
		time.Sleep(time.Duration(1000+rand.IntN(4000)) * time.Microsecond) // the work: 1-5 ms
		_, err := db.ExecContext(ctx, "INSERT INTO "+schema+".mp_runs (n, pid, started, ended) VALUES ($1, $2, $3, clock_timestamp())",
			a.N, os.Getpid(), began)
		return a.N, err
	})
	if err != nil {
		return nil, nil, err
	}
	done, err := workpool.RegisterOnComplete(p, "mp.done", apiRecorder(schema))
	return f, done, err
}

// TestWorkerProcess is a worker process of TestMultiProcess; it is
// skipped unless that test started it. It runs the pool until its stdin
// is closed.
func TestWorkerProcess(t *testing.T) {
	url, schema := os.Getenv(mpEnvURL), os.Getenv(mpEnvSchema)
	if url == "" || schema == "" {
		t.Skip("a worker process of TestMultiProcess")
	}
	db := pgtest.OpenBun(t, url)
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	p, err := workpool.New(db, workpool.Config{Schema: schema, Name: mpPool, Workers: mpWorkers, Logger: logger})
	require.NoError(t, err)
	_, _, err = mpRegister(p, db.DB, schema)
	require.NoError(t, err)
	require.NoError(t, p.Start(context.Background()))
	fmt.Println(mpReady)
	_, _ = io.Copy(io.Discard, os.Stdin)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	require.NoError(t, p.Stop(ctx))
}

// mpChild is one worker process.
type mpChild struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	stderr bytes.Buffer
	exited chan struct{} // closed when the process has exited; err is set
	err    error
}

// TestMultiProcess: three worker processes with 20 slots each run 2,000
// items of a pool limited to 7, while the test process leads the loop. Every item completes exactly once, and the
// handler intervals recorded on the database's clock never overlap more
// than 7 deep. It is not parallel: its processes would slow the timing
// tests down.
func TestMultiProcess(t *testing.T) {
	if os.Getenv(mpEnvURL) != "" {
		t.Skip("inside a worker process")
	}
	e := newAPIEnv(t)
	ctx := context.Background()
	e.exec("CREATE TABLE " + e.schema + ".mp_runs (n int NOT NULL, pid int NOT NULL, started timestamptz NOT NULL, ended timestamptz NOT NULL)")
	parent := e.pool(workpool.Config{Name: mpPool}) // enqueues only; never started
	f, done, err := mpRegister(parent, e.db.DB, e.schema)
	require.NoError(t, err)
	require.NoError(t, parent.SetMaxParallelism(ctx, mpLimit))
	// The parent also runs the pool's loop, with no functions of its own:
	// started before the workers, it leads, so every handler runs in a
	// worker process that learns of started work by NOTIFY, and the workers
	// race for it. (A worker that led would hear of started work first and,
	// with more slots than the limit, could take all of it.)
	leader := e.pool(workpool.Config{Name: mpPool})
	start(t, leader)

	url := pgtest.Shared(t).URL()
	ready := make(chan struct{}, mpProcesses)
	var children []*mpChild
	procCtx, killAll := context.WithCancel(ctx)
	t.Cleanup(func() {
		for _, c := range children {
			_ = c.stdin.Close()
		}
		timeout := time.After(30 * time.Second)
	wait:
		for _, c := range children {
			select {
			case <-c.exited:
			case <-timeout:
				break wait
			}
		}
		killAll()
	})
	for range mpProcesses {
		c := &mpChild{exited: make(chan struct{})}
		c.cmd = exec.CommandContext(procCtx, os.Args[0], "-test.run=^TestWorkerProcess$", "-test.count=1", "-test.v=false")
		c.cmd.Env = append(os.Environ(), "DATABASE_URL="+url, mpEnvURL+"="+url, mpEnvSchema+"="+e.schema)
		c.cmd.Stderr = &syncWriter{w: &c.stderr}
		c.stdin, err = c.cmd.StdinPipe()
		require.NoError(t, err)
		stdout, err := c.cmd.StdoutPipe()
		require.NoError(t, err)
		require.NoError(t, c.cmd.Start())
		children = append(children, c)
		go func() {
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				if sc.Text() == mpReady {
					ready <- struct{}{}
				}
			}
			c.err = c.cmd.Wait()
			close(c.exited)
		}()
	}
	for range mpProcesses {
		recv(t, ready, 60*time.Second, "a worker process to start")
	}

	args := make([]num, mpItems)
	for i := range args {
		args[i] = num{N: i}
	}
	began := time.Now()
	ids, err := parent.EnqueueBatch(ctx, f, args, workpool.OnComplete(done, "mp"))
	require.NoError(t, err)
	waitFor(t, 60*time.Second, "2000 completions", func() bool { return e.completionsCount() == mpItems })
	t.Logf("%d items through %d processes in %v", mpItems, mpProcesses, time.Since(began))

	for _, c := range children {
		require.NoError(t, c.stdin.Close())
	}
	for i, c := range children {
		recv(t, c.exited, 30*time.Second, "a worker process to exit")
		if !assert.NoError(t, c.err, "worker process %d", i) || t.Failed() {
			t.Logf("worker process %d stderr:\n%s", i, c.stderr.String())
		}
	}

	// Exactly once: one success per item, one handler run per item.
	assert.Equal(t, mpItems, e.count("SELECT count(*) FROM "+e.schema+".completions WHERE status = 'success' AND attempts = 1 AND context = 'mp'"))
	rows, err := e.db.DB.QueryContext(ctx, "SELECT work_id, value FROM "+e.schema+".completions")
	require.NoError(t, err)
	valueOf := map[workpool.WorkID]string{}
	for rows.Next() {
		var id int64
		var v string
		require.NoError(t, rows.Scan(&id, &v))
		valueOf[workpool.WorkID(id)] = v
	}
	require.NoError(t, rows.Err())
	rows.Close()
	for i, id := range ids {
		if !assert.Equal(t, itoa(i), valueOf[id], "completion of item %d", i) {
			break
		}
	}
	assert.Equal(t, mpItems, e.count("SELECT count(*) FROM "+e.schema+".mp_runs"))
	assert.Equal(t, mpItems, e.count("SELECT count(DISTINCT n) FROM "+e.schema+".mp_runs"))
	assert.Equal(t, 0, e.workCount())
	var spread string
	require.NoError(t, e.db.DB.QueryRowContext(ctx, "SELECT string_agg(c::text, ' ' ORDER BY c DESC) FROM "+
		"(SELECT count(*) AS c FROM "+e.schema+".mp_runs GROUP BY pid) x").Scan(&spread))
	t.Logf("handler runs per worker process: %s", spread)
	assert.GreaterOrEqual(t, e.count("SELECT count(DISTINCT pid) FROM "+e.schema+".mp_runs"), 2,
		"the work was not shared between processes")
	assert.Zero(t, e.count("SELECT count(*) FROM "+e.schema+".mp_runs WHERE pid = ?", os.Getpid()))

	// Global parallelism: the deepest overlap of [started, ended].
	peak := mpPeakOverlap(t, e)
	t.Logf("peak overlap of handler runs across processes: %d (limit %d)", peak, mpLimit)
	assert.LessOrEqual(t, peak, mpLimit)
	assert.GreaterOrEqual(t, peak, 2, "no parallelism at all: the check above proves nothing")
}

// mpPeakOverlap sweeps the recorded intervals. At equal timestamps starts
// count before ends, so touching intervals count as overlapping (the
// conservative side).
func mpPeakOverlap(t *testing.T, e *env) int {
	t.Helper()
	rows, err := e.db.DB.QueryContext(context.Background(), "SELECT started, ended FROM "+e.schema+".mp_runs")
	require.NoError(t, err)
	defer rows.Close()
	type event struct {
		at    time.Time
		delta int
	}
	var events []event
	for rows.Next() {
		var s, en time.Time
		require.NoError(t, rows.Scan(&s, &en))
		require.False(t, en.Before(s))
		events = append(events, event{s, +1}, event{en, -1})
	}
	require.NoError(t, rows.Err())
	sort.Slice(events, func(i, j int) bool {
		if !events[i].at.Equal(events[j].at) {
			return events[i].at.Before(events[j].at)
		}
		return events[i].delta > events[j].delta
	})
	depth, peak := 0, 0
	for _, ev := range events {
		depth += ev.delta
		peak = max(peak, depth)
	}
	return peak
}

// syncWriter serializes writes to a buffer that is read after the process
// ends.
type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(b []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(b)
}
