"""Host allow-lists from settings ("db.example.com, 10.0.0.0/8, ::1"), and the addresses the
service never sends anything to.

A list names hosts (matched case-insensitively, exactly) and networks (CIDR, or one address).
A name matches by itself; an address matches when it falls in one of the networks. Which
address to check (a literal one, or the one a name resolved to) is the caller's business.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Link-local ranges and the cloud metadata services that answer there or next to them (AWS,
# GCP, Azure at 169.254.169.254; Alibaba at 100.100.100.200; AWS over IPv6 at fd00:ec2::254).
# A request the service makes on a client's behalf never goes there: that is how credentials
# of the machine itself leak.
NEVER_CONTACTED: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(cidr)
    for cidr in ("169.254.0.0/16", "fe80::/10", "100.100.100.200/32", "fd00:ec2::254/128")
)


def parse_address(text: str) -> IPAddress | None:
    """The address ``text`` spells (IPv6 possibly in brackets or with a zone), or None for a name."""
    try:
        return ipaddress.ip_address(text.strip("[]").split("%", 1)[0])
    except ValueError:
        return None


def never_contacted(address: IPAddress) -> bool:
    """Link-local or metadata, also when written as an IPv4-mapped IPv6 address (::ffff:169.254.x.y)."""
    return any(candidate in network for candidate in _forms(address) for network in NEVER_CONTACTED)


def _forms(address: IPAddress) -> tuple[IPAddress, ...]:
    """The address, and the IPv4 one an IPv4-mapped IPv6 address (::ffff:a.b.c.d) stands for."""
    mapped = getattr(address, "ipv4_mapped", None)
    return (address, mapped) if mapped is not None else (address,)


@dataclass(frozen=True)
class HostAllowList:
    names: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, raw: str) -> HostAllowList:
        """Comma-separated host names and CIDRs; raises ValueError naming a bad entry."""
        names: set[str] = set()
        networks: list[IPNetwork] = []
        for entry in (part.strip() for part in raw.split(",")):
            if not entry:
                continue
            if "/" in entry or parse_address(entry) is not None:
                try:
                    networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
                except ValueError:
                    raise ValueError(f"{entry!r} is neither a host name nor an address or CIDR network") from None
            elif all(part and len(part) <= 63 for part in entry.split(".")) and " " not in entry:
                names.add(entry.lower().rstrip("."))
            else:
                raise ValueError(f"{entry!r} is not a host name")
        return cls(frozenset(names), tuple(networks))

    @property
    def empty(self) -> bool:
        return not self.names and not self.networks

    def admits_name(self, host: str) -> bool:
        return host.lower().rstrip(".") in self.names

    def admits_address(self, address: IPAddress) -> bool:
        return any(candidate in network for candidate in _forms(address) for network in self.networks)

    def describe(self) -> str:
        return ", ".join([*sorted(self.names), *(str(network) for network in self.networks)])
