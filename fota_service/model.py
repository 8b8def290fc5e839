"""The FOTA job model: jobs, executions, rollout and retries as a pure state machine (no I/O, no clock).

Theory of operation
===================

`FotaModel` holds every device, group (tag), bundle, job and execution of one tenant. Callers (the REST
layer, the MQTT layer, the scheduler) feed it *commands* that carry `now` (seconds, wall clock) and receive
*effects*: `Notify` (send this job tuple to this device, via its gateway for a BLE peripheral) and
`DesiredChanged` (a gateway's desired connections changed). Refusals raise the typed errors of
`fota_service.errors`. The model never reads a clock, generates randomness (ids come from an injected
factory) or touches a socket, so every rule below is tested without any I/O, and the persistence layer
stores whatever `take_changes()` says was touched since the last call. Processes sharing one database keep
their models current by `absorb`ing what the others stored (`store.py`).

Job life cycle (seed: "FOTA job life cycle")::

    CREATED --apply--> [target validation] --ok--> IN_PROGRESS --all executions terminal--> COMPLETED
       |                        `--error--> CANCELLED (statusDetail = the validation error)
       |--cancel--> CANCELLED          IN_PROGRESS --cancel--> CANCELLED
    CREATED | COMPLETED | CANCELLED --delete--> DELETION_IN_PROGRESS (gone from every job list; its
                                                executions stay, as nRF Cloud's DeleteFOTAJob leaves them)

Target resolution happens at apply time: device ids ∪ current members of the target groups. Validation
runs in this order: mixed BLE/IP target, too many gateways, a gateway without BLE FOTA, then eligibility
(firmware type vs the device's supported types); no eligible device left is "Empty job target".

Rollout: eligible devices are ordered round-robin across gateways (so a batch spreads over gateways rather
than queueing 25 DFUs behind one radio) and get executions in batches of `batch_size` (25). The next batch
rolls out when every execution of the current batch has been acknowledged by its device (any update: it has
left QUEUED), or `batch_interval` seconds after the current batch, whichever is first (`tick(now)`), so an
offline device cannot stall a job.

Execution life cycle: QUEUED --device/REST update--> DOWNLOADING | IN_PROGRESS (repeatable, with details)
--> SUCCEEDED | FAILED | REJECTED | TIMED_OUT | CANCELLED (final; later updates are refused).

Both machines are tables below (`JOB_TRANSITIONS`, `EXECUTION_TRANSITIONS`): every state change goes through
them, so the tables are the whole truth and a script can draw them.

Retries: when a job completes with executions in `RETRY_STATUSES` (FAILED and TIMED_OUT; not REJECTED — the
device refused this very document — nor CANCELLED — an operator's choice), a group
`retry-<job name>-<job id>` with those devices and a job `<base name> Retry` / `Retry N` (same document, that
group as its only target, not applied) are created.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from fota_service.errors import (
    BundleNotFound,
    DeviceNotFound,
    ExecutionFinal,
    ExecutionNotFound,
    Forbidden,
    GroupNotFound,
    InvalidJobState,
    InvalidRequest,
    JobNotFound,
)
from gateway_agent.cloud.wire import TERMINAL_STATUSES, BleJob, ExecutionStatus, FirmwareType

SECURE_DFU_TYPES: frozenset[FirmwareType] = frozenset(
    {FirmwareType.APP, FirmwareType.MODEM, FirmwareType.SOFTDEVICE, FirmwareType.BOOTLOADER}
)
"""What a Secure DFU peripheral supports: the seed's APP, MODEM, SOFTDEVICE, plus BOOTLOADER, which the
firmware type table describes as "Updates bootloader firmware on a Bluetooth LE device"."""


class JobStatus(enum.StrEnum):
    CREATED = "CREATED"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    CANCELLED = "CANCELLED"
    DELETION_IN_PROGRESS = "DELETION_IN_PROGRESS"


class JobEvent(enum.StrEnum):
    APPLY = "apply"
    """Target validated: rollout starts."""
    REJECT = "reject"
    """Target validation failed (statusDetail says why)."""
    CANCEL = "cancel"
    DELETE = "delete"
    FINISH = "finish"
    """Every execution terminal, nothing left to roll out."""


JOB_TRANSITIONS: dict[tuple[JobStatus, JobEvent], JobStatus] = {
    (JobStatus.CREATED, JobEvent.APPLY): JobStatus.IN_PROGRESS,
    (JobStatus.CREATED, JobEvent.REJECT): JobStatus.CANCELLED,
    (JobStatus.CREATED, JobEvent.CANCEL): JobStatus.CANCELLED,
    (JobStatus.IN_PROGRESS, JobEvent.CANCEL): JobStatus.CANCELLED,
    (JobStatus.IN_PROGRESS, JobEvent.FINISH): JobStatus.COMPLETED,
    (JobStatus.CREATED, JobEvent.DELETE): JobStatus.DELETION_IN_PROGRESS,
    (JobStatus.COMPLETED, JobEvent.DELETE): JobStatus.DELETION_IN_PROGRESS,
    (JobStatus.CANCELLED, JobEvent.DELETE): JobStatus.DELETION_IN_PROGRESS,
}
"""Every job state change there is; anything else is refused with InvalidJobState."""


_PENDING = (ExecutionStatus.QUEUED, ExecutionStatus.DOWNLOADING, ExecutionStatus.IN_PROGRESS)
EXECUTION_TRANSITIONS: dict[ExecutionStatus, frozenset[ExecutionStatus]] = {
    **{
        status: frozenset({ExecutionStatus.DOWNLOADING, ExecutionStatus.IN_PROGRESS, *TERMINAL_STATUSES})
        for status in _PENDING
    },
    **{status: frozenset() for status in TERMINAL_STATUSES},
}
"""Allowed updates per execution status: pending states may repeat; terminal states accept nothing; QUEUED
is only ever the initial state."""
RETRY_STATUSES: frozenset[ExecutionStatus] = frozenset({ExecutionStatus.FAILED, ExecutionStatus.TIMED_OUT})


class DeviceKind(enum.StrEnum):
    IP = "ip"
    """An MQTT device (a gateway is one too): supported types from its shadow's fota_v2."""
    BLE = "ble"
    """A Bluetooth LE peripheral reached through its connected gateway."""


class ValidationError(enum.StrEnum):
    """The seed's job target validation errors, verbatim: they become the job's statusDetail."""

    EMPTY_TARGET = "Empty job target"
    MIXED_TARGET = "Job may not contain Bluetooth LE and IP devices"
    TOO_MANY_GATEWAYS = "Job specified more than the max number of gateways"
    GATEWAY_WITHOUT_BLE = "Not all gateways support Bluetooth LE updates"


@dataclass
class Device:
    device_id: str
    kind: DeviceKind
    created_at: float
    gateway_id: str | None = None
    """BLE: the connected gateway (registration or the gateway's statusConnections)."""
    fota_v2: frozenset[FirmwareType] = frozenset()
    """IP: device.serviceInfo.fota_v2 of its shadow."""
    fota_v2_ble: bool = False
    """IP gateway: device.serviceInfo.fota_v2_ble of its shadow."""
    secure_dfu: bool = True
    """BLE: whether the peripheral runs a Secure DFU bootloader (then SECURE_DFU_TYPES are supported)."""

    def supported_types(self) -> frozenset[FirmwareType]:
        if self.kind is DeviceKind.BLE:
            return SECURE_DFU_TYPES if self.secure_dfu else frozenset()
        return self.fota_v2


@dataclass(frozen=True)
class Bundle:
    """An uploaded firmware bundle; the files themselves live in the store (hosting serves them)."""

    bundle_id: str
    name: str
    firmware_type: FirmwareType
    version: str
    files: tuple[tuple[str, int], ...]
    """(file name, size) in the order FILE_PATH lists them: the init packet first, then the image."""
    created_at: float
    description: str = ""

    @property
    def file_size(self) -> int:
        return sum(size for _, size in self.files)

    def uris(self, tenant: str) -> tuple[str, ...]:
        """Where its files are hosted, relative to the file host: `<tenant>/<bundleId>/<file>` (nRF Cloud's
        shape, docs/nrf-cloud.md "The job tuple", FILE_PATH)."""
        return tuple(f"{tenant}/{self.bundle_id}/{file}" for file, _ in self.files)


@dataclass(frozen=True)
class JobDocument:
    """What a job deploys; immutable, copied verbatim into retry jobs."""

    bundle_id: str
    firmware_type: FirmwareType
    version: str
    file_size: int
    host: str
    uris: tuple[str, ...]


@dataclass(frozen=True)
class JobTarget:
    device_ids: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()


@dataclass
class Job:
    job_id: str
    name: str
    description: str
    document: JobDocument
    target: JobTarget
    created_at: float
    seq: int
    """Creation order, for FIFO delivery and stable listing."""
    base_name: str
    """The original job's name; retries are named after it."""
    retry_number: int = 0
    status: JobStatus = JobStatus.CREATED
    status_detail: str | None = None
    last_updated_at: float = 0.0
    completed_at: float | None = None
    devices: int = 0
    """Eligible devices the target resolved to at apply time."""
    pending: list[str] = field(default_factory=list)
    """Eligible devices not yet given an execution, in rollout order."""
    batches: int = 0
    last_batch_at: float | None = None
    removed: int = 0


@dataclass
class Execution:
    job_id: str
    device_id: str
    gateway_id: str | None
    created_at: float
    seq: int
    batch: int
    status: ExecutionStatus = ExecutionStatus.QUEUED
    details: str = ""
    progress: int | None = None
    last_updated_at: float = 0.0


@dataclass(frozen=True)
class ExecutionStats:
    devices: int
    executions: int
    completedExecutions: int  # nRF Cloud field names
    queued: int
    inProgress: int
    downloading: int
    succeeded: int
    failed: int
    timedOut: int
    rejected: int
    cancelled: int
    removed: int


@dataclass(frozen=True)
class Notify:
    """Send a job notification: a BLE peripheral's through its gateway's BLE job topic, an IP device's on its
    own (the topics: `wire.JobTopic`)."""

    device_id: str
    gateway_id: str | None
    job_id: str
    firmware_type: FirmwareType
    file_size: int
    host: str
    path: str
    """Space-separated paths relative to host."""

    def ble_job(self) -> BleJob:
        fw_type = int(self.firmware_type)
        return BleJob(self.device_id, self.job_id, fw_type, self.file_size, self.host, self.path)


@dataclass(frozen=True)
class DesiredChanged:
    """A gateway's desired connections changed: the I/O layer may publish a shadow delta."""

    gateway_id: str


Effect = Notify | DesiredChanged


@dataclass
class Changes:
    """Keys touched since the last `take_changes()`; the store writes exactly these."""

    jobs: set[str] = field(default_factory=set)
    job_pending: set[str] = field(default_factory=set)
    """Jobs whose (large) pending rollout list changed; other job writes may skip it."""
    executions: set[tuple[str, str]] = field(default_factory=set)
    deleted_executions: set[tuple[str, str]] = field(default_factory=set)
    devices: set[str] = field(default_factory=set)
    deleted_devices: set[str] = field(default_factory=set)
    groups: set[str] = field(default_factory=set)
    bundles: set[str] = field(default_factory=set)

    def __bool__(self) -> bool:
        return any(
            (
                self.jobs,
                self.executions,
                self.deleted_executions,
                self.devices,
                self.deleted_devices,
                self.groups,
                self.bundles,
            )
        )


@dataclass(frozen=True)
class RolloutConfig:
    batch_size: int = 25
    batch_interval: float = 60.0
    """Seconds after which the next batch rolls out even if the current one is not fully acknowledged."""
    max_gateways: int = 50
    """nRF Cloud does not publish its limit; configurable."""


class FotaModel:
    """All state of one tenant; see the module docstring for the rules."""

    def __init__(
        self, *, tenant: str, file_host: str, new_id: Callable[[], str], rollout: RolloutConfig | None = None
    ) -> None:
        self.tenant = tenant
        self.file_host = file_host
        self.rollout = rollout or RolloutConfig()
        self._new_id = new_id
        self.devices: dict[str, Device] = {}
        self.groups: dict[str, set[str]] = {}
        self.bundles: dict[str, Bundle] = {}
        self.jobs: dict[str, Job] = {}
        self.executions: dict[tuple[str, str], Execution] = {}
        self._by_job: dict[str, dict[str, Execution]] = {}
        self._by_device: dict[str, dict[str, Execution]] = {}
        self._seq = 0
        self.changes = Changes()

    # ------------------------------------------------------------------ restore / persistence support
    def restore(
        self,
        *,
        devices: Iterable[Device],
        groups: Iterable[tuple[str, Iterable[str]]],
        bundles: Iterable[Bundle],
        jobs: Iterable[Job],
        executions: Iterable[Execution],
    ) -> None:
        """Replace everything with persisted state (a restart mid-job continues where it stopped; a model
        that may disagree with its database is reloaded the same way)."""
        for table in (self.devices, self.groups, self.bundles, self.jobs, self.executions):
            table.clear()
        self._by_job.clear()
        self._by_device.clear()
        self._seq = 0
        self.absorb(devices=devices, groups=groups, bundles=bundles, jobs=jobs, executions=executions)
        self.changes = Changes()

    def absorb(
        self,
        *,
        devices: Iterable[Device] = (),
        groups: Iterable[tuple[str, Iterable[str]]] = (),
        bundles: Iterable[Bundle] = (),
        jobs: Iterable[Job] = (),
        executions: Iterable[Execution] = (),
        deleted_devices: Iterable[str] = (),
        deleted_executions: Iterable[tuple[str, str]] = (),
    ) -> None:
        """Take in rows as stored, replacing the objects of the same keys: what another process sharing the
        database wrote since this model last looked. Deletions first, then the rows (a key deleted and written
        again ends up written). Records no changes: all of it is stored already."""
        for device_id in deleted_devices:
            self.devices.pop(device_id, None)
        for job_id, device_id in deleted_executions:
            gone = self.executions.pop((job_id, device_id), None)
            if gone is not None:
                del self._by_job[job_id][device_id]
                del self._by_device[device_id][job_id]
        for device in devices:
            self.devices[device.device_id] = device
        for name, members in groups:
            self.groups[name] = set(members)
        for bundle in bundles:
            self.bundles[bundle.bundle_id] = bundle
        for job in jobs:
            self.jobs[job.job_id] = job
            self._by_job.setdefault(job.job_id, {})
            self._seq = max(self._seq, job.seq)
        for execution in sorted(executions, key=lambda e: e.seq):
            self._index(execution)
            self._seq = max(self._seq, execution.seq)

    def take_changes(self) -> Changes:
        changes, self.changes = self.changes, Changes()
        return changes

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _index(self, execution: Execution) -> None:
        key = (execution.job_id, execution.device_id)
        self.executions[key] = execution
        self._by_job.setdefault(execution.job_id, {})[execution.device_id] = execution
        self._by_device.setdefault(execution.device_id, {})[execution.job_id] = execution

    def _unindex(self, execution: Execution) -> None:
        key = (execution.job_id, execution.device_id)
        del self.executions[key]
        del self._by_job[execution.job_id][execution.device_id]
        del self._by_device[execution.device_id][execution.job_id]
        self.changes.deleted_executions.add(key)
        self.changes.executions.discard(key)

    # ------------------------------------------------------------------ registry: devices, groups, bundles
    def upsert_device(
        self,
        device_id: str,
        kind: DeviceKind,
        now: float,
        *,
        gateway_id: str | None = None,
        fota_v2: Iterable[FirmwareType] | None = None,
        fota_v2_ble: bool | None = None,
        secure_dfu: bool | None = None,
    ) -> list[Effect]:
        """Register or update a device (bench registration; nRF Cloud learns these from provisioning)."""
        if not device_id:
            raise InvalidRequest("device id may not be empty")
        if kind is DeviceKind.BLE and gateway_id == device_id:
            raise InvalidRequest("a peripheral cannot be its own gateway")
        device = self.devices.get(device_id)
        if device is None:
            device = Device(device_id, kind, now)
            self.devices[device_id] = device
        elif device.kind is not kind:
            raise InvalidRequest(f"device {device_id} is registered as {device.kind.value}, not {kind.value}")
        effects: list[Effect] = []
        if gateway_id is not None and gateway_id != device.gateway_id:
            for gw in (device.gateway_id, gateway_id):
                if gw is not None:
                    effects.append(DesiredChanged(gw))
            device.gateway_id = gateway_id
        if fota_v2 is not None:
            device.fota_v2 = frozenset(fota_v2)
        if fota_v2_ble is not None:
            device.fota_v2_ble = fota_v2_ble
        if secure_dfu is not None:
            device.secure_dfu = secure_dfu
        self.changes.devices.add(device_id)
        return effects

    def delete_device(self, device_id: str, now: float) -> list[Effect]:
        """Remove a device: its unfinished executions are removed (counted in executionStats.removed)."""
        device = self.devices.pop(device_id, None)
        if device is None:
            raise DeviceNotFound(device_id)
        self.changes.deleted_devices.add(device_id)
        self.changes.devices.discard(device_id)
        for name, members in self.groups.items():
            if device_id in members:
                members.discard(device_id)
                self.changes.groups.add(name)
        for execution in list(self._by_device.get(device_id, {}).values()):
            job = self.jobs[execution.job_id]
            if not execution.status.terminal:
                self._unindex(execution)
                job.removed += 1
                self._touch_job(job, now)
        for job in self.jobs.values():
            if device_id in job.pending:
                job.pending.remove(device_id)
                job.removed += 1
                self.changes.job_pending.add(job.job_id)
                self._touch_job(job, now)
        effects: list[Effect] = []
        for job in sorted(self.jobs.values(), key=lambda j: j.seq):
            if job.status is JobStatus.IN_PROGRESS and job.pending and self._batch_acknowledged(job):
                effects += self._roll_out_batch(job, now)
            self._maybe_complete(job, now)
        if device.gateway_id is not None:
            effects.append(DesiredChanged(device.gateway_id))
        return effects

    def set_group(self, name: str, device_ids: Iterable[str]) -> list[Effect]:
        """Replace a group's members: applied jobs keep their resolved devices; CREATED jobs see it."""
        if not name:
            raise InvalidRequest("group name may not be empty")
        self.groups[name] = set(device_ids)
        self.changes.groups.add(name)
        return []

    def add_to_group(self, name: str, device_ids: Iterable[str]) -> list[Effect]:
        if not name:
            raise InvalidRequest("group name may not be empty")
        self.groups.setdefault(name, set()).update(device_ids)
        self.changes.groups.add(name)
        return []

    def remove_from_group(self, name: str, device_ids: Iterable[str]) -> list[Effect]:
        if name not in self.groups:
            raise GroupNotFound(name)
        self.groups[name].difference_update(device_ids)
        self.changes.groups.add(name)
        return []

    def add_bundle(self, bundle: Bundle) -> None:
        if bundle.bundle_id in self.bundles:
            raise InvalidRequest(f"bundle {bundle.bundle_id} exists")
        self.bundles[bundle.bundle_id] = bundle
        self.changes.bundles.add(bundle.bundle_id)

    def peripherals_of(self, gateway_id: str) -> list[str]:
        """The peripherals registered behind a gateway: its shadow's desiredConnections."""
        return sorted(
            d.device_id
            for d in self.devices.values()
            if d.kind is DeviceKind.BLE and d.gateway_id == gateway_id
        )

    def gateway_reported(
        self,
        gateway_id: str,
        now: float,
        *,
        fota_v2_ble: bool | None = None,
        fota_v2: Sequence[str] | None = None,
        peripherals: Iterable[str] = (),
    ) -> list[Effect]:
        """A gateway's shadow report: its capabilities and the peripherals it reports on.

        A `fota_v2_ble` of None means "not in this report" (shadow merge); False withdraws support.
        Peripherals in statusConnections become (or move to be) this gateway's, whether their link is up
        at the moment or not: a gateway that links to a peripheral only to update it reports `connected`
        false the rest of the time, and still serves it.
        """
        device = self.devices.get(gateway_id)
        if device is None:
            device = Device(gateway_id, DeviceKind.IP, now)
            self.devices[gateway_id] = device
            self.changes.devices.add(gateway_id)
        if device.kind is not DeviceKind.IP:
            raise InvalidRequest(f"{gateway_id} is a Bluetooth LE peripheral, not a gateway")
        before = (device.fota_v2_ble, device.fota_v2)
        if fota_v2_ble is not None:
            device.fota_v2_ble = fota_v2_ble
        if fota_v2 is not None:
            device.fota_v2 = frozenset(FirmwareType[t] for t in fota_v2 if t in FirmwareType.__members__)
        if (device.fota_v2_ble, device.fota_v2) != before:
            # only then: most reports repeat the capabilities, and every recorded change is a database write
            # (and, with several processes, a catch-up for each of the others)
            self.changes.devices.add(gateway_id)
        effects: list[Effect] = []
        for address in peripherals:
            peripheral = self.devices.get(address)
            if peripheral is None:
                self.devices[address] = Device(address, DeviceKind.BLE, now, gateway_id=gateway_id)
                self.changes.devices.add(address)
            elif peripheral.kind is DeviceKind.BLE and peripheral.gateway_id != gateway_id:
                effects += self.upsert_device(address, DeviceKind.BLE, now, gateway_id=gateway_id)
        return effects

    # ------------------------------------------------------------------ jobs
    def create_job(
        self,
        job_id: str,
        now: float,
        *,
        bundle_id: str,
        name: str,
        description: str = "",
        device_ids: Sequence[str] = (),
        tags: Sequence[str] = (),
        auto_apply: bool = False,
    ) -> list[Effect]:
        """Save a job in CREATED. The target is stored, not resolved: groups may still change."""
        bundle = self.bundles.get(bundle_id)
        if bundle is None:
            raise BundleNotFound(bundle_id)
        if job_id in self.jobs:
            raise InvalidRequest(f"job {job_id} exists")
        document = JobDocument(
            bundle_id=bundle.bundle_id,
            firmware_type=bundle.firmware_type,
            version=bundle.version,
            file_size=bundle.file_size,
            host=self.file_host,
            uris=bundle.uris(self.tenant),
        )
        target = JobTarget(tuple(dict.fromkeys(device_ids)), tuple(dict.fromkeys(tags)))
        self._add_job(job_id, name, description, document, target, now, base_name=name, retry_number=0)
        return self.apply_job(job_id, now) if auto_apply else []

    def _add_job(
        self,
        job_id: str,
        name: str,
        description: str,
        document: JobDocument,
        target: JobTarget,
        now: float,
        *,
        base_name: str,
        retry_number: int,
    ) -> Job:
        job = Job(
            job_id=job_id,
            name=name,
            description=description,
            document=document,
            target=target,
            created_at=now,
            seq=self._next_seq(),
            base_name=base_name,
            retry_number=retry_number,
            last_updated_at=now,
        )
        self.jobs[job_id] = job
        self._by_job[job_id] = {}
        self.changes.jobs.add(job_id)
        self.changes.job_pending.add(job_id)
        return job

    def job(self, job_id: str) -> Job:
        """A visible job (DELETION_IN_PROGRESS jobs do not exist for callers)."""
        job = self.jobs.get(job_id)
        if job is None or job.status is JobStatus.DELETION_IN_PROGRESS:
            raise JobNotFound(job_id)
        return job

    def list_jobs(self) -> list[Job]:
        """Every visible job, oldest first."""
        return sorted(
            (j for j in self.jobs.values() if j.status is not JobStatus.DELETION_IN_PROGRESS),
            key=lambda j: j.seq,
        )

    def resolve_target(self, target: JobTarget) -> list[str]:
        """Device ids ∪ the groups' current members, unknown ids dropped, in a stable order."""
        ids = dict.fromkeys(target.device_ids)
        for tag in target.tags:
            ids.update(dict.fromkeys(sorted(self.groups.get(tag, ()))))
        return [device_id for device_id in ids if device_id in self.devices]

    def validate_target(self, job: Job) -> tuple[list[str], ValidationError | None]:
        """Resolve and validate a job's target: (eligible devices in rollout order, error)."""
        resolved = [self.devices[d] for d in self.resolve_target(job.target)]
        ble = [d for d in resolved if d.kind is DeviceKind.BLE]
        if ble and len(ble) != len(resolved):
            return [], ValidationError.MIXED_TARGET
        if ble:
            gateways = {d.gateway_id for d in ble if d.gateway_id is not None}
            if len(gateways) > self.rollout.max_gateways:
                return [], ValidationError.TOO_MANY_GATEWAYS
            for gw in gateways:
                gateway = self.devices.get(gw)
                if gateway is None or gateway.kind is not DeviceKind.IP or not gateway.fota_v2_ble:
                    return [], ValidationError.GATEWAY_WITHOUT_BLE
        fw_type = job.document.firmware_type
        eligible = [
            d
            for d in resolved
            if fw_type in d.supported_types() and (d.kind is DeviceKind.IP or d.gateway_id is not None)
        ]
        if not eligible:
            return [], ValidationError.EMPTY_TARGET
        return _round_robin(eligible), None

    def apply_job(self, job_id: str, now: float) -> list[Effect]:
        """Deploy a CREATED job: validate its target, then roll out the first batch."""
        job = self.job(job_id)
        _check(job, JobEvent.APPLY)
        eligible, error = self.validate_target(job)
        if error is not None:
            _transition(job, JobEvent.REJECT)
            job.status_detail = error.value
            self._touch_job(job, now)
            return []
        _transition(job, JobEvent.APPLY)
        job.devices = len(eligible)
        job.pending = eligible
        self.changes.job_pending.add(job_id)
        self._touch_job(job, now)
        return self._roll_out_batch(job, now)

    def cancel_job(self, job_id: str, now: float) -> list[Effect]:
        """Cancel a CREATED or IN_PROGRESS job; its unfinished executions become CANCELLED (the devices
        are not told: nRF Cloud has no cancel message; their later updates are refused as final)."""
        job = self.job(job_id)
        _transition(job, JobEvent.CANCEL)
        job.status_detail = "Cancelled by request"
        job.pending = []
        self.changes.job_pending.add(job_id)
        for execution in self._by_job[job_id].values():
            if not execution.status.terminal:
                execution.status = ExecutionStatus.CANCELLED
                execution.details = "Job cancelled"
                execution.last_updated_at = now
                self.changes.executions.add((job_id, execution.device_id))
        self._touch_job(job, now)
        return []

    def delete_job(self, job_id: str, now: float) -> list[Effect]:
        """Delete a COMPLETED, CREATED or CANCELLED job: DELETION_IN_PROGRESS, gone from every job list and
        fetch; its executions stay readable (nRF Cloud DeleteFOTAJob: "Does not affect executions associated
        with this job"). In those states no execution is pending, so none is delivered again."""
        job = self.job(job_id)
        _transition(job, JobEvent.DELETE)
        self._touch_job(job, now)
        return []

    def _touch_job(self, job: Job, now: float) -> None:
        job.last_updated_at = now
        self.changes.jobs.add(job.job_id)

    # ------------------------------------------------------------------ rollout
    def _roll_out_batch(self, job: Job, now: float) -> list[Effect]:
        batch, job.pending = job.pending[: self.rollout.batch_size], job.pending[self.rollout.batch_size :]
        if not batch:
            return []
        job.batches += 1
        job.last_batch_at = now
        self.changes.job_pending.add(job.job_id)
        self._touch_job(job, now)
        effects: list[Effect] = []
        for device_id in batch:
            device = self.devices[device_id]
            execution = Execution(
                job_id=job.job_id,
                device_id=device_id,
                gateway_id=device.gateway_id if device.kind is DeviceKind.BLE else None,
                created_at=now,
                seq=self._next_seq(),
                batch=job.batches,
                last_updated_at=now,
            )
            self._index(execution)
            self.changes.executions.add((job.job_id, device_id))
            effects.append(self._notify(job, execution))
        return effects

    def _notify(self, job: Job, execution: Execution) -> Notify:
        doc = job.document
        return Notify(
            device_id=execution.device_id,
            gateway_id=execution.gateway_id,
            job_id=job.job_id,
            firmware_type=doc.firmware_type,
            file_size=doc.file_size,
            host=doc.host,
            path=" ".join(doc.uris),
        )

    def _batch_acknowledged(self, job: Job) -> bool:
        # newest first: the current batch was indexed last, so a QUEUED one is found without walking the
        # job's earlier batches (asked on every update of a job still rolling out)
        return all(
            e.status is not ExecutionStatus.QUEUED
            for e in reversed(self._by_job[job.job_id].values())
            if e.batch == job.batches
        )

    def tick(self, now: float) -> list[Effect]:
        """Roll out the next batch of every job whose current batch is older than `batch_interval`."""
        effects: list[Effect] = []
        for job in sorted(self.jobs.values(), key=lambda j: j.seq):
            if (
                job.status is JobStatus.IN_PROGRESS
                and job.pending
                and job.last_batch_at is not None
                and now >= job.last_batch_at + self.rollout.batch_interval
            ):
                effects += self._roll_out_batch(job, now)
        return effects

    @property
    def next_deadline(self) -> float | None:
        """When `tick` next has work: the caller sleeps until then (or until another command)."""
        deadlines = [
            job.last_batch_at + self.rollout.batch_interval
            for job in self.jobs.values()
            if job.status is JobStatus.IN_PROGRESS and job.pending and job.last_batch_at is not None
        ]
        return min(deadlines, default=None)

    # ------------------------------------------------------------------ executions
    def execution(self, device_id: str, job_id: str) -> Execution:
        """Executions outlive a deleted job."""
        if job_id not in self.jobs:
            raise JobNotFound(job_id)
        execution = self.executions.get((job_id, device_id))
        if execution is None:
            raise ExecutionNotFound(device_id, job_id)
        return execution

    def executions_of(self, job_id: str) -> list[Execution]:
        if job_id not in self.jobs:
            raise JobNotFound(job_id)
        return sorted(self._by_job[job_id].values(), key=lambda e: e.seq)

    def pending_execution(self, device_id: str, job_id: str | None = None) -> Notify | None:
        """The oldest unfinished execution of a device (FIFO), or that of `job_id`, as a notification.

        Unfinished rather than only QUEUED: a gateway that restarted mid-transfer asks again and resumes.
        """
        candidates = [
            e
            for e in self._by_device.get(device_id, {}).values()
            if not e.status.terminal and (job_id is None or e.job_id == job_id)
        ]
        if not candidates:
            return None
        execution = min(candidates, key=lambda e: e.seq)
        return self._notify(self.jobs[execution.job_id], execution)

    def update_execution(
        self,
        device_id: str,
        job_id: str,
        status: ExecutionStatus,
        now: float,
        *,
        details: str = "",
        progress: int | None = None,
    ) -> list[Effect]:
        """A status from the device (MQTT) or the REST API.

        DOWNLOADING and IN_PROGRESS may repeat with new details; a terminal status is final. QUEUED is
        only ever set by rollout. May complete the job, roll out the next batch, and create a retry job.
        """
        execution = self.execution(device_id, job_id)
        if execution.status.terminal:
            raise ExecutionFinal(device_id, job_id, execution.status.name)
        if status not in EXECUTION_TRANSITIONS[execution.status]:
            raise InvalidRequest(f"{status.name} cannot follow {execution.status.name}")
        execution.status = status
        execution.details = details
        if progress is not None:
            execution.progress = max(0, min(100, progress))
        elif status is ExecutionStatus.SUCCEEDED:
            execution.progress = 100
        execution.last_updated_at = now
        self.changes.executions.add((job_id, device_id))
        job = self.jobs[job_id]
        self._touch_job(job, now)
        effects: list[Effect] = []
        if (
            job.status is JobStatus.IN_PROGRESS
            and job.pending
            and execution.batch == job.batches
            and self._batch_acknowledged(job)
        ):
            effects += self._roll_out_batch(job, now)
        self._maybe_complete(job, now)
        return effects

    def check_reporter(self, device_id: str, job_id: str, gateway_id: str | None) -> None:
        """Whether a device may report this execution's status over MQTT (`gateway_id` None: the device
        itself, on its own `jobs/update`); raises `Forbidden` if not.

        A peripheral's status comes only from a gateway that serves it: the one its execution was sent
        through, or the one it is registered behind now (it may have moved since). Else any gateway of the
        fleet could fail, or claim success for, every peripheral's update. A peripheral's execution is never
        reported on a device topic of its own, and an IP device's never through a gateway.
        """
        execution = self.execution(device_id, job_id)
        device = self.devices.get(device_id)
        serving = {execution.gateway_id, device.gateway_id if device is not None else None} - {None}
        if gateway_id is None and serving:
            raise Forbidden(f"{device_id} is a peripheral: its status comes through its gateway")
        if gateway_id is not None and gateway_id not in serving:
            raise Forbidden(f"gateway {gateway_id} does not serve {device_id} (job {job_id})")

    def _maybe_complete(self, job: Job, now: float) -> None:
        if job.status is not JobStatus.IN_PROGRESS or job.pending:
            return
        executions = self._by_job[job.job_id].values()
        if not all(e.status.terminal for e in executions):
            return
        _transition(job, JobEvent.FINISH)
        job.completed_at = now
        self._touch_job(job, now)
        failed = sorted(e.device_id for e in executions if e.status in RETRY_STATUSES)
        if failed:
            self._create_retry(job, failed, now)

    def _create_retry(self, job: Job, failed: list[str], now: float) -> Job:
        group = f"retry-{job.name or job.base_name or 'job'}-{job.job_id}"
        self.set_group(group, failed)
        number = job.retry_number + 1
        base = job.base_name or job.job_id
        name = f"{base} Retry" if number == 1 else f"{base} Retry {number}"
        return self._add_job(
            self._new_id(),
            name,
            job.description,
            job.document,
            JobTarget((), (group,)),
            now,
            base_name=job.base_name,
            retry_number=number,
        )

    def stats(self, job: Job) -> ExecutionStats:
        counts = dict.fromkeys(ExecutionStatus, 0)
        executions = self._by_job.get(job.job_id, {}).values()
        for execution in executions:
            counts[execution.status] += 1
        return ExecutionStats(
            devices=job.devices,
            executions=len(executions),
            completedExecutions=sum(counts[s] for s in TERMINAL_STATUSES),
            queued=counts[ExecutionStatus.QUEUED],
            inProgress=counts[ExecutionStatus.IN_PROGRESS],
            downloading=counts[ExecutionStatus.DOWNLOADING],
            succeeded=counts[ExecutionStatus.SUCCEEDED],
            failed=counts[ExecutionStatus.FAILED],
            timedOut=counts[ExecutionStatus.TIMED_OUT],
            rejected=counts[ExecutionStatus.REJECTED],
            cancelled=counts[ExecutionStatus.CANCELLED],
            removed=job.removed,
        )


def _check(job: Job, event: JobEvent) -> JobStatus:
    target = JOB_TRANSITIONS.get((job.status, event))
    if target is None:
        raise InvalidJobState(job.job_id, job.status.value, event.value)
    return target


def _transition(job: Job, event: JobEvent) -> None:
    job.status = _check(job, event)


def _round_robin(devices: Sequence[Device]) -> list[str]:
    """Interleave devices across their gateways (IP devices are their own "gateway") in a stable order."""
    lanes: dict[str, list[str]] = {}
    for device in sorted(devices, key=lambda d: d.device_id):
        lanes.setdefault(device.gateway_id or device.device_id, []).append(device.device_id)
    ordered: list[str] = []
    queues = [lanes[k] for k in sorted(lanes)]
    depth = max((len(q) for q in queues), default=0)
    for i in range(depth):
        ordered.extend(q[i] for q in queues if i < len(q))
    return ordered
