"""Benchmark: the job service rolls out and completes one 1,000-peripheral job across 40 gateways.

Real parts: a Mosquitto with mutual TLS (tests/support/mosquitto.py), `fota-service serve` as its own
process on a fresh SQLite file, and 40 gateways simulated at the MQTT level in this process (each an aiomqtt
client that reports its shadow, then answers every job notification with DOWNLOADING 0 %, DOWNLOADING 100 %,
IN_PROGRESS and SUCCEEDED, one peripheral after another, with no DFU time). What is measured is therefore
the service: batch rollout (25 at a time), ~4,000 status updates persisted one transaction each, 1,000
notifications, completion.

    .venv/bin/python -m benchmarks.fota_service_rollout [--gateways 40] [--per-gateway 25] [--postgres]

`--postgres`: the service on a throw-away PostgreSQL server (hil/postgres.py) instead of SQLite.

Prints wall time from job creation to the last update handled, the service process's CPU time over that
interval (from /proc), updates per second, and the time to the first notification.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiomqtt
import httpx

from gateway_agent.cloud.wire import (
    BleJob,
    ExecutionStatus,
    JobTopic,
    JobUpdate,
    LinkState,
    ShadowConvention,
    ShadowTopics,
    job_topic,
    parse_ble_job,
    reported_state,
)
from hil.postgres import running_postgres
from hil.processes import fota_service, running_process
from hil.service_config import service_config
from simulator.demo_packages import app_zip
from tests.support.mosquitto import MosquittoBroker, free_port, running_broker

PREFIX = "prod/bench/"
TOKEN = secrets.token_hex(32)
GUARD = 300.0


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (Linux /proc), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Gateway:
    gateway_id: str
    peripherals: list[str]
    client: aiomqtt.Client
    notified: int = 0
    first_notification_at: float | None = None
    finished: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def shadow(self) -> ShadowTopics:
        return ShadowTopics(self.gateway_id, ShadowConvention.AWS)

    async def run(self) -> None:
        """Answer each notification with a realistic status sequence; done when every peripheral succeeded."""
        done: set[str] = set()
        async for message in self.client.messages:
            topic = str(message.topic)
            assert isinstance(message.payload, bytes)
            if topic == job_topic(PREFIX, self.gateway_id, JobTopic.BLE_RECEIVE):
                parsed = parse_ble_job(message.payload)
                assert isinstance(parsed, BleJob), parsed
                if parsed.peripheral_id in done:
                    continue
                self.notified += 1
                if self.first_notification_at is None:
                    self.first_notification_at = time.perf_counter()
                update_topic = job_topic(PREFIX, self.gateway_id, JobTopic.BLE_UPDATE)
                for update in (
                    JobUpdate(parsed.peripheral_id, parsed.job_id, ExecutionStatus.DOWNLOADING, progress=0),
                    JobUpdate(parsed.peripheral_id, parsed.job_id, ExecutionStatus.DOWNLOADING, progress=100),
                    JobUpdate(parsed.peripheral_id, parsed.job_id, ExecutionStatus.IN_PROGRESS),
                    JobUpdate(parsed.peripheral_id, parsed.job_id, ExecutionStatus.SUCCEEDED),
                ):
                    await self.client.publish(update_topic, update.encode(), qos=1)
                done.add(parsed.peripheral_id)
                if len(done) == len(self.peripherals):
                    # barrier: the shadow answer comes after all our updates were handled
                    await self.client.publish(self.shadow.get, b"", qos=1)
            elif topic == self.shadow.get_accepted and len(done) == len(self.peripherals):
                self.finished.set()
                return


@contextlib.asynccontextmanager
async def service_process(
    workdir: Path, broker: MosquittoBroker, port: int, db_url: str
) -> AsyncIterator[int]:
    """The service, once its MQTT bridge has subscribed; yields its pid (for its CPU time)."""
    config = service_config(
        workdir / "fota.toml",
        tenant="bench",
        token=TOKEN,
        db_url=db_url,
        port=port,
        broker=broker,
        topic_prefix=PREFIX,
        rollout={"batch_size": 25, "max_gateways": 100},
    )
    service = fota_service(config, workdir / "fota-service.log", "--log-level", "info")
    async with running_process(service, "mqtt connected", within=30):
        yield service.pid


async def bench(gateways: int, per_gateway: int, postgres: bool = False) -> dict[str, float]:
    with (
        tempfile.TemporaryDirectory() as tmp,
        running_broker(Path(tmp) / "broker") as broker,
        contextlib.ExitStack() as servers,
    ):
        workdir = Path(tmp)
        db_url = f"sqlite:///{workdir / 'fota.db'}"
        if postgres:
            server = servers.enter_context(running_postgres())
            db_url = server.url(server.create_database())
        port = free_port()
        async with (
            service_process(workdir, broker, port, db_url) as pid,
            contextlib.AsyncExitStack() as stack,
        ):
            gws: list[Gateway] = []
            for g in range(gateways):
                gw_id = f"gw-{g:03d}"
                client = await stack.enter_async_context(
                    aiomqtt.Client(
                        broker.host,
                        broker.port,
                        identifier=gw_id,
                        tls_context=broker.pki.client_ssl_context(gw_id),
                        max_queued_outgoing_messages=0,
                    )
                )
                peripherals = [f"C8:2E:{g >> 8:02X}:{g & 0xFF:02X}:00:{p:02X}" for p in range(per_gateway)]
                gws.append(Gateway(gw_id, peripherals, client))
            http = await stack.enter_async_context(
                httpx.AsyncClient(
                    base_url=f"http://127.0.0.1:{port}/v1", headers={"Authorization": f"Bearer {TOKEN}"}
                )
            )
            for gw in gws:
                await gw.client.subscribe(job_topic(PREFIX, gw.gateway_id, JobTopic.BLE_RECEIVE), qos=1)
                await gw.client.subscribe(gw.shadow.get_accepted, qos=1)
            for gw in gws:
                report = reported_state(dict.fromkeys(gw.peripherals, LinkState.CONNECTED))
                await gw.client.publish(gw.shadow.update, report, qos=1)
            zip_bytes = app_zip(2, 0x20000)
            r = await http.post("/firmwares", content=zip_bytes, headers={"content-type": "application/zip"})
            r.raise_for_status()
            bundle_id = r.json()["uris"][0].split("/")[1]  # UploadFirmware answers {uris}, as nRF Cloud
            # barrier: a gateway's shadow get is answered after its report was handled
            async with asyncio.timeout(30):
                for gw in gws:
                    await gw.client.publish(gw.shadow.get, b"", qos=1)
                    async for _ in gw.client.messages:
                        break
            devices = [p for gw in gws for p in gw.peripherals]
            tasks = [asyncio.create_task(gw.run()) for gw in gws]

            cpu0, t0 = cpu_seconds(pid), time.perf_counter()
            r = await http.post(
                "/fota-jobs",
                json={"bundleId": bundle_id, "name": "bench", "deviceIds": devices, "autoApply": True},
            )
            r.raise_for_status()
            job_id = r.json()["jobId"]
            async with asyncio.timeout(GUARD):
                await asyncio.gather(*tasks)
            t1, cpu1 = time.perf_counter(), cpu_seconds(pid)
            job = (await http.get(f"/fota-jobs/{job_id}")).json()
            assert job["status"] == "COMPLETED", job["status"]
            assert job["executionStats"]["succeeded"] == len(devices)
            first = min(gw.first_notification_at for gw in gws if gw.first_notification_at is not None)
            return {
                "peripherals": len(devices),
                "gateways": gateways,
                "wall_s": t1 - t0,
                "service_cpu_s": cpu1 - cpu0,
                "updates_per_s": 4 * len(devices) / (t1 - t0),
                "first_notification_ms": (first - t0) * 1000,
                "notifications": sum(gw.notified for gw in gws),
            }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gateways", type=int, default=40)
    parser.add_argument("--per-gateway", type=int, default=25)
    parser.add_argument("--postgres", action="store_true", help="PostgreSQL instead of SQLite")
    args = parser.parse_args()
    figures = asyncio.run(bench(args.gateways, args.per_gateway, args.postgres))
    print(
        f"fota-service rollout: {figures['peripherals']:.0f} peripherals"
        f" on {figures['gateways']:.0f} gateways, {'PostgreSQL' if args.postgres else 'SQLite'}\n"
        f"  job created → all SUCCEEDED handled: {figures['wall_s']:.2f} s wall\n"
        f"  service CPU over that interval:      {figures['service_cpu_s']:.2f} s\n"
        f"  status updates handled:              {figures['updates_per_s']:.0f} /s\n"
        f"  first notification after:            {figures['first_notification_ms']:.1f} ms\n"
        f"  notifications received:              {figures['notifications']:.0f}"
    )


if __name__ == "__main__":
    main()
