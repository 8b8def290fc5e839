"""The nRF Cloud BLE FOTA wire protocol, for every side that speaks it: one place to read the protocol.

The gateway agent (the device side), the local job service (the cloud side), `hil/` and the benchmarks build
every topic, know every status number and encode or decode every payload through this module, so the two
sides cannot drift apart without a test noticing. It is pure (no I/O) and imports nothing of the DFU stack.

Where each fact comes from is written beside it; docs/nrf-cloud.md gathers the sources (Nordic's sdk-nrf,
nRF Cloud's lte-gateway and gateway-common, hello-nrfcloud's recorded cloud responses, the REST API).

Contents: enums (execution status, firmware type, detail strings) · topics (job topics, the three shadow
conventions) · `jobs/ble/rcv` · `jobs/ble/req` · `jobs/ble/update` · shadow documents.
"""

from __future__ import annotations

import enum
import json
import re
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError, field_validator

ADDRESS_RE = re.compile(r"^[0-9A-F]{2}(:[0-9A-F]{2}){5}$")
"""PERIPHERAL_ID: the BLE address, upper-case hex with colons, MSB first (lte-gateway's `bt_addr_le_to_str`
output trimmed of its type suffix; gateway-common upper-cases the address)."""

# =========================================================================================================
# Enums


class ExecutionStatus(enum.IntEnum):
    """STATUS of a job execution. Values: sdk-nrf `enum nrf_cloud_fota_status` (include/net/nrf_cloud.h),
    which spells 5 `NRF_CLOUD_FOTA_CANCELED`; nRF Cloud's REST API spells it `CANCELLED`, the name used here
    (both spellings are accepted by `from_name`)."""

    QUEUED = 0
    IN_PROGRESS = 1
    FAILED = 2
    SUCCEEDED = 3
    TIMED_OUT = 4
    CANCELLED = 5
    REJECTED = 6
    DOWNLOADING = 7

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATUSES

    @classmethod
    def from_name(cls, name: str) -> ExecutionStatus:
        """A REST or MQTT name (`CANCELED` too); raises KeyError for anything else."""
        upper = name.strip().upper()
        return cls["CANCELLED" if upper == "CANCELED" else upper]


TERMINAL_STATUSES: frozenset[ExecutionStatus] = frozenset(
    {
        ExecutionStatus.FAILED,
        ExecutionStatus.SUCCEEDED,
        ExecutionStatus.TIMED_OUT,
        ExecutionStatus.CANCELLED,
        ExecutionStatus.REJECTED,
    }
)


class FirmwareType(enum.IntEnum):
    """FIRMWARE_TYPE of a job tuple: sdk-nrf `enum nrf_cloud_fota_type` (include/net/nrf_cloud.h). APP,
    MODEM, BOOT and MDM_FULL are the SDK's own values; BOOTLOADER and SOFTDEVICE (the BLE peripheral's
    types) are numbered in the SDK's comments only, so the agent's mapping to image kinds is configurable."""

    APP = 0
    MODEM = 1
    BOOT = 2
    BOOTLOADER = 3
    SOFTDEVICE = 4
    MDM_FULL = 5


class Details(enum.StrEnum):
    """The detail strings Nordic's devices send with a status (sdk-nrf `nrf_cloud_fota.c`); the agent
    appends a cause after `: ` where it has one."""

    DOWNLOAD_START_FAILED = "Failed to start download"
    DOWNLOAD_ERROR = "Error during download"
    NOT_VALIDATED = "FOTA update not validated"
    APPLY_ERROR = "Error applying update"
    TYPE_MISMATCH = "FW file does not match specified FOTA type"
    INVALID = "Job info is invalid"
    TYPE_UNSUPPORTED = "FOTA type not supported"


MAX_DETAILS = 200
"""The agent's own cap on a details string: no published source states a limit for nRF Cloud's field, so a
cause (often a server's or a library's message) is kept short rather than sent whole."""


def details(base: Details, cause: str | None = None) -> str:
    """A standard details string with the cause appended, capped at `MAX_DETAILS`."""
    text = base.value if not cause else f"{base.value}: {cause}"
    return text if len(text) <= MAX_DETAILS else text[: MAX_DETAILS - 1] + "…"


# =========================================================================================================
# Topics

PREFIX_RE = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*/$")
"""`<stage>/<tenant>/`, e.g. `prod/5f8c…/`: learned from `state.desired.nrfcloud_mqtt_topic_prefix`."""


class JobTopic(enum.StrEnum):
    """The job topics under `<prefix><device id>/`. BLE jobs use the gateway's id (lte-gateway
    `nrf_cloud_ble_fota` topics; gateway-common `fota.ts`); IP devices use their own."""

    BLE_REQUEST = "jobs/ble/req"
    BLE_RECEIVE = "jobs/ble/rcv"
    BLE_UPDATE = "jobs/ble/update"
    REQUEST = "jobs/req"
    RECEIVE = "jobs/rcv"
    UPDATE = "jobs/update"


def job_topic(prefix: str, device_id: str, topic: JobTopic) -> str:
    return f"{prefix}{device_id}/{topic.value}"


def parse_job_topic(prefix: str, topic: str) -> tuple[str, JobTopic] | None:
    """`<prefix><device>/<job topic>` → (device id, which one); None for anything else."""
    if not topic.startswith(prefix):
        return None
    device_id, sep, rest = topic[len(prefix) :].partition("/")
    if not sep or not device_id:
        return None
    try:
        return device_id, JobTopic(rest)
    except ValueError:
        return None


def ble_job_filters(prefix: str) -> tuple[str, ...]:
    """Every gateway's BLE job topics, for an observer of the whole conversation."""
    return (f"{prefix}+/jobs/ble/+",)


def job_subscriptions(prefix: str) -> tuple[str, ...]:
    """What the cloud side subscribes to: every device's requests and updates."""
    return tuple(
        f"{prefix}+/{t.value}"
        for t in (JobTopic.BLE_REQUEST, JobTopic.BLE_UPDATE, JobTopic.REQUEST, JobTopic.UPDATE)
    )


class ShadowConvention(enum.StrEnum):
    """Which shadow topics a device uses: three exist in Nordic's code (docs/nrf-cloud.md, "Topics");
    `_SHADOW_TOPICS` spells out each one's topics beside its source."""

    AWS = "aws"
    TRIM = "trim"
    PREFIXED = "prefixed"


class ShadowAction(enum.StrEnum):
    GET = "get"
    """the device asks for its shadow"""
    UPDATE = "update"
    """the device reports"""


_SHADOW_TOPICS: dict[ShadowConvention, dict[str, str | None]] = {
    # sdk-nrf's original transport (NCS ≈ 1.5-1.7 `nrf_cloud_transport.c`, and docs.nrfcloud.com's MQTT topic
    # table): nRF Cloud answers a `$aws` get with a trimmed copy on `<id>/shadow/get/accepted` (no `$aws`)
    ShadowConvention.AWS: {
        "get": "$aws/things/{id}/shadow/get",
        "get_accepted": "{id}/shadow/get/accepted",
        "aws_get_accepted": "$aws/things/{id}/shadow/get/accepted",
        "get_rejected": "$aws/things/{id}/shadow/get/rejected",
        "update": "$aws/things/{id}/shadow/update",
        "delta": "$aws/things/{id}/shadow/update/delta",
    },
    # sdk-nrf's current transport (`NCT_SHDW_TPC_*`)
    ShadowConvention.TRIM: {
        "get": "{id}/shadow/get/trim",
        "get_accepted": "{id}/shadow/get/accepted/trim",
        "aws_get_accepted": None,
        "get_rejected": "{id}/shadow/get/rejected",
        "update": "{id}/shadow/update",
        "delta": "{id}/shadow/update/delta/full",
    },
    # gateway-common (`gateway.ts`): under the topic prefix; it subscribes to no get/rejected
    ShadowConvention.PREFIXED: {
        "get": "{prefix}{id}/shadow/get",
        "get_accepted": "{prefix}{id}/shadow/get/accepted",
        "aws_get_accepted": None,
        "get_rejected": None,
        "update": "{prefix}{id}/shadow/update",
        "delta": "{prefix}{id}/shadow/update/delta",
    },
}


@dataclass(frozen=True, slots=True)
class ShadowTopics:
    """One device's shadow topics in one convention, built once (a connection compares every incoming topic
    with them). A device subscribes to `subscriptions()` only: AWS IoT disconnects a client that subscribes
    where its policy forbids (sdk-nrf's transport notes this for the original `+/r` message topic), so an
    extra subscription can become a reconnect loop."""

    device_id: str
    convention: ShadowConvention
    prefix: str | None = None
    get: str = field(init=False, repr=False, compare=False)
    """Publish an empty message here to ask for the shadow."""
    get_accepted: str = field(init=False, repr=False, compare=False)
    aws_get_accepted: str | None = field(init=False, repr=False, compare=False)
    """AWS IoT's own answer to a `$aws` get (the full document): the cloud side publishes it too; no Nordic
    device subscribes to it."""
    get_rejected: str | None = field(init=False, repr=False, compare=False)
    update: str = field(init=False, repr=False, compare=False)
    """Publish `{"state":{"reported":…}}` here."""
    delta: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.convention is ShadowConvention.PREFIXED and self.prefix is None:
            raise ValueError("prefixed shadow topics need the topic prefix")
        for name, template in _SHADOW_TOPICS[self.convention].items():
            topic = None if template is None else template.format(id=self.device_id, prefix=self.prefix)
            object.__setattr__(self, name, topic)

    def subscriptions(self) -> tuple[str, ...]:
        topics = [self.get_accepted, self.delta]
        if self.get_rejected is not None:
            topics.append(self.get_rejected)
        return tuple(topics)


def shadow_subscriptions(prefix: str) -> tuple[str, ...]:
    """What the cloud side subscribes to, to answer every convention's gets and read every report."""
    return (
        "$aws/things/+/shadow/get",
        "$aws/things/+/shadow/update",
        "+/shadow/get/trim",
        "+/shadow/update",
        f"{prefix}+/shadow/get",
        f"{prefix}+/shadow/update",
    )


def parse_shadow_topic(prefix: str, topic: str) -> tuple[str, ShadowConvention, ShadowAction] | None:
    """A device's shadow request or report (the cloud side's view); None for anything else."""
    parts = topic.split("/")
    actions = {"get": ShadowAction.GET, "update": ShadowAction.UPDATE}
    if len(parts) == 5 and parts[:2] == ["$aws", "things"] and parts[3] == "shadow" and parts[4] in actions:
        return parts[2], ShadowConvention.AWS, actions[parts[4]]
    if prefix and topic.startswith(prefix):
        device_id, _, rest = topic[len(prefix) :].partition("/")
        action = {"shadow/get": ShadowAction.GET, "shadow/update": ShadowAction.UPDATE}.get(rest)
        if device_id and action is not None:
            return device_id, ShadowConvention.PREFIXED, action
    if len(parts) == 4 and parts[0] and parts[1:] == ["shadow", "get", "trim"]:
        return parts[0], ShadowConvention.TRIM, ShadowAction.GET
    if len(parts) == 3 and parts[0] and parts[0] != "$aws" and parts[1:] == ["shadow", "update"]:
        return parts[0], ShadowConvention.TRIM, ShadowAction.UPDATE
    return None


# =========================================================================================================
# jobs/ble/rcv: [PERIPHERAL_ID, JOB_ID, FIRMWARE_TYPE, FILE_SIZE, FILE_HOST, FILE_PATH]

MAX_PAYLOAD_BYTES = 8 * 1024
JOB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
"""A JOB_ID the agent can answer to (and keep in file names): letters, digits, `-`, `_`, up to 64."""
MAX_JOB_ID = 36
"""sdk-nrf `NRF_CLOUD_FOTA_JOB_ID_SIZE` (a UUID: 32 digits, 4 hyphens): a longer id is invalid job info."""
HOST_RE = re.compile(
    r"^(?=.{1,253}(:|$))[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}"
    r"[A-Za-z0-9])?)*(?::[0-9]{1,5})?$"
)
MAX_FILES = 2
"""An init packet and its image (or one package zip): what lte-gateway and gateway-common download."""
_PCHAR = re.compile(r"^(?:[A-Za-z0-9\-._~!$&'()*+,;=:@]|%[0-9A-Fa-f]{2})+$")
"""RFC 3986 `pchar`: unreserved, sub-delims, `:`, `@` and percent-encoded octets. nRF Cloud's bundle ids
put `*` in every path (`<tenant>/APP*1e29dfa3*2.0.0/appdat.bin`)."""


def check_file_path(path: str) -> str:
    """One FILE_PATH entry, relative to FILE_HOST: any URL path characters, no way out of FILE_HOST.

    Refused: absolute paths, backslashes, control characters, empty segments, `.`/`..` segments (also
    percent-encoded, as a server would decode them) and encoded separators (`%2F`, `%5C`)."""
    if not path or path.startswith("/") or "\\" in path:
        raise ValueError(f"path must be relative to FILE_HOST, without backslashes: {path[:80]!r}")
    for segment in path.split("/"):
        if not segment:
            raise ValueError(f"path has an empty segment: {path[:80]!r}")
        if not _PCHAR.match(segment):
            raise ValueError(f"path has characters that are not allowed in a URL path: {path[:80]!r}")
        decoded = urllib.parse.unquote(segment, errors="strict")
        if decoded in (".", "..") or any(c in decoded for c in "/\\") or any(ord(c) < 0x20 for c in decoded):
            raise ValueError(f"path has a '.', '..', separator or control segment: {path[:80]!r}")
    return path


def split_file_path(file_path: str) -> tuple[str, ...]:
    """FILE_PATH holds space-separated paths (lte-gateway splits on ' '); extra spaces are tolerated."""
    paths = tuple(p for p in file_path.split(" ") if p)
    if not 1 <= len(paths) <= MAX_FILES:
        raise ValueError(f"FILE_PATH must hold 1 to {MAX_FILES} space-separated paths, not {len(paths)}")
    for p in paths:
        check_file_path(p)
    if len(set(paths)) != len(paths):
        raise ValueError("FILE_PATH names the same file twice")
    return paths


def normalize_host(value: str) -> str:
    """FILE_HOST as `host[:port]`. A leading `https://` is tolerated and dropped (Nordic's download client
    takes both forms); any other scheme or a path is refused."""
    host = value.strip()
    if host.lower().startswith("https://"):
        host = host[len("https://") :].rstrip("/")
    if not HOST_RE.match(host):
        raise ValueError("FILE_HOST must be a host name or address, optionally with :port (https:// allowed)")
    return host


class _BleJobModel(BaseModel):
    model_config = ConfigDict(strict=True, frozen=True)

    peripheral_id: Annotated[StrictStr, Field(min_length=17, max_length=17)]
    job_id: Annotated[StrictStr, Field(pattern=JOB_ID_RE.pattern, max_length=MAX_JOB_ID)]
    firmware_type: StrictInt
    file_size: Annotated[StrictInt, Field(ge=0, le=1 << 31)]
    file_host: Annotated[StrictStr, Field(min_length=1, max_length=260)]
    file_path: Annotated[StrictStr, Field(min_length=1, max_length=1024)]

    @field_validator("peripheral_id")
    @classmethod
    def _peripheral(cls, value: str) -> str:
        upper = value.upper()
        if not ADDRESS_RE.match(upper):
            raise ValueError("PERIPHERAL_ID must be a BLE address AA:BB:CC:DD:EE:FF")
        return upper

    @field_validator("firmware_type")
    @classmethod
    def _type(cls, value: int) -> int:
        # sdk-nrf `parse_job_info()` refuses a type outside its enum as invalid job info
        if value not in FirmwareType._value2member_map_:
            raise ValueError(f"FIRMWARE_TYPE {value} is not a known firmware type")
        return value

    @field_validator("file_host")
    @classmethod
    def _host(cls, value: str) -> str:
        return normalize_host(value)

    @field_validator("file_path")
    @classmethod
    def _paths(cls, value: str) -> str:
        split_file_path(value)
        return value


@dataclass(frozen=True, slots=True)
class BleJob:
    """A well-formed `jobs/ble/rcv` tuple."""

    peripheral_id: str
    job_id: str
    firmware_type: int
    file_size: int
    """what nRF Cloud uses for progress: the total of the files, as its bundle record says"""
    file_host: str
    file_path: str

    @property
    def paths(self) -> tuple[str, ...]:
        return split_file_path(self.file_path)

    def to_json(self) -> list[Any]:
        return [
            self.peripheral_id,
            self.job_id,
            self.firmware_type,
            self.file_size,
            self.file_host,
            self.file_path,
        ]

    def encode(self) -> bytes:
        return _dumps(self.to_json())

    @classmethod
    def from_json(cls, data: list[Any]) -> BleJob:
        """Raises pydantic's ValidationError or ValueError on anything malformed."""
        m = _BleJobModel(**dict(zip(_BleJobModel.model_fields, data, strict=True)))
        return cls(m.peripheral_id, m.job_id, m.firmware_type, m.file_size, m.file_host, m.file_path)


@dataclass(frozen=True, slots=True)
class InvalidJob:
    """Malformed, but its JOB_ID is readable, so the cloud can be told "Job info is invalid" (sdk-nrf's
    `nrf_cloud_fota.c` reads the job id first for exactly this)."""

    peripheral_id: str
    job_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class UnreadableJob:
    """Nothing to answer to (no readable JOB_ID): log and drop."""

    reason: str


ParsedJob = BleJob | InvalidJob | UnreadableJob


def ip_job(job_id: str, firmware_type: int, file_size: int, file_host: str, file_path: str) -> bytes:
    """An IP device's `jobs/rcv` tuple: the BLE tuple without PERIPHERAL_ID (sdk-nrf `nrf_cloud_fota.c`
    `enum rcv_item_idx`; docs/nrf-cloud.md, "IP devices' jobs"). Only the job service sends it."""
    return _dumps([job_id, firmware_type, file_size, file_host, file_path])


def _readable_job_id(data: list[Any]) -> str | None:
    if len(data) >= 2 and isinstance(data[1], str) and JOB_ID_RE.match(data[1]):
        return data[1]
    return None


def _readable_peripheral(data: list[Any]) -> str:
    if data and isinstance(data[0], str) and ADDRESS_RE.match(data[0].upper()):
        return str(data[0].upper())
    return ""


def _short(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(x) for x in first["loc"])
    return f"{where}: {first['msg']}"[:MAX_DETAILS]


def parse_ble_job(payload: bytes) -> ParsedJob:
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
        return BleJob.from_json(data)
    except ValidationError as exc:
        reason = _short(exc)
    except ValueError as exc:
        reason = str(exc)[:MAX_DETAILS]
    return InvalidJob(_readable_peripheral(data), job_id, reason) if job_id else UnreadableJob(reason)


# =========================================================================================================
# jobs/ble/req: ["<PERIPHERAL_ID>"]  (the cloud answers on jobs/ble/rcv with that peripheral's pending job)


def job_request(peripheral_id: str) -> bytes:
    return _dumps([peripheral_id])


def parse_job_request(payload: bytes) -> tuple[str, str | None]:
    """`[PERIPHERAL_ID]`, tolerating a second element naming a job; raises ValueError when malformed."""
    items = _loads_array(payload)
    if not 1 <= len(items) <= 2 or not all(isinstance(i, str) for i in items) or not items[0]:
        raise ValueError("expected [PERIPHERAL_ID] or [PERIPHERAL_ID, JOB_ID]")
    if len(items[0]) > 128:
        raise ValueError("PERIPHERAL_ID is too long")
    job_id = items[1] if len(items) == 2 and items[1] else None
    return items[0], job_id


def parse_ip_job_request(payload: bytes) -> str | None:
    """`jobs/req`: `[""]` for the next queued execution, or `["<JOB_ID>"]`; raises ValueError."""
    items = _loads_array(payload)
    if len(items) != 1 or not isinstance(items[0], str):
        raise ValueError('expected [""] or ["<JOB_ID>"]')
    return items[0] or None


# =========================================================================================================
# jobs/ble/update: [PERIPHERAL_ID, JOB_ID, STATUS, PROGRESS] while DOWNLOADING, else [..., STATUS, "details"]


@dataclass(frozen=True, slots=True)
class JobUpdate:
    """One execution update. `peripheral_id` is empty for an IP device's `jobs/update`."""

    peripheral_id: str
    job_id: str
    status: ExecutionStatus
    progress: int | None = None
    details: str = ""

    def encode(self) -> bytes:
        """The BLE form: the 4th element is always present, the progress while DOWNLOADING, else the
        details string (`""` when there is nothing to say)."""
        fourth: int | str = (
            self.progress
            if self.status is ExecutionStatus.DOWNLOADING and self.progress is not None
            else self.details
        )
        return _dumps([self.peripheral_id, self.job_id, int(self.status), fourth])

    @classmethod
    def decode(cls, payload: bytes) -> JobUpdate:
        """The BLE form, tolerant where gateways differ: STATUS as an int or a name, the 4th element as an
        int, a float or a string (numeric while DOWNLOADING: a progress), or missing. Raises ValueError."""
        items = _loads_array(payload)
        if not 3 <= len(items) <= 4 or not isinstance(items[0], str):
            # an empty PERIPHERAL_ID is kept: a gateway answers a job whose address it could not read
            raise ValueError("expected [PERIPHERAL_ID, JOB_ID, STATUS, PROGRESS|details]")
        return cls._build(items[0], items[1:])

    @classmethod
    def decode_ip(cls, payload: bytes) -> JobUpdate:
        """An IP device's `jobs/update`: `[JOB_ID, STATUS, details]`. Raises ValueError."""
        items = _loads_array(payload)
        if not 2 <= len(items) <= 3:
            raise ValueError("expected [JOB_ID, STATUS, details]")
        return cls._build("", items)

    @classmethod
    def _build(cls, peripheral_id: str, rest: list[Any]) -> JobUpdate:
        job_id, raw_status, *extra = rest
        if not isinstance(job_id, str) or not 1 <= len(job_id) <= 64:
            raise ValueError("JOB_ID must be a string of 1 to 64 characters")
        status = _status(raw_status)
        fourth = extra[0] if extra else ""
        progress: int | None = None
        text = ""
        if isinstance(fourth, bool) or fourth is None:
            pass
        elif isinstance(fourth, int | float):
            progress = int(fourth)
        elif isinstance(fourth, str):
            if fourth.strip().isdigit() and status is ExecutionStatus.DOWNLOADING:
                progress = int(fourth)
            else:
                text = fourth[:1024]
        else:
            raise ValueError("the 4th element must be a progress or a details string")
        return cls(peripheral_id, job_id, status, progress, text)


def _status(value: Any) -> ExecutionStatus:
    try:
        if isinstance(value, bool):
            raise ValueError(value)
        if isinstance(value, int):
            return ExecutionStatus(value)
        if isinstance(value, str):
            return ExecutionStatus(int(value)) if value.isdigit() else ExecutionStatus.from_name(value)
    except (KeyError, ValueError):
        pass
    raise ValueError(f"unknown status {value!r}")


# =========================================================================================================
# Shadow documents


@dataclass(frozen=True, slots=True)
class DesiredState:
    """What a shadow document (an accepted get, full or trimmed, or a delta) tells a gateway."""

    topic_prefix: str | None
    desired_connections: tuple[str, ...] | None
    """None: the document does not mention them (keep what is known)."""
    gateway_topic: str | None = None
    """`pairing.topics.g2c`: where gateway messages go (sdk-nrf `nrf_cloud_obj_endpoint_decode()` takes the
    message topics from the shadow); None when the document does not say."""


def _desired_of(doc: Any) -> dict[str, Any]:
    """`state.desired` of a full document, the `desired` of a trimmed one, or a delta's `state`."""
    if not isinstance(doc, dict):
        return {}
    state = doc.get("state", doc)
    if not isinstance(state, dict):
        return {}
    desired = state.get("desired", state if "desired" not in state and "reported" not in state else None)
    return desired if isinstance(desired, dict) else {}


def _connections(value: Any) -> tuple[str, ...] | None:
    """Both forms of `desiredConnections`: an array of address strings (current), or the obsolete array of
    objects with an `id` (lte-gateway's `gateway.c` reads both)."""
    if not isinstance(value, list):
        return None
    found: list[str] = []
    for item in value:
        raw = item.get("id") if isinstance(item, dict) else item
        if isinstance(raw, str):
            address = raw.strip().upper().removesuffix(" (RANDOM)")
            if ADDRESS_RE.match(address) and address not in found:
                found.append(address)
    return tuple(found)


def read_desired(payload: bytes) -> DesiredState:
    """Never raises: a shadow document that cannot be read teaches nothing."""
    try:
        doc = json.loads(payload)
    except (ValueError, RecursionError):
        return DesiredState(None, None)
    desired = _desired_of(doc)
    prefix = desired.get("nrfcloud_mqtt_topic_prefix")
    if not (isinstance(prefix, str) and PREFIX_RE.match(prefix)):
        prefix = None
    g2c = _dig(desired, "pairing", "topics", "g2c")
    if not (isinstance(g2c, str) and _MESSAGE_TOPIC_RE.match(g2c)):
        g2c = None
    return DesiredState(prefix, _connections(desired.get("desiredConnections")), g2c)


_MESSAGE_TOPIC_RE = re.compile(r"^[A-Za-z0-9_.:*-]+(/[A-Za-z0-9_.:*-]+){1,8}$")
"""A topic to publish on: segments of safe characters, no wildcards (`+`, `#`), no `$`."""


class LinkState(enum.StrEnum):
    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"
    CONNECTED = "connected"


def reported_state(connections: Mapping[str, LinkState | None], *, fota_v2_ble: bool | None = True) -> bytes:
    """A gateway's report: BLE FOTA support and the truth about each peripheral's link.

    `statusConnections` entries are `{"id", "status": {"connected": bool, "connecting": bool}}`, the shape
    lte-gateway's `device_shadow_data_encode` (src/ble/ble_codec.c) reports; None removes a peripheral (the
    shadow merge deletes a key set to null). `fota_v2_ble` None withdraws the capability."""
    status: dict[str, Any] = {}
    for address, state in sorted(connections.items()):
        if state is None:
            status[address] = None
            continue
        entry = {"connected": state is LinkState.CONNECTED, "connecting": state is LinkState.CONNECTING}
        status[address] = {"id": address, "status": entry}
    doc = {
        "state": {
            "reported": {
                "device": {"serviceInfo": {"fota_v2_ble": fota_v2_ble}},
                "statusConnections": status,
            }
        }
    }
    return _dumps(doc)


def reset_connections() -> bytes:
    """`statusConnections: null`: forget every earlier report (lte-gateway's `gateway_reported_encode` resets
    `desiredConnections` and `statusConnections` in the reported state the same way at start)."""
    return _dumps({"state": {"reported": {"statusConnections": None}}})


@dataclass(frozen=True, slots=True)
class GatewayReport:
    """What the cloud side reads from a device's shadow update; everything else is kept as is."""

    reported: dict[str, Any]
    fota_v2_ble: bool | None
    """None: not mentioned"""
    fota_v2: tuple[str, ...] | None
    connections: Mapping[str, bool | None]
    """address → connected (None: removed)"""


def read_report(payload: bytes) -> GatewayReport:
    """A `{"state":{"reported":…}}` update. Raises ValueError when there is no reported state."""
    doc = _loads(payload)
    reported = _dig(doc, "state", "reported")
    if not isinstance(reported, dict):
        raise ValueError("no state.reported object")
    fota_v2_ble: bool | None = None
    fota_v2: tuple[str, ...] | None = None
    service_info = _dig(reported, "device", "serviceInfo")
    if isinstance(service_info, dict):
        if "fota_v2_ble" in service_info:
            value = service_info["fota_v2_ble"]
            # a plain boolean today; an early form was an array of types (non-empty = supported)
            fota_v2_ble = bool(value) if isinstance(value, bool | list) else False
        raw = service_info.get("fota_v2")
        if isinstance(raw, list):
            fota_v2 = tuple(t for t in raw if isinstance(t, str))
    connections: dict[str, bool | None] = {}
    status = reported.get("statusConnections")
    if isinstance(status, dict):
        for address, entry in status.items():
            if entry is None:
                connections[address.upper()] = None
            elif isinstance(entry, dict):
                key = str(entry.get("id") or address).upper()
                connections[key] = _dig(entry, "status", "connected") is True
    return GatewayReport(reported, fota_v2_ble, fota_v2, connections)


def shadow_document(
    desired: Mapping[str, Any], reported: Mapping[str, Any], version: int, *, trimmed: bool
) -> bytes:
    """The answer to a get. Full: AWS's `{"state": {"desired", "reported"}, "version"}` (gateway-common's
    prefixed topics, and `$aws/…/get/accepted`). Trimmed: nRF Cloud's copy without the `state` envelope and
    metadata, `desired` at the root, as sdk-nrf's `nrf_cloud_decode_desired_obj()` reads it (`aws`,
    `trim`)."""
    if trimmed:
        return _dumps({"desired": dict(desired), "reported": dict(reported), "version": version})
    return _dumps({"state": {"desired": dict(desired), "reported": dict(reported)}, "version": version})


def delta_document(changed: Mapping[str, Any], version: int) -> bytes:
    return _dumps({"state": dict(changed), "version": version})


# =========================================================================================================
# Gateway messages (g2c): the connection events Nordic's gateways send for each peripheral


def device_link_event(address: str, connected: bool, timestamp: str) -> dict[str, Any]:
    """`device_connect_result` when a link comes up, `device_disconnect` when it goes down; the device object
    as lte-gateway's `device_connect_result_encode()` / `device_disconnect_result_encode()` write it
    (src/ble/ble_codec.c), the type names as gateway-common's `EventType` (src/interfaces/g2c.ts)."""
    return {
        "type": "device_connect_result" if connected else "device_disconnect",
        "timestamp": timestamp,
        "device": {"id": address, "address": {"address": address}, "status": {"connected": connected}},
    }


def gateway_message(gateway_id: str, event: Mapping[str, Any]) -> bytes:
    """The g2c envelope `{"type": "event", "gatewayId", "event"}` (lte-gateway `ble_codec.c`; gateway-common
    `mqttFacade.ts` `getG2CEvent`)."""
    return _dumps({"type": "event", "gatewayId": gateway_id, "event": dict(event)})


# =========================================================================================================


def _dumps(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _loads(payload: bytes) -> Any:
    try:
        return json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ValueError(f"not JSON: {str(exc)[:80]}") from exc


def _loads_array(payload: bytes) -> list[Any]:
    value = _loads(payload)
    if not isinstance(value, list):
        raise ValueError("not a JSON array")
    return value


def _dig(value: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def addresses(values: Iterable[str]) -> tuple[str, ...]:
    """Normalize peripheral ids (upper case), dropping anything that is not a BLE address."""
    out = []
    for v in values:
        u = v.strip().upper()
        if ADDRESS_RE.match(u) and u not in out:
            out.append(u)
    return tuple(out)
