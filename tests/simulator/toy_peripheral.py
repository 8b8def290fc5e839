"""A small GATT device implementing the SimPeripheral contract, so the air is tested on its own.

Application mode: buttonless (write + indicate; 0xFD without indications) and Device Information.
Bootloader mode: control point (write + notify) answering select with the bytes received so far through
the packet characteristic, whose progress lives in RAM and is lost on a power cycle (as Nordic's).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

from profiles.gatt import (
    BUTTONLESS_UNBONDED,
    CONTROL_POINT,
    DEVICE_INFORMATION_SERVICE,
    DFU_PACKET,
    FIRMWARE_REVISION,
    SECURE_DFU_SERVICE,
)
from profiles.model import PeripheralProfile, bootloader_address
from simulator.device import AttError, DeviceState, Emission, Mode, Notify, Reset, ResetReason
from simulator.gatt import CharInfo, ServiceInfo


@dataclass(frozen=True)
class Advertisement:
    name: str | None
    service_uuids: tuple[str, ...]
    connectable: bool = True


@dataclass
class ToyPeripheral:
    profile: PeripheralProfile
    state: DeviceState
    connectable: bool = True
    received: bytearray = field(default_factory=bytearray)
    subscribed: dict[str, tuple[bool, bool]] = field(default_factory=dict)
    reset_at: float | None = None
    connects: list[tuple[float, int]] = field(default_factory=list)
    disconnects: list[float] = field(default_factory=list)
    writes: list[tuple[str, bytes, bool, float]] = field(default_factory=list)
    polls: list[float] = field(default_factory=list)
    power_cycles: int = 0

    @property
    def address(self) -> str:
        if self.state.mode is Mode.BOOTLOADER:
            return bootloader_address(self.state.address, self.profile.address_rule)
        return self.state.address

    def advertisement(self) -> Advertisement | None:
        if self.state.mode is Mode.BOOTLOADER:
            return Advertisement(self.profile.bootloader_name, (SECURE_DFU_SERVICE,), self.connectable)
        return Advertisement(self.profile.app_name, (SECURE_DFU_SERVICE,), self.connectable)

    def gatt(self) -> list[ServiceInfo]:
        if self.state.mode is Mode.BOOTLOADER:
            return [
                ServiceInfo.of(
                    SECURE_DFU_SERVICE,
                    (
                        CharInfo.of(CONTROL_POINT, "write", "notify"),
                        CharInfo.of(DFU_PACKET, "write-without-response"),
                    ),
                )
            ]
        return [
            ServiceInfo.of(SECURE_DFU_SERVICE, (CharInfo.of(BUTTONLESS_UNBONDED, "write", "indicate"),)),
            ServiceInfo.of(DEVICE_INFORMATION_SERVICE, (CharInfo.of(FIRMWARE_REVISION, "read"),)),
        ]

    def att_mtu_for(self, requested: int) -> int:
        return requested

    def accepts_connection(self) -> bool:
        return True

    @property
    def bond_held(self) -> bool:
        return False

    def radio_blocked(self, start_us: int, end_us: int) -> int | None:
        return None

    def on_connect(self, now: float, att_mtu: int, radio: object = None, *, encrypted: bool = False) -> None:
        self.connects.append((now, att_mtu))

    def on_disconnect(self, now: float) -> None:
        self.disconnects.append(now)
        self.subscribed.clear()

    def on_write(self, char_uuid: str, data: bytes, *, with_response: bool, now: float) -> list[Emission]:
        self.writes.append((char_uuid, data, with_response, now))
        if char_uuid == BUTTONLESS_UNBONDED:
            if not self.subscribed.get(char_uuid, (False, False))[1]:
                raise AttError(0xFD)
            self.reset_at = now + 0.1
            return [Notify(char_uuid, b"\x20\x01\x01", now, indication=True)]
        if char_uuid == DFU_PACKET:
            self.received += data
            return []
        if char_uuid == CONTROL_POINT and data[:1] == b"\x06":
            crc = zlib.crc32(self.received)
            body = struct.pack("<III", 4096, len(self.received), crc)
            return [Notify(CONTROL_POINT, b"\x60\x06\x01" + body, now + 0.002)]
        if char_uuid == CONTROL_POINT and data[:1] == b"\x04":
            return [Notify(CONTROL_POINT, b"\x60\x04\x01", now), Reset("app", ResetReason.ACTIVATED)]
        return []

    def on_read(self, char_uuid: str, now: float) -> bytes:
        if char_uuid == FIRMWARE_REVISION and self.state.app is not None:
            return str(self.state.app.version).encode()
        raise AttError(0x02)

    def on_subscribe(self, char_uuid: str, *, notify: bool, indicate: bool, now: float) -> list[Emission]:
        self.subscribed[char_uuid] = (notify, indicate)
        return []

    def poll(self, now: float) -> list[Emission]:
        self.polls.append(now)
        if self.reset_at is not None and now >= self.reset_at:
            self.reset_at = None
            self.state.mode = Mode.BOOTLOADER
            return [Reset("bootloader", ResetReason.BUTTONLESS)]
        return []

    @property
    def next_wakeup(self) -> float | None:
        return self.reset_at

    def reset(self, now: float) -> list[Emission]:
        """Power cycle: RAM (received bytes, pending reset) is lost; the mode in flash is kept."""
        self.received = bytearray()
        self.reset_at = None
        self.subscribed.clear()
        self.power_cycles += 1
        return [Reset("bootloader" if self.state.mode is Mode.BOOTLOADER else "app", ResetReason.POWER_CYCLE)]


def toy_factory(profile: PeripheralProfile, state: dict[str, object], now: float) -> ToyPeripheral:
    return ToyPeripheral(profile, DeviceState.model_validate(state))
