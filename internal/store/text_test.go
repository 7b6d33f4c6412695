package store

import (
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/stretchr/testify/require"
)

func TestStorableText(t *testing.T) {
	for in, want := range map[string]string{
		"plain":         "plain",
		"":              "",
		"nul\x00byte":   "nul\uFFFDbyte",
		"bad \xff\xfe!": "bad \uFFFD!",
		"héllo":         "héllo",
	} {
		got := StorableText(in)
		require.Equal(t, want, got, "StorableText(%q)", in)
		require.True(t, ValidText(got))
	}
	require.False(t, ValidText("a\x00"))
	require.False(t, ValidText("\xff"))
}

func TestJSONHasNUL(t *testing.T) {
	cases := []struct {
		v    any
		want bool
	}{
		{"a\x00b", true},
		{map[string]string{"k\x00": "v"}, true},
		{`\u0000`, false}, // a literal backslash: stored as \\u0000
		{`\\u0000`, false},
		{"plain", false},
		{[]string{"x", "\x00"}, true},
		{42, false},
	}
	for _, c := range cases {
		b, err := json.Marshal(c.v)
		require.NoError(t, err)
		require.Equal(t, c.want, JSONHasNUL(b), "%s", b)
	}
}

// FuzzJSONHasNUL checks the scanner against decoding: encoded JSON holds
// \u0000 exactly when a decoded string (key or value) holds a NUL byte.
func FuzzJSONHasNUL(f *testing.F) {
	for _, s := range []string{"", "a\x00b", `\u0000`, `\\\u0000`, "x\\", "\xff\x00"} {
		f.Add(s, "k")
	}
	f.Fuzz(func(t *testing.T, value, key string) {
		b, err := json.Marshal(map[string][]string{key: {value}})
		if err != nil {
			t.Fatal(err)
		}
		want := strings.Contains(key, "\x00") || strings.Contains(value, "\x00")
		if got := JSONHasNUL(b); got != want {
			t.Fatalf("JSONHasNUL(%s) = %v, want %v", b, got, want)
		}
		s := StorableText(value)
		if !ValidText(s) || !utf8.ValidString(s) {
			t.Fatalf("StorableText(%q) = %q is not storable", value, s)
		}
		if ValidText(value) && s != value {
			t.Fatalf("StorableText changed storable text %q to %q", value, s)
		}
	})
}
