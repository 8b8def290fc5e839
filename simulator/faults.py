"""Fault injection for simulated peripherals: first-class, declarative, deterministic.

A `FaultPlan` is data (pydantic, so it travels as JSON over `nrf-dfu sim serve`'s socket and sits in a TOML
description); a `FaultInjector` is the sans-I/O state machine that applies one plan to the traffic of one
peripheral. The air asks it at each decision point (a connection attempt, a write arriving, the device
booting) and obeys the `WriteVerdict` it returns. Random corruption uses its own seeded RNG, so a run
with the same plan and the same traffic corrupts exactly the same bits.

Counting rules: "packet bytes" are the bytes written to the DFU packet characteristic (the firmware data
stream) since the plan was set; control-point requests are counted per opcode (first byte) since the plan
was set. One-shot faults disarm after firing; `drop_every_bytes` and `corrupt_probability` keep going.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from profiles.gatt import CONTROL_POINT, DFU_PACKET


class DropAtRequest(BaseModel):
    """Drop the link when the `nth` control-point request with `opcode` arrives."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    opcode: int = Field(ge=0, le=0xFF)
    nth: int = Field(1, ge=1)
    deliver: bool = Field(True, description="let the peripheral process it before the link drops")


class FaultPlan(BaseModel):
    """Faults of one peripheral. Every field defaults to "no fault"."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    drop_after_bytes: int | None = Field(None, ge=1, description="one-shot: drop once N packet bytes went in")
    drop_every_bytes: int | None = Field(None, ge=1, description="drop each time N more packet bytes went in")
    drop_at_request: DropAtRequest | None = None
    corrupt_nth_packet: int | None = Field(None, ge=1, description="one-shot: flip a bit in the Nth packet")
    corrupt_probability: float = Field(0.0, ge=0.0, le=1.0, description="flip a bit in each packet with p")
    seed: int = 0
    reset_after_bytes: int | None = Field(
        None, ge=1, description="one-shot: power-cycle after N packet bytes"
    )
    bootloader_adv_delay_s: float = Field(
        0.0, ge=0.0, description="extra delay before the bootloader advertises"
    )
    suppress_bootloader_adv: bool = Field(False, description="the bootloader never advertises")
    refuse_connections: int = Field(
        0, ge=-1, description="refuse the next N connection attempts; -1 = always"
    )

    @property
    def empty(self) -> bool:
        return self == FaultPlan()


@dataclass(frozen=True, slots=True)
class WriteVerdict:
    """What happens to one write: the bytes that arrive, and what the link does around it."""

    data: bytes
    deliver: bool = True
    drop_link: bool = False
    power_cycle: bool = False
    corrupted: bool = False
    reason: str = ""


class FaultInjector:
    """Applies a `FaultPlan` to one peripheral's traffic. Pure: fed events, returns verdicts."""

    def __init__(self, plan: FaultPlan | None = None) -> None:
        self.set_plan(plan or FaultPlan())

    def set_plan(self, plan: FaultPlan) -> None:
        """Arm a plan; counters restart so "after N bytes" counts from now."""
        self.plan = plan
        self._rng = random.Random(plan.seed)
        self._packet_bytes = 0
        self._since_periodic_drop = 0
        self._packets = 0
        self._requests: dict[int, int] = {}
        self._refusals = plan.refuse_connections
        self._drop_after_armed = plan.drop_after_bytes is not None
        self._reset_armed = plan.reset_after_bytes is not None
        self._corrupt_nth_armed = plan.corrupt_nth_packet is not None
        self._request_drop_armed = plan.drop_at_request is not None
        self.fired: list[str] = []

    @property
    def packet_bytes(self) -> int:
        return self._packet_bytes

    def on_connect_attempt(self) -> bool:
        """True when the connection may be established."""
        if self._refusals == 0:
            return True
        if self._refusals > 0:
            self._refusals -= 1
        self.fired.append("refuse_connection")
        return False

    def bootloader_adv_delay(self) -> float | None:
        """Extra seconds before the bootloader advertises after a reset; None = it never does."""
        if self.plan.suppress_bootloader_adv:
            return None
        return self.plan.bootloader_adv_delay_s

    def on_write(self, char_uuid: str, data: bytes) -> WriteVerdict:
        if char_uuid == DFU_PACKET:
            return self._on_packet(data)
        if char_uuid == CONTROL_POINT and data:
            return self._on_request(data)
        return WriteVerdict(data)

    def _on_request(self, data: bytes) -> WriteVerdict:
        opcode = data[0]
        self._requests[opcode] = count = self._requests.get(opcode, 0) + 1
        rule = self.plan.drop_at_request
        if self._request_drop_armed and rule is not None and rule.opcode == opcode and rule.nth == count:
            self._request_drop_armed = False
            reason = f"drop at request 0x{opcode:02X} #{count}"
            self.fired.append(reason)
            return WriteVerdict(data, deliver=rule.deliver, drop_link=True, reason=reason)
        return WriteVerdict(data)

    def _on_packet(self, data: bytes) -> WriteVerdict:
        plan = self.plan
        self._packets += 1
        self._packet_bytes += len(data)
        self._since_periodic_drop += len(data)
        out = data
        reasons: list[str] = []
        corrupt = False
        if self._corrupt_nth_armed and plan.corrupt_nth_packet == self._packets:
            self._corrupt_nth_armed = False
            corrupt = True
            reasons.append(f"corrupt packet #{self._packets}")
        # Draw for every packet so the sequence of random decisions depends only on the packet count.
        if plan.corrupt_probability > 0.0 and self._rng.random() < plan.corrupt_probability:
            corrupt = True
            reasons.append(f"corrupt packet #{self._packets} (p={plan.corrupt_probability})")
        if corrupt and data:
            bit = self._rng.randrange(len(data) * 8)
            flipped = bytearray(data)
            flipped[bit // 8] ^= 1 << (bit % 8)
            out = bytes(flipped)
        drop = False
        after = plan.drop_after_bytes
        if self._drop_after_armed and after is not None and self._packet_bytes >= after:
            self._drop_after_armed = False
            drop = True
            reasons.append(f"drop after {self._packet_bytes} bytes")
        if plan.drop_every_bytes is not None and self._since_periodic_drop >= plan.drop_every_bytes:
            self._since_periodic_drop = 0
            drop = True
            reasons.append(f"periodic drop at {self._packet_bytes} bytes")
        power_cycle = False
        reset_at = plan.reset_after_bytes
        if self._reset_armed and reset_at is not None and self._packet_bytes >= reset_at:
            self._reset_armed = False
            power_cycle = True
            reasons.append(f"power cycle after {self._packet_bytes} bytes")
        self.fired.extend(reasons)
        return WriteVerdict(
            out, drop_link=drop, power_cycle=power_cycle, corrupted=corrupt, reason="; ".join(reasons)
        )


__all__ = ["DropAtRequest", "FaultInjector", "FaultPlan", "WriteVerdict"]
