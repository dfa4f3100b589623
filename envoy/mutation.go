package envoy

import (
	"regexp"
	"strings"

	mutationv3 "github.com/envoyproxy/go-control-plane/envoy/config/common/mutation_rules/v3"
)

// CheckResult is Envoy's Filters::Common::MutationRules::CheckResult.
type CheckResult int

// The outcomes of a mutation check.
const (
	CheckOK CheckResult = iota
	CheckIgnore
	CheckFail
)

// CheckOp is the kind of header mutation checked (CheckOperation).
type CheckOp int

// Mutation kinds.
const (
	OpSet CheckOp = iota
	OpAppend
	OpRemove
)

// MutationChecker mirrors source/extensions/filters/common/mutation_rules/
// mutation_rules.cc (Checker::check): by default x-envoy-* and the routing
// headers (host, :authority, :method, :scheme) may not be changed, and
// pseudo-headers and host may never be removed or appended to
// (HeaderUtility::isRemovableHeader / isModifiableHeader).
type MutationChecker struct {
	rules    *mutationv3.HeaderMutationRules
	allow    *regexp.Regexp
	disallow *regexp.Regexp
}

// NewMutationChecker compiles rules (nil: Envoy's defaults).
func NewMutationChecker(rules *mutationv3.HeaderMutationRules) (*MutationChecker, error) {
	c := &MutationChecker{rules: rules}
	var err error
	if e := rules.GetAllowExpression().GetRegex(); e != "" {
		if c.allow, err = regexp.Compile(`^(?:` + e + `)$`); err != nil {
			return nil, err
		}
	}
	if e := rules.GetDisallowExpression().GetRegex(); e != "" {
		if c.disallow, err = regexp.Compile(`^(?:` + e + `)$`); err != nil {
			return nil, err
		}
	}
	return c, nil
}

var routingHeaders = map[string]bool{"host": true, ":authority": true, ":method": true, ":scheme": true}

// Check decides one mutation of header name.
func (c *MutationChecker) Check(op CheckOp, name string) CheckResult {
	if c.allowed(op, strings.ToLower(name)) {
		return CheckOK
	}
	if c.rules.GetDisallowIsError().GetValue() {
		return CheckFail
	}
	return CheckIgnore
}

func (c *MutationChecker) allowed(op CheckOp, name string) bool {
	if (op == OpRemove || op == OpAppend) && (strings.HasPrefix(name, ":") || name == "host") {
		return false
	}
	if c.disallow != nil && c.disallow.MatchString(name) {
		return false
	}
	if c.allow != nil && c.allow.MatchString(name) {
		return true
	}
	if c.rules.GetDisallowAll().GetValue() {
		return false
	}
	if !c.rules.GetAllowAllRouting().GetValue() && routingHeaders[name] {
		return false
	}
	if c.rules.GetDisallowSystem().GetValue() && strings.HasPrefix(name, ":") {
		return false
	}
	return c.rules.GetAllowEnvoy().GetValue() || !strings.HasPrefix(name, "x-envoy")
}
