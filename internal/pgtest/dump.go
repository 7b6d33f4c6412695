package pgtest

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
)

// QueryLines runs query and returns each row as "column=value" pairs joined
// by spaces. It is for the diagnostics a long test prints when it fails,
// which look at tables whose columns they need not spell out. The lines
// read before an error are returned with it.
func QueryLines(ctx context.Context, db *sql.DB, query string) ([]string, error) {
	rows, err := db.QueryContext(ctx, query)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	cols, err := rows.Columns()
	if err != nil {
		return nil, err
	}
	var out []string
	vals, ptrs := make([]any, len(cols)), make([]any, len(cols))
	for i := range vals {
		ptrs[i] = &vals[i]
	}
	for rows.Next() {
		if err := rows.Scan(ptrs...); err != nil {
			return out, err
		}
		parts := make([]string, len(cols))
		for i, c := range cols {
			parts[i] = fmt.Sprintf("%s=%v", c, vals[i])
		}
		out = append(out, strings.Join(parts, " "))
	}
	return out, rows.Err()
}
