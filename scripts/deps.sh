#!/usr/bin/env bash
# Installs what the tests need and the machine lacks: promtool (Debian package
# prometheus, to check the alert rules) and valkey-server and valkey-sentinel
# (Valkey 8; Sentinel and Cluster tests need both), or, failing that,
# redis-server/redis-sentinel 7. On Debian 12 as root they come from
# bookworm-backports, added by reusing the Debian mirror that the machine's own
# apt sources already name (deb822 .sources or one-line .list files): this
# script never names a mirror host. Elsewhere it says what to install and stops.
set -euo pipefail

have() { command -v "$1" >/dev/null 2>&1; }
complete() {
  { have valkey-server && have valkey-sentinel; } || { have redis-server && have redis-sentinel; }
}
complete && have promtool && exit 0

codename=""
[ -r /etc/os-release ] && codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
if [ "$(id -u)" != 0 ] || ! have apt-get; then
  echo "deps: valkey-server and valkey-sentinel are needed. Install Valkey 8 (or Redis >= 7 with" >&2
  echo "      redis-sentinel) so that they are on PATH; on Debian 12 as root, enable the" >&2
  echo "      bookworm-backports suite of your mirror and run:" >&2
  echo "      apt-get install -t bookworm-backports valkey-server valkey-sentinel" >&2
  echo "      and promtool (Debian: apt-get install prometheus)" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
if ! have promtool; then
  echo "deps: installing promtool (package prometheus)"
  # The package's service is not wanted, only its promtool binary.
  apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
complete && exit 0

# debian_mirror prints the URIs that apt already uses for the main Debian
# archive (not -security) of bookworm, from deb822 files, then one-line lists.
debian_mirror() {
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -r "$f" ] || continue
    awk '
      function flush() { if (uri != "" && suites ~ / bookworm /) print uri; uri = ""; suites = "" }
      /^[[:space:]]*$/ { flush(); next }
      /^URIs:/ { for (i = 2; i <= NF; i++) if ($i !~ /security/) { uri = $i; break } }
      /^Suites:/ { suites = " "; for (i = 2; i <= NF; i++) suites = suites $i " " }
      END { flush() }
    ' "$f"
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -r "$f" ] || continue
    awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /:\/\//) { if ($(i+1) == "bookworm" && $i !~ /security/) print $i; break } }' "$f"
  done
}

if [ "$codename" = bookworm ]; then
  if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    mirror=$(debian_mirror | sed -n 1p)
    if [ -z "$mirror" ]; then
      echo "deps: no Debian mirror for bookworm found in /etc/apt/sources*; add bookworm-backports yourself" >&2
      exit 1
    fi
    printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
      "$mirror" > /etc/apt/sources.list.d/coord-extproc-backports.sources
    echo "deps: added bookworm-backports from the mirror apt already uses"
  fi
  echo "deps: installing valkey-server and valkey-sentinel from bookworm-backports"
  if apt-get update -qq && apt-get install -y -qq -t bookworm-backports valkey-server valkey-sentinel >/dev/null; then
    exit 0
  fi
  echo "deps: bookworm-backports unavailable; falling back to redis-server and redis-sentinel from bookworm" >&2
  apt-get install -y -qq redis-server redis-sentinel >/dev/null
else
  apt-get update -qq
  apt-get install -y -qq valkey-server valkey-sentinel >/dev/null ||
    apt-get install -y -qq redis-server redis-sentinel >/dev/null
fi
complete
