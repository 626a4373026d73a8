"""Where each host lives: a loopback address of its own (Linux answers all of 127.0.0.0/8 on
`lo`), fixed ports, and for the hosts that run mediagen a system user of their own.

A connection made on this machine leaves from 127.0.0.1 unless its socket is bound, so a host
cannot be cut off by its source address; it is cut off by the user its processes run under
(iptables' `-m owner --uid-owner`, tests/rehearsal/netcut.py). Those processes need the
project's virtualenv, whose Python may live under a home directory only root can enter: they
run with the one capability that lets them read it (CAP_DAC_READ_SEARCH), and nothing else.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

POSTGRES = "127.0.0.2"
REDIS_A = "127.0.0.3"  # the primary at start, with a Sentinel beside it
REDIS_B = "127.0.0.4"  # the replica at start, with a Sentinel beside it
SENTINEL_C = "127.0.0.5"  # the third Sentinel, alone
API_1 = "127.0.0.6"
API_2 = "127.0.0.7"
BALANCER = "127.0.0.8"
WORKER_1 = "127.0.0.9"  # and beat
WORKER_2 = "127.0.0.10"
CLIENT = "127.0.0.11"  # the load's connections are bound to it
RECEIVER = "127.0.0.12"

# Ports: not the usual ones, so that nothing here is ever mistaken for the machine's own
# servers (Postgres on 127.0.0.1:5432, Redis on 127.0.0.1:6379).
PG_PORT = 15432
REDIS_PORT = 16379
SENTINEL_PORT = 26379
API_PORT = 18000
BALANCER_PORT = 18080
WORKER_METRICS_PORT = 19808
RECEIVER_PORT = 19000

SENTINELS = (REDIS_A, REDIS_B, SENTINEL_C)
REDIS_ADDRESSES = (REDIS_A, REDIS_B, SENTINEL_C)  # what a host cut off from Redis cannot reach
MASTER = "mediagen"

USER_PREFIX = "mediagen-rh-"


GROUP = "mediagen-rh"  # every host's user is in it: the shared volume is theirs


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int


def _group() -> int:
    try:
        return grp.getgrnam(GROUP).gr_gid
    except KeyError:
        groupadd = shutil.which("groupadd") or "/usr/sbin/groupadd"
        subprocess.run([groupadd, "--system", GROUP], check=True, capture_output=True)
        return grp.getgrnam(GROUP).gr_gid


def ensure_user(host: str) -> User:
    """The system user of `host` (`mediagen-rh-<host>`, group GROUP), created once and kept
    afterwards: no home, no shell; only this rehearsal's iptables rules name it."""
    name, gid = USER_PREFIX + host, _group()
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        useradd = shutil.which("useradd") or "/usr/sbin/useradd"
        options = ["--system", "--gid", str(gid), "--no-create-home", "--home-dir", "/nonexistent"]
        subprocess.run(
            [useradd, *options, "--shell", "/usr/sbin/nologin", name],
            check=True,
            capture_output=True,
        )
        entry = pwd.getpwnam(name)
    return User(name, entry.pw_uid, gid)


def as_user(user: User, cmd: list[str]) -> list[str]:
    """`cmd` run as `user` with umask 002 (the group shares the volume), with
    CAP_DAC_READ_SEARCH only (to read the virtualenv); setpriv and sh exec it, so its pid is
    the one Popen returns."""
    setpriv = shutil.which("setpriv") or "/usr/bin/setpriv"
    return [
        setpriv,
        f"--reuid={user.uid}",
        f"--regid={user.gid}",
        "--clear-groups",
        "--inh-caps=+dac_read_search",
        "--ambient-caps=+dac_read_search",
        "--",
        "/bin/sh",
        "-c",
        'umask 002 && exec "$@"',
        "sh",
        *cmd,
    ]


def shared_dir(path: Path) -> None:
    """`path` made a directory every host's user writes to (setgid GROUP, 2775)."""
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, 0, _group())
    path.chmod(0o2775)


def check_free(pairs: list[tuple[str, int]]) -> list[str]:
    """The address:port pairs something else already listens on (a previous run's leftovers,
    or someone's server bound to 0.0.0.0)."""
    taken = []
    for host, port in pairs:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError:
                taken.append(f"{host}:{port}")
    return taken


def wait_port(host: str, port: int) -> bool:
    """True if something accepts connections on host:port."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
        return True
    return False
