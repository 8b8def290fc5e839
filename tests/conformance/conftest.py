"""One world for the conformance suite, every part real: Mosquitto with mutual TLS, an HTTPS firmware host,
simulated nRF52840s in an `nrf-dfu sim serve` process, and one `gateway-agent run` process per shadow
convention, each configured as an operator would on a fresh gateway: no `[[peripherals]]` (the cloud's
desiredConnections names them; the default profile `generic-nrf52` serves them) and, where the convention
allows, no topic prefix (learned from the shadow).
"""

from __future__ import annotations

import signal
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import pytest_asyncio

from hil.cli_process import spawn_cli, stop_cli
from simulator.remote import RemoteAir
from simulator.server import address_range
from tests.agent.support import Bundle, FirmwareServer, app_bundle, firmware_server
from tests.conformance.cloud import NordicCloud
from tests.support.agent_process import AgentProcess
from tests.support.mosquitto import MosquittoBroker, running_broker

TENANT = "ba1752ef-0d36-4fcf-8748-3cad9f8801b0"
"""A tenant id as nRF Cloud writes them (lte-gateway `src/ble/cli.c` examples)."""
PREFIX = f"prod/{TENANT}/"
CONVENTIONS = ("aws", "trim", "prefixed")
PERIPHERALS = 24
SCALE = "0.1"


@dataclass
class Gateway:
    convention: str
    gateway_id: str
    cloud: NordicCloud
    agent: AgentProcess
    config: Path


@dataclass
class World:
    broker: MosquittoBroker
    server: FirmwareServer
    bundle: Bundle
    socket: Path
    addresses: list[str]
    gateways: dict[str, Gateway] = field(default_factory=dict)
    taken: set[str] = field(default_factory=set)

    def peripheral(self) -> str:
        """A simulated peripheral no other case uses."""
        address = next(a for a in self.addresses if a not in self.taken)
        self.taken.add(address)
        return address

    async def app_version(self, address: str) -> int:
        async with RemoteAir(self.socket) as air:
            state = await air.device_state(address)
        return int(state["app"]["version"])


def agent_config(
    path: Path, broker: MosquittoBroker, state: Path, socket: Path, gateway: str, convention: str
) -> Path:
    cert = broker.pki.client(gateway)
    prefix = f'topic_prefix = "{PREFIX}"' if convention == "prefixed" else ""
    path.write_text(
        f"""
[gateway]
id = "{gateway}"
[broker]
host = "{broker.host}"
port = {broker.port}
ca_file = "{broker.pki.ca_file}"
cert_file = "{cert.cert_file}"
key_file = "{cert.key_file}"
reconnect_min_s = 0.05
reconnect_max_s = 0.5
[cloud]
shadow_topics = "{convention}"
{prefix}
[dfu]
concurrency = 3
[download]
allowed_hosts = ["127.0.0.1:*"]
ca_file = "{broker.pki.ca_file}"
[state]
dir = "{state}"
[ble]
backend = "simulator"
[ble.options]
socket = "{socket}"
"""
    )
    return path


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    directory = tmp_path_factory.mktemp("conformance")
    bundle = app_bundle(version=2, size=0x3000)
    addresses = address_range("C8:2E:1A:C0:00:01", PERIPHERALS)
    with tempfile.TemporaryDirectory(prefix="conf", dir="/tmp") as short:  # unix socket paths are short
        sock = Path(short) / "air.sock"
        sim = await spawn_cli(
            "sim", "serve", "--socket", str(sock), "--count", str(PERIPHERALS),
            "--address-base", addresses[0], "--time-scale", SCALE,
            ready=b"listening on", what="nrf-dfu sim serve",
        )  # fmt: skip
        try:
            with running_broker(directory / "broker") as broker:
                async with firmware_server(broker.pki.ca, {}) as server:
                    w = World(broker, server, bundle, sock, addresses)
                    try:
                        for convention in CONVENTIONS:
                            gateway_id = f"gw-{convention}"
                            config = agent_config(
                                directory / f"{gateway_id}.toml",
                                broker,
                                directory / f"state-{gateway_id}",
                                sock,
                                gateway_id,
                                convention,
                            )
                            cloud = NordicCloud(broker, gateway_id, convention, PREFIX, [])
                            await cloud.__aenter__()
                            w.gateways[convention] = Gateway(
                                convention, gateway_id, cloud, AgentProcess(config), config
                            )
                        for gw in w.gateways.values():
                            await gw.agent.start()
                        yield w
                    finally:
                        for gw in w.gateways.values():
                            if gw.agent.proc is not None:
                                assert await gw.agent.stop(signal.SIGTERM) == 0, "\n".join(gw.agent.logs)
                            await gw.cloud.__aexit__(None, None, None)
                            print(f"--- {gw.gateway_id}\n" + "\n".join(gw.agent.logs))  # shown on failure
        finally:
            await stop_cli(sim)
