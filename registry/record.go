package registry

import "github.com/valkey-io/valkey-go"

// memberFields are the only fields of a member record ever read. Pods may
// write anything into their own record; reading all of it (HGETALL) once
// cost every replica a 60 MB junk field per read.
var memberFields = []string{"address", "load", drainingField, handoffField}

// readMember reads a member record's fields (HMGET), as one command.
func readMember(b valkey.Builder, key string) valkey.Completed {
	return b.Hmget().Key(key).Field(memberFields...).Build()
}

// recordFields turns a readMember reply into the fields present; an
// error reply (WRONGTYPE: not a hash) is returned as is.
func recordFields(res valkey.ValkeyResult) (map[string]string, error) {
	vals, err := res.ToArray()
	if err != nil {
		return nil, err
	}
	out := make(map[string]string, len(vals))
	for i, v := range vals {
		if i >= len(memberFields) {
			break
		}
		if s, err := v.ToString(); err == nil {
			out[memberFields[i]] = s
		}
	}
	return out, nil
}
