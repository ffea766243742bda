#!/usr/bin/env bash
# Debian packages the tests start for real: haproxy (PROXY protocol consumer), pebble
# (ACME server + pebble-challtestsrv DNS), curl and openssl (real clients),
# systemd-analyze (checks deploy/systemd/*.service; systemd is not started),
# postgresql (the store's suite runs on it too; the tests make their own cluster), and
# redis-server (cluster presence, relay/cluster/presence.py; tests/redis_server.py starts it).
# Installs what is missing when run as root with apt; otherwise names what to install.
set -u
want=(haproxy:/usr/sbin/haproxy pebble:/usr/bin/pebble curl:/usr/bin/curl openssl:/usr/bin/openssl
  systemd:/usr/bin/systemd-analyze redis-server:/usr/bin/redis-server)
missing=()
for item in "${want[@]}"; do
  pkg=${item%%:*}; bin=${item#*:}
  [ -x "$bin" ] || missing+=("$pkg")
done
# The server's programs live under a versioned directory.
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "relay: installing test prerequisites from Debian: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null 2>&1 || true
  apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 \
    || echo "relay: could not install ${missing[*]}; the tests that need them will be skipped" >&2
else
  echo "relay: missing test prerequisites (tests needing them are skipped): apt-get install ${missing[*]}" >&2
fi
exit 0
