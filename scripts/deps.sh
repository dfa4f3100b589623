#!/usr/bin/env bash
# Installs what the tests need and the machine lacks: a valkey-server (or,
# failing that, redis-server 7). Debian 12 as root: from bookworm-backports.
# Elsewhere it says what to install and stops.
set -euo pipefail

if command -v valkey-server >/dev/null 2>&1 || command -v redis-server >/dev/null 2>&1; then
  exit 0
fi

codename=""
[ -r /etc/os-release ] && codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "deps: valkey-server is missing. Install Valkey 8 (or Redis >= 7) so that valkey-server" >&2
  echo "      or redis-server is on PATH, e.g. on Debian 12 as root:" >&2
  echo "      echo 'deb http://deb.debian.org/debian bookworm-backports main' > /etc/apt/sources.list.d/bookworm-backports.list" >&2
  echo "      apt-get update && apt-get install -y -t bookworm-backports valkey-server" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
if [ "$codename" = bookworm ]; then
  list=/etc/apt/sources.list.d/bookworm-backports.list
  if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    echo "deb http://deb.debian.org/debian bookworm-backports main" > "$list"
  fi
  echo "deps: installing valkey-server from bookworm-backports"
  if apt-get update -qq && apt-get install -y -qq -t bookworm-backports valkey-server >/dev/null; then
    exit 0
  fi
  echo "deps: bookworm-backports unavailable; falling back to redis-server from bookworm" >&2
  apt-get install -y -qq redis-server >/dev/null
else
  apt-get update -qq
  apt-get install -y -qq valkey-server >/dev/null || apt-get install -y -qq redis-server >/dev/null
fi
command -v valkey-server >/dev/null 2>&1 || command -v redis-server >/dev/null 2>&1
