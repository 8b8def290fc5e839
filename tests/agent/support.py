"""Real parts for the agent's tests: an HTTPS firmware server, a fake cloud over the real broker, configs.

The firmware server is a small HTTP/1.1 server on asyncio + ssl (trustme certificates) because the tests need
what off-the-shelf servers do not offer on demand: break a connection mid-body, ignore Range, change a file's
ETag, or pause mid-body until the test says go (to kill the agent while it downloads).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import ssl
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trustme

from dfu.package import DfuPackage
from gateway_agent.cloud.wire import ExecutionStatus, JobUpdate
from tests.support.dfu_sim import app_zip
from tests.support.mosquitto import MosquittoBroker, Pki
from tests.support.mqtt_peer import MqttPeer

if TYPE_CHECKING:
    from gateway_agent.app import Agent

PREFIX = "test/T1/"
GATEWAY = "gw-test-1"


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    status: int = 0


@dataclass
class FirmwareServer:
    """HTTPS server of static files with Range/If-Range/ETag, and faults on demand."""

    ca: trustme.CA
    files: dict[str, bytes] = field(default_factory=dict)
    ignore_range: bool = False
    break_after: dict[str, list[int]] = field(default_factory=dict)
    """path -> byte counts: each request of that path sends that many body bytes, then aborts (consumed)"""
    pause_after: dict[str, int] = field(default_factory=dict)
    """path -> bytes: send them, set `paused`, wait for `resume` (consumed)"""
    etag_salt: str = ""
    redirects: dict[str, str] = field(default_factory=dict)
    """path -> Location: answered 302 with that Location (an absolute URL or a path)"""
    headers: dict[str, dict[str, str]] = field(default_factory=dict)
    """path -> extra response headers (e.g. a Content-Encoding the client did not ask for)"""
    requests: list[Request] = field(default_factory=list)
    paused: asyncio.Event = field(default_factory=asyncio.Event)
    resume: asyncio.Event = field(default_factory=asyncio.Event)
    host: str = "127.0.0.1"
    port: int = 0
    _server: asyncio.Server | None = None

    def etag(self, path: str) -> str:
        return '"' + hashlib.sha256(self.files[path] + self.etag_salt.encode()).hexdigest()[:16] + '"'

    async def start(self) -> None:
        cert = self.ca.issue_cert("127.0.0.1", "localhost")
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(ctx)
        self._server = await asyncio.start_server(self._handle, self.host, 0, ssl=ctx)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    @property
    def file_host(self) -> str:
        return f"{self.host}:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError, ssl.SSLError):
            writer.close()
            return
        lines = head.decode("latin-1").split("\r\n")
        _method, target, _ = lines[0].split(" ", 2)
        headers = {
            k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:] if ":" in ln)
        }
        path = target.lstrip("/")
        req = Request(path, headers)
        self.requests.append(req)
        try:
            await self._respond(req, writer)
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _respond(self, req: Request, writer: asyncio.StreamWriter) -> None:
        location = self.redirects.get(req.path)
        if location is not None:
            req.status = 302
            writer.write(
                f"HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            await writer.drain()
            return
        body = self.files.get(req.path)
        if body is None:
            req.status = 404
            writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            await writer.drain()
            return
        etag = self.etag(req.path)
        start = 0
        rng = req.headers.get("range")
        if rng and not self.ignore_range and rng.startswith("bytes=") and rng.endswith("-"):
            if_range = req.headers.get("if-range")
            if if_range is None or if_range == etag:
                start = int(rng[len("bytes=") : -1])
        part = body[start:]
        if start:
            req.status = 206
            status = f"206 Partial Content\r\nContent-Range: bytes {start}-{len(body) - 1}/{len(body)}"
        else:
            req.status = 200
            status = "200 OK"
        extra = "".join(f"{k}: {v}\r\n" for k, v in self.headers.get(req.path, {}).items())
        writer.write(
            f"HTTP/1.1 {status}\r\nContent-Length: {len(part)}\r\nETag: {etag}\r\n"
            f"Accept-Ranges: bytes\r\n{extra}Connection: close\r\n\r\n".encode()
        )
        cut = self.break_after.get(req.path)
        if cut:
            n = cut.pop(0)
            writer.write(part[:n])
            await writer.drain()
            writer.transport.abort()
            return
        pause = self.pause_after.pop(req.path, None)
        if pause is not None:
            writer.write(part[:pause])
            await writer.drain()
            self.paused.set()
            await self.resume.wait()
            part = part[pause:]
        writer.write(part)
        await writer.drain()


@contextlib.asynccontextmanager
async def firmware_server(ca: trustme.CA, files: dict[str, bytes]) -> AsyncIterator[FirmwareServer]:
    server = FirmwareServer(ca, dict(files))
    await server.start()
    try:
        yield server
    finally:
        server.resume.set()
        await server.close()


@contextlib.contextmanager
def persistent_broker(directory: Path) -> Iterator[MosquittoBroker]:
    """The suite's Mosquitto with persistence on, so a stop/start keeps sessions and their queued QoS 1
    messages: the fake cloud (clean_session false) then misses nothing the agent published meanwhile."""
    pki = Pki(directory / "pki")
    broker = MosquittoBroker(pki, directory)
    store = directory / "store"
    store.mkdir()
    text = broker.config_file.read_text().replace(
        "persistence false", f"persistence true\npersistence_location {store}/\nautosave_interval 1"
    )
    broker.config_file.write_text(text)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


async def broker_outage(broker: MosquittoBroker, cloud: FakeCloud, agent: Agent) -> None:
    """The cloud leaves, the broker stops, and this returns once the agent has counted the lost link (its
    own signal, no timer); `broker.start()` and `cloud.connect()` end the outage."""
    await cloud.disconnect()
    await asyncio.to_thread(broker.stop)
    failures = agent.link.failures
    while agent.link.failures == failures:
        agent.link.failure.clear()
        await agent.link.failure.wait()


@dataclass(frozen=True)
class Bundle:
    """An application update as nRF Cloud hosts it: the init packet and the image, both named `.bin`, the
    init packet `<name>dat.bin` (lte-gateway `src/ble/cli.c` examples: `app_thingy_s132dat.bin`)."""

    dat: bytes
    bin: bytes
    version: int

    @property
    def size(self) -> int:
        return len(self.dat) + len(self.bin)

    def files(self, stem: str) -> dict[str, bytes]:
        return {f"{stem}dat.bin": self.dat, f"{stem}.bin": self.bin}


def app_bundle(version: int = 2, size: int = 0x5000) -> Bundle:
    image = DfuPackage.from_zip(app_zip(version, size)).images[0]
    return Bundle(image.init_packet, image.firmware, version)


def job_tuple(peripheral: str, job_id: str, host: str, stem: str, size: int, fw_type: int = 0) -> bytes:
    """A `jobs/ble/rcv` tuple as nRF Cloud sends it (sdk-nrf `nrf_cloud_fota.c` `enum rcv_item_idx`), the
    image listed first: nothing tells the agent which file is which but the bytes."""
    return json.dumps([peripheral, job_id, fw_type, size, host, f"{stem}.bin {stem}dat.bin"]).encode()


class FakeCloud(MqttPeer):
    """The cloud's side of the MQTT conversation, through the same broker: answers jobs/ble/req from a
    queue of pending jobs and collects every jobs/ble/update in arrival order."""

    def __init__(
        self,
        broker: MosquittoBroker,
        gateway: str = GATEWAY,
        prefix: str = PREFIX,
        *,
        persistent: bool = False,
    ) -> None:
        super().__init__(broker, "cloud", clean_session=not persistent)
        self.base = f"{prefix}{gateway}/jobs/ble"
        self.pending: dict[str, bytes] = {}
        """peripheral -> job tuple sent when the gateway asks"""
        self.updates: list[JobUpdate] = []
        self.requests: list[str] = []
        self.shadow_reports: list[dict[str, Any]] = []
        self.gateway = gateway

    def subscriptions(self) -> list[str]:
        return [f"{self.base}/update", f"{self.base}/req", f"$aws/things/{self.gateway}/shadow/#"]

    async def send_job(self, payload: bytes) -> None:
        await self.publish(f"{self.base}/rcv", payload)

    async def handle(self, topic: str, payload: bytes) -> None:
        if topic.endswith("/jobs/ble/update"):
            self.updates.append(JobUpdate.decode(payload))
        elif topic.endswith("/jobs/ble/req"):
            (peripheral,) = json.loads(payload)
            self.requests.append(peripheral)
            job = self.pending.get(peripheral)
            if job is not None:
                await self.send_job(job)
        elif topic.endswith("/shadow/update") and payload:
            self.shadow_reports.append(json.loads(payload))

    def statuses(self, job_id: str) -> list[JobUpdate]:
        return [u for u in self.updates if u.job_id == job_id]

    def terminal(self, job_id: str) -> list[JobUpdate]:
        return [u for u in self.statuses(job_id) if u.status.terminal]


def assert_honest_sequence(
    updates: list[JobUpdate], final: ExecutionStatus = ExecutionStatus.SUCCEEDED
) -> None:
    """DOWNLOADING (non-decreasing %), then IN_PROGRESS, then exactly one terminal status, last."""
    statuses = [u.status for u in updates]
    assert statuses[-1] is final, updates
    assert sum(1 for s in statuses if s.terminal) == 1, updates
    order = {ExecutionStatus.DOWNLOADING: 0, ExecutionStatus.IN_PROGRESS: 1}
    ranks = [order.get(s, 2) for s in statuses]
    assert ranks == sorted(ranks), updates
    progress = [u.progress for u in updates if u.status is ExecutionStatus.DOWNLOADING]
    assert progress == sorted(progress), updates  # type: ignore[type-var]


def write_config(
    path: Path,
    broker: MosquittoBroker,
    state_dir: Path,
    *,
    peripherals: list[tuple[str, str]],
    identity: str = GATEWAY,
    ca_file: Path | None = None,
    download_ca: Path | None = None,
    extra: str = "",
) -> Path:
    cert = broker.pki.client(identity)
    lines = [
        "[gateway]",
        f'id = "{GATEWAY}"',
        "[broker]",
        f'host = "{broker.host}"',
        f"port = {broker.port}",
        f'ca_file = "{ca_file or broker.pki.ca_file}"',
        f'cert_file = "{cert.cert_file}"',
        f'key_file = "{cert.key_file}"',
        "reconnect_min_s = 0.05",
        "reconnect_max_s = 0.5",
        "[cloud]",
        f'topic_prefix = "{PREFIX}"',
        "[dfu]",
        "concurrency = 2",
        "[download]",
        'allowed_hosts = ["127.0.0.1:*"]',
        f'ca_file = "{download_ca or broker.pki.ca_file}"',
        "[state]",
        f'dir = "{state_dir}"',
        extra,
    ]
    for address, profile in peripherals:
        lines += ["[[peripherals]]", f'address = "{address}"', f'profile = "{profile}"']
    path.write_text("\n".join(lines) + "\n")
    return path
