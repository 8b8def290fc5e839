"""The simulated air's contracts: what it needs from a peripheral, the plain data it tells its users (which
crosses the remote socket as JSON too), the interface the bleak backend drives, and its errors.

`simulator.air.Air` implements `AirApi` in this process, `simulator.remote.RemoteAir` over a socket.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from profiles.model import PeripheralProfile
from simulator.device import DeviceState, Emission
from simulator.gatt import CharInfo, ServiceInfo
from simulator.radio import RadioSchedule

# --- what the air needs from a peripheral (the SimPeripheral contract of docs/architecture.md) ----------


class AdvertisementLike(Protocol):
    @property
    def name(self) -> str | None: ...
    @property
    def service_uuids(self) -> Sequence[str]: ...
    @property
    def connectable(self) -> bool: ...


class PeripheralLike(Protocol):
    @property
    def profile(self) -> PeripheralProfile: ...
    @property
    def state(self) -> DeviceState: ...
    @property
    def address(self) -> str: ...
    def advertisement(self) -> AdvertisementLike | None: ...
    def gatt(self) -> Sequence[ServiceInfo]: ...
    def on_connect(
        self, now: float, att_mtu: int, radio: RadioSchedule | None = None, *, encrypted: bool = False
    ) -> None:
        """`radio`: when the link's connection events hold the peripheral's radio (its flash works around
        them); `encrypted`: the link runs encrypted (a central holding the bond encrypts it)."""
        ...

    def att_mtu_for(self, requested: int) -> int:
        """The ATT MTU the firmware answers to a central's exchange request for `requested`."""
        ...

    def accepts_connection(self) -> bool:
        """False when the firmware ignores this connection request (a bootloader's whitelist)."""
        ...

    @property
    def bond_held(self) -> bool:
        """The central holds this device's bond, so it can encrypt the link at once with the stored keys."""
        ...

    def radio_blocked(self, start_us: int, end_us: int) -> int | None:
        """End of work (flash) that keeps the peripheral's radio from the link within [start_us, end_us)."""
        ...

    def on_disconnect(self, now: float) -> None: ...
    def on_write(self, char_uuid: str, data: bytes, *, with_response: bool, now: float) -> list[Emission]: ...
    def on_read(self, char_uuid: str, now: float) -> bytes: ...
    def on_subscribe(self, char_uuid: str, *, notify: bool, indicate: bool, now: float) -> list[Emission]: ...
    def poll(self, now: float) -> list[Emission]: ...
    @property
    def next_wakeup(self) -> float | None: ...
    def reset(self, now: float) -> list[Emission]:
        """Power cycle: RAM is lost, the DeviceState (flash) stays; returns the resulting `Reset`."""
        ...


# --- what the air tells its users (plain data: it crosses the remote socket as JSON too) --------------------


@dataclass(frozen=True, slots=True)
class ScanReport:
    address: str
    name: str | None
    service_uuids: tuple[str, ...]
    rssi: int
    connectable: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "name": self.name,
            "service_uuids": list(self.service_uuids),
            "rssi": self.rssi,
            "connectable": self.connectable,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ScanReport:
        return cls(d["address"], d["name"], tuple(d["service_uuids"]), d["rssi"], d["connectable"])


@dataclass(frozen=True, slots=True)
class LinkInfo:
    """A connection as its central sees it: negotiated parameters and the peripheral's GATT table."""

    link_id: str
    address: str
    att_mtu: int
    phy: str
    data_length: int
    interval_ms: float
    services: tuple[ServiceInfo, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "link_id": self.link_id,
            "address": self.address,
            "att_mtu": self.att_mtu,
            "phy": self.phy,
            "data_length": self.data_length,
            "interval_ms": self.interval_ms,
            "services": [s.to_json() for s in self.services],
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> LinkInfo:
        services = tuple(ServiceInfo.from_json(s) for s in d["services"])
        return cls(
            d["link_id"], d["address"], d["att_mtu"], d["phy"], d["data_length"], d["interval_ms"], services
        )


class LinkEvents(Protocol):
    """What the central side of a link is told: notifications/indications and an unsolicited disconnect."""

    def on_notify(self, char_uuid: str, payload: bytes) -> None: ...
    def on_disconnect(self, reason: str) -> None: ...


ScanCallback = Callable[[ScanReport], None]


class AirApi(Protocol):
    """The interface the bleak backend drives; `Air` and `RemoteAir` both implement it."""

    async def start_scan(self, central: str, callback: ScanCallback) -> str: ...
    async def stop_scan(self, scan_id: str) -> None: ...
    async def connect(self, central: str, address: str, events: LinkEvents, *, wait_s: float) -> LinkInfo: ...
    async def disconnect(self, link_id: str) -> None: ...
    async def write(self, link_id: str, char_uuid: str, data: bytes, *, with_response: bool) -> None: ...
    async def read(self, link_id: str, char_uuid: str) -> bytes: ...
    async def subscribe(self, link_id: str, char_uuid: str, *, notify: bool, indicate: bool) -> None: ...


# --- errors ------------------------------------------------------------------------------------------------


class AirError(Exception):
    """Base of what the simulated air raises."""


class DeviceNotFoundError(AirError):
    def __init__(self, address: str) -> None:
        super().__init__(f"no simulated peripheral advertises at {address}")
        self.address = address


class ConnectFailedError(AirError):
    """The connection could not be established (refused, not connectable, no free link)."""


class NotConnectedError(AirError):
    """The link does not exist (any more)."""


class LinkLostError(AirError):
    """The link dropped while an operation was in flight."""


class AttProtocolError(AirError):
    """The peripheral answered an ATT request with an error response."""

    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(f"ATT error 0x{code:02X}{': ' + message if message else ''}")
        self.code = code


PeripheralFactory = Callable[[PeripheralProfile, dict[str, Any], float], PeripheralLike]
"""Builds a peripheral from its profile and a DeviceState (JSON) at air time `now` (`add_profile`, `load`)."""

__all__ = [
    "AdvertisementLike",
    "AirApi",
    "AirError",
    "AttProtocolError",
    "CharInfo",
    "ConnectFailedError",
    "DeviceNotFoundError",
    "LinkEvents",
    "LinkInfo",
    "LinkLostError",
    "NotConnectedError",
    "PeripheralFactory",
    "PeripheralLike",
    "ScanCallback",
    "ScanReport",
    "ServiceInfo",
]
