package main

import (
	"context"

	"github.com/uptrace/bun"
)

// The application's second migration: columns the confirmation e-mail
// fills in.
func init() {
	appMigrations.MustRegister(func(ctx context.Context, db *bun.DB) error {
		_, err := db.ExecContext(ctx, `ALTER TABLE `+appSchema+`.orders
			ADD COLUMN confirmation_id text,
			ADD COLUMN status_updates  integer NOT NULL DEFAULT 0`)
		return err
	}, func(ctx context.Context, db *bun.DB) error {
		_, err := db.ExecContext(ctx, `ALTER TABLE `+appSchema+`.orders
			DROP COLUMN confirmation_id, DROP COLUMN status_updates`)
		return err
	})
}
