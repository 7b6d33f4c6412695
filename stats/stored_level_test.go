package stats

import (
	"log/slog"
	"testing"
)

func TestSetStoredLevelIgnoresOlderVersions(t *testing.T) {
	l := NewLogger(slog.New(slog.DiscardHandler), "p", LevelReport)
	l.SetStoredLevel(LevelInfo, 20)
	if got := l.Level(); got != LevelInfo {
		t.Fatalf("level = %v, want info", got)
	}
	// A read of the database that started before the change finishes after it.
	l.SetStoredLevel(LevelReport, 10)
	if got := l.Level(); got != LevelInfo {
		t.Fatalf("an older version overwrote the level: %v", got)
	}
	l.SetStoredLevel(LevelError, 20) // the same version applies again
	if got := l.Level(); got != LevelError {
		t.Fatalf("level = %v, want error", got)
	}
	l.SetStoredLevel(Level(0), 30) // invalid: ignored, version not taken
	l.SetStoredLevel(LevelDebug, 25)
	if got := l.Level(); got != LevelDebug {
		t.Fatalf("level = %v, want debug", got)
	}
}
