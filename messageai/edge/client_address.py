"""The client's address as rate limits and logs should see it: the socket's peer, or,
behind a reverse proxy listed in `server.trusted_proxies`, the address that proxy
says it served (`X-Forwarded-For`). Used by `edge.asgi.App` for every request.

Only a trusted peer is believed, and only as far as the chain stays trusted: the
header is read right to left (each proxy appends the address it saw), skipping
trusted proxies, and the first untrusted address is the client. So a client that
sends its own `X-Forwarded-For` through the proxy gains nothing: its invented
entries are left of the one the proxy appended. From an untrusted peer the header
is ignored entirely.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(values: Sequence[str]) -> tuple[Network, ...]:
    """`"10.0.0.1"`, `"10.0.0.0/8"`, `"::1"` as networks; ValueError names a bad one."""
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value, strict=False))
        except ValueError:
            raise ValueError(f"{value!r} is not an IP address or network like 10.0.0.0/8") from None
    return tuple(networks)


class ClientAddress:
    def __init__(self, trusted: Sequence[str]) -> None:
        self._trusted = parse_networks(trusted)

    def _is_trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self._trusted)

    def resolve(self, peer: str | None, forwarded_for: str | None) -> str | None:
        """The client's address for a request from `peer` with this header (or None)."""
        if peer is None or not forwarded_for or not self._trusted or not self._is_trusted(peer):
            return peer
        hops = [hop.strip() for hop in forwarded_for.split(",")][-32:]  # bounded
        for hop in reversed(hops):
            try:
                ipaddress.ip_address(hop)
            except ValueError:
                return peer  # garbage in the chain: believe only the socket
            if not self._is_trusted(hop):
                return hop
        return hops[0] if hops else peer
