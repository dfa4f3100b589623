package main

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// maxPrinted bounds one registry string in operator output.
const maxPrinted = 200

// printable makes a string read from the registry safe for a terminal: any
// pod can write there, so control characters (ESC sequences that clear the
// screen or set the title, CR/LF and tabs that break the table) are shown
// escaped, invalid UTF-8 as \xNN, and long values are cut.
func printable(s string) string {
	cut := ""
	if len(s) > maxPrinted {
		cut = fmt.Sprintf("…(%d bytes)", len(s))
		s = s[:maxPrinted]
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size <= 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case r == '\\':
			b.WriteString(`\\`)
		case r < 0x80 && (r < 0x20 || r == 0x7f):
			fmt.Fprintf(&b, `\x%02x`, r)
		case r != ' ' && !unicode.IsGraphic(r):
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			b.WriteRune(r)
		}
		i += size
	}
	return b.String() + cut
}
