package store

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestParseNotification(t *testing.T) {
	for _, c := range []struct {
		payload         string
		kick            bool
		origin, signals string
	}{
		{"k", true, "", ""},
		{"k1234567890", true, "1234567890", ""},
		{"sf", false, "", "sf"},
		{"scfg", false, "", "scfg"},
		{"ks", true, "", "s"},
		{"", false, "", ""},
	} {
		kick, origin, signals := ParseNotification(c.payload)
		assert.Equal(t, c.kick, kick, c.payload)
		assert.Equal(t, c.origin, origin, c.payload)
		assert.Equal(t, c.signals, signals, c.payload)
	}
}
