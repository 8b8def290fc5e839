"""`nrf-dfu sim serve` airs of a fleet: one process per gateway site, reached over its socket."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hil.processes import SIM_MAIN, Managed, python_command
from simulator.faults import FaultPlan
from simulator.remote import RemoteAir
from simulator.server import address_range


@dataclass
class SimAir:
    """One `nrf-dfu sim serve` process and the peripherals it holds."""

    process: Managed
    socket: Path
    profiles: dict[str, str]
    """app address → profile name, in address order"""

    @property
    def addresses(self) -> list[str]:
        return list(self.profiles)

    async def state(self, address: str) -> dict[str, Any]:
        async with RemoteAir(self.socket) as remote:
            state: dict[str, Any] = await remote.device_state(address)
            return state

    async def app_versions(self) -> dict[str, int | None]:
        """Installed application version per peripheral, read from the simulator's device state (None: no
        valid application)."""
        out: dict[str, int | None] = {}
        async with RemoteAir(self.socket) as remote:
            for address in self.addresses:
                state = await remote.device_state(address)
                app = state.get("app")
                out[address] = None if app is None else int(app["version"])
        return out

    async def set_faults(self, address: str, **faults: Any) -> None:
        async with RemoteAir(self.socket) as remote:
            await remote.set_faults(address, FaultPlan.model_validate(faults))

    async def clear_faults(self, address: str) -> None:
        async with RemoteAir(self.socket) as remote:
            await remote.clear_faults(address)


def start_sim(
    name: str,
    directory: Path,
    socket_dir: Path,
    groups: Sequence[tuple[str, str, int]],
    *,
    time_scale: float,
) -> SimAir:
    """`nrf-dfu sim serve --config` with `[[peripheral]]` groups of (profile, first address, count)."""
    sock = socket_dir / f"{name}.sock"
    description = directory / f"{name}.toml"
    lines: list[str] = []
    profiles: dict[str, str] = {}
    for profile, base, count in groups:
        lines += ["[[peripheral]]", f'profile = "{profile}"', f'address = "{base}"', f"count = {count}", ""]
        profiles.update(dict.fromkeys(address_range(base, count), profile))
    description.write_text("\n".join(lines))
    proc = Managed(
        name,
        python_command(
            SIM_MAIN,
            "sim",
            "serve",
            "--socket",
            str(sock),
            "--config",
            str(description),
            "--time-scale",
            str(time_scale),
        ),
        directory / f"{name}.log",
    )
    proc.start()
    return SimAir(proc, sock, profiles)
