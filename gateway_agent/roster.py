"""Which peripherals this gateway serves, with which profile, and the truth about their links. Sans-I/O.

The cloud's `desiredConnections` (the peripherals an operator added to this gateway in the nRF Cloud portal)
is the source of truth: a peripheral added there is served with the default profile, with no configuration
edit. `[[peripherals]]` in the configuration adds peripherals of its own and pins profiles; those stay served
whatever the shadow says. A peripheral the cloud removes is no longer served (a transfer already running
finishes) and is reported `null` in `statusConnections`, so the shadow merge drops it.

Links are reported as they are: `connected` only while a link is up (the agent links to a peripheral only to
update it), `connecting` while it scans and connects (lte-gateway reports both flags).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from gateway_agent.cloud.wire import LinkState


@dataclass(frozen=True, slots=True)
class RosterChange:
    added: tuple[str, ...]
    removed: tuple[str, ...]

    def __bool__(self) -> bool:
        return bool(self.added or self.removed)


@dataclass
class Roster:
    configured: Mapping[str, str]
    """address → profile, from `[[peripherals]]`"""
    default_profile: str
    desired: frozenset[str] = frozenset()
    links: dict[str, LinkState] = field(default_factory=dict)

    @property
    def served(self) -> frozenset[str]:
        return frozenset(self.configured) | self.desired

    def profile_name(self, address: str) -> str:
        return self.configured.get(address, self.default_profile)

    def set_desired(self, addresses: Iterable[str]) -> RosterChange:
        before = self.served
        self.desired = frozenset(addresses)
        after = self.served
        for gone in before - after:
            self.links.pop(gone, None)
        return RosterChange(tuple(sorted(after - before)), tuple(sorted(before - after)))

    def set_link(self, address: str, state: LinkState) -> bool:
        """Record a link change; True when it changed what is reported."""
        if address not in self.served or self.link(address) is state:
            return False
        self.links[address] = state
        return True

    def link(self, address: str) -> LinkState:
        return self.links.get(address, LinkState.DISCONNECTED)

    def report(self) -> dict[str, LinkState]:
        """Every served peripheral's link, for a whole `statusConnections` report."""
        return {address: self.link(address) for address in sorted(self.served)}
