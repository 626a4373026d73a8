"""Which addresses outbound calls may reach: public unicast only, by one explicit list.

Python's `ipaddress.is_global` is not used: on the Python we run (3.11.7, before the fix for
CVE-2024-4032) it calls several IPv6 transition ranges public, and its answers change between
versions. The list below is IANA's IPv4 and IPv6 Special-Purpose Address Registries (2026) plus
multicast and reserved space. IPv6 must be global unicast (2000::/3). Forms that carry an IPv4
address (IPv4-mapped, the NAT64 well-known prefix, 6to4) are judged by that IPv4 address; the
NAT64 local-use prefix (its own, deployment-specific layout), IPv4-compatible,
IPv4-translated and Teredo addresses are refused outright.
"""

from __future__ import annotations

import ipaddress

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_V4 = ipaddress.IPv4Network
_V6 = ipaddress.IPv6Network

DENIED_V4: tuple[ipaddress.IPv4Network, ...] = tuple(
    _V4(net)
    for net in (
        "0.0.0.0/8",  # "this network"
        "10.0.0.0/8",  # private
        "100.64.0.0/10",  # shared address space (carrier-grade NAT)
        "127.0.0.0/8",  # loopback
        "169.254.0.0/16",  # link-local (cloud metadata lives here)
        "172.16.0.0/12",  # private
        "192.0.0.0/24",  # IETF protocol assignments (DS-Lite, PCP, NAT64 discovery...)
        "192.0.2.0/24",  # documentation (TEST-NET-1)
        "192.31.196.0/24",  # AS112-v4
        "192.52.193.0/24",  # AMT
        "192.88.99.0/24",  # deprecated 6to4 relay anycast
        "192.168.0.0/16",  # private
        "192.175.48.0/24",  # direct delegation AS112
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",  # documentation (TEST-NET-2)
        "203.0.113.0/24",  # documentation (TEST-NET-3)
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, and 255.255.255.255
    )
)

GLOBAL_V6 = _V6("2000::/3")
DENIED_V6: tuple[ipaddress.IPv6Network, ...] = tuple(
    _V6(net)
    for net in (
        "64:ff9b:1::/48",  # NAT64 local use (outside 2000::/3 anyway; named for the record)
        "2001::/23",  # IETF protocol assignments, Teredo (2001::/32) included
        "2001:db8::/32",  # documentation
        "2620:4f:8000::/48",  # direct delegation AS112
        "3fff::/20",  # documentation
    )
)
# IPv6 forms that carry an IPv4 address, and where it sits (the last 32 bits, or bits 16-47).
MAPPED = _V6("::ffff:0:0/96")
NAT64 = _V6("64:ff9b::/96")
SIX_TO_FOUR = _V6("2002::/16")


def embedded_v4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv4-mapped, NAT64 or 6to4 address stands for; None otherwise."""
    value = int(address)
    if address in MAPPED or address in NAT64:
        return ipaddress.IPv4Address(value & 0xFFFFFFFF)
    if address in SIX_TO_FOUR:
        return ipaddress.IPv4Address((value >> 80) & 0xFFFFFFFF)
    return None


def is_public(address: Address) -> bool:
    """True only for an address an outbound call may reach (module docstring)."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id is not None:
            return False  # a zone index means a link-local scope
        inner = embedded_v4(address)
        if inner is not None:
            return is_public(inner)
        return address in GLOBAL_V6 and not any(address in net for net in DENIED_V6)
    return not any(address in net for net in DENIED_V4)
