"""Hosts of the test's own for the cluster tests: network namespaces joined by veth pairs.

`hosts()` gives a `Hosts`; `add(name)` makes a namespace (a "host" with no network but
its own loopback), `link(a, b)` joins two of them (None: the test process's own
namespace) with a veth pair and a /30 of 10.213.0.0/16 that nothing on this machine
uses, and `cut`/`mend` take a link down and up: the host on the far side is cut off,
its processes live on. Processes run on a host with `ip netns exec NAME ...`
(`Hosts.exec`). Everything made is removed when the block ends (deleting a namespace
deletes its veths). Needs root (or CAP_NET_ADMIN) and iproute2; where `ip netns add`
fails, the test is skipped and says why. Only the test's own addresses are targets.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import subprocess
from collections.abc import Iterator

import attrs
import pytest

# The /16 the links' /30s come from: private, and checked against the machine's own
# addresses before each use.
LINK_RANGE = ipaddress.IPv4Network("10.213.0.0/16")


def _ip(*args: str) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


@attrs.frozen
class Link:
    """A veth pair between `near` (None: the test's namespace) and `far`; each end's
    interface and address."""

    near: str | None
    far: str
    near_ifname: str
    far_ifname: str
    near_address: str
    far_address: str


class Hosts:
    def __init__(self) -> None:
        self._tag = f"m{os.getpid() % 100000}"
        self._namespaces: list[str] = []
        self._links = 0

    def add(self, name: str) -> str:
        """A new namespace; returns its name (for `ip netns exec`)."""
        netns = f"{self._tag}-{name}"
        _ip("netns", "add", netns)
        self._namespaces.append(netns)
        _ip("-n", netns, "link", "set", "lo", "up")
        return netns

    def link(self, near: str | None, far: str) -> Link:
        """Join `near` (None: this process's namespace) and `far` with a veth pair."""
        self._links += 1
        near_if, far_if = f"{self._tag}l{self._links}a", f"{self._tag}l{self._links}b"
        subnet = self._free_subnet()
        near_addr, far_addr = (str(host) for host in subnet.hosts())
        _ip("link", "add", near_if, "type", "veth", "peer", "name", far_if)
        _ip("link", "set", far_if, "netns", far)
        if near is not None:
            _ip("link", "set", near_if, "netns", near)
        prefix = ["-n", near] if near is not None else []
        _ip(*prefix, "addr", "add", f"{near_addr}/30", "dev", near_if)
        _ip(*prefix, "link", "set", near_if, "up")
        _ip("-n", far, "addr", "add", f"{far_addr}/30", "dev", far_if)
        _ip("-n", far, "link", "set", far_if, "up")
        return Link(near, far, near_if, far_if, near_addr, far_addr)

    def cut(self, link: Link) -> None:
        """Take the link down at its far end: nothing passes either way."""
        _ip("-n", link.far, "link", "set", link.far_ifname, "down")

    def mend(self, link: Link) -> None:
        _ip("-n", link.far, "link", "set", link.far_ifname, "up")

    def exec(self, netns: str, command: list[str]) -> list[str]:
        """`command` as run on host `netns`."""
        return ["ip", "netns", "exec", netns, *command]

    def _free_subnet(self) -> ipaddress.IPv4Network:
        used = [
            ipaddress.ip_interface(word).network
            for line in _ip("-o", "-4", "addr", "show").splitlines()
            for word in line.split()
            if "/" in word and word[0].isdigit()
        ]
        start = (os.getpid() * 7 + self._links * 13) % 16384
        subnets = list(LINK_RANGE.subnets(new_prefix=30))
        for offset in range(len(subnets)):
            candidate = subnets[(start + offset) % len(subnets)]
            if not any(candidate.overlaps(net) for net in used):
                return candidate
        raise RuntimeError(f"no free /30 left in {LINK_RANGE}")

    def remove(self) -> None:
        for netns in reversed(self._namespaces):
            with contextlib.suppress(RuntimeError):  # gone already: nothing to remove
                _ip("netns", "del", netns)
        self._namespaces.clear()


@contextlib.contextmanager
def hosts() -> Iterator[Hosts]:
    """A `Hosts` whose namespaces are removed at the end; skips the test, saying why,
    where this machine does not allow network namespaces."""
    if shutil.which("ip") is None:
        pytest.skip("no `ip` (iproute2): the network-namespace tests cannot run")
    made = Hosts()
    try:
        made.add("probe")
    except RuntimeError as exc:
        pytest.skip(f"network namespaces are not available here ({exc}); run as root")
    made.remove()
    made = Hosts()
    try:
        yield made
    finally:
        made.remove()
