"""Pydantic shapes of the REST API (nRF Cloud's field names). MQTT payloads: `gateway_agent.cloud.wire`."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from fota_service.model import (
    Device,
    Execution,
    ExecutionStats,
    FotaModel,
    Job,
)

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
    """nRF Cloud's CreateJobInput (REST spec): `autoApply` defaults to true, `name` is optional,
    `deviceIdentifiers` is the deprecated spelling of `deviceIds` (still sent by hello.nrfcloud.com's
    backend)."""

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
    """nRF Cloud's FOTAJobExecution without `tenantId`, `executionId` and `jobDocument` (REST spec), plus
    `gatewayId`, `progress` and `batch`, ours."""

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
    """A ListFirmware item: nRF Cloud's `Firmware` fields (REST spec; hello-nrfcloud's recorded responses)
    plus `uris` and `createdAt`, ours: nRF Cloud has an optional `lastModified` instead
    (docs/fota-service.md, "Differences from nRF Cloud")."""

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
