package workpool

import (
	"errors"

	"github.com/pgworkpool/pgworkpool/migrations"
)

// Errors returned for misuse. Each is returned wrapped with details; test
// for them with errors.Is. A call that returns one of them wrote nothing.
var (
	// ErrInvalidConfig reports a Config field out of range.
	ErrInvalidConfig = errors.New("pgworkpool: invalid config")
	// ErrInvalidSchema reports a schema name that is not a plain
	// lower-case identifier.
	ErrInvalidSchema = migrations.ErrInvalidSchema
	// ErrInvalidName reports a function or onComplete name that is empty,
	// too long or not printable ASCII.
	ErrInvalidName = errors.New("pgworkpool: invalid name")
	// ErrDuplicateName reports a second registration of a name in a pool.
	ErrDuplicateName = errors.New("pgworkpool: name already registered")
	// ErrUnknownFunction reports a nil handle or one registered with
	// another pool.
	ErrUnknownFunction = errors.New("pgworkpool: unknown function")
	// ErrArgsMismatch reports arguments whose type is not the function's
	// argument type.
	ErrArgsMismatch = errors.New("pgworkpool: arguments do not match the function")
	// ErrNotEncodable reports a value that encoding/json cannot encode.
	ErrNotEncodable = errors.New("pgworkpool: value is not JSON-encodable")
	// ErrPayloadTooLarge reports encoded arguments or onComplete context
	// above Config.MaxPayloadBytes.
	ErrPayloadTooLarge = errors.New("pgworkpool: payload too large")
	// ErrInvalidOption reports an enqueue option out of range or in
	// conflict with another (RunAt with RunAfter).
	ErrInvalidOption = errors.New("pgworkpool: invalid option")
	// ErrPoolClosed reports a call on a pool after Stop.
	ErrPoolClosed = errors.New("pgworkpool: pool is stopped")
	// ErrAlreadyStarted reports a second Start.
	ErrAlreadyStarted = errors.New("pgworkpool: pool already started")
	// ErrWorkNotFound reports a work ID that was never issued by this
	// database, or that belongs to another pool.
	ErrWorkNotFound = errors.New("pgworkpool: work not found")
	// ErrUnsupportedDB reports a *bun.DB or bun.IDB we cannot use: the
	// pool needs the pgx database/sql driver (github.com/jackc/pgx/v5/stdlib)
	// for its LISTEN connection.
	ErrUnsupportedDB = errors.New("pgworkpool: unsupported database handle")
	// ErrNotMigrated reports that the pool's tables do not exist: run the
	// migrations package first.
	ErrNotMigrated = errors.New("pgworkpool: schema not migrated")
)

// nonRetryable marks an error as final.
type nonRetryable struct{ err error }

func (e *nonRetryable) Error() string { return e.err.Error() }
func (e *nonRetryable) Unwrap() error { return e.err }

// NonRetryable marks err as final: the attempt that returns it fails the
// work at once, whatever retries are left. It returns nil for a nil err.
// The mark survives wrapping with %w.
func NonRetryable(err error) error {
	if err == nil {
		return nil
	}
	return &nonRetryable{err: err}
}

// IsNonRetryable reports whether err was marked with NonRetryable.
func IsNonRetryable(err error) bool {
	var nr *nonRetryable
	return errors.As(err, &nr)
}
