package stats

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Level orders what a pool logs: LevelDebug < LevelInfo < LevelReport <
// LevelWarn < LevelError. A Logger set to a level prints everything at that
// level and above, so a higher level means a quieter pool.
//
// The numbering matches the Convex workpool's log levels so that a level
// stored in the database reads the same in both systems. The zero Level is
// not a level: it means "unset", and callers substitute LevelReport, which
// lets a zero-valued configuration struct mean "the default".
type Level int8

const (
	// LevelDebug prints everything, including internal diagnostics of the
	// loop and the workers. It is meant for investigating a misbehaving pool,
	// not for production, because it logs on every pass of the loop.
	LevelDebug Level = 1

	// LevelInfo adds one line per work item lifecycle event (enqueued,
	// started, completed) to the periodic report, so every item can be traced
	// through the logs at the cost of several lines per item.
	LevelInfo Level = 2

	// LevelReport is the default: only the periodic report, warnings and
	// errors. It keeps log volume independent of throughput while still
	// showing how the pool is doing.
	LevelReport Level = 3

	// LevelWarn prints warnings and errors only, for deployments that
	// collect their metrics elsewhere and want no periodic report.
	LevelWarn Level = 4

	// LevelError prints errors only.
	LevelError Level = 5
)

// ErrInvalidLevel is wrapped by the error ParseLevel returns for a string
// that names no level, so callers can detect it with errors.Is regardless
// of the offending text included in the message.
var ErrInvalidLevel = errors.New("pgworkpool: invalid log level")

// String returns the lower-case name of the level ("debug", "info",
// "report", "warn" or "error"), the same text ParseLevel accepts, so a level
// survives a round trip through configuration files and the database. The
// zero Level prints as "unset" and any other invalid value as "level(N)", so
// a corrupted value is visible rather than silently shown as a valid one.
func (l Level) String() string {
	switch l {
	case 0:
		return "unset"
	case LevelDebug:
		return "debug"
	case LevelInfo:
		return "info"
	case LevelReport:
		return "report"
	case LevelWarn:
		return "warn"
	case LevelError:
		return "error"
	default:
		return "level(" + strconv.Itoa(int(l)) + ")"
	}
}

// Valid reports whether l is one of the five defined levels. The zero
// Level ("unset") is not valid, because it must be replaced by a default
// before it can be used to filter anything.
func (l Level) Valid() bool {
	return l >= LevelDebug && l <= LevelError
}

// ParseLevel returns the Level named by s, ignoring case and surrounding
// white space, so values typed by people ("INFO", "Warn ") are accepted.
// It accepts exactly the names String produces for valid levels. Any other
// input, including "" and "unset", yields an error wrapping ErrInvalidLevel:
// an unset level is represented by the zero Level, not by a string.
func ParseLevel(s string) (Level, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "debug":
		return LevelDebug, nil
	case "info":
		return LevelInfo, nil
	case "report":
		return LevelReport, nil
	case "warn":
		return LevelWarn, nil
	case "error":
		return LevelError, nil
	default:
		return 0, fmt.Errorf("%w: %q (want debug, info, report, warn or error)", ErrInvalidLevel, s)
	}
}
