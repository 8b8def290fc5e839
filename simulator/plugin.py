"""The simulator as the product sees it: a bleak backend chosen by name, and rehearsals for `nrf-dfu`.

Registered as entry points (pyproject.toml, `ble_fota.backends` and `ble_fota.rehearsals`), so the product
finds it by the name `simulator` and never imports this package itself (dfu/plugins.py).

Agent configuration (`[ble] backend = "simulator"`), under `[ble.options]`:
- `socket = "/tmp/air.sock"`: the air of an `nrf-dfu sim serve` process (boards that outlive the agent);
- or `peripherals = [{address = "C8:2E:1A:00:00:01", profile = "nrf52840-s140"}, ...]` and `time_scale`
  (real seconds per simulated second of the in-process air, at most 1).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dfu.plugins import BackendPlugin, Rehearsal
from dfu.transport.backend import BleBackend
from profiles.model import PeripheralProfile, load_profile
from simulator.air import MAX_TIME_SCALE, Air
from simulator.bleak_backend import backend_for
from simulator.remote import RemoteAir

SIM_ADDRESS_BASE = "C0:FF:EE:00:00:"
"""Simulated peripherals without an address sit at C0:FF:EE:00:00:10, :20, ... (each bootloader at +1)."""


def sim_address(index: int) -> str:
    return f"{SIM_ADDRESS_BASE}{(index + 1) * 0x10:02X}"


class _Peripheral(BaseModel):
    model_config = ConfigDict(extra="forbid")
    address: Annotated[str, Field(pattern=r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$")]
    profile: str = "nrf52840-s140"


class SimulatorOptions(BaseModel):
    """`[ble.options]` of an agent on the simulator."""

    model_config = ConfigDict(extra="forbid")
    socket: Path | None = None
    peripherals: list[_Peripheral] = Field(default_factory=list)
    time_scale: float = Field(1.0, gt=0, le=MAX_TIME_SCALE)

    @field_validator("peripherals")
    @classmethod
    def _profiles_exist(cls, value: list[_Peripheral]) -> list[_Peripheral]:
        for p in value:
            load_profile(p.profile)  # UnknownProfileError (a ValueError's cousin) names the shipped ones
        return value

    @model_validator(mode="after")
    def _one_air(self) -> SimulatorOptions:
        if self.socket is not None and self.peripherals:
            raise ValueError("socket and peripherals exclude each other")
        return self


def _options(raw: Mapping[str, Any]) -> SimulatorOptions:
    return SimulatorOptions.model_validate(dict(raw))


def _make(raw: Mapping[str, Any]) -> BleBackend:
    options = _options(raw)
    if options.socket is not None:
        return backend_for(RemoteAir(options.socket))
    air = Air(time_scale=options.time_scale)
    for p in options.peripherals:
        air.add_profile(p.profile, p.address.upper())
    return backend_for(air)


def _problems(raw: Mapping[str, Any]) -> list[str]:
    try:
        options = _options(raw)
    except ValidationError as exc:
        return [f"ble.options.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
    except LookupError as exc:  # an unknown profile
        return [f"ble.options.peripherals: {exc}"]
    if options.socket is not None and not options.socket.exists():
        return [f"ble.options.socket: no such socket (is `nrf-dfu sim serve` running?): {options.socket}"]
    return []


BACKEND = BackendPlugin(make=_make, problems=_problems)


@dataclass
class SimRehearsal(Rehearsal):
    """A rehearsal whose air is in this process (None over a socket), so bench code can look inside."""

    air: Air | None = None


def rehearsal(
    *,
    profiles: list[PeripheralProfile] | None = None,
    addresses: list[str | None] | None = None,
    socket: str | None = None,
) -> SimRehearsal:
    """`nrf-dfu --sim`: boards of `profiles` on a fresh in-process air at `addresses` (else at
    `sim_address(i)`), on a fast-forwarded loop; or, with `socket`, the boards of `nrf-dfu sim serve`."""
    if socket is not None:
        remote = RemoteAir(socket)
        return SimRehearsal(backend_for(remote), [], close=remote.close)
    import looptime

    air = Air()
    placed = []
    wanted = addresses or []
    for index, profile in enumerate(profiles or []):
        given = wanted[index] if index < len(wanted) else None
        address = given.upper() if given else sim_address(index)
        air.add_profile(profile, address)
        placed.append(address)
    return SimRehearsal(
        backend_for(air),
        placed,
        loop_factory=functools.partial(looptime.new_event_loop, start=0.0),
        air=air,
    )
