package store

import (
	"strings"
	"unicode/utf8"
)

// StorableText returns s as Postgres text can hold it. Error texts come from
// user code and may carry NUL bytes or invalid UTF-8, which Postgres rejects:
// one such text would fail the whole statement that records a batch of
// results, and with it every other result in the batch. Each NUL byte and
// each run of invalid UTF-8 becomes U+FFFD, so the text stays readable.
func StorableText(s string) string {
	if ValidText(s) {
		return s
	}
	return strings.ReplaceAll(strings.ToValidUTF8(s, "\uFFFD"), "\x00", "\uFFFD")
}

// ValidText reports whether Postgres text can hold s unchanged.
func ValidText(s string) bool {
	return utf8.ValidString(s) && !strings.Contains(s, "\x00")
}

// JSONHasNUL reports whether the JSON text b holds the escape \u0000, which
// jsonb rejects although it is valid JSON. b must be valid JSON (as
// encoding/json writes it); an escaped backslash before "u0000" is not a
// match.
func JSONHasNUL(b []byte) bool {
	for i := 0; i < len(b); i++ {
		if b[i] != '\\' || i+1 >= len(b) {
			continue
		}
		if b[i+1] == 'u' && i+5 < len(b) && string(b[i+2:i+6]) == "0000" {
			return true
		}
		i++ // skip the escaped character
	}
	return false
}
