#!/usr/bin/env bash
# make test: the product's suite with the race detector, the deploy module's
# checks, the alert rules. The deploy module's tools take minutes to build on
# a fresh machine (Envoy Gateway's egctl, Helm's SDK); they build at the
# lowest CPU priority while the product's suite runs, which keeps the CPU its
# timing-sensitive tests need, and the deploy tests run after it.
set -uo pipefail
GO=${GO:-go}
cd "$(dirname "$0")/.."
mkdir -p bin
(
  cd deploy &&
    nice -n 19 "$GO" build -ldflags="-s -w" -o ../bin/egctl github.com/envoyproxy/gateway/cmd/egctl &&
    nice -n 19 "$GO" test -count=1 -run '^$' ./... >/dev/null
) >bin/deploy-build.log 2>&1 &
build=$!

status=0
"$GO" vet ./... || status=1
"$GO" test -race -count=1 -timeout 12m ./... || status=1
if ! wait "$build"; then
  echo "building the deploy module's tools failed:" >&2
  cat bin/deploy-build.log >&2
  status=1
fi
(cd deploy && "$GO" vet ./... && EGCTL="$PWD/../bin/egctl" "$GO" test -count=1 -timeout 20m ./...) || status=1
promtool check rules deploy/observability/alerts.yaml || status=1
exit $status
