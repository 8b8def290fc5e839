"""A tiny, deliberately naive Secure DFU client for driving the simulated bootloader in tests.

Not the product engine: it sends exactly what a test asks, at explicit simulated times, and decodes what
comes back, so each bootloader rule can be provoked on its own.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dfu.init_packet import FwType, build_init_packet
from dfu.protocol import ObjectType, OpCode, Response, decode_response, encode_request
from profiles.model import PeripheralProfile, load_profile
from simulator.bootloader import Bootloader
from simulator.demo_packages import demo_key
from simulator.device import DeviceState, Emission, Mode, Notify, Reset, ResetReason

KEYS = Path(__file__).resolve().parents[2] / "profiles" / "keys"
ADDRESS = "C0:FF:EE:00:00:10"


def kind(reset: Reset) -> tuple[str, ResetReason]:
    """What a reset is, without its timing."""
    return reset.into, reset.reason


def profile(name: str = "nrf52840-s140", **changes: Any) -> PeripheralProfile:
    base = load_profile(name)
    return base.model_copy(update=changes) if changes else base


def signed_init(
    p: PeripheralProfile,
    firmware: bytes,
    fw_type: FwType = FwType.APPLICATION,
    *,
    fw_version: int = 2,
    sd_req: tuple[int, ...] | None = None,
    **kwargs: Any,
) -> bytes:
    """An init packet this profile accepts, unless the caller overrides a field."""
    return build_init_packet(
        fw_type,
        firmware,
        fw_version=fw_version,
        hw_version=kwargs.pop("hw_version", p.board.hw_version),
        sd_req=sd_req if sd_req is not None else (p.board.softdevice_id,),
        key=kwargs.pop("key", demo_key()),
        **kwargs,
    )


@dataclass
class Driver:
    """Feeds one `Bootloader`; `now` advances only when a test (or a response's ready_at) moves it."""

    bl: Bootloader
    now: float = 0.0
    resets: list[Reset] = field(default_factory=list)
    notifications: list[Notify] = field(default_factory=list)

    @classmethod
    def fresh(cls, p: PeripheralProfile | None = None, state: DeviceState | None = None) -> Driver:
        p = p or profile()
        state = state or DeviceState.initial(p, ADDRESS)
        state.mode = Mode.BOOTLOADER
        driver = cls(Bootloader(p, state))
        driver.bl.on_connect(0.0, 247)
        return driver

    @property
    def profile(self) -> PeripheralProfile:
        return self.bl.profile

    @property
    def state(self) -> DeviceState:
        return self.bl.state

    def _collect(self, emissions: list[Emission]) -> list[Notify]:
        notes = [e for e in emissions if isinstance(e, Notify)]
        self.notifications += notes
        self.resets += [e for e in emissions if isinstance(e, Reset)]
        return notes

    def raw(self, data: bytes) -> list[Notify]:
        return self._collect(self.bl.on_control_point(data, self.now))

    def request(self, opcode: OpCode, **params: Any) -> Response:
        """Write one request; wait (in simulated time) for its single response and decode it. A data Execute
        is answered once flash is idle: then the bootloader's own wake-up delivers it."""
        notes = self.raw(encode_request(opcode, **params))
        if not notes and self.bl.next_wakeup is not None:
            self.now = max(self.now, self.bl.next_wakeup)
            notes = self._collect(self.bl.poll(self.now))
        assert len(notes) == 1, notes
        self.now = max(self.now, notes[0].ready_at)
        response = decode_response(notes[0].payload)
        assert response.request is opcode
        return response

    def packet(self, data: bytes) -> list[Notify]:
        return self._collect(self.bl.on_packet(data, self.now))

    def advance(self, seconds: float) -> list[Emission]:
        self.now += seconds
        emissions = self.bl.poll(self.now)
        self._collect(emissions)
        return emissions

    def run_until_reset(self) -> Reset:
        """Follow the bootloader's own wake-ups (a settings write to finish, then the reset) to its reset."""
        for _ in range(4):
            wake = self.bl.next_wakeup
            assert wake is not None, "the bootloader will not reset"
            self.now = max(self.now, wake)
            emissions = self.bl.poll(self.now)
            self._collect(emissions)
            if emissions and isinstance(emissions[-1], Reset):
                return emissions[-1]
        raise AssertionError("no reset after the bootloader's wake-ups")

    def stream(self, data: bytes, *, chunk: int = 244, paced: bool = True) -> list[Notify]:
        """Packets of `chunk` bytes; paced = wait for each one's flash write, else all at the same instant."""
        notes: list[Notify] = []
        for i in range(0, len(data), chunk):
            part = data[i : i + chunk]
            if paced:
                self.now = self.bl.flash.idle_at(self.now)
            notes += self.packet(part)
        if paced:
            self.now = self.bl.flash.idle_at(self.now)
        return notes

    def send_init(self, init: bytes) -> Response:
        self.request(OpCode.SELECT, type=ObjectType.COMMAND)
        created = self.request(OpCode.CREATE, type=ObjectType.COMMAND, size=len(init))
        assert created.ok, created
        self.stream(init, paced=False)
        crc = self.request(OpCode.CALC_CHECKSUM)
        assert crc.payload == {"offset": len(init), "crc": zlib.crc32(init)}, crc
        return self.request(OpCode.EXECUTE)

    def send_object(self, image: bytes, start: int, size: int, *, paced: bool = True) -> Response:
        """Create, stream, check and execute the data object image[start:start+size]."""
        created = self.request(OpCode.CREATE, type=ObjectType.DATA, size=size)
        assert created.ok, created
        self.stream(image[start : start + size], paced=paced)
        crc = self.request(OpCode.CALC_CHECKSUM)
        assert crc.payload == {"offset": start + size, "crc": zlib.crc32(image[: start + size])}, crc
        return self.request(OpCode.EXECUTE)

    def send_data(self, image: bytes, *, first: int = 0) -> Response:
        """Every data object from byte `first` (a multiple of the object size); returns the last answer."""
        self.request(OpCode.SELECT, type=ObjectType.DATA)
        size = self.profile.data_object_size
        response: Response | None = None
        for start in range(first, len(image), size):
            response = self.send_object(image, start, min(size, len(image) - start))
            if start + size < len(image):
                assert response.ok, response
        assert response is not None
        return response

    def update(self, init: bytes, image: bytes) -> Response:
        executed = self.send_init(init)
        assert executed.ok, executed
        return self.send_data(image)
