"""Soak: thousands of jobs through the gateway agent; what it holds must stay flat.

`python -m benchmarks.agent_soak [--jobs 2000] [--peripherals 16] [--json]`

Real parts: Mosquitto with mutual TLS, an HTTPS firmware host, `nrf-dfu sim serve` with simulated nRF52840s
at a compressed time scale, and `gateway-agent run` as its own process. The cloud side holds a queue of
pending jobs per peripheral and hands out the oldest one when the agent asks (`jobs/ble/req`), as nRF Cloud
does; the agent asks after every DFU. Retention is set low (`state.retention_max`) so pruning runs many times.

Printed at the start (after a warm-up) and at the end: the agent's RSS (VmRSS), its journal's bytes on disk
(database + WAL), its open file descriptors, and leftover download directories. Flat means the end is within
noise of the start, whatever the number of jobs.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiomqtt

from gateway_agent.cloud.wire import (
    BleJob,
    JobTopic,
    JobUpdate,
    job_topic,
    parse_job_request,
)
from hil.cli_process import spawn_cli, stop_cli
from simulator.server import address_range
from tests.agent.support import GATEWAY, PREFIX, app_bundle, firmware_server, write_config
from tests.support.mosquitto import MosquittoBroker, running_broker

REPO = Path(__file__).resolve().parents[1]
STEM = "T1/APP*5a5a5a5a*2.0.0/app"


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def _sample(pid: int, state: Path) -> dict[str, float]:
    journal = state / "journal.sqlite3"
    wal = state / "journal.sqlite3-wal"
    downloads = state / "downloads"
    return {
        "rss_mib": round(_status_kib(pid, "VmRSS") / 1024, 1),
        "journal_kib": round(sum(p.stat().st_size for p in (journal, wal) if p.exists()) / 1024, 1),
        "open_files": len(os.listdir(f"/proc/{pid}/fd")),
        "download_dirs": len(list(downloads.iterdir())) if downloads.is_dir() else 0,
    }


class Cloud:
    """Per peripheral, a FIFO of pending jobs; the head goes out when the gateway asks."""

    def __init__(self, broker: MosquittoBroker, jobs: dict[str, collections.deque[BleJob]]) -> None:
        self.broker = broker
        self.pending = jobs
        self.outcomes: collections.Counter[str] = collections.Counter()
        self.done = 0
        self.changed = asyncio.Event()

    async def run(self, ready: asyncio.Event) -> None:
        async with aiomqtt.Client(
            self.broker.host,
            self.broker.port,
            identifier="soak-cloud",
            tls_context=self.broker.pki.client_ssl_context("soak-cloud"),
            max_queued_outgoing_messages=0,
        ) as client:
            await client.subscribe(job_topic(PREFIX, GATEWAY, JobTopic.BLE_REQUEST), qos=1)
            await client.subscribe(job_topic(PREFIX, GATEWAY, JobTopic.BLE_UPDATE), qos=1)
            ready.set()
            rcv = job_topic(PREFIX, GATEWAY, JobTopic.BLE_RECEIVE)
            async for message in client.messages:
                payload = message.payload if isinstance(message.payload, bytes) else b""
                if str(message.topic).endswith(JobTopic.BLE_REQUEST.value):
                    peripheral, _ = parse_job_request(payload)
                    queue = self.pending.get(peripheral)
                    if queue:
                        await client.publish(rcv, queue[0].encode(), qos=1)
                    continue
                update = JobUpdate.decode(payload)
                if not update.status.terminal:
                    continue
                queue = self.pending[update.peripheral_id]
                if queue and queue[0].job_id == update.job_id:
                    queue.popleft()
                    self.outcomes[update.status.name] += 1
                    self.done += 1
                    self.changed.set()

    async def wait_done(self, count: int) -> None:
        while self.done < count:
            self.changed.clear()
            await self.changed.wait()


async def soak(jobs: int, peripherals: int, concurrency: int, retention: int, scale: str) -> dict[str, Any]:
    bundle = app_bundle(version=2, size=0x1000)
    addresses = address_range("C8:2E:1A:50:00:01", peripherals)
    queues = {a: collections.deque[BleJob]() for a in addresses}
    for i in range(jobs):
        address = addresses[i % peripherals]
        job_id = f"5oak{i:04d}-0000-4000-8000-000000000000"[:36]
        queues[address].append(BleJob(address, job_id, 0, bundle.size, "", f"{STEM}dat.bin {STEM}.bin"))
    warmup = min(jobs // 5, 4 * peripherals)
    with tempfile.TemporaryDirectory(prefix="soak", dir="/tmp") as tmp_name:
        tmp = Path(tmp_name)
        sock = tmp / "air.sock"
        sim = await spawn_cli(
            "sim", "serve", "--socket", str(sock), "--count", str(peripherals),
            "--address-base", addresses[0], "--time-scale", scale,
            ready=b"listening on", what="nrf-dfu sim serve",
        )  # fmt: skip
        try:
            with running_broker(tmp / "broker") as broker:
                async with firmware_server(broker.pki.ca, bundle.files(STEM)) as server:
                    for queue in queues.values():
                        for i, job in enumerate(queue):
                            queue[i] = BleJob(*job.to_json()[:4], server.file_host, job.file_path)
                    state = tmp / "state"
                    config = write_config(
                        tmp / "agent.toml", broker, state,
                        peripherals=[(a, "nrf52840-s140") for a in addresses],
                        extra=f'[ble]\nbackend = "simulator"\n[ble.options]\nsocket = "{sock}"\n',
                    )  # fmt: skip
                    text = config.read_text().replace("concurrency = 2", f"concurrency = {concurrency}")
                    text = text.replace(f'dir = "{state}"', f'dir = "{state}"\nretention_max = {retention}')
                    config.write_text(text)
                    cloud = Cloud(broker, queues)
                    ready = asyncio.Event()
                    cloud_task = asyncio.create_task(cloud.run(ready))
                    await ready.wait()
                    agent = await asyncio.create_subprocess_exec(
                        sys.executable, "-m", "gateway_agent", "run", "--config", str(config),
                        stderr=asyncio.subprocess.DEVNULL, cwd=REPO,
                    )  # fmt: skip
                    try:
                        await cloud.wait_done(warmup)
                        start = _sample(agent.pid, state)
                        t0 = time.perf_counter()
                        await cloud.wait_done(jobs)
                        elapsed = time.perf_counter() - t0
                        end = _sample(agent.pid, state)
                    finally:
                        agent.send_signal(signal.SIGTERM)
                        await agent.wait()
                        cloud_task.cancel()
                        await asyncio.gather(cloud_task, return_exceptions=True)
        finally:
            await stop_cli(sim)
    return {
        "jobs": jobs,
        "peripherals": peripherals,
        "retention_max": retention,
        "outcomes": dict(cloud.outcomes),
        "jobs_per_s": round((jobs - warmup) / elapsed, 1),
        "start": start,
        "end": end,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--peripherals", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--retention-max", type=int, default=200)
    parser.add_argument("--time-scale", default="0.01", help="real seconds per simulated second")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    figures = asyncio.run(
        soak(args.jobs, args.peripherals, args.concurrency, args.retention_max, args.time_scale)
    )
    if args.json:
        print(json.dumps(figures))
        return
    print(f"{figures['jobs']} jobs over {figures['peripherals']} peripherals: {figures['outcomes']}")
    print(f"{figures['jobs_per_s']} jobs/s after the warm-up")
    print(f"{'':14}{'start':>10}{'end':>10}")
    for key in ("rss_mib", "journal_kib", "open_files", "download_dirs"):
        print(f"{key:14}{figures['start'][key]:>10}{figures['end'][key]:>10}")


if __name__ == "__main__":
    main()
