package pgtest

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// helperEnv makes the test binary act as TestHelperProcess's child.
const helperEnv = "PGTEST_HELPER_PROCESS"

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) == "1" {
		os.Exit(m.Run()) // the child needs no shared server
	}
	os.Exit(Main(m, Options{}))
}

func TestOwnedServerStartRestartStop(t *testing.T) {
	ctx := context.Background()
	began := time.Now()
	s, err := Start(ctx, Options{Owned: true, ExtraSettings: map[string]string{"work_mem": "8MB"}})
	require.NoError(t, err)
	t.Logf("Start took %v", time.Since(began))
	t.Cleanup(s.Stop)

	require.True(t, s.Owned())
	dataDir := s.DataDir()
	require.DirExists(t, dataDir)
	assert.Equal(t, "1", queryString(t, s.URL(), "select 1::text"))
	assert.Equal(t, "off", queryString(t, s.URL(), "SHOW fsync"))
	assert.Equal(t, "8MB", queryString(t, s.URL(), "SHOW work_mem"))
	assert.NotEmpty(t, procsUsing(t, dataDir), "the postmaster should show up in /proc")

	began = time.Now()
	require.NoError(t, s.Restart(ctx))
	t.Logf("Restart took %v", time.Since(began))
	assert.Equal(t, "1", queryString(t, s.URL(), "select 1::text"))

	s.Stop()
	assert.NoDirExists(t, filepath.Dir(dataDir))
	assert.Empty(t, procsUsing(t, dataDir), "Stop must leave no Postgres process behind")
	s.Stop() // idempotent
	assert.Error(t, s.Restart(ctx))
}

func TestFsyncOption(t *testing.T) {
	s, err := Start(context.Background(), Options{Owned: true, Fsync: true})
	require.NoError(t, err)
	t.Cleanup(s.Stop)
	assert.Equal(t, "on", queryString(t, s.URL(), "SHOW fsync"))
	assert.Equal(t, "on", queryString(t, s.URL(), "SHOW synchronous_commit"))
}

func TestStartFailureReportsLogAndCleansUp(t *testing.T) {
	before := ownedTempDirs(t)
	_, err := Start(context.Background(), Options{Owned: true, ExtraSettings: map[string]string{"shared_buffers": "lots"}})
	require.Error(t, err)
	t.Log(err)
	assert.Contains(t, err.Error(), "exited during start-up")
	assert.Contains(t, err.Error(), `invalid value for parameter "shared_buffers"`, "the log tail should explain why")
	assert.Equal(t, before, ownedTempDirs(t), "a failed Start must remove its temp dir")
}

// ownedTempDirs returns the pgtest temp dirs this process owns.
func ownedTempDirs(t *testing.T) []string {
	t.Helper()
	dirs, err := filepath.Glob(filepath.Join(os.TempDir(), tempPrefix+"*"))
	require.NoError(t, err)
	var mine []string
	for _, d := range dirs {
		if pid, ok := readPID(filepath.Join(d, ownerPIDFile)); ok && pid == os.Getpid() {
			mine = append(mine, d)
		}
	}
	return mine
}

func TestDatabaseURLIsNotOwned(t *testing.T) {
	const u = "postgres://someone@elsewhere/db"
	t.Setenv("DATABASE_URL", u)
	s, err := Start(context.Background(), Options{})
	require.NoError(t, err)
	assert.False(t, s.Owned())
	assert.Equal(t, u, s.URL())
	assert.Empty(t, s.DataDir())
	assert.Error(t, s.Restart(context.Background()))
	s.Stop() // a no-op, must not panic
}

// TestHelperProcess is not a real test: TestKilledOwnerLeavesNothing runs
// the test binary again with helperEnv set, and this starts an owned
// server, prints its data dir and blocks until killed.
func TestHelperProcess(t *testing.T) {
	if os.Getenv(helperEnv) != "1" {
		t.Skip("only runs as TestKilledOwnerLeavesNothing's child")
	}
	s, err := Start(context.Background(), Options{Owned: true})
	if err != nil {
		fmt.Println("ERROR", err)
		os.Exit(1)
	}
	fmt.Println("DATADIR", s.DataDir())
	_, _ = io.Copy(io.Discard, os.Stdin) // the parent never closes it
	s.Stop()
}

func TestKilledOwnerLeavesNothing(t *testing.T) {
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$")
	cmd.Env = append(os.Environ(), helperEnv+"=1")
	stdin, err := cmd.StdinPipe()
	require.NoError(t, err)
	defer stdin.Close()
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { _ = cmd.Process.Kill() })

	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	var dataDir string
	timeout := time.After(60 * time.Second)
	for dataDir == "" {
		select {
		case line, ok := <-lines:
			require.True(t, ok, "child exited without printing its data dir; stderr:\n%s", stderr.String())
			if d, found := strings.CutPrefix(line, "DATADIR "); found {
				dataDir = d
			} else {
				t.Log("child:", line)
			}
		case <-timeout:
			t.Fatalf("child printed no data dir in 60 s; stderr:\n%s", stderr.String())
		}
	}
	require.NotEmpty(t, procsUsing(t, dataDir), "the child's postmaster should be running")

	require.NoError(t, cmd.Process.Kill())
	_ = cmd.Wait()

	// Pdeathsig kills the postmaster; its backends and auxiliary processes
	// notice and exit shortly after. Poll that external condition.
	deadline := time.Now().Add(10 * time.Second)
	for len(procsUsing(t, dataDir)) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("Postgres processes still running 10 s after their owner died: %v", procsUsing(t, dataDir))
		}
		time.Sleep(50 * time.Millisecond)
	}

	tempDir := filepath.Dir(dataDir)
	require.DirExists(t, tempDir, "nobody ran Stop, so the dir should still be there")
	sweepStale()
	assert.NoDirExists(t, tempDir)
}

func TestNewSchemaName(t *testing.T) {
	valid := regexp.MustCompile(`^[a-z_][a-z0-9_]{0,62}$`)
	seen := map[string]bool{}
	for range 1000 {
		n := NewSchemaName(t)
		require.Regexp(t, valid, n)
		require.False(t, seen[n], "duplicate name %s", n)
		seen[n] = true
	}
	t.Run("Weird NAME/ü-ß 'quoted' \"and\" a very long tail that goes on and on", func(t *testing.T) {
		n := NewSchemaName(t)
		require.Regexp(t, valid, n)
		assert.True(t, strings.HasPrefix(n, "t_testnewschemaname_weird_name"), n)
	})
}

func TestNewSchemaIsDroppedAfterTest(t *testing.T) {
	var schema string
	t.Run("user", func(t *testing.T) {
		bdb, s := NewSchema(t)
		schema = s
		ctx := context.Background()
		_, err := bdb.ExecContext(ctx, "CREATE SCHEMA "+s)
		require.NoError(t, err)
		_, err = bdb.ExecContext(ctx, "CREATE TABLE "+s+".t (id int)")
		require.NoError(t, err)
	})
	n := queryString(t, Shared(t).URL(), "select count(*)::text from pg_namespace where nspname = $1", schema)
	assert.Equal(t, "0", n, "schema %s should be dropped", schema)
}

func TestNewDatabaseCreatesAndDrops(t *testing.T) {
	var name string
	t.Run("user", func(t *testing.T) {
		u := NewDatabase(t)
		name = queryString(t, u, "select current_database()")
		assert.True(t, strings.HasPrefix(name, "d_testnewdatabasecreatesanddr"), name)
		// An open connection must not stop the drop: it is WITH (FORCE).
		conn, err := pgx.Connect(context.Background(), u)
		require.NoError(t, err)
		t.Cleanup(func() { _ = conn.Close(context.Background()) })
	})
	n := queryString(t, Shared(t).URL(), "select count(*)::text from pg_database where datname = $1", name)
	assert.Equal(t, "0", n, "database %s should be dropped", name)
}

func TestWithDatabase(t *testing.T) {
	got, err := withDatabase("postgres://postgres@/postgres?host=%2Ftmp%2Fx&port=5432&dbname=postgres", "d1")
	require.NoError(t, err)
	cfg, err := pgx.ParseConfig(got)
	require.NoError(t, err)
	assert.Equal(t, "d1", cfg.Database)
	assert.Equal(t, "/tmp/x", cfg.Host)

	got, err = withDatabase("host=/tmp/x user=postgres dbname=postgres", "d2")
	require.NoError(t, err)
	cfg, err = pgx.ParseConfig(got)
	require.NoError(t, err)
	assert.Equal(t, "d2", cfg.Database)
}

func queryString(t *testing.T, url, sql string, args ...any) string {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	require.NoError(t, err)
	defer conn.Close(ctx)
	var s string
	require.NoError(t, conn.QueryRow(ctx, sql, args...).Scan(&s))
	return s
}

// procsUsing returns the pids of processes whose command line mentions
// dir (the postmaster) or whose working directory is inside it (backends
// and auxiliary processes, which rewrite their command line to
// "postgres: checkpointer" and the like but run in the data dir).
func procsUsing(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	require.NoError(t, err)
	var pids []string
	for _, e := range entries {
		pid := e.Name()
		if pid[0] < '0' || pid[0] > '9' {
			continue
		}
		cmdline, _ := os.ReadFile("/proc/" + pid + "/cmdline")
		cwd, _ := os.Readlink("/proc/" + pid + "/cwd")
		if strings.Contains(string(cmdline), dir) || cwd == dir || strings.HasPrefix(cwd, dir+"/") {
			pids = append(pids, pid)
		}
	}
	return pids
}

func TestQueryLines(t *testing.T) {
	bdb, _ := NewSchema(t)
	ctx := context.Background()
	lines, err := QueryLines(ctx, bdb.DB, "SELECT 1 AS a, 'x' AS b UNION ALL SELECT 2, NULL ORDER BY a")
	require.NoError(t, err)
	assert.Equal(t, []string{"a=1 b=x", "a=2 b=<nil>"}, lines)

	lines, err = QueryLines(ctx, bdb.DB, "SELECT * FROM no_such_table")
	require.Error(t, err)
	assert.Empty(t, lines)
}
