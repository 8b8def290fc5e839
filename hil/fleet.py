"""A whole fleet as real processes, the bench of the end-to-end tests and of the demo: Mosquitto (mutual
TLS), the FOTA job service, `nrf-dfu sim serve` airs
and gateway agents, plus a wire observer and the checks the end-to-end rollout tests make.

Every part is the shipped program started the way an operator starts it (`fota-service serve --config`,
`gateway-agent run --config`, `nrf-dfu sim serve`); the test only talks to them over their public edges:
REST to the service, MQTT (a separate observer client with its own certificate) and the simulator's socket.
Waiting is bounded polling on those edges, never a fixed sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import aiomqtt

from dfu.package import FirmwareFile, build_package
from dfu.signing import load_private_key
from gateway_agent.cloud.wire import (
    JobTopic,
    ShadowConvention,
    ShadowTopics,
    ble_job_filters,
    parse_job_topic,
)
from profiles.model import load_profile
from simulator.faults import FaultPlan
from simulator.firmware import make_application
from simulator.remote import RemoteAir
from simulator.server import address_range

DEMO_KEY_FILE = Path(str(resources.files("profiles") / "keys" / "demo-private.pem"))
SERVICE_MAIN = "fota_service.cli:main"
AGENT_MAIN = "gateway_agent.__main__:main"
SIM_MAIN = "dfu.cli:main"
POLL_S = 0.05
"""Polling step on real processes (bounded by a deadline each time)."""

T = TypeVar("T")


class FleetError(AssertionError):
    """A part of the fleet did not do what the test waited for; the message carries the relevant logs."""


# ------------------------------------------------------------------------------------------------ waiting
async def wait_for(
    probe: Callable[[], Awaitable[T | None]],
    *,
    within: float,
    what: str,
    diagnose: Callable[[], str] = lambda: "",
    step: float = POLL_S,
) -> T:
    """Poll `probe` until it returns something other than None; FleetError after `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        value = await probe()
        if value is not None:
            return value
        if time.monotonic() >= deadline:
            raise FleetError(f"timed out after {within:.0f}s waiting for {what}\n{diagnose()}")
        await asyncio.sleep(step)


# ------------------------------------------------------------------------------------------------ processes
@dataclass
class Managed:
    """One real subprocess with its output in a log file (no pipe to fill up and block it)."""

    name: str
    argv: list[str]
    log_file: Path
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    terminated: bool = False

    def start(self) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        with self.log_file.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.cwd,
                env=env,
            )

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def tail(self, lines: int = 40) -> str:
        text = "\n".join(self.log_text().splitlines()[-lines:])
        code = None if self.proc is None else self.proc.returncode
        return f"--- {self.name}: {'running' if code is None else f'exit {code}'} ---\n{text}\n"

    async def wait_for_log(self, pattern: str, *, within: float = 20.0) -> re.Match[str]:
        regex = re.compile(pattern, re.MULTILINE)

        async def probe() -> re.Match[str] | None:
            found = regex.search(self.log_text())
            if found is None and not self.running:
                raise FleetError(f"{self.name} exited before logging {pattern!r}\n{self.tail()}")
            return found

        return await wait_for(probe, within=within, what=f"{self.name}: {pattern!r}", diagnose=self.tail)

    def terminate(self) -> None:
        """SIGTERM, once: a second one could land after the program removed its handler and kill it."""
        if self.proc is not None and self.proc.poll() is None and not self.terminated:
            self.terminated = True
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL if it does not exit within `timeout`. Returns the exit code."""
        if self.proc is None:
            return None
        self.terminate()
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return self.proc.returncode


def stop_all(processes: Iterable[Managed], timeout: float = 15.0) -> dict[str, int | None]:
    """SIGTERM every process at once, then wait for each (SIGKILL past `timeout`): exit codes by name."""
    procs = list(processes)
    for p in procs:
        p.terminate()
    return {p.name: p.stop(timeout) for p in procs}


def python_command(module_main: str, *args: str) -> list[str]:
    """Run a console script's entry point with this interpreter (the venv need not be on PATH)."""
    module, _, func = module_main.partition(":")
    return [sys.executable, "-c", f"import sys; from {module} import {func}; sys.exit({func}())", *args]


# ------------------------------------------------------------------------------------------------ firmware
def app_bundle(version: int, *, profile: str = "nrf52840-s140", size: int = 0x1000) -> bytes:
    """A signed application package (nrfutil layout) the shipped profile's bootloader accepts: the demo key,
    its hw_version and its SoftDevice id as sd_req."""
    board = load_profile(profile).board
    return build_package(
        hw_version=board.hw_version,
        sd_req=[board.softdevice_id],
        application=FirmwareFile("app.bin", make_application(size, version)),
        application_version=version,
        key=load_private_key(DEMO_KEY_FILE),
    )


# ------------------------------------------------------------------------------------------------ simulator
@dataclass
class SimAir:
    """One `nrf-dfu sim serve` process and the peripherals it holds."""

    process: Managed
    socket: Path
    profiles: dict[str, str]
    """app address → profile name, in address order"""

    @property
    def addresses(self) -> list[str]:
        return list(self.profiles)

    async def state(self, address: str) -> dict[str, Any]:
        async with RemoteAir(self.socket) as remote:
            state: dict[str, Any] = await remote.device_state(address)
            return state

    async def app_versions(self) -> dict[str, int | None]:
        """Installed application version per peripheral, read from the simulator's device state (None: no
        valid application)."""
        out: dict[str, int | None] = {}
        async with RemoteAir(self.socket) as remote:
            for address in self.addresses:
                state = await remote.device_state(address)
                app = state.get("app")
                out[address] = None if app is None else int(app["version"])
        return out

    async def set_faults(self, address: str, **faults: Any) -> None:
        async with RemoteAir(self.socket) as remote:
            await remote.set_faults(address, FaultPlan.model_validate(faults))

    async def clear_faults(self, address: str) -> None:
        async with RemoteAir(self.socket) as remote:
            await remote.clear_faults(address)


def start_sim(
    name: str,
    directory: Path,
    socket_dir: Path,
    groups: Sequence[tuple[str, str, int]],
    *,
    time_scale: float,
) -> SimAir:
    """`nrf-dfu sim serve --config` with `[[peripheral]]` groups of (profile, first address, count)."""
    sock = socket_dir / f"{name}.sock"
    description = directory / f"{name}.toml"
    lines: list[str] = []
    profiles: dict[str, str] = {}
    for profile, base, count in groups:
        lines += ["[[peripheral]]", f'profile = "{profile}"', f'address = "{base}"', f"count = {count}", ""]
        profiles.update(dict.fromkeys(address_range(base, count), profile))
    description.write_text("\n".join(lines))
    proc = Managed(
        name,
        python_command(
            SIM_MAIN,
            "sim",
            "serve",
            "--socket",
            str(sock),
            "--config",
            str(description),
            "--time-scale",
            str(time_scale),
        ),
        directory / f"{name}.log",
    )
    proc.start()
    return SimAir(proc, sock, profiles)


# ------------------------------------------------------------------------------------------------ wire
@dataclass(frozen=True)
class WireEvent:
    """One job message as the observer saw it; `index` is the order the broker delivered them."""

    index: int
    kind: str
    """"rcv" (cloud → gateway), "update" or "req" (gateway → cloud)"""
    gateway: str
    payload: list[Any]

    @property
    def peripheral(self) -> str:
        return str(self.payload[0])

    @property
    def job_id(self) -> str:
        return str(self.payload[1]) if len(self.payload) > 1 else ""


PROBE_DEVICE = "fleet-probe"


@dataclass
class WireObserver:
    """A separate MQTT client (its own certificate) recording every BLE job tuple of every gateway, in the
    order the broker delivers them. All directions go through one subscription session, so a notification
    the service published *because of* an update is always recorded after that update."""

    prefix: str
    events: list[WireEvent] = field(default_factory=list)
    subscribed: asyncio.Event = field(default_factory=asyncio.Event)
    probe_answered: asyncio.Event = field(default_factory=asyncio.Event)
    client: aiomqtt.Client | None = None

    async def run(self, host: str, port: int, tls: ssl.SSLContext, identifier: str = "wire-observer") -> None:
        kinds = {JobTopic.BLE_RECEIVE: "rcv", JobTopic.BLE_UPDATE: "update", JobTopic.BLE_REQUEST: "req"}
        probe = ShadowTopics(PROBE_DEVICE, ShadowConvention.AWS).get_accepted
        async with aiomqtt.Client(
            host, port, identifier=identifier, tls_context=tls, protocol=aiomqtt.ProtocolVersion.V311
        ) as client:
            self.client = client
            for topic in ble_job_filters(self.prefix):
                await client.subscribe(topic, qos=1)
            await client.subscribe(probe, qos=1)
            self.subscribed.set()
            async for message in client.messages:
                if str(message.topic) == probe:
                    self.probe_answered.set()
                    continue
                found = parse_job_topic(self.prefix, str(message.topic))
                if (
                    found is None
                    or found[1] not in kinds
                    or not isinstance(message.payload, bytes | bytearray)
                ):
                    continue
                try:
                    payload = json.loads(message.payload)
                except ValueError:
                    continue
                if isinstance(payload, list) and payload:
                    self.events.append(WireEvent(len(self.events), kinds[found[1]], found[0], payload))

    async def service_listening(self, *, within: float) -> None:
        """Ask for a shadow (as a device would) until the service answers: its MQTT bridge is subscribed."""
        assert self.client is not None

        async def probe() -> bool | None:
            if self.probe_answered.is_set():
                return True
            assert self.client is not None
            await self.client.publish(ShadowTopics(PROBE_DEVICE, ShadowConvention.AWS).get, b"", qos=1)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.5):
                    await self.probe_answered.wait()
            return True if self.probe_answered.is_set() else None

        await wait_for(probe, within=within, what="the job service to answer on MQTT")

    def of_job(self, job_id: str, kind: str | None = None) -> list[WireEvent]:
        return [e for e in self.events if e.job_id == job_id and (kind is None or e.kind == kind)]


@contextlib.asynccontextmanager
async def observing(
    prefix: str, host: str, port: int, tls: ssl.SSLContext, *, within: float = 10.0
) -> AsyncIterator[WireObserver]:
    observer = WireObserver(prefix)
    task = asyncio.create_task(observer.run(host, port, tls))
    try:
        waiter = asyncio.create_task(observer.subscribed.wait())
        done, _ = await asyncio.wait({task, waiter}, timeout=within, return_when=asyncio.FIRST_COMPLETED)
        if waiter not in done:
            waiter.cancel()
            if task in done:
                task.result()  # raises the connection error
            raise FleetError("the wire observer did not subscribe in time")
        yield observer
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
            await task


@dataclass(frozen=True)
class Waves:
    """The rollout of one job as seen on the wire."""

    order: list[str]
    """peripherals in the order their first notification arrived"""
    waves: list[list[str]]
    """`order` cut into consecutive batches of `batch_size`"""
    violations: list[str]
    """every place the wire contradicts the batching rule (empty: consistent)"""
    gateways_per_wave: list[dict[str, int]]


def rollout_waves(events: Sequence[WireEvent], job_id: str, batch_size: int) -> Waves:
    """Check the documented rollout rule against the wire: executions go out in batches of `batch_size`, and
    the next batch only once every execution of the current one was acknowledged by its device (any
    `jobs/ble/update` for it: it left QUEUED).

    Cut the peripherals, in the order of their first notification, into chunks of `batch_size`; then every
    first notification of chunk k+1 must come after the first update of every peripheral of chunk k. A
    service that sent more than `batch_size` at once, or fewer, or did not wait for the acknowledgements,
    breaks this at a chunk boundary (the extra notifications leave in the same burst, before any device
    could have answered).
    """
    first_rcv: dict[str, WireEvent] = {}
    first_update: dict[str, WireEvent] = {}
    gateway_of: dict[str, str] = {}
    for e in events:
        if e.job_id != job_id or e.kind == "req":
            continue
        if e.kind == "rcv":
            first_rcv.setdefault(e.peripheral, e)
            gateway_of.setdefault(e.peripheral, e.gateway)
        else:
            first_update.setdefault(e.peripheral, e)
    order = sorted(first_rcv, key=lambda p: first_rcv[p].index)
    waves = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    violations: list[str] = []
    for k in range(len(waves) - 1):
        current, following = waves[k], waves[k + 1]
        unacked = [p for p in current if p not in first_update]
        if unacked:
            violations.append(f"wave {k + 1}: {unacked} never acknowledged, yet wave {k + 2} went out")
            continue
        last_ack = max(first_update[p].index for p in current)
        early = [p for p in following if first_rcv[p].index < last_ack]
        if early:
            violations.append(
                f"wave {k + 2}: {len(early)} notified before wave {k + 1} was fully acknowledged: {early}"
            )
    for p, upd in first_update.items():
        if p not in first_rcv or upd.index < first_rcv[p].index:
            violations.append(f"{p}: an update before any notification of the job")
    gateways = [_count(gateway_of[p] for p in wave) for wave in waves]
    return Waves(order, waves, violations, gateways)


def _count(items: Iterable[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        out[item] = out.get(item, 0) + 1
    return dict(sorted(out.items()))


# -------------------------------------------------------------------------------------------- service REST
@dataclass
class ServiceClient:
    """The job service's REST API (nRF Cloud's paths), as an operator's script would call it."""

    http: Any
    """an `httpx.AsyncClient` with the base URL and the bearer token"""

    async def _ok(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self.http.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise FleetError(f"{method} {path}: HTTP {response.status_code} {response.text}")
        return response.json() if response.content else None

    async def put_device(self, device_id: str, **body: Any) -> dict[str, Any]:
        result: dict[str, Any] = await self._ok("PUT", f"/v1/devices/{device_id}", json=body)
        return result

    async def device(self, device_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._ok("GET", f"/v1/devices/{device_id}")
        return result

    async def upload_firmware(self, data: bytes, *, name: str) -> str:
        """The bundle id: nRF Cloud's UploadFirmware answers `{uris}`, `<tenant>/<bundleId>/<file>` each."""
        result: dict[str, Any] = await self._ok(
            "POST",
            "/v1/firmwares",
            params={"name": name},
            content=data,
            headers={"content-type": "application/zip"},
        )
        return str(result["uris"][0].split("/")[1])

    async def create_job(self, **body: Any) -> str:
        created = await self._ok("POST", "/v1/fota-jobs", json=body)
        return str(created["jobId"])

    async def apply_job(self, job_id: str) -> dict[str, Any]:
        """Apply (202, no body, as nRF Cloud answers), then the job as it stands."""
        await self._ok("POST", f"/v1/fota-jobs/{job_id}/apply")
        return await self.job(job_id)

    async def job(self, job_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._ok("GET", f"/v1/fota-jobs/{job_id}")
        return result

    async def jobs(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            params: dict[str, Any] = {"pageLimit": 100}
            if token:
                params["pageNextToken"] = token
            page = await self._ok("GET", "/v1/fota-jobs", params=params)
            items += page["items"]
            token = page.get("pageNextToken")
            if not token:
                return items

    async def executions(self, job_id: str) -> list[dict[str, Any]]:
        page = await self._ok("GET", f"/v1/fota-job-execution-statuses/{job_id}")
        items: list[dict[str, Any]] = page["items"]
        return items

    async def groups(self) -> dict[str, list[str]]:
        return {g["name"]: list(g["deviceIds"]) for g in await self._ok("GET", "/v1/groups")}

    async def wait_job(
        self, job_id: str, status: str, *, within: float, diagnose: Callable[[], str] = lambda: ""
    ) -> dict[str, Any]:
        last: dict[str, Any] = {}

        async def probe() -> dict[str, Any] | None:
            nonlocal last
            last = await self.job(job_id)
            return last if last["status"] == status else None

        return await wait_for(
            probe,
            within=within,
            step=0.2,  # a REST call per step: leave the CPU to the fleet
            what=f"job {job_id} to be {status}",
            diagnose=lambda: (
                f"job now: {json.dumps(last.get('executionStats'))} {last.get('status')}\n" + diagnose()
            ),
        )


# ------------------------------------------------------------------------------------------------ gateways
def gateway_config(
    path: Path,
    *,
    gateway_id: str,
    broker_host: str,
    broker_port: int,
    ca_file: Path,
    cert_file: Path,
    key_file: Path,
    topic_prefix: str,
    peripherals: dict[str, str],
    concurrency: int,
    file_host: str,
    require_https: bool,
    download_ca_file: Path | None,
    state_dir: Path,
    sim_socket: Path | None,
) -> Path:
    """A `gateway-agent run --config` file as an operator writes it (TOML): the simulator backend on
    `sim_socket`, or (None) BlueZ, as on a Pi."""

    def q(value: object) -> str:
        return json.dumps(str(value))  # a TOML basic string is JSON-compatible for these values

    lines = [
        "[gateway]",
        f"id = {q(gateway_id)}",
        "",
        "[broker]",
        f"host = {q(broker_host)}",
        f"port = {broker_port}",
        f"ca_file = {q(ca_file)}",
        f"cert_file = {q(cert_file)}",
        f"key_file = {q(key_file)}",
        "reconnect_min_s = 0.2",
        "reconnect_max_s = 2.0",
        "",
        "[cloud]",
        f"topic_prefix = {q(topic_prefix)}",
        "",
        "[dfu]",
        f"concurrency = {concurrency}",
        "",
        "[download]",
        f"allowed_hosts = [{q(file_host)}]",
        f"require_https = {'true' if require_https else 'false'}",
        *([f"ca_file = {q(download_ca_file)}"] if download_ca_file is not None else []),
        "",
        "[state]",
        f"dir = {q(state_dir)}",
        "",
        "[ble]",
        *(
            ['backend = "bluez"', ""]
            if sim_socket is None
            else ['backend = "simulator"', "", "[ble.options]", f"socket = {q(sim_socket)}", ""]
        ),
    ]
    for address, profile in peripherals.items():
        lines += ["[[peripherals]]", f"address = {q(address)}", f"profile = {q(profile)}", ""]
    path.write_text("\n".join(lines))
    return path


# ------------------------------------------------------------------------------------------------ the fleet
@dataclass
class Gateway:
    gateway_id: str
    process: Managed
    air: SimAir
    """this gateway's own air (its site): one `nrf-dfu sim serve` per gateway"""


@dataclass
class Fleet:
    directory: Path
    prefix: str
    batch_size: int
    profile: str
    service: Managed
    api: ServiceClient
    observer: WireObserver
    gateways: list[Gateway]

    @property
    def peripherals(self) -> list[str]:
        """Every peripheral of the fleet's main profile (the rollout target)."""
        return [a for gw in self.gateways for a, p in gw.air.profiles.items() if p == self.profile]

    @property
    def odd_peripherals(self) -> list[str]:
        """The extra peripherals of another profile (`extra=` of `running_fleet`)."""
        return [a for gw in self.gateways for a, p in gw.air.profiles.items() if p != self.profile]

    def gateway_of(self, address: str) -> Gateway:
        return next(gw for gw in self.gateways if address in gw.air.addresses)

    async def app_versions(self) -> dict[str, int | None]:
        out: dict[str, int | None] = {}
        for gw in self.gateways:
            out.update(await gw.air.app_versions())
        return out

    def diagnose(self) -> str:
        parts = [self.service.tail(30)]
        parts += [gw.process.tail(30) for gw in self.gateways]
        parts += [gw.air.process.tail(10) for gw in self.gateways]
        return "\n".join(parts)


@contextlib.asynccontextmanager
async def running_fleet(
    directory: Path,
    *,
    gateways: int = 3,
    per_gateway: int = 20,
    concurrency: int = 3,
    time_scale: float = 0.05,
    batch_size: int = 25,
    batch_interval: float = 600.0,
    profile: str = "nrf52840-s140",
    extra: Sequence[tuple[int, str, str]] = (),
    tenant: str = "fleet",
    bluez: bool = False,
) -> AsyncIterator[Fleet]:
    """Broker, `nrf-dfu sim serve` per gateway, the job service and the gateway agents, all real processes,
    with the gateways and peripherals registered at the service and every agent's shadow report received.

    `bluez`: each agent runs the BlueZ backend, as on a Pi, against its own private bus on which
    `nrf-dfu sim bluez` serves that gateway's simulated peripherals as bluetoothd would.

    `batch_interval` defaults high so that in a test only acknowledgements roll the next batch out: the
    documented "or after batch_interval" escape can then not blur the waves being checked. `extra` adds
    peripherals of other profiles: (gateway number from 1, address, profile), served and registered too.
    """
    import httpx

    from hil.broker import free_port, running_broker
    from hil.dbus import running_dbus

    started: list[Managed] = []
    socket_dir = Path(tempfile.mkdtemp(prefix="fleet", dir="/tmp"))  # unix socket paths must stay short
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, socket_dir, True)
        broker = stack.enter_context(running_broker(directory / "broker"))
        pki = broker.pki
        try:
            # one air per gateway, started together
            airs = []
            for g in range(1, gateways + 1):
                groups = [(profile, f"C8:2E:1A:{g:02X}:00:01", per_gateway)]
                groups += [(prof, address, 1) for gw_no, address, prof in extra if gw_no == g]
                air = start_sim(f"sim-{g}", directory, socket_dir, groups, time_scale=time_scale)
                started.append(air.process)
                airs.append(air)

            token = secrets.token_hex(32)  # a throw-away bench service: a fresh token each run
            http_port = free_port()
            prefix = f"prod/{tenant}/"
            service_cert = pki.client("fota-service")
            config = directory / "fota-service.toml"
            config.write_text(
                "\n".join(
                    [
                        "[service]",
                        f'tenant = "{tenant}"',
                        f'token = "{token}"',
                        f'db_url = "sqlite:///{directory / "fota.db"}"',
                        "[http]",
                        'host = "127.0.0.1"',
                        f"port = {http_port}",
                        f'tls_cert = "{pki.server_cert}"',
                        f'tls_key = "{pki.server_key}"',
                        "[mqtt]",
                        'host = "127.0.0.1"',
                        f"port = {broker.port}",
                        f'ca_file = "{pki.ca_file}"',
                        f'cert_file = "{service_cert.cert_file}"',
                        f'key_file = "{service_cert.key_file}"',
                        f'topic_prefix = "{prefix}"',
                        "[rollout]",
                        f"batch_size = {batch_size}",
                        f"batch_interval = {batch_interval}",
                        "",
                    ]
                )
            )
            service = Managed(
                "fota-service",
                python_command(SERVICE_MAIN, "serve", "--config", str(config)),
                directory / "fota-service.log",
            )
            service.start()
            started.append(service)
            for air in airs:
                await air.process.wait_for_log(r"^listening on ", within=30)

            ctx = ssl.create_default_context(cafile=str(pki.ca_file))
            async with httpx.AsyncClient(
                base_url=f"https://127.0.0.1:{http_port}",
                verify=ctx,
                headers={"authorization": f"Bearer {token}"},
                timeout=30.0,
            ) as http:
                api = ServiceClient(http)

                async def http_up() -> bool | None:
                    if not service.running:
                        raise FleetError(f"fota-service exited\n{service.tail()}")
                    try:
                        response = await http.get("/v1/devices")
                    except httpx.TransportError:
                        return None
                    return True if response.status_code == 200 else None

                await wait_for(http_up, within=30, what="the job service's REST API", diagnose=service.tail)

                async with observing(
                    prefix, broker.host, broker.port, pki.client_ssl_context("observer")
                ) as obs:
                    await obs.service_listening(within=30)

                    gws: list[Gateway] = []
                    for g, air in enumerate(airs, start=1):
                        gateway_id = f"fleet-gw-{g}"
                        # Registered as a plain device: the BLE FOTA capability must come from the agent's own
                        # shadow report (device.serviceInfo.fota_v2_ble), which also tells us it is online.
                        await api.put_device(gateway_id, type="ip")
                        for address in air.addresses:
                            await api.put_device(address, type="ble", gatewayId=gateway_id)
                        cert = pki.client(gateway_id)
                        state_dir = directory / gateway_id
                        state_dir.mkdir()
                        agent_env: dict[str, str] = {}
                        if bluez:
                            bus = stack.enter_context(running_dbus(socket_dir / f"bus-{g}"))
                            bluetoothd = Managed(
                                f"bluetoothd-{g}",
                                python_command(
                                    SIM_MAIN,
                                    "sim",
                                    "bluez",
                                    "--socket",
                                    str(air.socket),
                                    "--bus",
                                    bus.address,
                                ),
                                directory / f"bluetoothd-{g}.log",
                            )
                            bluetoothd.start()
                            started.append(bluetoothd)
                            await bluetoothd.wait_for_log(r"org\.bluez on", within=30)
                            agent_env["DBUS_SYSTEM_BUS_ADDRESS"] = bus.address
                        cfg = gateway_config(
                            directory / f"{gateway_id}.toml",
                            gateway_id=gateway_id,
                            broker_host=broker.host,
                            broker_port=broker.port,
                            ca_file=pki.ca_file,
                            cert_file=cert.cert_file,
                            key_file=cert.key_file,
                            topic_prefix=prefix,
                            peripherals=air.profiles,
                            concurrency=concurrency,
                            file_host=f"127.0.0.1:{http_port}",
                            require_https=True,
                            download_ca_file=pki.ca_file,
                            state_dir=state_dir,
                            sim_socket=None if bluez else air.socket,
                        )
                        agent = Managed(
                            gateway_id,
                            python_command(AGENT_MAIN, "run", "--config", str(cfg)),
                            directory / f"{gateway_id}.log",
                            env=agent_env,
                        )
                        agent.start()
                        started.append(agent)
                        gws.append(Gateway(gateway_id, agent, air))

                    fleet = Fleet(directory, prefix, batch_size, profile, service, api, obs, gws)

                    async def agents_online() -> bool | None:
                        for gw in gws:
                            if not gw.process.running:
                                raise FleetError(f"{gw.gateway_id} exited\n{gw.process.tail()}")
                            if not (await api.device(gw.gateway_id))["fotaV2Ble"]:
                                return None
                        return True

                    await wait_for(
                        agents_online,
                        within=30,
                        what="every gateway to report fota_v2_ble in its shadow",
                        diagnose=fleet.diagnose,
                    )
                    yield fleet
            # A graceful stop is part of the contract: every program exits 0 on SIGTERM.
            codes = stop_all(reversed(started))
            unclean = {name: code for name, code in codes.items() if code != 0}
            if unclean:
                logs = "\n".join(p.tail(15) for p in started if p.name in unclean)
                raise FleetError(f"unclean exit on SIGTERM: {unclean}\n{logs}")
        finally:
            stop_all(reversed(started))
