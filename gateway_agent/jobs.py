"""Execution state of BLE FOTA jobs: which status to report when. Sans-I/O, idempotent, deduplicated.

Theory of operation
-------------------
The I/O shell feeds events (`on_message`, `on_download_progress`, `on_downloaded`, `on_dfu_progress`,
`on_dfu_finished`, ...) each with an explicit `now`. The core answers a list of effects:

- `Report(update)`      — a `jobs/ble/update` tuple for the persistent outbox (the ONE status channel);
- `StartDownload(exe)`  — fetch the job's files;       - `StartDfu(exe)` — update the peripheral;
- `RequestJobs(addr)`   — publish `jobs/ble/req` for a peripheral;
- `Dropped(reason)`     — nothing to answer (unreadable payload, duplicate delivery): log it.

After each call the shell persists `take_dirty()` together with the reports in one journal transaction, so the
state and the statuses it implies are never out of step after a crash.

Status per execution: DOWNLOADING 0..100 % (rate-limited) → IN_PROGRESS (transfer %, rate-limited) →
SUCCEEDED / FAILED / REJECTED exactly once. A job id that reached a terminal status for a peripheral is
ignored if delivered again; an unfinished one delivered again is a duplicate (ignored); a different job for a
busy peripheral waits its turn (scheduler.py).

What the cloud depends on, as Nordic's own gateways behave (docs/nrf-cloud.md):
- a job for a peripheral this gateway does not serve is ignored, with no status: REJECTED is terminal in the
  cloud and never retried, and the peripheral may be served later (lte-gateway `peripheral_dfu.c` logs
  "Device not connected; ignoring job"; gateway-common drops it silently). When the peripheral is added, the
  gateway asks for its job (`jobs/ble/req`) and the cloud sends it again;
- a malformed tuple with a readable JOB_ID and a FIRMWARE_TYPE the gateway cannot update are REJECTED
  (sdk-nrf `nrf_cloud_fota.c`: "Job info is invalid", "FOTA type not supported");
- files that do not hold what FIRMWARE_TYPE says are FAILED with "FW file does not match specified FOTA
  type" (sdk-nrf reports that case FAILED, not REJECTED).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace

from dfu.errors import DfuRejected, PackageError, PreflightError
from gateway_agent.cloud.wire import (
    BleJob,
    Details,
    ExecutionStatus,
    FirmwareType,
    InvalidJob,
    JobUpdate,
    UnreadableJob,
    details,
    parse_ble_job,
)
from gateway_agent.lifecycle import Phase, PhaseEvent, advance
from gateway_agent.scheduler import Slot, plan

ExecKey = tuple[str, str]
"""(PERIPHERAL_ID, JOB_ID)"""


@dataclass(slots=True)
class Execution:
    """One job for one peripheral, as the journal stores it."""

    offer: BleJob
    seq: int
    phase: Phase = Phase.QUEUED
    status: ExecutionStatus | None = None
    """last status reported (None: nothing reported yet)"""
    last_percent: int = -1
    last_report_at: float = float("-inf")
    details: str = ""
    started_at: float | None = None
    """loop time this run started working on it (the deadline counts from here)"""

    @property
    def key(self) -> ExecKey:
        return (self.offer.peripheral_id, self.offer.job_id)

    def advance(self, event: PhaseEvent) -> None:
        """Every phase change goes through the life-cycle table (lifecycle.py)."""
        self.phase = advance(self.phase, event)


@dataclass(frozen=True, slots=True)
class Report:
    update: JobUpdate


@dataclass(frozen=True, slots=True)
class StartDownload:
    execution: Execution


@dataclass(frozen=True, slots=True)
class StartDfu:
    execution: Execution


@dataclass(frozen=True, slots=True)
class RequestJobs:
    peripheral_id: str


@dataclass(frozen=True, slots=True)
class Dropped:
    reason: str
    peripheral_id: str = ""
    job_id: str = ""


@dataclass(frozen=True, slots=True)
class Abandon:
    """Stop the execution's running task (its deadline passed); its outcome was already decided."""

    key: ExecKey


Effect = Report | StartDownload | StartDfu | RequestJobs | Dropped | Abandon


class DfuOutcome(enum.Enum):
    SUCCEEDED = "succeeded"
    REJECTED = "rejected"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    """cancelled by shutdown: the peripheral is left resumable; resume on the next start"""


def classify_dfu_error(exc: BaseException) -> tuple[DfuOutcome, str]:
    """The peripheral's refusals are REJECTED (final), the rest FAILED with the typed error as the cause (any
    package problem named `PackageError`, as the download path names it)."""
    if isinstance(exc, DfuRejected | PreflightError):
        return DfuOutcome.REJECTED, f"{type(exc).__name__}: {exc}"
    name = "PackageError" if isinstance(exc, PackageError) else type(exc).__name__
    return DfuOutcome.FAILED, details(Details.APPLY_ERROR, f"{name}: {exc}")


@dataclass
class JobPolicy:
    """Configuration the core decides with (from config.py; kept free of pydantic inside)."""

    firmware_types: Mapping[int, frozenset[str]]
    concurrency: int = 2
    progress_step_percent: int = 5
    progress_interval_s: float = 2.0
    admit: Callable[[BleJob], str | None] = field(default=lambda offer: None)
    """why an offer cannot be downloaded (host not allowed, too large), or None"""
    queue_per_peripheral: int = 4
    """unfinished executions kept per peripheral (the running one included); more are not accepted yet"""
    queue_total: int = 256
    """unfinished executions kept in all"""
    deadline_s: float = 3600.0
    """an execution still unfinished this long after this run started it ends FAILED"""


class Jobs:
    """All executions of this gateway. Not thread-safe: one event loop feeds it."""

    def __init__(self, policy: JobPolicy, peripherals: Iterable[str] = ()) -> None:
        self.policy = policy
        self._active: dict[ExecKey, Execution] = {}
        self._terminal: set[ExecKey] = set()
        self._peripherals: set[str] = set(peripherals)
        self._seq = 0
        self._dirty: dict[ExecKey, Execution] = {}
        self._deferred: set[str] = set()
        """peripherals whose job was not accepted for want of room: asked again once there is room"""
        self.accepting = True

    # ---- state --------------------------------------------------------------------------------------------
    def restore(self, executions: Iterable[Execution], terminal: Iterable[ExecKey]) -> None:
        """Load the journal after a (re)start. Interrupted transfers go back to waiting for a radio slot;
        interrupted downloads restart their download (which resumes from the partial files)."""
        self._terminal |= set(terminal)
        for exe in executions:
            if exe.phase is Phase.DONE:
                self._terminal.add(exe.key)
                continue
            exe.advance(PhaseEvent.RESTART)
            self._active[exe.key] = exe
            self._seq = max(self._seq, exe.seq)

    def forget(self, keys: Iterable[ExecKey]) -> None:
        """Terminal executions the journal pruned: a redelivery of them is no longer recognised."""
        self._terminal.difference_update(keys)

    @property
    def active(self) -> list[Execution]:
        return sorted(self._active.values(), key=lambda e: e.seq)

    def is_terminal(self, key: ExecKey) -> bool:
        return key in self._terminal

    def take_dirty(self) -> list[Execution]:
        dirty = list(self._dirty.values())
        self._dirty.clear()
        return dirty

    @property
    def peripherals(self) -> frozenset[str]:
        return frozenset(self._peripherals)

    def set_peripherals(self, peripherals: Iterable[str]) -> list[Effect]:
        """The peripherals this gateway serves changed; ask for jobs of the new ones."""
        new = set(peripherals)
        added = sorted(new - self._peripherals)
        self._peripherals = new
        return [RequestJobs(p) for p in added]

    def on_connected(self) -> list[Effect]:
        """After each (re)connection to the broker: ask for every peripheral's pending job."""
        return [RequestJobs(p) for p in sorted(self._peripherals)]

    def stop(self) -> None:
        """Stop taking work (shutdown): nothing new starts; running work finishes or is interrupted."""
        self.accepting = False

    # ---- cloud --------------------------------------------------------------------------------------------
    def on_message(self, payload: bytes, now: float) -> list[Effect]:
        parsed = parse_ble_job(payload)
        if isinstance(parsed, UnreadableJob):
            return [Dropped(f"unreadable job: {parsed.reason}")]
        if isinstance(parsed, InvalidJob):
            key = (parsed.peripheral_id, parsed.job_id)
            if key in self._terminal or key in self._active:
                return [Dropped(f"invalid redelivery of a known job: {parsed.reason}", *key)]
            return self._finish_new(key, ExecutionStatus.REJECTED, details(Details.INVALID, parsed.reason))
        return self.on_offer(parsed, now)

    def on_offer(self, offer: BleJob, now: float) -> list[Effect]:
        key = (offer.peripheral_id, offer.job_id)
        if key in self._terminal:
            return [Dropped("job already finished for this peripheral", *key)]
        if key in self._active:
            return [Dropped("job already in progress (duplicate delivery)", *key)]
        if not self.accepting:
            return [Dropped("shutting down: not taking new jobs", *key)]
        if offer.peripheral_id not in self._peripherals:
            return [Dropped("peripheral not served by this gateway: job ignored, no status sent", *key)]
        waiting = sum(1 for k in self._active if k[0] == offer.peripheral_id)
        if waiting >= self.policy.queue_per_peripheral or len(self._active) >= self.policy.queue_total:
            # No status: the job stays pending in the cloud, which sends a peripheral's oldest pending job
            # when asked; the gateway asks again once there is room (after each DFU, and when it frees up).
            self._deferred.add(offer.peripheral_id)
            why = "peripheral" if waiting >= self.policy.queue_per_peripheral else "gateway"
            return [Dropped(f"{why} queue full: not accepted now, asked for again when there is room", *key)]
        if offer.firmware_type not in self.policy.firmware_types:
            name = FirmwareType(offer.firmware_type).name
            return self._finish_new(
                key,
                ExecutionStatus.REJECTED,
                details(Details.TYPE_UNSUPPORTED, f"FIRMWARE_TYPE {offer.firmware_type} ({name})"),
            )
        refusal = self.policy.admit(offer)
        if refusal is not None:
            return self._finish_new(key, ExecutionStatus.FAILED, details(Details.DOWNLOAD_ERROR, refusal))
        self._seq += 1
        exe = Execution(offer, self._seq)
        self._active[key] = exe
        self._dirty[key] = exe
        return self._schedule(now)

    def _finish_new(self, key: ExecKey, status: ExecutionStatus, text: str) -> list[Effect]:
        """Answer a job that never starts. The terminal key is remembered so a redelivery is ignored."""
        self._terminal.add(key)
        self._seq += 1
        offer = BleJob(key[0], key[1], -1, 1, "-", "-")
        exe = Execution(offer, self._seq, Phase.DONE, status, details=text)
        self._dirty[key] = exe
        return [Report(JobUpdate(key[0], key[1], status, details=text))]

    # ---- download -----------------------------------------------------------------------------------------
    def on_download_progress(self, key: ExecKey, received: int, now: float) -> list[Effect]:
        exe = self._active.get(key)
        if exe is None or exe.phase is not Phase.DOWNLOADING:
            return []
        percent = max(0, min(100, received * 100 // max(1, exe.offer.file_size)))
        return self._progress(exe, ExecutionStatus.DOWNLOADING, percent, now)

    def on_downloaded(self, key: ExecKey, image_kinds: Iterable[str], now: float) -> list[Effect]:
        """Files on disk and parsed; `image_kinds` are the package's images (from their init packets)."""
        exe = self._active.get(key)
        if exe is None or exe.phase is not Phase.DOWNLOADING:
            return []
        kinds = set(image_kinds)
        exe.advance(PhaseEvent.DOWNLOADED)
        allowed = self.policy.firmware_types.get(exe.offer.firmware_type, frozenset())
        if not kinds or not kinds <= allowed:
            found = ", ".join(sorted(kinds)) or "nothing"
            return self._finish(
                exe, ExecutionStatus.FAILED, details(Details.TYPE_MISMATCH, f"package holds {found}"), now
            )
        effects: list[Effect] = []
        if exe.last_percent < 100:
            effects += self._progress(exe, ExecutionStatus.DOWNLOADING, 100, now, force=True)
        self._dirty[key] = exe
        return effects + self._schedule(now)

    def on_download_failed(
        self, key: ExecKey, cause: str, now: float, *, package: bool = False
    ) -> list[Effect]:
        exe = self._active.get(key)
        if exe is None:
            return []
        base = Details.APPLY_ERROR if package else Details.DOWNLOAD_ERROR
        return self._finish(exe, ExecutionStatus.FAILED, details(base, cause), now)

    def on_task_crashed(self, key: ExecKey, cause: str, now: float) -> list[Effect]:
        """The execution's task raised something nobody foresaw: the job still ends, once, with a cause an
        operator can act on, and the peripheral is free for its next job."""
        exe = self._active.get(key)
        if exe is None:
            return []
        return self._fail(exe, f"internal error: {cause}", now)

    def on_tick(self, now: float) -> list[Effect]:
        """Deadlines: an execution this run has worked on for longer than `deadline_s` ends FAILED and its
        task is abandoned (a DFU is left resumable: the next job for the peripheral resumes it)."""
        effects: list[Effect] = []
        for exe in list(self._active.values()):
            if exe.started_at is None or now - exe.started_at < self.policy.deadline_s:
                continue
            cause = f"not finished within {self.policy.deadline_s:.0f} s (dfu.job_deadline_s)"
            effects.append(Abandon(exe.key))
            effects += self._fail(exe, cause, now)
        return effects

    def on_download_interrupted(self, key: ExecKey) -> list[Effect]:
        """Shutdown during a download: resume (with Range) on the next start."""
        exe = self._active.get(key)
        if exe is not None and exe.phase is Phase.DOWNLOADING:
            self._dirty[key] = exe  # phase stays DOWNLOADING in the journal; restore() restarts it
        return []

    # ---- DFU ----------------------------------------------------------------------------------------------
    def on_dfu_progress(self, key: ExecKey, sent: int, total: int, now: float) -> list[Effect]:
        exe = self._active.get(key)
        if exe is None or exe.phase is not Phase.APPLYING:
            return []
        percent = max(0, min(100, sent * 100 // max(1, total)))
        return self._progress(exe, ExecutionStatus.IN_PROGRESS, percent, now)

    def on_dfu_finished(self, key: ExecKey, outcome: DfuOutcome, text: str, now: float) -> list[Effect]:
        exe = self._active.get(key)
        if exe is None or exe.phase is not Phase.APPLYING:
            return []
        if outcome is DfuOutcome.INTERRUPTED:
            self._dirty[key] = exe  # stays APPLYING in the journal: resumed on the next start
            return []
        status = {
            DfuOutcome.SUCCEEDED: ExecutionStatus.SUCCEEDED,
            DfuOutcome.REJECTED: ExecutionStatus.REJECTED,
            DfuOutcome.FAILED: ExecutionStatus.FAILED,
        }[outcome]
        return [*self._finish(exe, status, text, now), RequestJobs(exe.offer.peripheral_id)]

    # ---- internals ----------------------------------------------------------------------------------------
    def _progress(
        self, exe: Execution, status: ExecutionStatus, percent: int, now: float, *, force: bool = False
    ) -> list[Effect]:
        """At most one update per `progress_step_percent` or per `progress_interval_s`."""
        if exe.status is status and not force:
            if percent <= exe.last_percent:
                return []
            step = percent - exe.last_percent >= self.policy.progress_step_percent
            waited = now - exe.last_report_at >= self.policy.progress_interval_s
            if not (step or waited or percent == 100):
                return []
        return [self._report(exe, status, percent, now)]

    def _report(self, exe: Execution, status: ExecutionStatus, percent: int, now: float) -> Report:
        exe.status = status
        exe.last_percent = percent
        exe.last_report_at = now
        self._dirty[exe.key] = exe
        peripheral, job = exe.key
        if status is ExecutionStatus.DOWNLOADING:
            return Report(JobUpdate(peripheral, job, status, progress=percent))
        text = "" if percent <= 0 else f"transfer {percent}%"
        return Report(JobUpdate(peripheral, job, status, details=text))

    def _fail(self, exe: Execution, cause: str, now: float) -> list[Effect]:
        """FAILED with the standard details of the phase it failed in (download, else apply)."""
        base = Details.DOWNLOAD_ERROR if exe.phase is Phase.DOWNLOADING else Details.APPLY_ERROR
        return self._finish(exe, ExecutionStatus.FAILED, details(base, cause), now)

    def _finish(self, exe: Execution, status: ExecutionStatus, text: str, now: float) -> list[Effect]:
        assert status.terminal
        exe.advance(PhaseEvent.FINISH)
        exe.status = status
        exe.details = text
        exe.last_report_at = now
        del self._active[exe.key]
        self._terminal.add(exe.key)
        self._dirty[exe.key] = exe
        effects: list[Effect] = [Report(JobUpdate(exe.key[0], exe.key[1], status, details=text))]
        if self._deferred and len(self._active) < self.policy.queue_total:
            effects += [RequestJobs(p) for p in sorted(self._deferred) if p in self._peripherals]
            self._deferred.clear()
        return effects + self._schedule(now)

    def _schedule(self, now: float) -> list[Effect]:
        slots = [Slot(e.offer.peripheral_id, e.offer.job_id, e.seq, e.phase) for e in self._active.values()]
        decided = plan(slots, self.policy.concurrency, accepting=self.accepting)
        effects: list[Effect] = []
        for key in decided.start_downloads:
            exe = self._start(key, PhaseEvent.START_DOWNLOAD, now)
            if exe.status is None:
                effects.append(self._report(exe, ExecutionStatus.DOWNLOADING, 0, now))
            effects.append(StartDownload(exe))
        for key in decided.start_dfus:
            exe = self._start(key, PhaseEvent.START_DFU, now)
            if exe.status is not ExecutionStatus.IN_PROGRESS:
                effects.append(self._report(exe, ExecutionStatus.IN_PROGRESS, 0, now))
            effects.append(StartDfu(exe))
        return effects

    def _start(self, key: ExecKey, event: PhaseEvent, now: float) -> Execution:
        """Move an execution into work; its deadline counts from the first start in this run."""
        exe = self._active[key]
        exe.advance(event)
        if exe.started_at is None:
            exe.started_at = now
        self._dirty[key] = exe
        return exe

    def resume(self, now: float) -> list[Effect]:
        """Start whatever the restored journal allows (call once after `restore`)."""
        return self._schedule(now)


def snapshot(exe: Execution) -> Execution:
    """A copy, so effects handed to I/O tasks do not change under them."""
    return replace(exe)
