// Package pgtest gives tests, the demo and benchmarks a real Postgres
// without any setup: either the server named by DATABASE_URL or a throwaway
// one started from the local Postgres binaries in a temp dir, listening only
// on a unix socket, and killed with the process that started it.
package pgtest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

const (
	tempPrefix   = "pgtest-"
	ownerPIDFile = "owner.pid"
	logFile      = "postgres.log"
	port         = "5432" // on a unix socket in our own dir, so never in use
	readyTimeout = 30 * time.Second
	readyPoll    = 20 * time.Millisecond
	stopTimeout  = 10 * time.Second
)

// Options says what kind of server Start returns. The zero value is what
// most tests want: DATABASE_URL if set, otherwise a fast, non-durable
// throwaway server.
type Options struct {
	// Owned forces a throwaway server even if DATABASE_URL is set, for
	// tests that restart or kill Postgres and must not do that to a server
	// other tests share.
	Owned bool
	// Fsync keeps Postgres's durable defaults. When false (the default),
	// fsync, synchronous_commit and full_page_writes are off, so commits
	// do not wait for the disk; that loses nothing we care about, since
	// the data dir is deleted anyway. Benchmarks that want realistic
	// commit costs set it.
	Fsync bool
	// ExtraSettings are passed to postgres as -c key=value, after ours so
	// they can override them, e.g. to lower max_connections in a test
	// about connection exhaustion.
	ExtraSettings map[string]string
}

// Server is a Postgres to run tests against: either an external one from
// DATABASE_URL (not owned, never stopped by us) or a throwaway one this
// process started and will remove.
type Server struct {
	url   string
	owned bool

	// Set only for owned servers.
	dir  string // temp dir: socket, log, owner.pid and data/
	bin  string // the postgres binary
	args []string
	cred *syscall.Credential

	mu      sync.Mutex
	proc    *child // the running postmaster; nil when stopped
	stopped bool
}

// Start returns a server to test against. It uses DATABASE_URL when set
// (and opts.Owned is false) so CI and `make test` can share one server;
// otherwise it initdbs and starts a private server in a temp dir, which
// takes about a second. Start also removes temp dirs left behind by
// processes that died without calling Stop.
func Start(ctx context.Context, opts Options) (*Server, error) {
	if u := os.Getenv("DATABASE_URL"); u != "" && !opts.Owned {
		return &Server{url: u}, nil
	}
	sweepStale()

	binDir, err := findBinDir()
	if err != nil {
		return nil, err
	}
	cred, err := runAsCredential()
	if err != nil {
		return nil, err
	}

	dir, err := os.MkdirTemp("", tempPrefix)
	if err != nil {
		return nil, fmt.Errorf("pgtest: create temp dir: %w", err)
	}
	s := &Server{
		owned: true,
		dir:   dir,
		bin:   filepath.Join(binDir, "postgres"),
		cred:  cred,
		args:  serverArgs(dir, opts),
		url:   socketURL(dir),
	}
	if err := s.setUp(ctx, binDir); err != nil {
		s.Stop()
		return nil, err
	}
	return s, nil
}

func (s *Server) setUp(ctx context.Context, binDir string) error {
	// Written first so a concurrent sweep never mistakes this dir for a
	// stale one.
	pid := []byte(strconv.Itoa(os.Getpid()) + "\n")
	if err := os.WriteFile(filepath.Join(s.dir, ownerPIDFile), pid, 0o644); err != nil {
		return fmt.Errorf("pgtest: write owner pid: %w", err)
	}
	if s.cred != nil {
		if err := os.Chown(s.dir, int(s.cred.Uid), int(s.cred.Gid)); err != nil {
			return fmt.Errorf("pgtest: chown temp dir to the postgres user: %w", err)
		}
	}

	initdb := exec.Command(filepath.Join(binDir, "initdb"),
		"-D", s.DataDir(), "-U", "postgres", "-A", "trust", "-E", "UTF8",
		"--no-locale", "--no-sync")
	var out strings.Builder
	initdb.Stdout, initdb.Stderr = &out, &out
	p, err := s.spawn(initdb)
	if err != nil {
		return fmt.Errorf("pgtest: run initdb: %w", err)
	}
	select {
	case <-p.done:
	case <-ctx.Done():
		_ = initdb.Process.Kill()
		<-p.done
		return fmt.Errorf("pgtest: initdb: %w", ctx.Err())
	}
	if p.err != nil {
		return fmt.Errorf("pgtest: initdb: %w\n%s", p.err, out.String())
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	return s.startLocked(ctx)
}

// URL returns a pgx-compatible connection URL for database postgres as
// user postgres, or DATABASE_URL for a server we do not own.
func (s *Server) URL() string { return s.url }

// Owned reports whether this process started the server, i.e. whether
// Stop and Restart act on it. Tests that need to restart or kill Postgres
// skip or fail when it is false.
func (s *Server) Owned() bool { return s.owned }

// DataDir returns the server's data directory, so fault tests can find
// its files and processes; it is "" for a server we do not own.
func (s *Server) DataDir() string {
	if !s.owned {
		return ""
	}
	return filepath.Join(s.dir, "data")
}

// Stop shuts an owned server down (fast shutdown, then SIGKILL after 10 s)
// and removes its temp dir. It is a no-op for a server we do not own, and
// safe to call more than once, so it can sit in both a defer and a
// signal handler.
func (s *Server) Stop() {
	if !s.owned {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return
	}
	s.stopped = true
	s.stopLocked()
	_ = os.RemoveAll(s.dir)
}

// Restart fast-stops the postmaster and starts it again on the same data
// dir and socket, so the URL stays valid. Fault tests use it to check that
// clients survive a Postgres restart mid-run. It fails for a server we do
// not own, since restarting a shared server would break other tests.
func (s *Server) Restart(ctx context.Context) error {
	if !s.owned {
		return errors.New("pgtest: Restart needs an owned server (use Options{Owned: true})")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return errors.New("pgtest: Restart after Stop")
	}
	s.stopLocked()
	return s.startLocked(ctx)
}

// startLocked starts the postmaster and waits until it accepts
// connections.
func (s *Server) startLocked(ctx context.Context) error {
	logf, err := os.OpenFile(filepath.Join(s.dir, logFile), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("pgtest: open server log: %w", err)
	}
	defer logf.Close() // the child has its own copy of the descriptor
	cmd := exec.Command(s.bin, s.args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	p, err := s.spawn(cmd)
	if err != nil {
		return fmt.Errorf("pgtest: start postgres: %w", err)
	}
	s.proc = p
	if err := s.waitReady(ctx, p); err != nil {
		s.stopLocked()
		return err
	}
	return nil
}

// stopLocked asks the postmaster for a fast shutdown (SIGINT: roll back
// open transactions, disconnect clients, checkpoint) and kills it if that
// takes more than stopTimeout.
func (s *Server) stopLocked() {
	p := s.proc
	if p == nil {
		return
	}
	s.proc = nil
	_ = p.cmd.Process.Signal(syscall.SIGINT)
	t := time.NewTimer(stopTimeout)
	defer t.Stop()
	select {
	case <-p.done:
	case <-t.C:
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

func (s *Server) waitReady(ctx context.Context, p *child) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	cfg, err := pgx.ParseConfig(s.url)
	if err != nil {
		return fmt.Errorf("pgtest: parse own URL: %w", err)
	}
	cfg.ConnectTimeout = time.Second
	tick := time.NewTicker(readyPoll)
	defer tick.Stop()
	for {
		conn, err := pgx.ConnectConfig(ctx, cfg)
		if err == nil {
			return conn.Close(ctx)
		}
		select {
		case <-p.done:
			return fmt.Errorf("pgtest: postgres exited during start-up (%v); log tail:\n%s", p.err, s.logTail())
		case <-ctx.Done():
			return fmt.Errorf("pgtest: postgres not ready: %w (last error: %v); log tail:\n%s", ctx.Err(), err, s.logTail())
		case <-tick.C:
		}
	}
}

func (s *Server) logTail() string {
	f, err := os.Open(filepath.Join(s.dir, logFile))
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	const n = 4096
	if fi, err := f.Stat(); err == nil && fi.Size() > n {
		_, _ = f.Seek(-n, io.SeekEnd)
	}
	b, _ := io.ReadAll(f)
	return string(b)
}

// child is a process started by spawn; done is closed once it has exited
// and err holds its Wait result.
type child struct {
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

// spawn starts cmd so that it dies with us, as the postgres user when we
// are root.
//
// Dying with us uses Pdeathsig=SIGKILL, which Linux delivers when the OS
// *thread* that forked the child exits, not the process. A goroutine may
// run on any thread and the Go runtime may retire a thread, so the fork
// happens on a goroutine locked to its thread that then blocks in Wait
// until the child has exited: the thread lives exactly as long as the
// child unless the whole process dies, which is when we want the signal.
// This is what cleans up after a test binary killed by SIGKILL or a test
// timeout.
func (s *Server) spawn(cmd *exec.Cmd) (*child, error) {
	cmd.Dir = s.dir // the postgres user may not be able to read our cwd
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Pdeathsig:  syscall.SIGKILL,
		Credential: s.cred,
		// Own process group: a Ctrl-C in the terminal reaches us, and we
		// stop the server in order instead of it vanishing under running
		// tests.
		Setpgid: true,
	}
	p := &child{cmd: cmd, done: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// No UnlockOSThread: when this goroutine returns the runtime ends
		// the thread, which is harmless because the child is gone by then.
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		p.err = cmd.Wait()
		close(p.done)
	}()
	if err := <-started; err != nil {
		return nil, err
	}
	return p, nil
}

func serverArgs(dir string, opts Options) []string {
	args := []string{
		"-D", filepath.Join(dir, "data"),
		"-k", dir,
		"-c", "listen_addresses=",
		"-c", "port=" + port,
		"-c", "max_connections=300",
		"-c", "shared_buffers=128MB",
	}
	if !opts.Fsync {
		args = append(args, "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off")
	}
	keys := make([]string, 0, len(opts.ExtraSettings))
	for k := range opts.ExtraSettings {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		args = append(args, "-c", k+"="+opts.ExtraSettings[k])
	}
	return args
}

func socketURL(dir string) string {
	q := url.Values{"host": {dir}, "port": {port}, "sslmode": {"disable"}}
	u := url.URL{Scheme: "postgres", User: url.User("postgres"), Path: "/postgres", RawQuery: q.Encode()}
	return u.String()
}

// findBinDir returns a directory holding both initdb and postgres: from
// PATH if there, else the newest /usr/lib/postgresql/*/bin, where Debian
// and Ubuntu install them without putting them on PATH.
func findBinDir() (string, error) {
	has := func(dir string) bool {
		for _, name := range []string{"initdb", "postgres"} {
			fi, err := os.Stat(filepath.Join(dir, name))
			if err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
				return false
			}
		}
		return true
	}
	if p, err := exec.LookPath("initdb"); err == nil && has(filepath.Dir(p)) {
		return filepath.Dir(p), nil
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	version := func(d string) float64 {
		v, _ := strconv.ParseFloat(filepath.Base(filepath.Dir(d)), 64)
		return v
	}
	sort.Slice(dirs, func(i, j int) bool { return version(dirs[i]) > version(dirs[j]) })
	for _, d := range dirs {
		if has(d) {
			return d, nil
		}
	}
	return "", errors.New("pgtest: no Postgres binaries (initdb and postgres) on PATH or in /usr/lib/postgresql/*/bin; " +
		"install them (e.g. apt-get install postgresql) or set DATABASE_URL")
}

// runAsCredential returns the postgres user's credentials when we are
// root, because initdb and postgres refuse to run as root; nil otherwise.
func runAsCredential() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("pgtest: running as root and Postgres refuses to; need a 'postgres' user to run it as: %w", err)
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("pgtest: postgres uid %q: %w", u.Uid, err)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("pgtest: postgres gid %q: %w", u.Gid, err)
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

// sweepStale removes pgtest temp dirs whose owner process no longer
// exists: what is left after a test binary was killed with SIGKILL, since
// then no Stop ran (Pdeathsig killed the server itself). Dirs without an
// owner.pid are being created right now and are left alone, as are dirs
// whose postmaster is somehow still alive. Errors are ignored: this is
// best-effort housekeeping.
func sweepStale() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), tempPrefix+"*"))
	for _, dir := range dirs {
		owner, ok := readPID(filepath.Join(dir, ownerPIDFile))
		if !ok || alive(owner) {
			continue
		}
		if pm, ok := readPID(filepath.Join(dir, "data", "postmaster.pid")); ok && alive(pm) && cmdlineHas(pm, dir) {
			continue
		}
		_ = os.RemoveAll(dir)
	}
}

// readPID reads the pid on the first line of file.
func readPID(file string) (int, bool) {
	b, err := os.ReadFile(file)
	if err != nil {
		return 0, false
	}
	line, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(line))
	return pid, err == nil && pid > 0
}

// cmdlineHas reports whether process pid's command line mentions s, to
// tell our postmaster from an unrelated process that reused its pid.
func cmdlineHas(pid int, s string) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return err == nil && strings.Contains(string(b), s)
}

func alive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}
