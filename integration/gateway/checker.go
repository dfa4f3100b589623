package main

import (
	"regexp"
	"strings"

	mutationv3 "github.com/envoyproxy/go-control-plane/envoy/config/common/mutation_rules/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// checkResult mirrors Filters::Common::MutationRules::CheckResult.
type checkResult int

const (
	checkOK checkResult = iota
	checkIgnore
	checkFail
)

// checker mirrors source/extensions/filters/common/mutation_rules/
// mutation_rules.cc (Checker::check / isAllowed): by default x-envoy-*
// and the routing headers (host, :authority, :method, :scheme) may not be
// changed by the external processor.
type checker struct {
	rules    *mutationv3.HeaderMutationRules
	allow    *regexp.Regexp
	disallow *regexp.Regexp
}

func newChecker(rules *mutationv3.HeaderMutationRules) (*checker, error) {
	c := &checker{rules: rules}
	var err error
	if e := rules.GetAllowExpression().GetRegex(); e != "" {
		if c.allow, err = regexp.Compile(e); err != nil {
			return nil, err
		}
	}
	if e := rules.GetDisallowExpression().GetRegex(); e != "" {
		if c.disallow, err = regexp.Compile(e); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// permissive is ext_proc's ImmediateMutationChecker: allow_all_routing and
// allow_envoy, used for immediate responses.
func permissive() *checker {
	return &checker{rules: &mutationv3.HeaderMutationRules{
		AllowAllRouting: wrapperspb.Bool(true),
		AllowEnvoy:      wrapperspb.Bool(true),
	}}
}

var routingHeaders = map[string]bool{"host": true, ":authority": true, ":method": true, ":scheme": true}

func (c *checker) check(name string) checkResult {
	if c.isAllowed(strings.ToLower(name)) {
		return checkOK
	}
	if c.rules.GetDisallowIsError().GetValue() {
		return checkFail
	}
	return checkIgnore
}

func (c *checker) isAllowed(name string) bool {
	if c.disallow != nil && fullMatch(c.disallow, name) {
		return false
	}
	if c.allow != nil && fullMatch(c.allow, name) {
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
	if !c.rules.GetAllowEnvoy().GetValue() && strings.HasPrefix(name, "x-envoy") {
		return false
	}
	return true
}

// fullMatch: Envoy's regex matchers match the whole string.
func fullMatch(re *regexp.Regexp, s string) bool {
	loc := re.FindStringIndex(s)
	return loc != nil && loc[0] == 0 && loc[1] == len(s)
}
