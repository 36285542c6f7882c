"""Where the gateway may send prompts and the upstream key: the operator's egress policy.

The upstream endpoint is set at start (flags, environment, state file) and by
Configure; whoever sets it decides where every prompt and the key go. The policy
below is checked on every one of those, before anything is applied.

What is checked, on the endpoint's host as written in the URL:

- never a link-local or cloud-metadata address: 169.254.0.0/16 (AWS, GCP, Azure
  and ECS metadata), fe80::/10, fd00:ec2::254 (AWS over IPv6), the unspecified
  0.0.0.0/8 and :: (Linux connects those to the local host), multicast and the
  broadcast address; also in IPv4-mapped (::ffff:a.b.c.d), 6to4 and NAT64
  (64:ff9b::/96) form, and in the shorthand numeric forms the system resolver
  accepts (2852039166, 0xa9fe.0xa9fe, 169.254.43518);
- never the metadata host names (`METADATA_HOSTS`), with or without a final dot;
- plain http only to loopback (127.0.0.0/8, ::1, `localhost`), unless the operator
  allows it (`allow_insecure`);
- when the operator gave an allowlist, only the hosts on it (exact names or
  addresses, case-insensitive; no wildcards; the port is not part of the match).

And, when the host is a name, the addresses it resolves to at validation time
(`resolved_problem`): none may be a forbidden address.

What is not checked: private ranges (10/8, 172.16/12, 192.168/16, fc00::/7) are
allowed, since an in-cluster vLLM or Ollama lives there (narrow them with the
allowlist); and a name is resolved once, when it is set, not at every
connection, so a DNS answer that changes later (rebinding) is not caught: list
the upstream hosts in the allowlist where that matters. A name that does not
resolve at validation time is accepted (calls fail until it does).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Names that reach a cloud provider's instance metadata from inside an instance.
METADATA_HOSTS = frozenset(
    {"metadata.google.internal", "metadata.goog", "metadata", "instance-data", "instance-data.ec2.internal"}
)
_FORBIDDEN_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in (
        "169.254.0.0/16",  # link-local: instance metadata of every big cloud
        "0.0.0.0/8",  # "this network": 0.0.0.0 reaches the local host on Linux
        "224.0.0.0/4",  # multicast
        "255.255.255.255/32",  # broadcast
        "fe80::/10",  # link-local
        "fd00:ec2::254/128",  # AWS instance metadata over IPv6
        "::/128",  # unspecified
        "ff00::/8",  # multicast
    )
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
LOOPBACK_NAMES = frozenset({"localhost"})
# Bounds the resolver at validation time: a name that does not answer by then is accepted.
RESOLVE_SECONDS = 2.0


@dataclass(frozen=True)
class EgressPolicy:
    """The operator's rules for upstream endpoints (flags --allow-insecure-upstream, --allowed-upstream-hosts)."""

    allow_insecure: bool = False
    allowed_hosts: frozenset[str] | None = None  # None: any host the other rules let through

    @classmethod
    def of(cls, allow_insecure: bool, allowed_hosts: str | None) -> EgressPolicy:
        """From the flags: `allowed_hosts` is a comma-separated list (empty or None: no allowlist)."""
        hosts = frozenset(normalize_host(h) for h in (allowed_hosts or "").split(",") if h.strip())
        return cls(allow_insecure=allow_insecure, allowed_hosts=hosts or None)


def normalize_host(host: str) -> str:
    """Lower case, no final dot, no brackets; an address in its canonical form."""
    host = host.strip().strip("[]").rstrip(".").lower()
    address = as_address(host)
    return str(address) if address is not None else host


def as_address(host: str) -> IPAddress | None:
    """The address `host` denotes, as the system resolver would read it, or None for a name."""
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])  # an IPv6 zone (%eth0) names no other address
    except ValueError:
        pass
    # inet_aton's shorthands: 2852039166, 0xa9fe.0xa9fe, 169.254.43518, 0251.0376.0251.0376.
    if host and all(c in "0123456789abcdefx." for c in host) and host[0].isdigit():
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def forbidden_address(address: IPAddress) -> bool:
    """Link-local, metadata, unspecified, multicast or broadcast: never an upstream."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None and forbidden_address(embedded):
            return True
    return any(address.version == net.version and address in net for net in _FORBIDDEN_NETWORKS)


def is_loopback(host: str) -> bool:
    host = normalize_host(host)
    if host in LOOPBACK_NAMES:
        return True
    address = as_address(host)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address is not None and address.is_loopback


def endpoint_problem(url: str, policy: EgressPolicy) -> str | None:
    """Why the operator's policy refuses `url` (an endpoint that passed settings.check_endpoint), or None."""
    parts = urlsplit(url)
    host = normalize_host(parts.hostname or "")
    address = as_address(host)
    if host in METADATA_HOSTS or (address is not None and forbidden_address(address)):
        return f"must not point at a link-local, metadata or unspecified address ({host})"
    if policy.allowed_hosts is not None and host not in policy.allowed_hosts:
        return f"host {host} is not in the operator's --allowed-upstream-hosts"
    if parts.scheme == "http" and not policy.allow_insecure and not is_loopback(host):
        return (
            "must use https: plain http is allowed only to loopback (127.0.0.1, ::1, localhost) "
            "unless the gateway runs with --allow-insecure-upstream"
        )
    return None


def origin(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) of `url`; the port is the scheme's default when none is written."""
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, normalize_host(parts.hostname or ""), port


async def resolve_host(host: str) -> list[IPAddress]:
    """The addresses the system resolver gives for `host` now (may raise OSError or TimeoutError)."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(RESOLVE_SECONDS):
        infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]


async def resolved_problem(url: str) -> str | None:
    """Why `url`'s host is refused for what it resolves to now, or None (see the module's notes)."""
    host = normalize_host(urlsplit(url).hostname or "")
    if not host or as_address(host) is not None:
        return None  # an address: endpoint_problem judged it
    try:
        addresses = await resolve_host(host)
    except (OSError, TimeoutError, UnicodeError):
        return None  # does not resolve now: nothing to judge, and calls fail until it does
    bad = sorted({str(a) for a in addresses if forbidden_address(a)})
    if bad:
        return f"must not point at a link-local, metadata or unspecified address ({host} resolves to {', '.join(bad)})"
    return None
