"""The agent with real parts: Mosquitto with mutual TLS, an HTTPS firmware host, simulated nRF52s.

The agent runs in-process (its own tasks on the test's loop) against the simulator's bleak backend; the cloud
is a plain MQTT client on the same broker. Waits are for events (a status arriving), never timers.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway_agent.app import Agent
from gateway_agent.cloud.wire import ExecutionStatus
from gateway_agent.config import load_config
from simulator.air import Air
from simulator.bleak_backend import backend_for
from tests.agent.support import (
    FakeCloud,
    app_bundle,
    assert_honest_sequence,
    broker_outage,
    firmware_server,
    job_tuple,
    persistent_broker,
    write_config,
)
from tests.support.mosquitto import running_broker

pytestmark = pytest.mark.e2e

APP = "C8:2E:1A:33:44:10"
OTHER = "C8:2E:1A:33:44:20"
SCALE = 0.05  # real seconds per simulated second


@contextlib.asynccontextmanager
async def running_agent(agent: Agent) -> AsyncIterator[asyncio.Task[None]]:
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        yield task
    finally:
        stop.set()
        await task


def make_air(*addresses: str) -> Air:
    air = Air(time_scale=SCALE)
    for address in addresses:
        air.add_profile("nrf52840-s140", address)
    return air


async def test_agent_job_goes_downloading_in_progress_succeeded(tmp_path: Path) -> None:
    bundle = app_bundle(version=2)
    with running_broker(tmp_path / "broker") as broker:
        async with firmware_server(broker.pki.ca, bundle.files("T1/APP*2c3cf63b*v2.0.1/app")) as server:
            cfg = load_config(
                write_config(
                    tmp_path / "agent.toml", broker, tmp_path / "state", peripherals=[(APP, "nrf52840-s140")]
                )
            )
            air = make_air(APP)
            agent = Agent(cfg, backend=backend_for(air))
            async with FakeCloud(broker) as cloud:
                cloud.pending[APP] = job_tuple(
                    APP, "job-1", server.file_host, "T1/APP*2c3cf63b*v2.0.1/app", bundle.size
                )
                async with running_agent(agent):
                    await cloud.wait_for(lambda: cloud.terminal("job-1"))
                    assert cloud.requests[0] == APP  # asked for its job after connecting
                    # statusConnections tells the truth: reset, then the idle peripheral, then its link
                    # coming up and going down around the DFU (lte-gateway `device_shadow_data_encode()`)
                    reports = [r["state"]["reported"] for r in cloud.shadow_reports]
                    assert reports[0]["statusConnections"] is None
                    assert reports[1]["device"]["serviceInfo"]["fota_v2_ble"] is True
                    links = [r["statusConnections"][APP]["status"] for r in reports[1:]]
                    assert links[0] == {"connected": False, "connecting": False}
                    assert {"connected": True, "connecting": False} in links
                    assert links[-1] == {"connected": False, "connecting": False}
                    # after the DFU the gateway asks again (the cloud has nothing more)
                    await cloud.wait_for(lambda: cloud.requests.count(APP) >= 2)
    updates = cloud.statuses("job-1")
    assert_honest_sequence(updates)
    assert updates[0].status is ExecutionStatus.DOWNLOADING
    assert updates[0].progress == 0
    assert any(u.status is ExecutionStatus.DOWNLOADING and u.progress == 100 for u in updates)
    assert ExecutionStatus.IN_PROGRESS in [u.status for u in updates]
    state = air.device_state(APP)
    assert state["mode"] == "app"
    assert state["app"]["version"] == 2


async def test_agent_survives_broker_restart_mid_job(tmp_path: Path) -> None:
    bundle = app_bundle(version=3, size=0x8000)
    with persistent_broker(tmp_path / "broker") as broker:
        async with firmware_server(broker.pki.ca, bundle.files("T1/APP*cd5412d9*v3.0.0/app")) as server:
            path = write_config(
                tmp_path / "agent.toml", broker, tmp_path / "state", peripherals=[(APP, "nrf52840-s140")]
            )
            air = make_air(APP)
            agent = Agent(load_config(path), backend=backend_for(air))
            cloud = FakeCloud(broker, persistent=True)
            await cloud.connect()
            cloud.pending[APP] = job_tuple(
                APP, "job-restart", server.file_host, "T1/APP*cd5412d9*v3.0.0/app", bundle.size
            )
            async with running_agent(agent):
                await cloud.wait_for(
                    lambda: any(u.status is ExecutionStatus.IN_PROGRESS for u in cloud.updates)
                )
                await broker_outage(broker, cloud, agent)  # mid-transfer (the loop, so the radio, runs on)
                await asyncio.to_thread(broker.start)
                await cloud.connect()  # same persistent session: whatever was queued for it arrives
                await cloud.wait_for(lambda: cloud.terminal("job-restart"))
            await cloud.disconnect()
    assert agent.link.connects >= 2
    updates = cloud.statuses("job-restart")
    assert_honest_sequence(updates)
    transfer = [
        int(u.details.removeprefix("transfer ").rstrip("%") or 0)
        for u in updates
        if u.status is ExecutionStatus.IN_PROGRESS
    ]
    assert transfer == sorted(transfer)
    assert agent.outbox_left == 0
    assert air.device_state(APP)["app"]["version"] == 3


async def test_agent_with_untrusted_server_certificate_keeps_retrying(tmp_path: Path) -> None:
    from tests.support.mosquitto import Pki

    stranger = Pki(tmp_path / "stranger")
    with running_broker(tmp_path / "broker") as broker:
        cfg = load_config(
            write_config(
                tmp_path / "agent.toml", broker, tmp_path / "state", peripherals=[(APP, "nrf52840-s140")],
                ca_file=stranger.ca_file,
            )
        )  # fmt: skip
        agent = Agent(cfg, backend=backend_for(make_air()))
        async with running_agent(agent):
            while agent.link.failures < 3:  # it keeps retrying, with backoff
                agent.link.failure.clear()
                await agent.link.failure.wait()
        assert agent.link.connects == 0
        assert "not trusted by broker.ca_file" in agent.link.last_error


async def test_agent_with_client_certificate_from_another_ca_is_refused(tmp_path: Path) -> None:
    from tests.support.mosquitto import Pki

    with running_broker(tmp_path / "broker") as broker:
        path = write_config(
            tmp_path / "agent.toml", broker, tmp_path / "state", peripherals=[(APP, "nrf52840-s140")]
        )
        stranger = Pki(tmp_path / "stranger").client("gw-test-1")
        text = path.read_text()
        for key, value in (("cert_file", stranger.cert_file), ("key_file", stranger.key_file)):
            text = "\n".join(
                f'{key} = "{value}"' if line.startswith(f"{key} =") else line for line in text.splitlines()
            )
        path.write_text(text.replace("[cloud]", "connect_timeout_s = 0.5\n[cloud]"))
        agent = Agent(load_config(path), backend=backend_for(make_air()))
        async with running_agent(agent):
            while agent.link.failures < 3:
                agent.link.failure.clear()
                await agent.link.failure.wait()
        assert agent.link.connects == 0
        assert "refused our certificate" in agent.link.last_error, agent.link.last_error
