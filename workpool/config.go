package workpool

import (
	"fmt"
	"log/slog"
	"regexp"
	"time"

	"github.com/pgworkpool/pgworkpool/loop"
	"github.com/pgworkpool/pgworkpool/migrations"
	"github.com/pgworkpool/pgworkpool/recovery"
	"github.com/pgworkpool/pgworkpool/stats"
)

// LogLevel orders what a pool logs: LogDebug < LogInfo < LogReport <
// LogWarn < LogError. At LogReport (the default) a pool prints only its
// periodic report, warnings and errors; at LogInfo and below it also prints
// an event for every enqueue, start and completion.
type LogLevel = stats.Level

// The log levels.
const (
	LogDebug  = stats.LevelDebug
	LogInfo   = stats.LevelInfo
	LogReport = stats.LevelReport
	LogWarn   = stats.LevelWarn
	LogError  = stats.LevelError
)

// Defaults and limits of [Config].
const (
	NameDefault   = "default"
	SchemaDefault = migrations.SchemaDefault
	// MaxParallelismDefault is the limit of a new pool, as in Convex.
	MaxParallelismDefault = 10
	// MaxParallelismLimit rejects absurd limits (a typo, an overflow)
	// before they reach the database.
	MaxParallelismLimit = 100_000
	// TimeoutDefault bounds one attempt unless the work sets Timeout. A
	// bound is what lets a slot held by a hung handler come back.
	TimeoutDefault = 10 * time.Minute
	// MaxPayloadBytesDefault caps encoded arguments and onComplete context.
	MaxPayloadBytesDefault = 1 << 20
	// ClaimBatchDefault bounds the attempts a worker claims per query.
	ClaimBatchDefault = 500
	// OnCompleteAttemptsDefault is how often an onComplete that returns an
	// error is tried before the failure is kept in the database and logged.
	OnCompleteAttemptsDefault = 5
	// OnCompleteBackoffDefault is the first wait between onComplete tries;
	// it doubles after each.
	OnCompleteBackoffDefault = time.Second
	// HeartbeatIntervalDefault, LeaseDefault and TimeoutGraceDefault: see
	// the recovery package.
	HeartbeatIntervalDefault = recovery.HeartbeatIntervalDefault
	// RecoveryPeriodDefault is segments.RecoveryPeriod: one minute.
	RecoveryPeriodDefault = time.Minute
	LeaseDefault          = recovery.LeaseDefault
	TimeoutGraceDefault   = recovery.GraceDefault
	// BatchSizeDefault, ReportIntervalDefault, CooldownDefault,
	// PollIntervalDefault and HealthcheckIntervalDefault: see the loop
	// package.
	BatchSizeDefault           = loop.BatchSizeDefault
	ReportIntervalDefault      = loop.ReportIntervalDefault
	CooldownDefault            = loop.CooldownDefault
	PollIntervalDefault        = loop.PollIntervalDefault
	HealthcheckIntervalDefault = loop.HealthcheckIntervalDefault
	// GatherDelayDefault: see loop.GatherDelayDefault.
	GatherDelayDefault = loop.GatherDelayDefault
)

// DefaultRetryBehavior is used when a work item asks for retries without
// saying how (Convex's defaults): 5 attempts, waiting about 250 ms, 500 ms,
// 1 s and 2 s between them, each times a random factor in [0.5, 1.5).
var DefaultRetryBehavior = RetryBehavior{MaxAttempts: 5, InitialBackoff: 250 * time.Millisecond, Base: 2}

// RetryBehavior says how often and how far apart a failing work item runs.
// The wait before attempt n+1 is InitialBackoff × Base^(n-1) × a random
// factor in [0.5, 1.5).
type RetryBehavior struct {
	// MaxAttempts counts every run, the first included: 1 means no retry.
	MaxAttempts    int
	InitialBackoff time.Duration
	Base           float64
}

func (b RetryBehavior) validate() error {
	switch {
	case b.MaxAttempts < 1 || b.MaxAttempts > 1000:
		return fmt.Errorf("retry MaxAttempts %d outside [1, 1000]", b.MaxAttempts)
	case b.InitialBackoff < 0 || b.InitialBackoff > 24*time.Hour:
		return fmt.Errorf("retry InitialBackoff %v outside [0, 24h]", b.InitialBackoff)
	case !(b.Base >= 1 && b.Base <= 100):
		return fmt.Errorf("retry Base %v outside [1, 100]", b.Base)
	}
	return nil
}

// Config configures a [Pool]. Zero fields take the defaults documented on
// each field.
type Config struct {
	// Name identifies the pool; many pools may share a database and
	// schema, each with its own limit, loop and statistics. Default
	// NameDefault.
	Name string
	// Schema is the Postgres schema of our tables (see the migrations
	// package). Default SchemaDefault.
	Schema string
	// MaxParallelism is the most work items of the pool that run at once,
	// summed over every process. It lives in the database: when set, Start
	// stores it (the last process to start wins, so deploy a new value to
	// change it). Zero keeps the stored value, or MaxParallelismDefault for
	// a new pool; pause a pool with SetMaxParallelism(ctx, 0). Negative
	// values and values above MaxParallelismLimit are errors.
	MaxParallelism int
	// Workers is how many handlers this process runs at once. Default:
	// MaxParallelism (or MaxParallelismDefault when that is zero).
	Workers int
	// Logger receives the pool's logs; every line carries pool=Name.
	// Default slog.Default().
	Logger *slog.Logger
	// LogLevel, when set, is stored at Start like MaxParallelism; the pool
	// then follows the stored level, which SetLogLevel changes at runtime.
	// Default LogReport.
	LogLevel LogLevel
	// DefaultRetry is used by Retry-less work when RetryByDefault is set,
	// and by Retry(RetryBehavior{}) . Default DefaultRetryBehavior.
	DefaultRetry RetryBehavior
	// RetryByDefault retries work that did not choose with Retry or
	// NoRetry. Default false: a failure is final unless asked otherwise.
	RetryByDefault bool
	// DefaultTimeout bounds one attempt of work that sets no Timeout.
	// Default TimeoutDefault.
	DefaultTimeout time.Duration
	// MaxPayloadBytes caps the JSON encoding of arguments and of onComplete
	// context. Default MaxPayloadBytesDefault.
	MaxPayloadBytes int

	// BatchSize bounds the rows each phase of a loop iteration takes.
	// Default BatchSizeDefault.
	BatchSize int
	// ClaimBatch bounds the attempts a worker claims per query. Default
	// ClaimBatchDefault.
	ClaimBatch int
	// HeartbeatInterval is how often a process that holds work refreshes
	// its lease. The heartbeat also lists the work claimed in the process's
	// name, so that a claim whose answer was lost on a broken connection is
	// given back within two intervals instead of holding a slot until its
	// deadline. Default HeartbeatIntervalDefault.
	HeartbeatInterval time.Duration
	// Lease is how long a process may miss heartbeats before recovery
	// retries its work elsewhere. Default LeaseDefault.
	Lease time.Duration
	// RecoveryPeriod is the least time between recovery passes while work
	// runs: lost work is retried within Lease plus this. Default
	// RecoveryPeriodDefault.
	RecoveryPeriod time.Duration
	// TimeoutGrace is how long past its deadline an attempt may run before
	// recovery fails it, for processes that cannot report it themselves.
	// Default TimeoutGraceDefault.
	TimeoutGrace time.Duration
	// ReportInterval is the period of the stats report. Default
	// ReportIntervalDefault.
	ReportInterval time.Duration
	// Cooldown keeps the loop polling every PollInterval for this long
	// after its last activity before it goes idle. Default CooldownDefault
	// (none).
	Cooldown     time.Duration
	PollInterval time.Duration
	// GatherDelay is how long a busy loop waits before its next iteration,
	// so that the enqueues and results arriving meanwhile share one
	// transaction: under sustained load it trades up to this much of each
	// item's start latency for throughput. It never applies to a pool at
	// its limit (a freed slot is handed on at once) or to a quiet one (an
	// enqueue starts at once); see loop.DriverConfig.GatherDelay for the
	// rule. Default GatherDelayDefault; negative disables it, as a
	// negative net.Dialer.KeepAlive disables keep-alives.
	GatherDelay time.Duration
	// HealthcheckInterval is how often a non-leading process checks that a
	// leader is alive while the pool has work. Default
	// HealthcheckIntervalDefault.
	HealthcheckInterval time.Duration
	// OnCompleteAttempts and OnCompleteBackoff govern an onComplete that
	// returns an error. Defaults OnCompleteAttemptsDefault and
	// OnCompleteBackoffDefault.
	OnCompleteAttempts int
	OnCompleteBackoff  time.Duration
}

var poolNamePattern = regexp.MustCompile(`^[A-Za-z0-9_.:/-]{1,128}$`)

// withDefaults validates c and fills in defaults.
func (c Config) withDefaults() (Config, error) {
	if c.Name == "" {
		c.Name = NameDefault
	}
	if !poolNamePattern.MatchString(c.Name) {
		return c, fmt.Errorf("%w: pool Name %q (want 1-128 of A-Z a-z 0-9 _ . : / -)", ErrInvalidConfig, c.Name)
	}
	if c.Schema == "" {
		c.Schema = SchemaDefault
	}
	if err := migrations.ValidateSchema(c.Schema); err != nil {
		return c, err
	}
	if c.MaxParallelism < 0 || c.MaxParallelism > MaxParallelismLimit {
		return c, fmt.Errorf("%w: MaxParallelism %d outside [0, %d]", ErrInvalidConfig, c.MaxParallelism, MaxParallelismLimit)
	}
	if c.Workers < 0 || c.Workers > MaxParallelismLimit {
		return c, fmt.Errorf("%w: Workers %d outside [0, %d]", ErrInvalidConfig, c.Workers, MaxParallelismLimit)
	}
	if c.Workers == 0 {
		c.Workers = c.MaxParallelism
		if c.Workers == 0 {
			c.Workers = MaxParallelismDefault
		}
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.LogLevel != 0 && !c.LogLevel.Valid() {
		return c, fmt.Errorf("%w: LogLevel %v", ErrInvalidConfig, c.LogLevel)
	}
	if c.DefaultRetry == (RetryBehavior{}) {
		c.DefaultRetry = DefaultRetryBehavior
	}
	if err := c.DefaultRetry.validate(); err != nil {
		return c, fmt.Errorf("%w: DefaultRetry: %v", ErrInvalidConfig, err)
	}
	durations := []struct {
		name string
		v    *time.Duration
		def  time.Duration
	}{
		{"DefaultTimeout", &c.DefaultTimeout, TimeoutDefault},
		{"HeartbeatInterval", &c.HeartbeatInterval, HeartbeatIntervalDefault},
		{"Lease", &c.Lease, LeaseDefault},
		{"TimeoutGrace", &c.TimeoutGrace, TimeoutGraceDefault},
		{"RecoveryPeriod", &c.RecoveryPeriod, RecoveryPeriodDefault},
		{"ReportInterval", &c.ReportInterval, ReportIntervalDefault},
		{"Cooldown", &c.Cooldown, CooldownDefault},
		{"PollInterval", &c.PollInterval, PollIntervalDefault},
		{"HealthcheckInterval", &c.HealthcheckInterval, HealthcheckIntervalDefault},
		{"OnCompleteBackoff", &c.OnCompleteBackoff, OnCompleteBackoffDefault},
	}
	for _, d := range durations {
		if *d.v < 0 || *d.v > 365*24*time.Hour {
			return c, fmt.Errorf("%w: %s %v outside [0, 1 year]", ErrInvalidConfig, d.name, *d.v)
		}
		if *d.v == 0 {
			*d.v = d.def
		}
	}
	if c.GatherDelay > time.Second {
		return c, fmt.Errorf("%w: GatherDelay %v longer than a second", ErrInvalidConfig, c.GatherDelay)
	}
	if c.GatherDelay == 0 {
		c.GatherDelay = GatherDelayDefault
	}
	if c.HeartbeatInterval >= c.Lease {
		return c, fmt.Errorf("%w: HeartbeatInterval %v must be shorter than Lease %v", ErrInvalidConfig, c.HeartbeatInterval, c.Lease)
	}
	ints := []struct {
		name     string
		v        *int
		def, max int
	}{
		{"MaxPayloadBytes", &c.MaxPayloadBytes, MaxPayloadBytesDefault, 64 << 20},
		{"BatchSize", &c.BatchSize, BatchSizeDefault, 100_000},
		{"ClaimBatch", &c.ClaimBatch, ClaimBatchDefault, 100_000},
		{"OnCompleteAttempts", &c.OnCompleteAttempts, OnCompleteAttemptsDefault, 1000},
	}
	for _, i := range ints {
		if *i.v < 0 || *i.v > i.max {
			return c, fmt.Errorf("%w: %s %d outside [0, %d]", ErrInvalidConfig, i.name, *i.v, i.max)
		}
		if *i.v == 0 {
			*i.v = i.def
		}
	}
	return c, nil
}
