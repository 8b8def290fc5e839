"""The whole update of one peripheral: preflight, bootloader entry, every image, resume, verification.

Phases (after Nordic's Android-DFU-Library): preflight → connect → enter bootloader → find bootloader →
transfer each image (reconnecting between images) → verify the new firmware runs → done.

Resume rules, written down:
* A link failure (drop, timeout, a checksum that kept failing) during an image costs one *resume*: back off
  (exponential, bounded), find the peripheral again in whatever mode it is now (still the bootloader, or the
  application after an inactivity reset), and start a **new engine**, which resumes from what `select`
  reports. After `max_resumes` failures in a row *without progress* the link error propagates; a link that
  found more of the image kept than any before (its `select` reported a whole data object more) restores the
  budget and the backoff. So a long image over a link that drops every few seconds still completes, while a
  link that cannot carry an object, or a bootloader that forgets progress on a disconnect (stock SDK 16/17,
  see `progress_survives_disconnect`), ends in a link error instead of reconnecting forever.
* A process restart needs no stored state: the bootloader keeps the executed init packet and (RAM or flash)
  data progress, and the new engine recomputes from `select`. The updater therefore accepts a peripheral
  that is already in bootloader mode.
* Nothing is asked that a stock BLE bootloader cannot answer: its reduced protocol (NRF_DFU_PROTOCOL_REDUCED,
  SDK 15.3+) answers the version, ping and hardware requests "opcode not supported", and even a full build
  sends no payload with them over BLE. What is installed shows where a stock board shows it: the package,
  the application's Device Information (read before entering the bootloader, logged and reported), and the
  bootloader's own validation. So a multi-image package that was interrupted after its SoftDevice/bootloader
  image landed finishes when run again: that image's init packet is refused with FW_VERSION_FAILURE (that
  version or a newer one is installed), which is logged and passed over, and the next image is sent on the
  same link; the bootloader's validation of that image decides. An application is never passed over: the
  update succeeds only once its last image is installed (or, when that is a SoftDevice/bootloader image,
  known installed).
* A rejection (`DfuRejected`: version, hardware, signature, hash) is final: abort is sent so the bootloader
  returns to the application at once, and the error propagates.
* Cancellation (`asyncio.CancelledError`) only disconnects: no abort, so the peripheral stays resumable.

No module-level state: any number of `Updater`s run concurrently in one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from bleak import BleakClient
from bleak.exc import BleakError

from dfu.buttonless import buttonless_characteristic, enter_bootloader, find_bootloader
from dfu.engine import ImageTransfer, PaceState, Progress
from dfu.errors import DfuError, DfuLinkError, DfuProtocolError, DfuRejected, DfuResponseError
from dfu.package import DfuPackage, ImageKind, PackageImage
from dfu.preflight import preflight
from dfu.protocol import ExtError, OpCode
from dfu.retry import RetryPolicy
from dfu.transport.backend import BleBackend
from dfu.transport.ble import (
    ConnectPolicy,
    DfuLink,
    Seen,
    connect,
    disconnect_quietly,
    find,
    has_control_point,
    open_peripheral,
)
from profiles.gatt import FIRMWARE_REVISION
from profiles.model import PeripheralProfile, bootloader_address

log = logging.getLogger(__name__)

_PASSABLE = frozenset({ImageKind.SOFTDEVICE, ImageKind.BOOTLOADER, ImageKind.SOFTDEVICE_BOOTLOADER})
"""Images a bootloader refuses with FW_VERSION_FAILURE when that version or a newer one is installed."""


class UpdateVerificationError(DfuError):
    """The transfer completed but the peripheral does not run the new firmware."""


class Phase(enum.StrEnum):
    PREFLIGHT = "preflight"
    CONNECTING = "connecting"
    ENTERING_BOOTLOADER = "entering-bootloader"
    FINDING_BOOTLOADER = "finding-bootloader"
    TRANSFERRING = "transferring"
    RECONNECTING = "reconnecting"
    VERIFYING = "verifying"
    DONE = "done"


@dataclass(frozen=True, slots=True)
class UpdateProgress:
    """One progress event. Byte counts are package firmware bytes the bootloader confirmed."""

    address: str
    phase: Phase
    image_index: int
    """1-based index of the current image in send order (0 before the first)"""
    image_count: int
    image_kind: ImageKind | None
    bytes_sent: int
    bytes_total: int
    image_bytes_sent: int
    image_bytes_total: int
    throughput_bps: float
    """packet bytes written in this run / seconds since the first transfer started"""
    resumes: int
    retries: int


ProgressListener = Callable[[UpdateProgress], None]


@dataclass(frozen=True, slots=True)
class ImageReport:
    kind: ImageKind
    bytes: int
    skipped: bool = False
    resumed_from: int = 0
    """bytes the bootloader already held when this run first reached the image"""
    seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class UpdateResult:
    address: str
    bootloader_address: str
    bytes: int
    """firmware bytes of the package"""
    bytes_sent: int
    """bytes this run wrote to the packet characteristic: init packets and firmware, re-sends included,
    what the bootloader already held (resumed) excluded"""
    seconds: float
    """loop time from the first connection to the verified new firmware"""
    resumes: int
    retries: int
    """failed connection attempts plus objects the engine had to re-send"""
    round_trips: int
    """control-point requests of the transfers (each costs at least one connection interval)"""
    images: tuple[ImageReport, ...]
    firmware_revision: str | None
    firmware_revision_before: str | None = None
    """the application's Device Information firmware revision read before entering DFU (None when the board
    was already in its bootloader or has no such characteristic): what a stock board tells of what it runs"""

    @property
    def throughput_bps(self) -> float:
        return self.bytes / self.seconds if self.seconds > 0 else 0.0


UPDATE_RETRY = RetryPolicy(0.25, 4.0)
_REPLACES_BOOTLOADER = frozenset({ImageKind.BOOTLOADER, ImageKind.SOFTDEVICE_BOOTLOADER})


@dataclass(frozen=True, slots=True)
class UpdateOptions:
    """Knobs of one update; defaults come from the profile where it has an opinion."""

    prn: int | None = None
    """packet receipt notification interval; None = the profile's"""
    max_resumes: int = 8
    """link failures in a row without progress (no link resumed a data object further), per image"""
    retry: RetryPolicy = UPDATE_RETRY
    """the waits before trying again: between connect attempts and after a link failure (no jitter)"""
    connect_attempts: int = 3
    bootloader_name: str | None = None
    """advertising name for an unbonded bootloader (`02 len name`), to find it among others by name"""
    verify: bool = True
    skip_installed: bool = True
    """pass over a SoftDevice/bootloader image the bootloader refuses as installed (FW_VERSION_FAILURE)"""
    preflight: bool = True
    """False only to rehearse what the bootloader itself answers (`nrf-dfu simulate`)"""
    acquire_write: bool = True
    """on BlueZ, send packets over an AcquireWrite socket rather than one D-Bus call each"""
    acquire_notify: bool = True
    """on BlueZ, take control point notifications over an AcquireNotify socket rather than one D-Bus signal
    each (StartNotify where BlueZ refuses it)"""


@dataclass(slots=True)
class _Run:
    """Mutable bookkeeping of one run (one per Updater.run call)."""

    started: float = 0.0
    transfer_started: float | None = None
    resumes: int = 0
    retries: int = 0
    round_trips: int = 0
    sent_over_air: int = 0
    done_bytes: int = 0
    reports: list[ImageReport] = field(default_factory=list)
    revision_before: str | None = None


class _ProgressTracker:
    """Turns the engine's per-image progress into update progress events."""

    def __init__(self, updater: Updater, image: PackageImage) -> None:
        self.updater = updater
        self.image = image
        self.last: Progress | None = None

    def __call__(self, progress: Progress) -> None:
        if progress == self.last:
            return  # an object's Execute confirms what its CRC already did: one event per object
        self.last = progress
        self.updater._image_sent = progress.sent
        self.updater._emit(Phase.TRANSFERRING, self.image)


class Updater:
    """Updates one peripheral, identified by `address` (or `name`, resolved by a scan) with `package`."""

    def __init__(
        self,
        backend: BleBackend,
        profile: PeripheralProfile,
        package: DfuPackage,
        *,
        address: str | None = None,
        name: str | None = None,
        options: UpdateOptions | None = None,
        on_progress: ProgressListener | None = None,
    ) -> None:
        if (address is None) == (name is None):
            raise ValueError("give exactly one of address and name")
        self.backend = backend
        self.profile = profile
        self.package = package
        self.address = address.upper() if address else None
        self.name = name
        self.options = options or UpdateOptions()
        self.on_progress = on_progress
        self._policy = ConnectPolicy(
            timeout_s=profile.timeouts.connect_s,
            retry=dataclasses.replace(self.options.retry, attempts=self.options.connect_attempts),
        )
        self._run = _Run()
        self._image_index = 0
        self._image_sent = 0
        self._pace: PaceState | None = None
        """what the last transfer learned about this board's flash: the next one starts from it"""

    # --- public -----------------------------------------------------------------------------------------

    async def run(self) -> UpdateResult:
        """Do the whole update; raises `PreflightError`, `DfuRejected`, `DfuLinkError`, ... on failure."""
        self._emit(Phase.PREFLIGHT)
        if self.options.preflight:
            preflight(self.package, self.profile)
        loop = asyncio.get_running_loop()
        self._run = _Run(started=loop.time())
        self._emit(Phase.CONNECTING)
        first_link = await self._reach_bootloader()
        assert self.address is not None
        boot_address = first_link.address
        link: DfuLink | None = first_link
        try:
            for index, image in enumerate(self.package.images, start=1):
                self._image_index, self._image_sent = index, 0
                link = await self._send_image(link, image)
                self._run.done_bytes += len(image.firmware)
                if self._run.reports[-1].skipped:
                    continue
                # The bootloader activates the image and resets: let the link drop, find it again later.
                await link.wait_disconnected(self.profile.timeouts.response_s)
                await link.close()
                link = None
            if link is not None:
                # Every image was already installed: abort makes the bootloader reset to the application.
                await self._abort(link)
                link = None
        finally:
            if link is not None:
                await link.close()
        revision = await self._verify() if self.options.verify else None
        seconds = loop.time() - self._run.started
        self._emit(Phase.DONE)
        result = UpdateResult(
            address=self.address,
            bootloader_address=boot_address,
            bytes=self.package.total_firmware_bytes,
            bytes_sent=self._run.sent_over_air,
            seconds=seconds,
            resumes=self._run.resumes,
            retries=self._run.retries,
            round_trips=self._run.round_trips,
            images=tuple(self._run.reports),
            firmware_revision=revision,
            firmware_revision_before=self._run.revision_before,
        )
        log.info(
            "update done address=%s bytes=%d seconds=%.3f resumes=%d retries=%d",
            self.address, result.bytes, seconds, result.resumes, result.retries,
        )  # fmt: skip
        return result

    # --- finding and connecting -------------------------------------------------------------------------

    async def _locate(self) -> Seen:
        """The peripheral in either mode: its application address, its bootloader's, or its name."""
        timeout = self.profile.timeouts.app_scan_s
        if self.address is None:
            name = self.name
            seen = await find(
                self.backend, lambda s: s.name == name, timeout_s=timeout, what=f"name {name!r}"
            )
            self.address = seen.address
            return seen
        wanted = {self.address, bootloader_address(self.address, self.profile.address_rule)}
        names = {self.options.bootloader_name} - {None}
        return await find(
            self.backend,
            lambda s: s.address in wanted or (s.name in names and s.advertises_dfu),
            timeout_s=timeout,
            what=f"peripheral {self.address}",
        )

    async def _reach_bootloader(self) -> DfuLink:
        """Whatever mode the device is in, end with an open DFU link to its bootloader.

        The GATT decides the mode (a control point means bootloader), not the address: a bonded bootloader
        shares its application's address.
        """
        seen = await self._locate()
        assert self.address is not None
        client, link, failures = await open_peripheral(
            self.backend,
            seen.device,
            policy=self._policy,
            response_timeout_s=self.profile.timeouts.response_s,
            acquire_write=self.options.acquire_write,
            acquire_notify=self.options.acquire_notify,
        )
        self._run.retries += failures
        if link is None and seen.address != self.address:
            # An application at our bootloader's address is another peripheral (adjacent addresses): never
            # switch a device we were not asked to update.
            await disconnect_quietly(client)
            raise DfuLinkError(
                f"{seen.address} runs an application: it is not the bootloader of {self.address}"
            )
        if link is None:
            if buttonless_characteristic(client) is None:
                await disconnect_quietly(client)
                raise DfuProtocolError(f"{seen.address}: neither a bootloader nor a buttonless application")
            try:
                revision = await _read_revision(client)
            except (BleakError, TimeoutError):
                revision = None  # best effort: it informs, it decides nothing
            if self._run.revision_before is None:
                self._run.revision_before = revision
            log.info(
                "application before update address=%s firmware_revision=%s",
                self.address, revision,
            )  # fmt: skip
            self._emit(Phase.ENTERING_BOOTLOADER)
            try:
                switched = await enter_bootloader(
                    client, adv_name=self.options.bootloader_name, timeout_s=self.profile.timeouts.response_s
                )
            finally:
                await disconnect_quietly(client)
            self._emit(Phase.FINDING_BOOTLOADER)
            seen = await find_bootloader(
                self.backend, self.address, self.profile, adv_name=switched.adv_name, bonded=switched.bonded
            )
            link, failures = await DfuLink.open(
                self.backend,
                seen.device,
                policy=self._policy,
                response_timeout_s=self.profile.timeouts.response_s,
                acquire_write=self.options.acquire_write,
                acquire_notify=self.options.acquire_notify,
            )
            self._run.retries += failures
        log.info("bootloader reached address=%s bootloader=%s", self.address, link.address)
        return link

    # --- images -----------------------------------------------------------------------------------------

    def _already_installed(self, image: PackageImage, exc: DfuRejected) -> bool:
        """A SoftDevice/bootloader image whose init packet the bootloader refused because that version or a
        newer one is installed (`fw_version_ok()`, nrf_dfu_ver_validation.c): nothing of it was written."""
        return (
            self.options.skip_installed
            and image.kind in _PASSABLE
            and exc.request is OpCode.EXECUTE
            and exc.ext_error is ExtError.FW_VERSION_FAILURE
            and self._image_sent == 0
        )

    def _new_transfer(self, link: DfuLink, image: PackageImage) -> ImageTransfer:
        prn = self.options.prn if self.options.prn is not None else self.profile.prn
        profile = self.profile
        sdk = profile.sdk
        return ImageTransfer(
            image.init_packet,
            image.firmware,
            packet_size=link.packet_size,
            prn=prn,
            flash=profile.flash,
            response_timeout=profile.timeouts.response_s,
            # A profile that names no SDK release cannot say how the bootloader was built: found out.
            saves_progress=profile.save_progress_in_flash if sdk is not None else None,
            settings_pages=(2 if sdk.settings_backup else 1) if sdk is not None else None,
            flash_duty=flash_duty(profile),
            # nRF52832 (no partial erase): the SoftDevice runs an erase whole, holding the link meanwhile
            erase_preempts=profile.chip is not None and not profile.chip.erases_in_slices,
            interval_s=profile.link.conn_interval_ms / 1000,
            pace=self._pace,
        )

    async def _send_image(self, link: DfuLink | None, image: PackageImage) -> DfuLink:
        """Send one image, resuming across link failures; returns the link the image completed on.

        `link` None means: find the bootloader first. Each link failure (during the transfer or while
        finding the device again) costs one of `max_resumes` attempts, after an exponential backoff; both
        start over when a link resumed a whole object further than any before.
        """
        loop = asyncio.get_running_loop()
        started = loop.time()
        if self._run.transfer_started is None:
            self._run.transfer_started = started
        first_resumed_from: int | None = None
        failures = 0
        kept = -1  # the most whole data objects a link found kept by the bootloader (its `select`)
        while True:
            tracker: _ProgressTracker | None = None
            try:
                if link is None:
                    self._emit(Phase.RECONNECTING, image)
                    link = await self._reach_bootloader()
                self._emit(Phase.TRANSFERRING, image)
                tracker = _ProgressTracker(self, image)
                writes_before, bytes_before = link.control_writes, link.packet_bytes
                transfer = self._new_transfer(link, image)
                try:
                    await link.run(transfer, tracker)
                finally:
                    self._pace = transfer.pace
                    self._run.round_trips += link.control_writes - writes_before
                    self._run.sent_over_air += link.packet_bytes - bytes_before
                    self._run.retries += transfer.stats.retries
                    if first_resumed_from is None and tracker.last is not None:
                        first_resumed_from = tracker.last.resumed_from
            except DfuRejected as exc:
                if link is not None and self._already_installed(image, exc):
                    self._run.reports.append(ImageReport(image.kind, len(image.firmware), skipped=True))
                    log.warning(
                        "image passed over address=%s kind=%s version=%s: refused with FW_VERSION_FAILURE "
                        "(that version or a newer one is installed); sending the next image",
                        self.address, image.kind.value, image.init.fw_version,
                    )  # fmt: skip
                    return link
                if link is not None:
                    await self._abort(link)
                raise
            except (DfuLinkError, DfuResponseError, BleakError) as exc:
                # A refusal that is not a rejection (e.g. an execute out of step) is re-synchronised the same
                # way as a drop: a new engine starts from what `select` reports.
                if link is not None:
                    await link.close()
                    link = None
                resumed = tracker.last.resumed_from if tracker is not None and tracker.last else None
                if resumed is not None and resumed // self.profile.data_object_size > kept:
                    kept, failures = resumed // self.profile.data_object_size, 0
                failures += 1
                self._run.resumes += 1
                if failures > self.options.max_resumes:
                    raise _as_link_error(exc, self.address) from exc
                delay = self.options.retry.delay(failures - 1)
                log.warning(
                    "link failure address=%s kind=%s sent=%d attempt=%d backoff=%.2f error=%s",
                    self.address, image.kind.value, self._image_sent, failures, delay, exc,
                )  # fmt: skip
                await asyncio.sleep(delay)
                continue
            self._image_sent = len(image.firmware)
            if image.kind in _REPLACES_BOOTLOADER and self._pace is not None:
                # the flash is the same chip, but whether the new build saves progress is its own business
                self._pace = dataclasses.replace(self._pace, saves_progress=None)
            self._run.reports.append(
                ImageReport(
                    image.kind,
                    len(image.firmware),
                    resumed_from=first_resumed_from or 0,
                    seconds=loop.time() - started,
                )
            )
            return link

    async def _abort(self, link: DfuLink) -> None:
        """Best effort: a rejected transfer is discarded and the device returns to its application."""
        with contextlib.suppress(DfuError, BleakError, TimeoutError):
            await link.send(OpCode.ABORT)
        await link.close()

    # --- verification -----------------------------------------------------------------------------------

    async def _verify(self) -> str | None:
        """The peripheral must come back as an application (not its bootloader) before we report success;
        with an application image, its Device Information firmware revision is read for the record."""
        self._emit(Phase.VERIFYING)
        assert self.address is not None
        address = self.address
        seen = await find(
            self.backend,
            lambda s: s.address == address,
            timeout_s=self.profile.timeouts.app_scan_s,
            what=f"{address} running its new application",
        )
        client, failures = await connect(self.backend, seen.device, policy=self._policy)
        self._run.retries += failures
        try:
            if has_control_point(client):
                raise UpdateVerificationError(f"{address}: still in bootloader mode after the update")
            try:
                revision = await _read_revision(client)
            except BleakError as exc:
                raise DfuLinkError(f"{address}: cannot read the firmware revision: {exc}") from exc
            if revision is None:
                return None
            app = self.package.image(ImageKind.APPLICATION)
            expected = app.init.fw_version if app is not None else None
            # Device Information carries free text; a decimal one is the application's fw_version.
            if expected is not None and revision.isdigit() and int(revision) != expected:
                raise UpdateVerificationError(
                    f"{address}: runs firmware revision {revision} after the update, expected {expected}"
                )
            log.info("verified address=%s firmware_revision=%s", address, revision)
            return revision
        finally:
            await disconnect_quietly(client)

    # --- progress ---------------------------------------------------------------------------------------

    def _emit(self, phase: Phase, image: PackageImage | None = None) -> None:
        if self.on_progress is None:
            return
        loop = asyncio.get_running_loop()
        elapsed = loop.time() - self._run.transfer_started if self._run.transfer_started is not None else 0.0
        size = len(image.firmware) if image is not None else 0
        self.on_progress(
            UpdateProgress(
                address=self.address or self.name or "?",
                phase=phase,
                image_index=self._image_index,
                image_count=len(self.package.images),
                image_kind=image.kind if image is not None else None,
                bytes_sent=self._run.done_bytes + (self._image_sent if image is not None else 0),
                bytes_total=self.package.total_firmware_bytes,
                image_bytes_sent=self._image_sent if image is not None else 0,
                image_bytes_total=size,
                throughput_bps=self._run.sent_over_air / elapsed if elapsed > 0 else 0.0,
                resumes=self._run.resumes,
                retries=self._run.retries,
            )
        )


def flash_duty(profile: PeripheralProfile) -> float:
    """The share of time a SoftDevice bootloader's flash gets beside the connection: its operations run only
    between connection events (SoftDevice Specification, "Flash API timing"), and the bootloader asks for
    the profile's interval and event length (15 ms and 7.5 ms in the SDK builds: half the time)."""
    link = profile.link
    return max(0.05, (link.conn_interval_ms - link.event_length_ms) / link.conn_interval_ms)


async def _read_revision(client: BleakClient) -> str | None:
    """The application's Device Information firmware revision (free text), or None when it has none."""
    if client.services.get_characteristic(FIRMWARE_REVISION) is None:
        return None
    raw = await client.read_gatt_char(FIRMWARE_REVISION)
    return bytes(raw).decode("utf-8", "replace").strip("\0 ")


def _as_link_error(exc: Exception, address: str | None) -> DfuError:
    """A bare bleak error as a link error that names the peripheral (DFU errors already do)."""
    if isinstance(exc, DfuError):
        return exc
    return DfuLinkError(f"{address}: {exc or type(exc).__name__}")


async def update(
    backend: BleBackend,
    profile: PeripheralProfile,
    package: DfuPackage,
    *,
    address: str | None = None,
    name: str | None = None,
    options: UpdateOptions | None = None,
    on_progress: ProgressListener | None = None,
) -> UpdateResult:
    """One whole update (see `Updater`)."""
    updater = Updater(
        backend, profile, package, address=address, name=name, options=options, on_progress=on_progress
    )
    return await updater.run()


__all__ = [
    "ImageReport",
    "Phase",
    "ProgressListener",
    "UpdateOptions",
    "UpdateProgress",
    "UpdateResult",
    "UpdateVerificationError",
    "Updater",
    "update",
]
