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

func TestEachID(t *testing.T) {
	for _, c := range []struct {
		list string
		want []int64
		bad  bool
	}{
		{"", nil, false},
		{"7", []int64{7}, false},
		{"1,22,333", []int64{1, 22, 333}, false},
		{"1,,2", []int64{1}, true},
		{"1,x", []int64{1}, true},
	} {
		var got []int64
		err := eachID(c.list, func(id int64) error { got = append(got, id); return nil })
		assert.Equal(t, c.bad, err != nil, c.list)
		assert.Equal(t, c.want, got, c.list)
	}
}
