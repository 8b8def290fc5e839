"""The running service: one model, one store, one clock; commands in, effects out to listeners.

REST handlers and the MQTT bridge both call `FotaService.run(...)`, which applies a model command and writes
its changes in one transaction (`Store.run`), and only then hands the effects (notifications) to the listeners
— the MQTT bridge publishes them. Everything in a process runs on one event loop, so its commands never
interleave; on a shared PostgreSQL database `Store.run` also serializes them with other processes' commands
and brings the model up to date first, and readers call `sync()` before reading.

The rollout scheduler runs in one process at a time: alone on SQLite; on PostgreSQL, the holder of the
`LeaderLease`, while the others stand by and try again every `leader_retry` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable

from sqlalchemy.exc import SQLAlchemyError

from fota_service.bundles import bundle_id, read_upload
from fota_service.model import (
    Bundle,
    Effect,
    FotaModel,
    RolloutConfig,
)
from fota_service.store import LeaderLease, Store

log = logging.getLogger(__name__)

FILE_CACHE_BYTES = 32 * 1024 * 1024
"""Hosted files kept in memory (four 8 MiB uploads' worth); the rest are read from the store again."""

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
        self.role: str | None = None
        """The scheduler's role in this process: "leader", "standby", or None while it is not running."""
        self.roles: list[str] = []
        """Every role taken, in order: lets callers wait for a change rather than a clock."""
        self._role_changed = asyncio.Event()
        self._files: OrderedDict[tuple[str, str], bytes] = OrderedDict()
        self._files_bytes = 0

    @property
    def tenant(self) -> str:
        return self.model.tenant

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def run(self, command: Callable[[FotaModel, float], list[Effect]]) -> list[Effect]:
        """Apply one command at the current time; persist; then dispatch its effects."""
        effects = self.store.run(self.model, lambda: command(self.model, self.clock()))
        for effect in effects:
            for listener in self._listeners:
                listener(effect)
        self._wake.set()
        return effects

    def sync(self) -> None:
        """Before reading the model: take in what other processes sharing the database wrote."""
        self.store.refresh(self.model)

    async def run_scheduler(self, *, leader_retry: float = 2.0, poll_interval: float = 1.0) -> None:
        """Tick the model when its next rollout deadline passes (woken early by any command).

        On a shared database only the lease holder ticks ("scheduler leader"); the others log "scheduler
        standby" and try for the lease every `leader_retry` seconds. The leader also wakes every
        `poll_interval` seconds to see deadlines set by other processes' commands, and to check it still
        holds the lease."""
        if not self.store.shared:
            self._set_role("leader")
            await self._schedule(None, poll_interval)
            return
        lease = self.store.leader_lease()
        try:
            while True:
                if lease.try_acquire():
                    self._set_role("leader")
                    await self._schedule(lease, poll_interval)
                self._set_role("standby")
                await asyncio.sleep(leader_retry)
        finally:
            lease.release()
            self.role = None

    def _set_role(self, role: str) -> None:
        if role == self.role:
            return
        self.role = role
        self.roles.append(role)
        log.info(f"scheduler {role}", extra={"shared": self.store.shared})
        changed, self._role_changed = self._role_changed, asyncio.Event()
        changed.set()

    async def wait_role(self, role: str, times: int = 1) -> None:
        """Until this process's scheduler has become `role` ("leader", "standby") `times` times."""
        while self.roles.count(role) < times:
            await self._role_changed.wait()

    async def _schedule(self, lease: LeaderLease | None, poll_interval: float) -> None:
        """Tick until the lease is lost (never, without one). A database error costs a round, not the
        scheduler: it is logged and the next round tries again."""
        while True:
            try:
                if lease is not None:
                    if not lease.check():
                        return
                    self.sync()
                deadline = self.model.next_deadline
            except SQLAlchemyError as exc:
                log.warning("scheduler: database error", extra={"error": str(exc).splitlines()[0]})
                deadline = None
            self._wake.clear()
            timeout = None if deadline is None else max(0.0, deadline - self.clock())
            if lease is not None:
                timeout = poll_interval if timeout is None else min(timeout, poll_interval)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            if deadline is not None and self.clock() >= deadline:
                try:
                    effects = self.run(lambda m, now: m.tick(now))
                except SQLAlchemyError as exc:
                    log.warning("scheduler: tick failed", extra={"error": str(exc).splitlines()[0]})
                    await asyncio.sleep(poll_interval)  # the deadline stays due: retry, but not in a spin
                    continue
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
        """A hosted file, from a cache of the most recently served ones (bundles never change; a rollout asks
        for the same few files from every gateway), bounded by `FILE_CACHE_BYTES` so a store of many bundles
        does not end up in memory."""
        key = (bundle_id, name)
        data = self._files.get(key)
        if data is not None:
            self._files.move_to_end(key)
            return data
        data = self.store.read_file(bundle_id, name)
        if data is None:
            return None
        self._files[key] = data
        self._files_bytes += len(data)
        while self._files_bytes > FILE_CACHE_BYTES and len(self._files) > 1:
            _, evicted = self._files.popitem(last=False)
            self._files_bytes -= len(evicted)
        return data


def _add_bundle(model: FotaModel, bundle: Bundle) -> list[Effect]:
    model.add_bundle(bundle)
    return []
