"""The daemon: wires the sans-I/O job core to its I/O (MQTT link, journal, downloads, DFU) on one event loop.

Data flows one way: cloud bytes → `Jobs` (decides) → effects. Each batch of effects is first made durable
(`Journal.commit`: execution rows + the status updates they imply, in one transaction), then acted on: outbox
woken, downloads and DFUs started as tasks whose results come back as new events. Every event is handled
synchronously on the loop, so the core never sees two events at once.

Every job's task runs under a supervisor: whatever it raises, the job ends with one terminal status and a
cause an operator can act on, its files are removed and its peripheral is free for the next job. A
maintenance task ends jobs past their deadline and prunes the journal; leftover downloads go at start.

Shutdown (SIGTERM): stop taking work, cancel downloads and DFUs (the updater disconnects without aborting, so
the peripheral stays resumable; the journal keeps the phase), flush the outbox while the broker is reachable,
then return.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import logging
import os
import shutil
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sdnotify

from dfu.errors import PackageError
from dfu.package import DfuPackage
from dfu.transport.backend import BleBackend
from gateway_agent.cloud.connection import CloudLink, LinkSettings
from gateway_agent.cloud.wire import (
    DesiredState,
    JobUpdate,
    LinkState,
    device_link_event,
    gateway_message,
    job_request,
)
from gateway_agent.config import AgentConfig
from gateway_agent.dfu_runner import DfuRunner, UpdaterRunner
from gateway_agent.download import (
    DOWNLOAD_RETRY,
    Downloaded,
    DownloadError,
    DownloadPolicy,
    download_job,
    job_directory,
    job_files,
)
from gateway_agent.jobs import (
    Abandon,
    DfuOutcome,
    Dropped,
    Effect,
    ExecKey,
    Execution,
    JobPolicy,
    Jobs,
    Report,
    RequestJobs,
    StartDfu,
    StartDownload,
    classify_dfu_error,
    snapshot,
)
from gateway_agent.journal import Journal, MessageKind, OutboxMessage
from gateway_agent.logs import kv
from gateway_agent.roster import Roster
from profiles.model import PeripheralProfile, load_profile

log = logging.getLogger("gateway_agent")

PRUNE_EVERY = 200
"""finished jobs between two journal prunes (besides the one at start and the hourly one)"""


@dataclass
class Stats:
    downloads: int = 0
    dfus: int = 0
    dfu_bytes: int = 0


def download_policy(cfg: AgentConfig) -> DownloadPolicy:
    d = cfg.download
    return DownloadPolicy(
        allowed_hosts=tuple(d.allowed_hosts),
        max_bytes=d.max_bytes,
        require_https=d.require_https,
        timeout_s=d.timeout_s,
        ca_file=d.ca_file,
        retry=dataclasses.replace(DOWNLOAD_RETRY, attempts=d.attempts),
    )


def link_settings(cfg: AgentConfig) -> LinkSettings:
    b = cfg.broker
    return LinkSettings(
        gateway_id=cfg.gateway.id,
        host=b.host,
        port=b.port,
        ca_file=str(b.ca_file),
        cert_file=str(b.cert_file),
        key_file=str(b.key_file),
        topic_prefix=cfg.cloud.topic_prefix,
        shadow_convention=cfg.cloud.shadow_topics,
        keepalive_s=b.keepalive_s,
        connect_timeout_s=b.connect_timeout_s,
        reconnect_min_s=b.reconnect_min_s,
        reconnect_max_s=b.reconnect_max_s,
        gateway_messages=cfg.cloud.gateway_messages,
    )


def load_package(files: list[Downloaded]) -> DfuPackage:
    """The downloaded files as a DFU package: an init packet and an image in either order, or a zip; the
    bytes decide which is which (`DfuPackage.from_files`). Raises PackageError."""
    blobs: list[tuple[str, bytes]] = []
    for f in files:
        try:
            blobs.append((f.remote_name, f.path.read_bytes()))
        except OSError as exc:
            raise PackageError(f"{f.remote_name}: cannot read the downloaded file: {exc.strerror}") from exc
    return DfuPackage.from_files(blobs)


class Notifier:
    """systemd notifications (READY, WATCHDOG, STOPPING) when NOTIFY_SOCKET is set; silent otherwise."""

    def __init__(self) -> None:
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        self._n = sdnotify.SystemdNotifier() if self.enabled else None
        usec = os.environ.get("WATCHDOG_USEC")
        self.watchdog_s = int(usec) / 1e6 if usec and usec.isdigit() else None

    def notify(self, state: str) -> None:
        if self._n is not None:
            self._n.notify(state)


class Agent:
    def __init__(
        self,
        cfg: AgentConfig,
        *,
        backend: BleBackend | None = None,
        runner: DfuRunner | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.cfg = cfg
        self.state_dir = cfg.state.dir
        self.journal = Journal(self.state_dir / "journal.sqlite3")
        self.download_policy = download_policy(cfg)
        self._backend = backend
        self._runner = runner
        self.notifier = notifier or Notifier()
        self.roster = Roster({p.address: p.profile for p in cfg.peripherals}, cfg.dfu.default_profile)
        self._profile_cache: dict[str, PeripheralProfile] = {}
        policy = JobPolicy(
            firmware_types={k: frozenset(v) for k, v in cfg.dfu.firmware_types.items()},
            concurrency=cfg.dfu.concurrency,
            progress_step_percent=cfg.dfu.progress_step_percent,
            progress_interval_s=cfg.dfu.progress_interval_s,
            admit=self.download_policy.admit,
            queue_per_peripheral=cfg.dfu.queue_per_peripheral,
            queue_total=cfg.dfu.queue_total,
            deadline_s=cfg.dfu.job_deadline_s,
        )
        self.jobs = Jobs(policy, self.roster.served)
        self.link = CloudLink(
            link_settings(cfg),
            self.journal,
            on_job=self._on_job,
            on_shadow=self._on_shadow,
            on_connected=self._on_connected,
            peripherals=self.roster.report,
        )
        self._tasks: dict[ExecKey, asyncio.Task[None]] = {}
        self._finished_since_prune = 0
        self.stats = Stats()
        self.outbox_left: int | None = None
        """statuses not yet acknowledged by the broker at shutdown (they are sent after the next start)"""

    # ---- wiring -------------------------------------------------------------------------------------------
    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def _set_link(self, address: str, state: LinkState) -> None:
        before = self.roster.link(address)
        if not self.roster.set_link(address, state):
            return
        self.link.report_links({address: state})
        if LinkState.CONNECTED in (before, state):  # a link came up or went down: tell it as Nordic's do
            event = device_link_event(address, state is LinkState.CONNECTED, _utc_now())
            self.link.send_gateway_message(gateway_message(self.cfg.gateway.id, event))

    def _apply(self, effects: list[Effect]) -> None:
        """Persist the core's changes and the statuses they imply atomically, then act on the effects."""
        messages: list[OutboxMessage] = []
        for e in effects:
            if isinstance(e, Report):
                messages.append(_update_message(e.update))
            elif isinstance(e, RequestJobs):
                messages.append(
                    OutboxMessage(MessageKind.REQUEST, e.peripheral_id, "", job_request(e.peripheral_id))
                )
        self.journal.commit(self.jobs.take_dirty(), messages, wall=time.time())
        if messages:
            self.link.wake()
        for e in effects:
            if isinstance(e, Abandon):
                task = self._tasks.get(e.key)
                if task is not None:
                    task.cancel()
            elif isinstance(e, Report):
                u = e.update
                if u.status.terminal:  # the job is over: its files go, whatever the outcome
                    _remove_tree(job_directory(self.state_dir, u.peripheral_id, u.job_id))
                    self._finished_since_prune += 1
                    if self._finished_since_prune >= PRUNE_EVERY:
                        self._prune()
                level = logging.INFO if u.status.terminal or u.progress in (None, 0) else logging.DEBUG
                log.log(
                    level,
                    "job_status",
                    extra=kv(
                        job=u.job_id,
                        peripheral=u.peripheral_id,
                        status=u.status.name,
                        progress=u.progress,
                        details=u.details or None,
                    ),
                )
            elif isinstance(e, Dropped):
                log.warning(
                    "job_dropped",
                    extra=kv(job=e.job_id or None, peripheral=e.peripheral_id or None, reason=e.reason),
                )
            elif isinstance(e, StartDownload):
                self._spawn(e.execution, self._download(snapshot(e.execution)))
            elif isinstance(e, StartDfu):
                self._spawn(e.execution, self._dfu(snapshot(e.execution)))

    def _spawn(self, exe: Execution, coro: Coroutine[Any, Any, None]) -> None:
        key = exe.key
        # an abandoned task of the same peripheral may still be unwinding its link: let it finish first
        before = [t for k, t in self._tasks.items() if k[0] == key[0] and k != key and not t.done()]
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(
            self._supervised(key, coro, before), name=f"job:{key}"
        )
        self._tasks[key] = task

        def forget(done: asyncio.Task[None]) -> None:
            if self._tasks.get(key) is done:
                del self._tasks[key]

        task.add_done_callback(forget)

    async def _supervised(
        self, key: ExecKey, coro: Coroutine[Any, Any, None], before: list[asyncio.Task[None]]
    ) -> None:
        """Run a job's task so that nothing it raises leaves the job without an outcome."""
        try:
            if before:
                await asyncio.gather(*before, return_exceptions=True)
            await coro
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug, or input nobody foresaw: this job ends, the agent goes on
            cause = f"{type(exc).__name__}: {exc}"
            log.exception("job_task_crashed", extra=kv(job=key[1], peripheral=key[0], error=cause))
            self._feed(lambda now: self.jobs.on_task_crashed(key, cause, now))
        finally:
            coro.close()  # never awaited when an abandoned predecessor was cancelled first

    def _feed(self, event: Callable[[float], list[Effect]]) -> None:
        self._apply(event(self._now()))

    def _on_job(self, payload: bytes) -> None:
        try:
            self._feed(lambda now: self.jobs.on_message(payload, now))
        except Exception:  # whatever a payload does, the agent keeps serving the others
            log.exception("job_handling_failed", extra=kv(payload=payload[:200].decode("utf-8", "replace")))

    def _on_connected(self) -> None:
        self._apply(self.jobs.on_connected())

    def _on_shadow(self, view: DesiredState) -> None:
        """desiredConnections names the peripherals to serve (with `dfu.default_profile` unless pinned)."""
        if view.desired_connections is None:
            return
        change = self.roster.set_desired(view.desired_connections)
        if not change:
            return
        log.info(
            "peripherals_changed",
            extra=kv(
                added=",".join(change.added) or None,
                removed=",".join(change.removed) or None,
                served=len(self.roster.served),
            ),
        )
        self._apply(self.jobs.set_peripherals(self.roster.served))
        self.link.report_links(
            {**{a: None for a in change.removed}, **{a: self.roster.link(a) for a in change.added}}
        )

    def profile_for(self, address: str) -> PeripheralProfile:
        name = self.roster.profile_name(address)
        if name not in self._profile_cache:
            self._profile_cache[name] = load_profile(name)
        return self._profile_cache[name]

    # ---- work ---------------------------------------------------------------------------------------------
    async def _download(self, exe: Execution) -> None:
        key, offer = exe.key, exe.offer
        directory = job_directory(self.state_dir, *key)
        fields = {"job": offer.job_id, "peripheral": offer.peripheral_id}
        log.info("download_started", extra=kv(**fields, host=offer.file_host, bytes=offer.file_size))
        try:
            files = await download_job(
                offer,
                directory,
                self.download_policy,
                lambda received: self._feed(lambda now: self.jobs.on_download_progress(key, received, now)),
            )
        except asyncio.CancelledError:
            self._apply(self.jobs.on_download_interrupted(key))
            log.info("download_interrupted", extra=kv(**fields))
            raise
        except DownloadError as exc:
            cause = str(exc)
            log.warning("download_failed", extra=kv(**fields, error=cause))
            self._feed(lambda now: self.jobs.on_download_failed(key, cause, now))
            return
        except Exception as exc:  # any other failure of this job must not take the agent down
            cause = f"{type(exc).__name__}: {exc}"
            log.exception("download_failed", extra=kv(**fields))
            self._feed(lambda now: self.jobs.on_download_failed(key, cause, now))
            return
        self.stats.downloads += 1
        try:
            package = load_package(files)
        except PackageError as exc:  # every malformed input is a PackageError (dfu/package.py)
            cause = f"PackageError: {exc}"
            log.warning("package_invalid", extra=kv(**fields, error=str(exc)))
            self._feed(lambda now: self.jobs.on_download_failed(key, cause, now, package=True))
            return
        kinds = [image.kind.value for image in package.images]
        log.info("download_done", extra=kv(**fields, images=",".join(kinds)))
        self._feed(lambda now: self.jobs.on_downloaded(key, kinds, now))

    async def _dfu(self, exe: Execution) -> None:
        key, offer = exe.key, exe.offer
        fields = {"job": offer.job_id, "peripheral": offer.peripheral_id}
        outcome, text = DfuOutcome.SUCCEEDED, ""
        try:
            package = load_package(job_files(offer, job_directory(self.state_dir, *key)))
            profile = self.profile_for(offer.peripheral_id)
            log.info(
                "dfu_started", extra=kv(**fields, profile=profile.name, bytes=package.total_firmware_bytes)
            )

            def progress(sent: int, total: int) -> None:
                self._feed(lambda now: self.jobs.on_dfu_progress(key, sent, total, now))

            def link(state: LinkState) -> None:
                self._set_link(offer.peripheral_id, state)

            try:
                result = await self.runner().run(offer.peripheral_id, profile, package, progress, link)
            finally:
                self._set_link(offer.peripheral_id, LinkState.DISCONNECTED)
            self.stats.dfus += 1
            self.stats.dfu_bytes += package.total_firmware_bytes
            log.info(
                "dfu_succeeded",
                extra=kv(
                    **fields,
                    seconds=f"{result.seconds:.1f}" if result else None,
                    resumes=result.resumes if result else None,
                    resumed_from=sum(i.resumed_from for i in result.images) if result else None,
                    firmware_revision=result.firmware_revision if result else None,
                ),
            )
        except asyncio.CancelledError:
            log.info("dfu_interrupted", extra=kv(**fields, note="peripheral left resumable"))
            self._feed(lambda now: self.jobs.on_dfu_finished(key, DfuOutcome.INTERRUPTED, "", now))
            raise
        except Exception as exc:  # typed DFU errors and anything unexpected end this job, not the agent
            outcome, text = classify_dfu_error(exc)
            log.warning(
                "dfu_failed", extra=kv(**fields, outcome=outcome.value, error=f"{type(exc).__name__}: {exc}")
            )
        self._feed(lambda now: self.jobs.on_dfu_finished(key, outcome, text, now))

    def runner(self) -> DfuRunner:
        if self._runner is None:
            from dfu.updater import UpdateOptions

            dfu = self.cfg.dfu
            options = UpdateOptions(acquire_write=dfu.acquire_write, acquire_notify=dfu.acquire_notify)
            self._runner = UpdaterRunner(self.backend(), options)
        return self._runner

    def backend(self) -> BleBackend:
        if self._backend is None:
            self._backend = make_backend(self.cfg)
        return self._backend

    # ---- lifecycle ----------------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        self._prune()
        active, terminal = self.journal.load()
        self.jobs.restore(active, terminal)
        if active:
            log.info("journal_restored", extra=kv(unfinished=len(active), finished=len(terminal)))
        self._remove_leftover_downloads({exe.key for exe in active})
        link_task = asyncio.get_running_loop().create_task(self.link.run(), name="cloud-link")
        watchdog = asyncio.get_running_loop().create_task(self._watchdog(), name="watchdog")
        maintenance = asyncio.get_running_loop().create_task(self._maintenance(), name="maintenance")
        self._apply(self.jobs.resume(self._now()))
        self.notifier.notify("READY=1")
        log.info("agent_ready", extra=kv(gateway=self.cfg.gateway.id, peripherals=len(self.jobs.peripherals)))
        try:
            await stop.wait()
        finally:
            maintenance.cancel()
            await self._shutdown(link_task)
            watchdog.cancel()

    def _prune(self) -> None:
        """Forget finished jobs past retention (journal and memory); the cloud will not redeliver them."""
        state = self.cfg.state
        self._finished_since_prune = 0
        forgotten = self.journal.prune(
            older_than=time.time() - state.retention_days * 86400, keep=state.retention_max
        )
        if forgotten:
            self.jobs.forget(forgotten)
            log.info("journal_pruned", extra=kv(forgotten=len(forgotten)))

    def _remove_leftover_downloads(self, keep: set[ExecKey]) -> None:
        """Files of jobs that are over (or that a crash left behind) go; unfinished jobs keep theirs."""
        root = self.state_dir / "downloads"
        if not root.is_dir():
            return
        wanted = {job_directory(self.state_dir, *key).name for key in keep}
        for entry in root.iterdir():
            if entry.name not in wanted:
                _remove_tree(entry)
                log.info("download_leftover_removed", extra=kv(directory=entry.name))

    async def _maintenance(self) -> None:
        """Deadlines (often enough to end a job within 5 % of its deadline) and journal retention."""
        interval = min(60.0, self.cfg.dfu.job_deadline_s / 20)
        since_prune = 0.0
        while True:
            await asyncio.sleep(interval)
            self._feed(self.jobs.on_tick)
            since_prune += interval
            if since_prune >= 3600:
                since_prune = 0.0
                self._prune()

    async def _shutdown(self, link_task: asyncio.Task[None], flush_timeout_s: float = 10.0) -> None:
        self.notifier.notify("STOPPING=1")
        log.info("agent_stopping", extra=kv(running=len(self._tasks)))
        self.jobs.stop()
        tasks = list(self._tasks.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        flushed = False
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(flush_timeout_s):
                flushed = await self.link.flush()
        link_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await link_task
        self.outbox_left = self.journal.outbox_len()
        log.info("agent_stopped", extra=kv(outbox_flushed=flushed, outbox_left=self.outbox_left))
        self.journal.close()

    async def _watchdog(self) -> None:
        if self.notifier.watchdog_s is None:
            return
        while True:
            self.notifier.notify("WATCHDOG=1")
            await asyncio.sleep(self.notifier.watchdog_s / 2)


def _utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _update_message(u: JobUpdate) -> OutboxMessage:
    return OutboxMessage(MessageKind.UPDATE, u.peripheral_id, u.job_id, u.encode())


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def make_backend(cfg: AgentConfig) -> BleBackend:
    """The bleak backend the configuration names: BlueZ (the field), or one a plugin registers (the bench
    kit's simulated radio: `[ble] backend = "simulator"`), found by entry point, never imported here."""
    if cfg.ble.backend == "bluez":
        kwargs = {"adapter": cfg.ble.adapter} if cfg.ble.adapter else {}
        return BleBackend("bluez", client_kwargs=kwargs)
    from dfu import plugins

    plugin = plugins.load(plugins.BACKENDS, cfg.ble.backend, what="the bleak backend")
    backend = plugin.make(cfg.ble.options)
    assert isinstance(backend, BleBackend)
    return backend
