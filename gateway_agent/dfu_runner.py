"""The seam between job execution and the DFU client: one whole update of one peripheral.

`DfuRunner` is what the agent needs; `UpdaterRunner` is the product implementation over `dfu.updater` (no
second DFU client here). Cancelling `run` leaves the peripheral resumable: the updater only disconnects, and
the next `run` (even after an agent restart) resumes from the bootloader's offset.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from dfu.package import DfuPackage
from dfu.transport.backend import BleBackend
from gateway_agent.cloud.wire import LinkState
from profiles.model import PeripheralProfile

if TYPE_CHECKING:  # the BLE stack is imported when the first update starts, not when the agent starts
    from dfu.updater import UpdateOptions, UpdateResult

TransferProgress = Callable[[int, int], None]
"""(firmware bytes the bootloader confirmed, total firmware bytes)"""
LinkListener = Callable[[LinkState], None]
"""the peripheral's link, as `statusConnections` reports it"""


class DfuRunner(Protocol):
    async def run(
        self,
        address: str,
        profile: PeripheralProfile,
        package: DfuPackage,
        on_progress: TransferProgress,
        on_link: LinkListener,
    ) -> UpdateResult | None:
        """Update the peripheral; returns once it runs the new firmware, raises `dfu.errors` types. Reports
        the link as it changes; the caller takes it as DISCONNECTED once `run` ends, however it ends."""
        ...


class UpdaterRunner:
    def __init__(self, backend: BleBackend, options: UpdateOptions | None = None) -> None:
        self.backend = backend
        self.options = options

    async def run(
        self,
        address: str,
        profile: PeripheralProfile,
        package: DfuPackage,
        on_progress: TransferProgress,
        on_link: LinkListener,
    ) -> UpdateResult:
        from dfu.updater import Phase, UpdateProgress, update

        # What each phase means for the link: scanning and connecting are CONNECTING (lte-gateway reports
        # `connecting` while it sets a link up), a link in use is CONNECTED; the agent sets DISCONNECTED at
        # the end.
        link_of = {
            Phase.CONNECTING: LinkState.CONNECTING,
            Phase.FINDING_BOOTLOADER: LinkState.CONNECTING,
            Phase.RECONNECTING: LinkState.CONNECTING,
            Phase.VERIFYING: LinkState.CONNECTING,
            Phase.ENTERING_BOOTLOADER: LinkState.CONNECTED,
            Phase.TRANSFERRING: LinkState.CONNECTED,
            Phase.DONE: LinkState.DISCONNECTED,
        }

        def listen(event: UpdateProgress) -> None:
            state = link_of.get(event.phase)
            if state is not None:
                on_link(state)
            if event.phase in (Phase.TRANSFERRING, Phase.VERIFYING, Phase.DONE):
                on_progress(event.bytes_sent, event.bytes_total)

        return await update(
            self.backend, profile, package, address=address, options=self.options, on_progress=listen
        )
