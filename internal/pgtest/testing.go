package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/uptrace/bun"
	"github.com/uptrace/bun/dialect/pgdialect"
)

// The server started by Main, shared by every test in the binary: one
// initdb per package instead of one per test.
var (
	shared      *Server
	sharedErr   error
	mainStarted bool
)

// Main is for TestMain: it starts one server for the whole test binary
// (see Start for which), runs the tests, stops the server and returns the
// exit code. A SIGINT or SIGTERM stops the server before exiting, so an
// interrupted run leaves no Postgres or temp dir behind.
//
// If the server cannot start, the tests still run and each one that calls
// Shared fails with the reason, so the error is reported even by callers
// that ignore Main's result.
func Main(m *testing.M, opts Options) int {
	mainStarted = true
	shared, sharedErr = Start(context.Background(), opts)
	if sharedErr != nil {
		fmt.Fprintln(os.Stderr, sharedErr)
	}

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		sig, ok := <-sigs
		if !ok {
			return
		}
		if shared != nil {
			shared.Stop()
		}
		os.Exit(128 + int(sig.(syscall.Signal)))
	}()

	code := m.Run()
	signal.Stop(sigs)
	close(sigs)
	if shared != nil {
		shared.Stop()
	}
	return code
}

// Shared returns the server started by Main. It fails the test if
// TestMain does not call Main or the server could not start, since every
// test after that would fail for the same reason less clearly.
func Shared(t testing.TB) *Server {
	t.Helper()
	if !mainStarted {
		t.Fatal("pgtest: Shared needs TestMain to call pgtest.Main")
	}
	if sharedErr != nil {
		t.Fatalf("pgtest: shared server did not start: %v", sharedErr)
	}
	return shared
}

// NewSchemaName returns a fresh schema name for t: a valid lower-case
// Postgres identifier that needs no quoting and shows which test made it,
// so tests can share one database without seeing each other's tables.
func NewSchemaName(t testing.TB) string {
	t.Helper()
	return uniqueName(t, "t_")
}

// Open opens a *bun.DB on url the way the library expects to be used: the
// pgx database/sql driver and the bun Postgres dialect. Its connection pool
// keeps as many idle connections as open ones (database/sql keeps 2 by
// default), so that connections, and the statements prepared on them, are
// reused rather than reopened under load.
func Open(url string) (*bun.DB, error) {
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("pgtest: parse database URL: %w", err)
	}
	sqlDB := stdlib.OpenDB(*cfg)
	sqlDB.SetMaxOpenConns(40)
	sqlDB.SetMaxIdleConns(40)
	return bun.NewDB(sqlDB, pgdialect.New()), nil
}

// OpenBun is Open for tests: it fails the test on error and closes the
// database when the test ends.
func OpenBun(t testing.TB, url string) *bun.DB {
	t.Helper()
	db, err := Open(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	return db
}

// NewSchema returns a db on the shared server and a fresh schema name for
// the code under test to create its tables in. The helper does not create
// the schema, because creating it is part of what migrations do; it drops
// it (CASCADE) when the test ends, so a shared DATABASE_URL server is left
// as it was.
func NewSchema(t testing.TB) (db *bun.DB, schema string) {
	t.Helper()
	db = OpenBun(t, Shared(t).URL())
	schema = NewSchemaName(t)
	// Registered after OpenBun's cleanup, so it runs before the db closes.
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := db.ExecContext(ctx, "DROP SCHEMA IF EXISTS "+schema+" CASCADE"); err != nil {
			t.Errorf("pgtest: drop schema %s: %v", schema, err)
		}
	})
	return db, schema
}

// NewDatabase creates a database with a unique name on the shared server
// and returns its URL, for tests that read per-database statistics
// (pg_stat_database) and so cannot share a database with other tests. It
// is dropped WITH (FORCE) when the test ends, even if connections remain.
func NewDatabase(t testing.TB) (url string) {
	t.Helper()
	base := Shared(t).URL()
	name := uniqueName(t, "d_")
	url, err := withDatabase(base, name)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	exec := func(sql string) error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, base)
		if err != nil {
			return err
		}
		defer conn.Close(ctx)
		_, err = conn.Exec(ctx, sql)
		return err
	}
	if err := exec("CREATE DATABASE " + name); err != nil {
		t.Fatalf("pgtest: create database %s: %v", name, err)
	}
	t.Cleanup(func() {
		if err := exec("DROP DATABASE IF EXISTS " + name + " WITH (FORCE)"); err != nil {
			t.Errorf("pgtest: drop database %s: %v", name, err)
		}
	})
	return url
}

// uniqueName returns prefix + t's name made into an identifier (at most 30
// characters) + "_" + 8 random hex digits: at most 41 characters, well
// under Postgres's 63.
func uniqueName(t testing.TB, prefix string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(t.Name()) {
		if b.Len() == 30 {
			break
		}
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	return prefix + b.String() + "_" + randomHex()
}

func randomHex() string {
	var b [4]byte
	_, _ = rand.Read(b[:]) // never fails, per crypto/rand
	return hex.EncodeToString(b[:])
}

// withDatabase returns the connection string base pointing at database
// name instead, for both URL and keyword=value forms.
func withDatabase(base, name string) (string, error) {
	if strings.HasPrefix(base, "postgres://") || strings.HasPrefix(base, "postgresql://") {
		u, err := url.Parse(base)
		if err != nil {
			return "", fmt.Errorf("parse database URL: %w", err)
		}
		u.Path, u.RawPath = "/"+name, ""
		q := u.Query()
		q.Del("dbname") // libpq lets a dbname parameter override the path
		u.RawQuery = q.Encode()
		return u.String(), nil
	}
	return base + " dbname=" + name, nil
}
