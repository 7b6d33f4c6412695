// Package migrations holds the pgworkpool schema as embedded SQL for
// bun/migrate.
//
// A host application that already runs bun/migrate adds our migrations to its
// own set with [Register], so one migrator, one migrations table and one
// deploy step cover both. A program without a migrator of its own calls
// [Migrate], which keeps its bookkeeping in tables inside our schema and is
// safe to call from every process at start-up.
//
// The schema name is configurable (default "workpool") so that several
// independent installations, or parallel tests, can share one database.
package migrations

import (
	"bytes"
	"context"
	"embed"
	"errors"
	"fmt"
	"hash/fnv"
	"io/fs"
	"regexp"
	"sort"
	"strings"
	"text/template"

	"github.com/jackc/pgx/v5"
	"github.com/uptrace/bun"
	"github.com/uptrace/bun/migrate"
)

// SchemaDefault is the Postgres schema our tables live in unless configured.
const SchemaDefault = "workpool"

// ErrInvalidSchema is returned for a schema name that is not a plain
// lower-case Postgres identifier. We refuse anything that would need quoting
// so that the name reads the same in psql, in logs and in our SQL.
var ErrInvalidSchema = errors.New("pgworkpool: invalid schema name")

//go:embed sql/*.sql
var files embed.FS

var schemaPattern = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,62}$`)

// ValidateSchema reports whether name can be used as our schema. It is
// exported so that the pool's configuration rejects a bad name before any
// query runs.
func ValidateSchema(name string) error {
	if !schemaPattern.MatchString(name) || strings.HasPrefix(name, "pg_") {
		return fmt.Errorf("%w: %q (want 1-63 characters of a-z, 0-9 and _, not starting with a digit or pg_)",
			ErrInvalidSchema, name)
	}
	return nil
}

// Option configures [Register], [Migrate] and [Rollback].
type Option func(*options)

type options struct {
	schema string
}

// WithSchema installs the tables in the named schema instead of
// [SchemaDefault]. The pool must be configured with the same name.
func WithSchema(name string) Option {
	return func(o *options) { o.schema = name }
}

func newOptions(opts []Option) (options, error) {
	o := options{schema: SchemaDefault}
	for _, opt := range opts {
		opt(&o)
	}
	return o, ValidateSchema(o.schema)
}

// migration is one embedded up/down pair, rendered for a schema.
type migration struct {
	version string // sortable prefix of the file name
	comment string
	up      string
	down    string
}

// load reads the embedded SQL files and renders them for schema.
func load(schema string) ([]migration, error) {
	entries, err := fs.ReadDir(files, "sql")
	if err != nil {
		return nil, fmt.Errorf("pgworkpool: read embedded migrations: %w", err)
	}
	byVersion := map[string]*migration{}
	data := struct{ Schema string }{Schema: pgx.Identifier{schema}.Sanitize()}
	for _, e := range entries {
		name := e.Name()
		base, direction, ok := splitFileName(name)
		if !ok {
			return nil, fmt.Errorf("pgworkpool: unexpected migration file %q", name)
		}
		version, comment, _ := strings.Cut(base, "_")
		raw, err := files.ReadFile("sql/" + name)
		if err != nil {
			return nil, fmt.Errorf("pgworkpool: read %s: %w", name, err)
		}
		tmpl, err := template.New(name).Option("missingkey=error").Parse(string(raw))
		if err != nil {
			return nil, fmt.Errorf("pgworkpool: parse %s: %w", name, err)
		}
		var rendered bytes.Buffer
		if err := tmpl.Execute(&rendered, data); err != nil {
			return nil, fmt.Errorf("pgworkpool: render %s: %w", name, err)
		}
		m := byVersion[version]
		if m == nil {
			m = &migration{version: version, comment: comment}
			byVersion[version] = m
		}
		if direction == "up" {
			m.up = rendered.String()
		} else {
			m.down = rendered.String()
		}
	}
	out := make([]migration, 0, len(byVersion))
	for _, m := range byVersion {
		if m.up == "" || m.down == "" {
			return nil, fmt.Errorf("pgworkpool: migration %s lacks its up or down file", m.version)
		}
		out = append(out, *m)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].version < out[j].version })
	return out, nil
}

func splitFileName(name string) (base, direction string, ok bool) {
	if b, found := strings.CutSuffix(name, ".up.sql"); found {
		return b, "up", true
	}
	if b, found := strings.CutSuffix(name, ".down.sql"); found {
		return b, "down", true
	}
	return "", "", false
}

// runSQL executes a rendered migration in its own transaction. It goes
// through database/sql directly because bun would treat '?' in the SQL as a
// placeholder.
func runSQL(ctx context.Context, db *bun.DB, sql string) error {
	return db.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		_, err := tx.Tx.ExecContext(ctx, sql)
		return err
	})
}

// Register adds the pgworkpool migrations, rendered for the configured
// schema, to a host application's migration set. The host's migrator then
// applies and rolls them back together with its own migrations. Migration
// names carry the schema, so one host may register several schemas.
func Register(m *migrate.Migrations, opts ...Option) error {
	o, err := newOptions(opts)
	if err != nil {
		return err
	}
	ms, err := load(o.schema)
	if err != nil {
		return err
	}
	existing := map[string]bool{}
	for _, mig := range m.Sorted() {
		existing[mig.Name] = true
	}
	for _, mig := range ms {
		name := migrationName(mig.version, o.schema)
		if existing[name] {
			return fmt.Errorf("pgworkpool: migration %s is already registered for schema %q", name, o.schema)
		}
		up, down := mig.up, mig.down
		m.Add(migrate.Migration{
			Name:    name,
			Comment: "pgworkpool_" + mig.comment,
			Up: func(ctx context.Context, mg *migrate.Migrator, _ *migrate.Migration) error {
				return runSQL(ctx, mg.DB(), up)
			},
			Down: func(ctx context.Context, mg *migrate.Migrator, _ *migrate.Migration) error {
				return runSQL(ctx, mg.DB(), down)
			},
		})
	}
	return nil
}

func migrationName(version, schema string) string {
	return version + "_" + schema
}

// Result lists the migrations one call applied or rolled back, by name. It is
// empty when there was nothing to do, which is how a caller (or a test) tells
// which of several concurrent callers did the work.
type Result struct {
	Names []string
}

// Migrate applies every pending pgworkpool migration using our own
// migrations tables (workpool_migrations and workpool_migration_locks inside
// the schema). A migration is recorded as applied only after it succeeded.
//
// Concurrent calls, from any number of processes, are serialized with a
// Postgres advisory lock held for the whole run: bun's own lock row makes a
// second caller fail instead of wait, and it cannot protect the creation of
// the migrations tables themselves.
func Migrate(ctx context.Context, db *bun.DB, opts ...Option) (Result, error) {
	return withMigrator(ctx, db, opts, func(ctx context.Context, mg *migrate.Migrator) (*migrate.MigrationGroup, error) {
		return mg.Migrate(ctx)
	})
}

// Rollback undoes the most recent group of pgworkpool migrations applied by
// [Migrate]. It drops our tables, and with them every work item, so it is
// meant for development and for uninstalling.
func Rollback(ctx context.Context, db *bun.DB, opts ...Option) (Result, error) {
	return withMigrator(ctx, db, opts, func(ctx context.Context, mg *migrate.Migrator) (*migrate.MigrationGroup, error) {
		return mg.Rollback(ctx)
	})
}

func withMigrator(ctx context.Context, db *bun.DB, opts []Option,
	run func(context.Context, *migrate.Migrator) (*migrate.MigrationGroup, error),
) (res Result, err error) {
	o, err := newOptions(opts)
	if err != nil {
		return Result{}, err
	}
	ms := migrate.NewMigrations()
	if err := Register(ms, WithSchema(o.schema)); err != nil {
		return Result{}, err
	}

	conn, err := db.Conn(ctx)
	if err != nil {
		return Result{}, fmt.Errorf("pgworkpool: migrate: %w", err)
	}
	defer conn.Close()
	key := lockKey(o.schema)
	if _, err := conn.Conn.ExecContext(ctx, "SELECT pg_advisory_lock($1)", key); err != nil {
		return Result{}, fmt.Errorf("pgworkpool: migrate: wait for the migration lock: %w", err)
	}
	defer func() {
		// Unlock with a fresh context: ctx may be the reason we are leaving.
		if _, uerr := conn.Conn.ExecContext(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock($1)", key); uerr != nil && err == nil {
			err = fmt.Errorf("pgworkpool: migrate: release the migration lock: %w", uerr)
		}
	}()

	schema := pgx.Identifier{o.schema}.Sanitize()
	if _, err := conn.Conn.ExecContext(ctx, "CREATE SCHEMA IF NOT EXISTS "+schema); err != nil {
		return Result{}, fmt.Errorf("pgworkpool: migrate: create schema: %w", err)
	}
	mg := migrate.NewMigrator(db, ms,
		migrate.WithTableName(schema+".workpool_migrations"),
		migrate.WithLocksTableName(schema+".workpool_migration_locks"),
		migrate.WithMarkAppliedOnSuccess(true),
	)
	if err := mg.Init(ctx); err != nil {
		return Result{}, fmt.Errorf("pgworkpool: migrate: create migrations tables: %w", err)
	}
	group, err := run(ctx, mg)
	if group != nil {
		for _, m := range group.Migrations {
			res.Names = append(res.Names, m.Name)
		}
	}
	if err != nil {
		return res, fmt.Errorf("pgworkpool: migrate: %w", err)
	}
	return res, nil
}

// lockKey derives the advisory lock key for migrations of one schema, so
// that installations in different schemas never wait for each other.
func lockKey(schema string) int64 {
	h := fnv.New64a()
	h.Write([]byte("pgworkpool/migrations/" + schema))
	return int64(h.Sum64())
}
