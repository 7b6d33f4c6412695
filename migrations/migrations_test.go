package migrations_test

import (
	"context"
	"errors"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/uptrace/bun"
	"github.com/uptrace/bun/migrate"

	"github.com/pgworkpool/pgworkpool/internal/pgtest"
	"github.com/pgworkpool/pgworkpool/migrations"
)

func TestMain(m *testing.M) { pgtest.Main(m, pgtest.Options{}) }

var ourTables = []string{
	"config", "internal_state", "pending_cancelation", "pending_completion",
	"pending_start", "run_status", "running", "work", "workers",
}

// tables lists the tables of schema, sorted, leaving out bookkeeping.
func tables(t *testing.T, db *bun.DB, schema string) []string {
	t.Helper()
	var names []string
	err := db.NewSelect().ColumnExpr("table_name").TableExpr("information_schema.tables").
		Where("table_schema = ?", schema).
		Where("table_name NOT LIKE ?", "%migration%").
		Where("table_name NOT LIKE ?", "host_%").
		OrderExpr("table_name").Scan(context.Background(), &names)
	require.NoError(t, err)
	return names
}

// ourMigrations counts the migrations shipped in sql/ (an up and a down
// file each), which a fresh schema applies and a rollback undoes as one
// group.
func ourMigrations(t *testing.T) int {
	t.Helper()
	entries, err := os.ReadDir("sql")
	require.NoError(t, err)
	n := 0
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".up.sql") {
			n++
		}
	}
	require.Positive(t, n)
	return n
}

func indexes(t *testing.T, db *bun.DB, schema string) map[string]string {
	t.Helper()
	var rows []struct {
		Name string `bun:"indexname"`
		Def  string `bun:"indexdef"`
	}
	err := db.NewSelect().ColumnExpr("indexname, indexdef").TableExpr("pg_indexes").
		Where("schemaname = ?", schema).Scan(context.Background(), &rows)
	require.NoError(t, err)
	out := map[string]string{}
	for _, r := range rows {
		out[r.Name] = r.Def
	}
	return out
}

func TestMigrateCreatesSchemaAndIsIdempotent(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db, schema := pgtest.NewSchema(t)

	res, err := migrations.Migrate(ctx, db, migrations.WithSchema(schema))
	require.NoError(t, err)
	assert.Len(t, res.Names, ourMigrations(t))
	assert.Equal(t, ourTables, tables(t, db, schema))

	idx := indexes(t, db, schema)
	for _, table := range []string{"pending_start", "pending_completion", "pending_cancelation"} {
		assert.Contains(t, idx[table+"_pool_segment_idx"], "(pool, segment)", table)
	}
	assert.Contains(t, idx["pending_start_pkey"], "(work_id)")
	assert.Contains(t, idx["pending_completion_work_id_idx"], "(work_id)")
	assert.Contains(t, idx["pending_cancelation_work_id_idx"], "(work_id)")
	assert.Contains(t, idx["running_unclaimed_idx"], "(pool) WHERE (claimed_by IS NULL)")
	assert.NotContains(t, idx, "running_pool_claimed_by_idx", "replaced by running_unclaimed_idx")

	again, err := migrations.Migrate(ctx, db, migrations.WithSchema(schema))
	require.NoError(t, err)
	assert.Empty(t, again.Names, "a second Migrate must apply nothing")
	assert.Equal(t, ourTables, tables(t, db, schema))
}

func TestConcurrentMigrateAppliesOnce(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db, schema := pgtest.NewSchema(t)
	// Four separate handles, as four processes would have.
	dbs := []*bun.DB{db}
	for range 3 {
		dbs = append(dbs, pgtest.OpenBun(t, pgtest.Shared(t).URL()))
	}
	var wg sync.WaitGroup
	results := make([]migrations.Result, len(dbs))
	errs := make([]error, len(dbs))
	start := make(chan struct{})
	for i, d := range dbs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			results[i], errs[i] = migrations.Migrate(ctx, d, migrations.WithSchema(schema))
		}()
	}
	close(start)
	wg.Wait()
	applied := 0
	for i := range dbs {
		require.NoError(t, errs[i], "caller %d", i)
		if len(results[i].Names) > 0 {
			applied++
		}
	}
	assert.Equal(t, 1, applied, "exactly one caller applies the migrations")
	var n int
	require.NoError(t, db.NewSelect().ColumnExpr("count(*)").
		TableExpr("?.workpool_migrations", bun.Ident(schema)).Scan(ctx, &n))
	assert.Equal(t, ourMigrations(t), n)
}

func TestRollbackThenMigrateRoundTrips(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db, schema := pgtest.NewSchema(t)
	_, err := migrations.Migrate(ctx, db, migrations.WithSchema(schema))
	require.NoError(t, err)

	down, err := migrations.Rollback(ctx, db, migrations.WithSchema(schema))
	require.NoError(t, err)
	assert.Len(t, down.Names, ourMigrations(t))
	assert.Empty(t, tables(t, db, schema))

	up, err := migrations.Migrate(ctx, db, migrations.WithSchema(schema))
	require.NoError(t, err)
	assert.Len(t, up.Names, ourMigrations(t))
	assert.Equal(t, ourTables, tables(t, db, schema))
}

func TestRegisterWithHostMigrator(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db, schema := pgtest.NewSchema(t)

	// The host's own migration set: one migration of its own plus ours.
	ms := migrate.NewMigrations()
	ms.Add(migrate.Migration{
		Name: "20260101000000_host", Comment: "host_orders",
		Up: func(ctx context.Context, m *migrate.Migrator, _ *migrate.Migration) error {
			if _, err := m.DB().ExecContext(ctx, "CREATE SCHEMA IF NOT EXISTS "+schema); err != nil {
				return err
			}
			_, err := m.DB().ExecContext(ctx, "CREATE TABLE "+schema+".host_orders (id bigint PRIMARY KEY)")
			return err
		},
		Down: func(ctx context.Context, m *migrate.Migrator, _ *migrate.Migration) error {
			_, err := m.DB().ExecContext(ctx, "DROP TABLE "+schema+".host_orders")
			return err
		},
	})
	require.NoError(t, migrations.Register(ms, migrations.WithSchema(schema)))
	require.Error(t, migrations.Register(ms, migrations.WithSchema(schema)), "registering the same schema twice is refused")

	// The host keeps its bookkeeping in the test schema, so it exists first.
	_, err := db.ExecContext(ctx, "CREATE SCHEMA "+schema)
	require.NoError(t, err)
	m := migrate.NewMigrator(db, ms,
		migrate.WithTableName(schema+".host_migrations"), migrate.WithLocksTableName(schema+".host_migration_locks"))
	require.NoError(t, m.Init(ctx))
	group, err := m.Migrate(ctx)
	require.NoError(t, err)
	assert.Len(t, group.Migrations, 1+ourMigrations(t), "the host's migration and ours run in one group")
	assert.Equal(t, ourTables, tables(t, db, schema))
	var hostTable int
	require.NoError(t, db.NewSelect().ColumnExpr("count(*)").TableExpr("information_schema.tables").
		Where("table_schema = ? AND table_name = 'host_orders'", schema).Scan(ctx, &hostTable))
	assert.Equal(t, 1, hostTable)

	_, err = m.Rollback(ctx)
	require.NoError(t, err)
	assert.Empty(t, tables(t, db, schema))
}

func TestCustomAndInvalidSchemaNames(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db, schema := pgtest.NewSchema(t)
	custom := schema + "_jobs"
	t.Cleanup(func() { _, _ = db.ExecContext(context.Background(), "DROP SCHEMA IF EXISTS "+custom+" CASCADE") })
	_, err := migrations.Migrate(ctx, db, migrations.WithSchema(custom))
	require.NoError(t, err)
	assert.Equal(t, ourTables, tables(t, db, custom))

	for _, bad := range []string{"", "Jobs", "1jobs", "jobs;drop", "pg_jobs", "jobs-x", "j\"obs",
		"a_very_long_schema_name_that_goes_beyond_the_sixty_three_byte_limit_of_postgres"} {
		_, err := migrations.Migrate(ctx, db, migrations.WithSchema(bad))
		assert.True(t, errors.Is(err, migrations.ErrInvalidSchema), "schema %q: %v", bad, err)
		assert.ErrorIs(t, migrations.Register(migrate.NewMigrations(), migrations.WithSchema(bad)), migrations.ErrInvalidSchema)
	}
}
