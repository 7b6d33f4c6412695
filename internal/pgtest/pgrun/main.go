// Command pgrun runs a command against a throwaway Postgres, so that many
// test binaries (e.g. `go test ./...` under `make test`) share one server
// instead of each starting its own:
//
//	go run ./internal/pgtest/pgrun [-fsync] -- go test ./...
//
// The command gets DATABASE_URL pointing at the server and its stdin,
// stdout and stderr are ours. When DATABASE_URL is already set, pgrun runs
// the command against that server and starts nothing. pgrun exits with the
// command's exit code and stops the server however the command ends.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"syscall"

	"github.com/pgworkpool/pgworkpool/internal/pgtest"
)

func main() {
	os.Exit(run())
}

func run() int {
	fsync := flag.Bool("fsync", false, "keep Postgres's durable fsync defaults (slower; for benchmarks)")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: pgrun [-fsync] -- command [args...]")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() == 0 {
		flag.Usage()
		return 2
	}

	// Catch signals before starting anything, so an early Ctrl-C still
	// reaches the cleanup below.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)

	srv, err := pgtest.Start(context.Background(), pgtest.Options{Fsync: *fsync})
	if err != nil {
		fmt.Fprintln(os.Stderr, "pgrun:", err)
		return 1
	}
	defer srv.Stop()
	select {
	case sig := <-sigs: // arrived while the server was starting
		return 128 + int(sig.(syscall.Signal))
	default:
	}

	cmd := exec.Command(flag.Arg(0), flag.Args()[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(), "DATABASE_URL="+srv.URL())
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "pgrun:", err)
		return 1
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	for {
		select {
		case sig := <-sigs:
			_ = cmd.Process.Signal(sig)
		case err := <-done:
			return exitCode(err)
		}
	}
}

// exitCode maps the command's Wait result to ours, using the shell's
// 128+signal convention when it was killed by a signal.
func exitCode(err error) int {
	var ee *exec.ExitError
	if err == nil {
		return 0
	}
	if !errors.As(err, &ee) {
		fmt.Fprintln(os.Stderr, "pgrun:", err)
		return 1
	}
	if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ee.ExitCode()
}
