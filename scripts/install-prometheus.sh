#!/usr/bin/env bash
# Debian's prometheus package, for tests/e2e/test_dashboard_against_prometheus.py: it
# provides /usr/bin/prometheus (the dashboard's queries run against a real one) and
# /usr/bin/promtool (metrics lint, rule and config checks, alert unit tests).
# Installs it when run as root with apt-get; otherwise says in one line what to install.
# Exits 0 either way: without it those tests are skipped, naming the reason.
set -u
[ -x /usr/bin/prometheus ] && [ -x /usr/bin/promtool ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "relay: installing prometheus (and promtool) from Debian for the dashboard tests" >&2
  export DEBIAN_FRONTEND=noninteractive
  # The package would start its own service, listening on every interface (:9090) for
  # good: the tests start their own on loopback. A policy-rc.d that says "no" (unless
  # one is there already, as in most containers) keeps it stopped; the trap removes it
  # whatever happens. --no-install-recommends leaves out the node exporter daemon.
  policy=/usr/sbin/policy-rc.d
  if [ ! -e "$policy" ]; then
    trap 'rm -f "$policy"' EXIT
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy"
  fi
  apt-get update -qq >/dev/null 2>&1 || true
  apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1 \
    || echo "relay: could not install prometheus; the dashboard tests will be skipped" >&2
else
  echo "relay: missing prometheus and promtool (dashboard tests are skipped): apt-get install prometheus" >&2
fi
exit 0
