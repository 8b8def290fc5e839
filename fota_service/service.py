"""The running service: one model, one store, one clock; commands in, effects out to listeners.

REST handlers and the MQTT bridge both call `FotaService.run(...)`, which applies a model command, writes the
changes, and only then hands the effects (notifications) to the listeners — the MQTT bridge publishes them.
Everything runs on one event loop, so commands never interleave and need no locks.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import uuid
from collections.abc import Callable

from fota_service.bundles import bundle_id, read_upload
from fota_service.model import (
    Bundle,
    Effect,
    FotaModel,
    RolloutConfig,
)
from fota_service.store import Store

log = logging.getLogger(__name__)

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
        """Validate an uploaded zip (nRF Cloud's bundle zip or an nrfutil package, `bundles.py`) and host its
        init packet and image as one bundle. One image per bundle: the job tuple carries exactly one init
        packet and one image, so upload each image of a multi-image package as its own bundle and deploy
        them in send order (SoftDevice/bootloader first)."""
        upload = read_upload(data, name=name, version=version, description=description)
        token = hashlib.sha256(self.new_id().encode()).hexdigest()[:8]  # 8 hex digits from a fresh id
        bundle = Bundle(
            bundle_id=bundle_id(upload.firmware_type, token, upload.version),
            name=upload.name,
            firmware_type=upload.firmware_type,
            version=upload.version,
            files=tuple((file, len(blob)) for file, blob in upload.files),
            created_at=self.clock(),
            description=upload.description,
        )
        self.store.save_files(bundle.bundle_id, dict(upload.files))
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
