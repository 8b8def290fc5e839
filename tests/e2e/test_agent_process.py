"""The agent as a real process (`python -m gateway_agent run`), killed with SIGKILL mid-download and
mid-transfer, stopped with SIGTERM; the peripherals live in their own `nrf-dfu sim serve` process so they keep
their bootloader state across agent restarts, like real boards.

Every wait is for an event (a status arriving, a server pausing, a process exiting), never a timer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway_agent.cloud.wire import ExecutionStatus
from simulator.remote import RemoteAir
from tests.agent.support import (
    Bundle,
    FakeCloud,
    FirmwareServer,
    app_bundle,
    assert_honest_sequence,
    firmware_server,
    job_tuple,
    write_config,
)
from tests.support.agent_process import AgentProcess
from tests.support.dfu_sim import app_zip
from tests.support.mosquitto import MosquittoBroker, running_broker

pytestmark = pytest.mark.e2e

APP = "C8:2E:1A:00:00:01"
SCALE = "0.1"
REPO = Path(__file__).resolve().parents[2]
SIM_CLI = "from dfu.cli import main; main()"


@dataclass
class World:
    broker: MosquittoBroker
    server: FirmwareServer
    cloud: FakeCloud
    bundle: Bundle
    config: Path
    socket: Path
    logs: list[str]


async def _spawn(*args: str, stderr: int | None = None) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, *args, stdout=asyncio.subprocess.PIPE, stderr=stderr, cwd=REPO
    )


@contextlib.asynccontextmanager
async def world(tmp_path: Path, size: int = 0x8000) -> AsyncIterator[World]:
    bundle = app_bundle(version=2, size=size)
    with tempfile.TemporaryDirectory(prefix="agt", dir="/tmp") as short:  # unix socket paths are short
        sock = Path(short) / "air.sock"
        sim = await _spawn(
            "-c", SIM_CLI, "sim", "serve", "--socket", str(sock), "--count", "1", "--address-base", APP,
            "--time-scale", SCALE,
        )  # fmt: skip
        try:
            assert sim.stdout is not None
            assert (await sim.stdout.readline()).decode().strip() == f"listening on {sock}"
            with running_broker(tmp_path / "broker") as broker:
                async with firmware_server(
                    broker.pki.ca, bundle.files("T1/APP*1e29dfa3*2.0.0/app")
                ) as server:
                    config = write_config(
                        tmp_path / "agent.toml",
                        broker,
                        tmp_path / "state",
                        peripherals=[(APP, "nrf52840-s140")],
                        extra=f'[ble]\nbackend = "simulator"\n[ble.options]\nsocket = "{sock}"\n',
                    )
                    async with FakeCloud(broker) as cloud:
                        logs: list[str] = []
                        try:
                            yield World(broker, server, cloud, bundle, config, sock, logs)
                        finally:
                            print("\n".join(logs))  # the agents' logs, shown when a test fails
        finally:
            if sim.returncode is None:
                sim.send_signal(signal.SIGTERM)
                await sim.wait()


def _percent(details: str) -> int:
    match = re.fullmatch(r"transfer (\d+)%", details)
    return int(match.group(1)) if match else -1


async def app_version(sock: Path) -> int:
    async with RemoteAir(sock) as remote:
        state = await remote.device_state(APP)
    return int(state["app"]["version"])


async def test_agent_process_sigkill_mid_download_resumes_with_range(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        w.server.pause_after["T1/APP*1e29dfa3*2.0.0/app.bin"] = 20_000
        w.cloud.pending[APP] = job_tuple(
            APP, "job-k1", w.server.file_host, "T1/APP*1e29dfa3*2.0.0/app", w.bundle.size
        )
        agent = AgentProcess(w.config, w.logs)
        await agent.start()
        await w.server.paused.wait()
        # a DOWNLOADING update above 0 % means the agent counted (so flushed) part of the image
        await w.cloud.wait_for(lambda: any((u.progress or 0) > 0 for u in w.cloud.statuses("job-k1")))
        assert await agent.stop(signal.SIGKILL) == -signal.SIGKILL
        w.server.resume.set()
        again = AgentProcess(w.config, w.logs)
        await again.start()
        await w.cloud.wait_for(lambda: w.cloud.terminal("job-k1"))
        assert await again.stop(signal.SIGTERM) == 0
        assert await app_version(w.socket) == 2
    bins = [r for r in w.server.requests if r.path == "T1/APP*1e29dfa3*2.0.0/app.bin"]
    assert bins[-1].status == 206, bins
    start = int(bins[-1].headers["range"].removeprefix("bytes=").rstrip("-"))
    assert start > 0  # the image was not fetched from zero again
    assert_honest_sequence(w.cloud.statuses("job-k1"))


async def test_agent_process_sigkill_mid_transfer_resumes_from_the_bootloader(tmp_path: Path) -> None:
    async with world(tmp_path, size=0x10000) as w:
        w.cloud.pending[APP] = job_tuple(
            APP, "job-k2", w.server.file_host, "T1/APP*1e29dfa3*2.0.0/app", w.bundle.size
        )
        agent = AgentProcess(w.config, w.logs)
        await agent.start()

        def transferring() -> bool:
            return any(
                u.status is ExecutionStatus.IN_PROGRESS and _percent(u.details) >= 20
                for u in w.cloud.statuses("job-k2")
            )

        await w.cloud.wait_for(transferring)
        assert await agent.stop(signal.SIGKILL) == -signal.SIGKILL
        before = len(w.cloud.statuses("job-k2"))
        again = AgentProcess(w.config, w.logs)
        await again.start()
        await w.cloud.wait_for(lambda: w.cloud.terminal("job-k2"))
        assert await again.stop(signal.SIGTERM) == 0
        assert await app_version(w.socket) == 2
    updates = w.cloud.statuses("job-k2")
    assert_honest_sequence(updates)
    assert all(u.status is not ExecutionStatus.DOWNLOADING for u in updates[before:])  # not downloaded again
    done = [line for line in w.logs if "event=dfu_succeeded" in line]
    match = re.search(r"resumed_from=(\d+)", done[-1])
    assert match, done
    assert int(match.group(1)) > 0, done  # the transfer continued where the bootloader was


async def test_agent_process_sigterm_leaves_job_resumable_and_exits_zero(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        w.cloud.pending[APP] = job_tuple(
            APP, "job-t", w.server.file_host, "T1/APP*1e29dfa3*2.0.0/app", w.bundle.size
        )
        agent = AgentProcess(w.config, w.logs)
        await agent.start()
        await w.cloud.wait_for(
            lambda: any(u.status is ExecutionStatus.IN_PROGRESS for u in w.cloud.statuses("job-t"))
        )
        assert await agent.stop(signal.SIGTERM) == 0
        assert not w.cloud.terminal("job-t")
        assert any("event=dfu_interrupted" in line for line in w.logs)
        assert any("event=agent_stopped" in line and "outbox_left=0" in line for line in w.logs)
        again = AgentProcess(w.config, w.logs)
        await again.start()
        await w.cloud.wait_for(lambda: w.cloud.terminal("job-t"))
        assert await again.stop(signal.SIGTERM) == 0
    assert_honest_sequence(w.cloud.statuses("job-t"))
    for line in w.logs:
        if "job=" in line:
            assert "peripheral=" in line, line


async def test_agent_process_refuses_wrong_client_certificate(tmp_path: Path) -> None:
    from tests.support.mosquitto import Pki

    async with world(tmp_path) as w:
        stranger = Pki(tmp_path / "stranger").client("gw-test-1")
        text = w.config.read_text()
        text = re.sub(r'cert_file = ".*"', f'cert_file = "{stranger.cert_file}"', text)
        text = re.sub(r'key_file = ".*"', f'key_file = "{stranger.key_file}"', text)
        w.config.write_text(text.replace("[cloud]", "connect_timeout_s = 0.5\n[cloud]"))
        agent = AgentProcess(w.config, w.logs)
        await agent.start()
        await agent.wait_log(
            lambda: sum("event=broker_" in line and "certificate" in line for line in w.logs) >= 2
        )
        assert await agent.stop(signal.SIGTERM) == 0
        assert w.cloud.requests == []


async def test_agent_process_notifies_systemd_ready_watchdog_stopping(tmp_path: Path) -> None:
    import socket

    with (
        tempfile.TemporaryDirectory(prefix="ntf", dir="/tmp") as short,
        running_broker(tmp_path / "b") as broker,
    ):
        path = Path(short) / "notify.sock"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(path))
        sock.setblocking(False)
        config = write_config(  # the simulator backend: no bluetoothd here for the startup check to find
            tmp_path / "agent.toml",
            broker,
            tmp_path / "state",
            peripherals=[],
            extra='[ble]\nbackend = "simulator"\n',
        )
        env = {**os.environ, "NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "200000"}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway_agent", "run", "--config", str(config), cwd=REPO, env=env,
            stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        loop = asyncio.get_running_loop()
        seen: list[str] = []
        try:
            while seen.count("WATCHDOG=1") < 2:
                seen.append((await loop.sock_recv(sock, 256)).decode())
            assert seen[0] == "READY=1"
            proc.send_signal(signal.SIGTERM)
            while "STOPPING=1" not in seen:
                seen.append((await loop.sock_recv(sock, 256)).decode())
            assert await proc.wait() == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            sock.close()


def _poisoned(zip_bytes: bytes) -> bytes:
    """A valid package whose first member claims compression method 99: `zipfile` raises
    NotImplementedError reading it (the review's poisoned zip)."""
    data = bytearray(zip_bytes)
    local = data.index(b"PK\x03\x04")
    data[local + 8 : local + 10] = (99).to_bytes(2, "little")
    central = data.index(b"PK\x01\x02")
    data[central + 10 : central + 12] = (99).to_bytes(2, "little")
    return bytes(data)


async def test_agent_process_poisoned_package_fails_its_job_and_the_next_job_succeeds(tmp_path: Path) -> None:
    """Done-means of the robustness issue: a mutated package ends FAILED with a cause, and the next job for
    the same peripheral SUCCEEDS through `gateway-agent run`, as it does after a restart."""
    async with world(tmp_path) as w:
        poisoned = _poisoned(app_zip(2, 0x3000))
        w.server.files["T1/APP*0badf00d*2.0.0/app.bin"] = poisoned
        w.cloud.pending[APP] = json.dumps(
            [APP, "job-poison", 0, len(poisoned), w.server.file_host, "T1/APP*0badf00d*2.0.0/app.bin"]
        ).encode()
        agent = AgentProcess(w.config, w.logs)
        await agent.start()
        await w.cloud.wait_for(lambda: w.cloud.terminal("job-poison"))
        (failed,) = w.cloud.terminal("job-poison")
        assert failed.status is ExecutionStatus.FAILED, failed
        assert failed.details.startswith(("Error applying update", "Error during download")), failed
        assert await agent.stop(signal.SIGTERM) == 0
        w.cloud.pending[APP] = job_tuple(
            APP, "job-after", w.server.file_host, "T1/APP*1e29dfa3*2.0.0/app", w.bundle.size
        )
        again = AgentProcess(w.config, w.logs)  # and after a restart: nothing left stuck
        await again.start()
        await w.cloud.wait_for(lambda: w.cloud.terminal("job-after"))
        assert w.cloud.terminal("job-after")[0].status is ExecutionStatus.SUCCEEDED
        assert await again.stop(signal.SIGTERM) == 0
        assert await app_version(w.socket) == 2
    assert len(w.cloud.terminal("job-poison")) == 1  # answered once, never again after the restart
    # `gateway-agent run` sets umask 077 itself, also outside systemd: the journal is the agent's alone
    journal = tmp_path / "state" / "journal.sqlite3"
    assert journal.stat().st_mode & 0o077 == 0, oct(journal.stat().st_mode)
