"""Partitions with iptables, in a chain of our own (MEDIAGEN-REHEARSAL) jumped to from OUTPUT,
so that cleaning up is exact: flush and delete that chain and the one jump to it, and nothing
else of the machine's rules is touched.

A host is cut off by the user its processes run as (`-m owner --uid-owner`, see topology) and
the addresses it may no longer reach: its packets to them are DROPped, not refused, so its open
connections go half-open, as across a real partition. Only loopback addresses are ever named.
"""

from __future__ import annotations

import ipaddress
import shutil
import subprocess

CHAIN = "MEDIAGEN-REHEARSAL"


def _iptables() -> str:
    return shutil.which("iptables") or "/usr/sbin/iptables"


def _run(*args: str, check: bool = True) -> bool:
    done = subprocess.run([_iptables(), "-w", "5", *args], capture_output=True, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"iptables {' '.join(args)}: {done.stderr.decode().strip()}")
    return done.returncode == 0


def remove() -> None:
    """Our chain and every jump to it gone (a previous run's too); idempotent."""
    while _run("-D", "OUTPUT", "-j", CHAIN, check=False):
        pass
    if _run("-n", "-L", CHAIN, check=False):
        _run("-F", CHAIN)
        _run("-X", CHAIN)


def install() -> None:
    """An empty chain of ours, jumped to first from OUTPUT (stale rules removed first)."""
    remove()
    _run("-N", CHAIN)
    _run("-I", "OUTPUT", "1", "-j", CHAIN)


def cut(uid: int, addresses: tuple[str, ...]) -> None:
    """Drop every packet that processes of `uid` send to `addresses` (loopback only)."""
    for address in addresses:
        if not ipaddress.ip_address(address).is_loopback:
            raise ValueError(f"{address} is not a loopback address")
        _run("-A", CHAIN, "-m", "owner", "--uid-owner", str(uid), "-d", address, "-j", "DROP")


def heal() -> None:
    """Every cut lifted (the chain emptied, still in place)."""
    _run("-F", CHAIN)


def rules() -> list[str]:
    """The chain's rules as `iptables -S` prints them (for the log)."""
    done = subprocess.run(
        [_iptables(), "-w", "5", "-S", CHAIN], capture_output=True, text=True, check=False
    )
    return [line for line in done.stdout.splitlines() if not line.startswith("-N")]
