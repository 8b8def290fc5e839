"""The wire formats of nRF Cloud's BLE FOTA topics (reference §3), parsed strictly at the edge.

`parse_job` never raises: it answers `JobOffer` (a valid tuple), `InvalidJob` (malformed, but its JOB_ID is
readable so the cloud can be told "Job info is invalid") or `UnreadableJob` (nothing to answer: log and drop).
Everything downstream handles only typed values.
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError, field_validator

from gateway_agent.config import ADDRESS_RE

MAX_PAYLOAD_BYTES = 8 * 1024
MAX_DETAILS = 200
JOB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,35}$")
HOST_RE = re.compile(
    r"^(?=.{1,253}(:|$))[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}"
    r"[A-Za-z0-9])?)*(?::[0-9]{1,5})?$"
)
PATH_SEGMENT_RE = re.compile(r"^[A-Za-z0-9._~%+-]+$")
MAX_PATHS = 4


class JobStatus(enum.IntEnum):
    """Execution status codes (reference §3, verified in four sources)."""

    QUEUED = 0
    IN_PROGRESS = 1
    FAILED = 2
    SUCCEEDED = 3
    TIMED_OUT = 4
    CANCELED = 5
    REJECTED = 6
    DOWNLOADING = 7

    @property
    def terminal(self) -> bool:
        return self in (
            JobStatus.FAILED,
            JobStatus.SUCCEEDED,
            JobStatus.TIMED_OUT,
            JobStatus.CANCELED,
            JobStatus.REJECTED,
        )


class Details(enum.StrEnum):
    """Nordic's standard detail strings; the agent appends a cause after `: ` where it has one."""

    DOWNLOAD_START_FAILED = "Failed to start download"
    DOWNLOAD_ERROR = "Error during download"
    NOT_VALIDATED = "FOTA update not validated"
    APPLY_ERROR = "Error applying update"
    TYPE_MISMATCH = "FW file does not match specified FOTA type"
    INVALID = "Job info is invalid"
    TYPE_UNSUPPORTED = "FOTA type not supported"


def _check_path(path: str) -> str:
    if path.startswith("/") or "\\" in path or "://" in path:
        raise ValueError(f"path must be relative to FILE_HOST: {path[:80]!r}")
    segments = path.split("/")
    for seg in segments:
        if seg in ("", ".", ".."):
            raise ValueError(f"path has an empty, '.' or '..' segment: {path[:80]!r}")
        if not PATH_SEGMENT_RE.match(seg) or "%2" in seg.lower() or "%5c" in seg.lower():
            raise ValueError(f"path has characters outside [A-Za-z0-9._~%+-]: {path[:80]!r}")
    return path


class FileRole(enum.StrEnum):
    INIT_PACKET = "dat"
    FIRMWARE = "bin"
    PACKAGE = "zip"


@dataclass(frozen=True, slots=True)
class JobFile:
    path: str
    role: FileRole

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


def classify_paths(file_path: str) -> tuple[JobFile, ...]:
    """FILE_PATH's space-separated paths, by name: one `.dat` + one `.bin`, or a single `.zip` package."""
    paths = file_path.split(" ")
    if not 1 <= len(paths) <= MAX_PATHS:
        raise ValueError(f"FILE_PATH must hold 1..{MAX_PATHS} space-separated paths")
    files: list[JobFile] = []
    for p in paths:
        _check_path(p)
        suffix = p.rsplit(".", 1)[-1].lower() if "." in p.rsplit("/", 1)[-1] else ""
        try:
            role = FileRole(suffix)
        except ValueError:
            raise ValueError(f"cannot tell what {p[:80]!r} is: expected a .dat, .bin or .zip file") from None
        files.append(JobFile(p, role))
    roles = sorted(f.role for f in files)
    if roles not in ([FileRole.FIRMWARE, FileRole.INIT_PACKET], [FileRole.PACKAGE]):
        raise ValueError("FILE_PATH must name one .dat and one .bin, or one .zip")
    names = [f.name for f in files]
    if len(set(names)) != len(names):
        raise ValueError("FILE_PATH names the same file twice")
    # init packet first: it is small and tells whether the image is worth downloading
    return tuple(sorted(files, key=lambda f: f.role != FileRole.INIT_PACKET))


class _JobTupleModel(BaseModel):
    model_config = ConfigDict(strict=True, frozen=True)

    peripheral_id: Annotated[StrictStr, Field(min_length=17, max_length=17)]
    job_id: Annotated[StrictStr, Field(pattern=JOB_ID_RE.pattern)]
    firmware_type: Annotated[StrictInt, Field(ge=0, le=255)]
    file_size: Annotated[StrictInt, Field(gt=0, le=1 << 31)]
    file_host: Annotated[StrictStr, Field(min_length=1, max_length=260)]
    file_path: Annotated[StrictStr, Field(min_length=1, max_length=1024)]

    @field_validator("peripheral_id")
    @classmethod
    def _peripheral(cls, value: str) -> str:
        upper = value.upper()
        if not ADDRESS_RE.match(upper):
            raise ValueError("PERIPHERAL_ID must be a BLE address AA:BB:CC:DD:EE:FF")
        return upper

    @field_validator("file_host")
    @classmethod
    def _host(cls, value: str) -> str:
        if not HOST_RE.match(value):
            raise ValueError("FILE_HOST must be a host name or address, optionally with :port, no scheme")
        return value

    @field_validator("file_path")
    @classmethod
    def _paths(cls, value: str) -> str:
        classify_paths(value)
        return value


@dataclass(frozen=True, slots=True)
class JobOffer:
    """A well-formed `jobs/ble/rcv` tuple."""

    peripheral_id: str
    job_id: str
    firmware_type: int
    file_size: int
    file_host: str
    file_path: str

    @property
    def files(self) -> tuple[JobFile, ...]:
        return classify_paths(self.file_path)

    def to_json(self) -> list[Any]:
        return [
            self.peripheral_id,
            self.job_id,
            self.firmware_type,
            self.file_size,
            self.file_host,
            self.file_path,
        ]

    @classmethod
    def from_json(cls, data: list[Any]) -> JobOffer:
        m = _JobTupleModel(**dict(zip(_JobTupleModel.model_fields, data, strict=True)))
        return cls(m.peripheral_id, m.job_id, m.firmware_type, m.file_size, m.file_host, m.file_path)


@dataclass(frozen=True, slots=True)
class InvalidJob:
    """Malformed, but its JOB_ID (and, when readable, PERIPHERAL_ID) lets us answer REJECTED."""

    peripheral_id: str
    job_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class UnreadableJob:
    reason: str


ParsedJob = JobOffer | InvalidJob | UnreadableJob


def _readable_job_id(data: list[Any]) -> str | None:
    if len(data) >= 2 and isinstance(data[1], str) and JOB_ID_RE.match(data[1]):
        return data[1]
    return None


def _readable_peripheral(data: list[Any]) -> str:
    if data and isinstance(data[0], str) and ADDRESS_RE.match(data[0].upper()):
        return data[0].upper()
    return ""


def _short(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(x) for x in first["loc"])
    return f"{where}: {first['msg']}"[:MAX_DETAILS]


def parse_job(payload: bytes) -> ParsedJob:
    """Strictly parse a `jobs/ble/rcv` payload. Never raises."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        return UnreadableJob(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
    try:
        data = json.loads(payload)
    except (ValueError, RecursionError) as exc:
        return UnreadableJob(f"not JSON: {str(exc)[:80]}")
    if not isinstance(data, list):
        return UnreadableJob(f"not a JSON array but {type(data).__name__}")
    job_id = _readable_job_id(data)
    if len(data) != 6:
        reason = f"expected 6 elements, got {len(data)}"
        return InvalidJob(_readable_peripheral(data), job_id, reason) if job_id else UnreadableJob(reason)
    try:
        return JobOffer.from_json(data)
    except ValidationError as exc:
        reason = _short(exc)
    except ValueError as exc:
        reason = str(exc)[:MAX_DETAILS]
    return InvalidJob(_readable_peripheral(data), job_id, reason) if job_id else UnreadableJob(reason)


@dataclass(frozen=True, slots=True)
class JobUpdate:
    """One `jobs/ble/update` tuple: progress (int) while DOWNLOADING, else a details string."""

    peripheral_id: str
    job_id: str
    status: JobStatus
    progress: int | None = None
    details: str = ""

    def payload(self) -> bytes:
        fourth: int | str = (
            self.progress
            if self.status is JobStatus.DOWNLOADING and self.progress is not None
            else self.details
        )
        return json.dumps([self.peripheral_id, self.job_id, int(self.status), fourth]).encode()

    @classmethod
    def from_payload(cls, payload: bytes) -> JobUpdate:
        pid, jid, status, fourth = json.loads(payload)
        st = JobStatus(status)
        if isinstance(fourth, int):
            return cls(pid, jid, st, progress=fourth)
        return cls(pid, jid, st, details=fourth)


def job_request_payload(peripheral_id: str) -> bytes:
    return json.dumps([peripheral_id]).encode()


def details(base: Details, cause: str | None = None) -> str:
    """A standard details string with the cause appended, capped so the cloud's field never overflows."""
    text = base.value if not cause else f"{base.value}: {cause}"
    return text if len(text) <= MAX_DETAILS else text[: MAX_DETAILS - 1] + "…"
