"""A DFU target for bench tests: a real board through BlueZ, or a simulated one of the same profile.

The same test body runs on both; only what cannot exist on a real board (fault injection, reading the
device's internal state) is simulated-only, and says so by skipping.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bleak import BleakClient
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey

from dfu.package import DfuPackage
from dfu.signing import load_private_key
from dfu.transport.backend import BleBackend
from profiles.gatt import FIRMWARE_REVISION
from profiles.model import PeripheralProfile
from simulator.air import Air
from simulator.demo_packages import DEMO_KEY_FILE, app_package
from simulator.faults import FaultPlan

DEMO_KEY = DEMO_KEY_FILE
SIMULATED_ADDRESS = "C8:2E:1A:00:00:01"


class NotSimulatedError(RuntimeError):
    """Asked a real board for something only the simulator can do."""


@dataclass
class DfuTarget:
    address: str
    profile: PeripheralProfile
    backend: BleBackend
    key_file: Path
    air: Air | None = None

    @property
    def simulated(self) -> bool:
        return self.air is not None

    def signing_key(self) -> EllipticCurvePrivateKey:
        return load_private_key(self.key_file)

    def app_package(self, version: int, *, size: int = 16 * 1024, key_file: Path | None = None) -> DfuPackage:
        """A signed application package this target's bootloader accepts (its hw version and SoftDevice)."""
        board = self.profile.board
        key = load_private_key(key_file or self.key_file)
        return app_package(version, size, hw_version=board.hw_version, sd_req=[board.softdevice_id], key=key)

    async def firmware_revision(self) -> str:
        """The application's Device Information firmware revision, read over the air (both kinds)."""
        async with BleakClient(
            self.address, backend=self.backend.client, timeout=self.profile.timeouts.connect_s
        ) as client:
            return bytes(await client.read_gatt_char(FIRMWARE_REVISION)).decode()

    def inject(self, **faults: object) -> None:
        """Simulated targets only: arm a fault plan (see simulator.faults.FaultPlan)."""
        if self.air is None:
            raise NotSimulatedError("fault injection needs a simulated target")
        self.air.set_faults(self.address, FaultPlan.model_validate(faults))
