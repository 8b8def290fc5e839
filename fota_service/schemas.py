"""Pydantic shapes of the REST API (nRF Cloud's field names) and of the MQTT payloads: the service's edges."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fota_service.model import (
    Device,
    Execution,
    ExecutionStats,
    FotaModel,
    Job,
)
from gateway_agent.cloud.wire import ExecutionStatus, FirmwareType

ExecutionStatusName = Literal[
    "QUEUED", "IN_PROGRESS", "DOWNLOADING", "SUCCEEDED", "FAILED", "REJECTED", "TIMED_OUT", "CANCELLED"
]
FirmwareTypeName = Literal["APP", "MODEM", "BOOT", "BOOTLOADER", "SOFTDEVICE", "MDM_FULL"]


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class ErrorBody(BaseModel):
    """Every refusal: `code` is the HTTP status × 100 + a detail number (nRF Cloud's convention)."""

    code: int
    message: str
    error: str


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class CreateJob(_In):
    """nRF Cloud's CreateJobInput: `autoApply` defaults to true, `name` is optional, `deviceIdentifiers` is
    the deprecated spelling of `deviceIds` (still sent by hello.nrfcloud.com's backend)."""

    bundleId: str = Field(min_length=1)  # nRF Cloud field names
    name: str = Field(default="", max_length=256)
    description: str = Field(default="", max_length=1024)
    autoApply: bool = True
    deviceIds: list[str] = Field(default_factory=list, max_length=10_000)
    deviceIdentifiers: list[str] = Field(default_factory=list, max_length=10_000)
    tags: list[str] = Field(default_factory=list, max_length=100)

    @property
    def devices(self) -> list[str]:
        return list(dict.fromkeys([*self.deviceIds, *self.deviceIdentifiers]))


class JobCreated(BaseModel):
    jobId: str


class Target(BaseModel):
    deviceIds: list[str]
    tags: list[str]


class Firmware(BaseModel):
    bundleId: str
    fileSize: int
    firmwareType: FirmwareTypeName
    host: str
    uris: list[str]
    version: str


class JobOut(BaseModel):
    jobId: str
    name: str
    description: str
    status: str
    statusDetail: str | None
    createdAt: str | None
    lastUpdatedAt: str | None
    completedAt: str | None
    target: Target
    firmware: Firmware
    executionStats: ExecutionStats  # the model's dataclass: pydantic serializes it as is

    @classmethod
    def of(cls, model: FotaModel, job: Job) -> JobOut:
        doc = job.document
        return cls(
            jobId=job.job_id,
            name=job.name,
            description=job.description,
            status=job.status.value,
            statusDetail=job.status_detail,
            createdAt=iso(job.created_at),
            lastUpdatedAt=iso(job.last_updated_at),
            completedAt=iso(job.completed_at),
            target=Target(deviceIds=list(job.target.device_ids), tags=list(job.target.tags)),
            firmware=Firmware(
                bundleId=doc.bundle_id,
                fileSize=doc.file_size,
                firmwareType=doc.firmware_type.name,
                host=doc.host,
                uris=list(doc.uris),
                version=doc.version,
            ),
            executionStats=model.stats(job),
        )


class JobPage(BaseModel):
    items: list[JobOut]
    total: int
    pageNextToken: str | None = None


class ExecutionOut(BaseModel):
    jobId: str
    deviceId: str
    gatewayId: str | None
    status: ExecutionStatusName
    statusDetail: str
    progress: int | None
    batch: int
    createdAt: str | None
    lastUpdatedAt: str | None

    @classmethod
    def of(cls, e: Execution) -> ExecutionOut:
        return cls(
            jobId=e.job_id,
            deviceId=e.device_id,
            gatewayId=e.gateway_id,
            status=e.status.name,
            statusDetail=e.details,
            progress=e.progress,
            batch=e.batch,
            createdAt=iso(e.created_at),
            lastUpdatedAt=iso(e.last_updated_at),
        )


class ExecutionPage(BaseModel):
    items: list[ExecutionOut]
    total: int
    pageNextToken: str | None = None


class UpdateExecution(_In):
    status: ExecutionStatusName
    details: str = Field(default="", max_length=1024)
    progress: int | None = Field(default=None, ge=0, le=100)


class BundleOut(BaseModel):
    """A ListFirmware item, in nRF Cloud's field names (hello.nrfcloud.com's recorded responses)."""

    bundleId: str
    name: str
    description: str
    type: FirmwareTypeName
    version: str
    size: int
    filenames: list[str]
    uris: list[str]
    createdAt: str | None


class UploadAccepted(BaseModel):
    """UploadFirmware's answer (202): the hosted files, `<tenant>/<bundleId>/<file>`."""

    uris: list[str]


class BundlePage(BaseModel):
    items: list[BundleOut]
    total: int


class PutDevice(_In):
    """Bench registration (nRF Cloud learns this from provisioning and shadows)."""

    type: Literal["ip", "ble"]
    gatewayId: str | None = None
    fotaV2: list[FirmwareTypeName] | None = None
    fotaV2Ble: bool | None = None
    secureDfu: bool | None = None


class DeviceOut(BaseModel):
    deviceId: str
    type: Literal["ip", "ble"]
    gatewayId: str | None
    fotaV2: list[str]
    fotaV2Ble: bool
    secureDfu: bool
    tags: list[str]

    @classmethod
    def of(cls, model: FotaModel, d: Device) -> DeviceOut:
        return cls(
            deviceId=d.device_id,
            type=d.kind.value,
            gatewayId=d.gateway_id,
            fotaV2=sorted(t.name for t in d.fota_v2),
            fotaV2Ble=d.fota_v2_ble,
            secureDfu=d.secure_dfu,
            tags=sorted(name for name, members in model.groups.items() if d.device_id in members),
        )


class DevicePage(BaseModel):
    items: list[DeviceOut]
    total: int


class GroupMembers(_In):
    deviceIds: list[str] = Field(max_length=100_000)


class GroupOut(BaseModel):
    name: str
    deviceIds: list[str]


# ---------------------------------------------------------------------------------------------- MQTT


class PayloadError(ValueError):
    """A malformed MQTT payload: logged and dropped, never fatal."""


def _json_array(payload: bytes) -> list[Any]:
    try:
        value = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise PayloadError(f"not JSON: {exc}") from exc
    if not isinstance(value, list):
        raise PayloadError("not a JSON array")
    return value


class BleJobRequest(BaseModel):
    """`jobs/ble/req`: `["<PERIPHERAL_ID>"]`, optionally followed by a job id."""

    model_config = ConfigDict(strict=True, frozen=True)
    peripheral_id: Annotated[str, Field(min_length=1, max_length=128)]
    job_id: str | None = None

    @classmethod
    def parse(cls, payload: bytes) -> BleJobRequest:
        items = _json_array(payload)
        if not 1 <= len(items) <= 2:
            raise PayloadError("expected [PERIPHERAL_ID] or [PERIPHERAL_ID, JOB_ID]")
        try:
            return cls(peripheral_id=items[0], job_id=(items[1] or None) if len(items) == 2 else None)
        except ValidationError as exc:
            raise PayloadError(str(exc)) from exc


def _status(value: Any) -> ExecutionStatus:
    if isinstance(value, bool):
        raise ValueError("status must be an int or a name")
    if isinstance(value, int):
        return ExecutionStatus(value)
    if isinstance(value, str):
        name = "CANCELLED" if value.upper() == "CANCELED" else value.upper()
        if value.isdigit():
            return ExecutionStatus(int(value))
        return ExecutionStatus[name]
    raise ValueError("status must be an int or a name")


class JobUpdate(BaseModel):
    """`jobs/ble/update` `[PERIPHERAL_ID, JOB_ID, STATUS, PROGRESS|details]` (IP: without PERIPHERAL_ID).

    Tolerant where gateways differ: STATUS as int or name, the 4th element as int or string (a numeric string
    while DOWNLOADING is a progress), missing 4th element treated as "".
    """

    model_config = ConfigDict(frozen=True)
    device_id: str
    job_id: Annotated[str, Field(min_length=1, max_length=64)]
    status: ExecutionStatus
    details: str = ""
    progress: int | None = None

    @field_validator("status", mode="before")
    @classmethod
    def _coerce_status(cls, value: Any) -> ExecutionStatus:
        try:
            return _status(value)
        except (KeyError, ValueError) as exc:
            raise ValueError(f"unknown status {value!r}") from exc

    @classmethod
    def parse_ble(cls, payload: bytes) -> JobUpdate:
        items = _json_array(payload)
        if not 3 <= len(items) <= 4 or not isinstance(items[0], str) or not items[0]:
            raise PayloadError("expected [PERIPHERAL_ID, JOB_ID, STATUS, PROGRESS|details]")
        return cls._build(items[0], items[1:])

    @classmethod
    def parse_ip(cls, device_id: str, payload: bytes) -> JobUpdate:
        items = _json_array(payload)
        if not 2 <= len(items) <= 3:
            raise PayloadError("expected [JOB_ID, STATUS, details]")
        return cls._build(device_id, items)

    @classmethod
    def _build(cls, device_id: str, rest: list[Any]) -> JobUpdate:
        job_id, status, *extra = rest
        fourth = extra[0] if extra else ""
        progress: int | None = None
        details = ""
        if isinstance(fourth, bool) or fourth is None:
            pass
        elif isinstance(fourth, int):
            progress = fourth
        elif isinstance(fourth, float):
            progress = int(fourth)
        elif isinstance(fourth, str):
            if fourth.strip().isdigit() and str(status) in ("7", "DOWNLOADING"):
                progress = int(fourth)
            else:
                details = fourth[:1024]
        else:
            raise PayloadError("the 4th element must be a progress or details string")
        if not isinstance(job_id, str):
            raise PayloadError("JOB_ID must be a string")
        try:
            return cls(device_id=device_id, job_id=job_id, status=status, details=details, progress=progress)
        except ValidationError as exc:
            raise PayloadError(str(exc)) from exc


class ShadowReport(BaseModel):
    """The part of a gateway's shadow update the service reads; everything else is ignored."""

    fota_v2_ble: bool | None = None
    fota_v2: list[str] | None = None
    connected: list[str] = Field(default_factory=list)
    reported: dict[str, Any] = Field(default_factory=dict)
    """The whole reported state, kept to answer shadow gets."""

    @classmethod
    def parse(cls, payload: bytes) -> ShadowReport:
        try:
            doc = json.loads(payload)
        except (ValueError, UnicodeDecodeError) as exc:
            raise PayloadError(f"not JSON: {exc}") from exc
        reported = _dig(doc, "state", "reported")
        if not isinstance(reported, dict):
            raise PayloadError("no state.reported object")
        service_info = _dig(reported, "device", "serviceInfo")
        report = cls(reported=reported)
        if isinstance(service_info, dict):
            if "fota_v2_ble" in service_info:
                value = service_info["fota_v2_ble"]
                # a plain boolean today; an early form was an array of types (non-empty = supported)
                report.fota_v2_ble = bool(value) if isinstance(value, bool | list) else False
            fota_v2 = service_info.get("fota_v2")
            if isinstance(fota_v2, list):
                report.fota_v2 = [t for t in fota_v2 if isinstance(t, str) and t in FirmwareType.__members__]
        connections = reported.get("statusConnections")
        if isinstance(connections, dict):
            for address, entry in connections.items():
                if isinstance(entry, dict) and _dig(entry, "status", "connected") is not False:
                    report.connected.append(str(entry.get("id") or address))
        return report


def _dig(value: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value
