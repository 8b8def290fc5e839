"""The running service: one model, one store, one clock; commands in, effects out to listeners.

REST handlers and the MQTT bridge both call `FotaService.run(...)`, which applies a model command, writes the
changes, and only then hands the effects (notifications) to the listeners — the MQTT bridge publishes them.
Everything runs on one event loop, so commands never interleave and need no locks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import posixpath
import time
import uuid
from collections.abc import Callable

from dfu.errors import PackageError
from dfu.init_packet import FwType
from dfu.package import DfuPackage
from fota_service.errors import BundleRejected
from fota_service.model import Bundle, Effect, FirmwareType, FotaModel, RolloutConfig
from fota_service.store import Store

log = logging.getLogger(__name__)

_FW_TYPES: dict[FwType, FirmwareType] = {
    FwType.APPLICATION: FirmwareType.APP,
    FwType.EXTERNAL_APPLICATION: FirmwareType.APP,
    FwType.SOFTDEVICE: FirmwareType.SOFTDEVICE,
    FwType.SOFTDEVICE_BOOTLOADER: FirmwareType.SOFTDEVICE,
    FwType.BOOTLOADER: FirmwareType.BOOTLOADER,
}
"""Init packet type → job FIRMWARE_TYPE. SoftDevice+bootloader goes as SOFTDEVICE: it replaces the stack."""

Listener = Callable[[Effect], None]


def new_id() -> str:
    return str(uuid.uuid4())


class FotaService:
    def __init__(
        self,
        store: Store,
        *,
        tenant: str,
        file_host: str,
        rollout: RolloutConfig | None = None,
        clock: Callable[[], float] = time.time,
        id_factory: Callable[[], str] = new_id,
    ) -> None:
        self.store = store
        self.clock = clock
        self.new_id = id_factory
        self.model = FotaModel(tenant=tenant, file_host=file_host, new_id=id_factory, rollout=rollout)
        store.load(self.model)
        self._listeners: list[Listener] = []
        self._wake = asyncio.Event()
        self._files: dict[tuple[str, str], bytes] = {}

    @property
    def tenant(self) -> str:
        return self.model.tenant

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def run(self, command: Callable[[FotaModel, float], list[Effect]]) -> list[Effect]:
        """Apply one command at the current time; persist; then dispatch its effects."""
        try:
            effects = command(self.model, self.clock())
        finally:
            self.store.flush(self.model, self.model.take_changes())
        for effect in effects:
            for listener in self._listeners:
                listener(effect)
        self._wake.set()
        return effects

    async def run_scheduler(self) -> None:
        """Tick the model when its next rollout deadline passes (woken early by any command)."""
        while True:
            deadline = self.model.next_deadline
            self._wake.clear()
            timeout = None if deadline is None else max(0.0, deadline - self.clock())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            if deadline is not None and self.clock() >= deadline:
                effects = self.run(lambda m, now: m.tick(now))
                if effects:
                    log.info("rollout tick", extra={"notified": len(effects)})

    def upload_bundle(
        self, data: bytes, *, name: str = "", version: str = "", description: str = ""
    ) -> Bundle:
        """Validate a Secure DFU zip and keep its init packet and image as a bundle.

        One image per bundle: the job tuple carries exactly one init packet and one image, so a multi-image
        zip (SoftDevice + application, say) is refused; upload each image as its own bundle and deploy them
        in send order (SoftDevice/bootloader first).
        """
        try:
            package = DfuPackage.from_zip(data)
        except PackageError as exc:
            raise BundleRejected(f"not a valid Secure DFU package: {exc}") from exc
        if len(package.images) != 1:
            kinds = ", ".join(i.kind.value for i in package.images)
            raise BundleRejected(
                f"a bundle must hold exactly one image (init packet + image); this zip holds {kinds}: "
                "upload each image as its own package"
            )
        (image,) = package.images
        if image.init.fw_type is None:
            raise BundleRejected("the init packet has no firmware type")
        stem = image.kind.value
        dat_name = posixpath.basename(image.dat_file or f"{stem}.dat")
        bin_name = posixpath.basename(image.bin_file or f"{stem}.bin")
        if dat_name == bin_name:
            raise BundleRejected("init packet and image have the same file name")
        fw_version = image.init.fw_version
        bundle = Bundle(
            bundle_id=self.new_id(),
            name=name or stem,
            firmware_type=_FW_TYPES[image.init.fw_type],
            version=version or (str(fw_version) if fw_version is not None else "unknown"),
            files=((dat_name, len(image.init_packet)), (bin_name, len(image.firmware))),
            created_at=self.clock(),
            description=description,
        )
        self.store.save_files(bundle.bundle_id, {dat_name: image.init_packet, bin_name: image.firmware})
        self.run(lambda m, _now: _add_bundle(m, bundle))
        log.info("bundle uploaded", extra={"bundle_id": bundle.bundle_id, "type": bundle.firmware_type.name})
        return bundle

    def firmware_file(self, bundle_id: str, name: str) -> bytes | None:
        """A hosted file (cached after the first read: bundles never change)."""
        key = (bundle_id, name)
        if key not in self._files:
            data = self.store.read_file(bundle_id, name)
            if data is None:
                return None
            self._files[key] = data
        return self._files[key]


def _add_bundle(model: FotaModel, bundle: Bundle) -> list[Effect]:
    model.add_bundle(bundle)
    return []
