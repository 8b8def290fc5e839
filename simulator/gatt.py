"""The one GATT table type of the simulator: what a peripheral exposes, what the air reports to a central
after discovery, and what crosses the remote socket (as JSON)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

READ = "read"
WRITE = "write"
WRITE_WITHOUT_RESPONSE = "write-without-response"
NOTIFY = "notify"
INDICATE = "indicate"


@dataclass(frozen=True, slots=True)
class CharInfo:
    """A characteristic: lower-case UUID and bleak's property names."""

    uuid: str
    properties: tuple[str, ...]

    @classmethod
    def of(cls, uuid: str, *properties: str) -> CharInfo:
        return cls(uuid.lower(), tuple(sorted(set(properties))))


@dataclass(frozen=True, slots=True)
class ServiceInfo:
    uuid: str
    characteristics: tuple[CharInfo, ...]

    @classmethod
    def of(cls, uuid: str, characteristics: Iterable[CharInfo]) -> ServiceInfo:
        return cls(uuid.lower(), tuple(characteristics))

    def characteristic(self, uuid: str) -> CharInfo | None:
        wanted = uuid.lower()
        return next((c for c in self.characteristics if c.uuid == wanted), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "uuid": self.uuid,
            "chars": [{"uuid": c.uuid, "properties": list(c.properties)} for c in self.characteristics],
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ServiceInfo:
        return cls(d["uuid"], tuple(CharInfo(c["uuid"], tuple(c["properties"])) for c in d["chars"]))
