"""Figures of the gateway agent as a real process: `python -m benchmarks.agent_figures [--dfus 4] [--json]`.

Real parts: Mosquitto with mutual TLS, an HTTPS firmware host (trustme), `nrf-dfu sim serve` with N simulated
nRF52840s, the agent started as `python -m gateway_agent run`, a plain MQTT client as the cloud. Printed:

- `rss_idle_mib`: the agent's VmRSS once connected and it has asked for jobs (nothing to do yet);
- `rss_peak_mib`: VmHWM after N concurrent DFUs (`dfu.concurrency = N`);
- `cpu_s_per_mib`: agent CPU (utime + stime) over the jobs / MiB of firmware (downloaded and sent over BLE);
- `connect_to_first_req_ms`: from CONNACK to the first `jobs/ble/req` PUBACK, from the agent's own log.
The simulator runs in its own process (its CPU is not counted); its time scale is real seconds per simulated
second, so wall-clock figures are not radio figures (benchmarks/dfu_throughput.py has those).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import sys
import tempfile
from pathlib import Path

from tests.agent.support import FakeCloud, app_bundle, firmware_server, job_tuple, write_config
from tests.support.mosquitto import running_broker

REPO = Path(__file__).resolve().parents[1]
BASE = 0xC82E1A000001


def _address(i: int) -> str:
    raw = f"{BASE + 2 * i:012X}"
    return ":".join(raw[j : j + 2] for j in range(0, 12, 2))


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(dfus: int, size: int, scale: str) -> dict[str, float]:
    bundle = app_bundle(version=2, size=size)
    peripherals = [_address(i) for i in range(dfus)]
    with tempfile.TemporaryDirectory(prefix="agf", dir="/tmp") as tmp_name:
        tmp = Path(tmp_name)
        sock = tmp / "air.sock"
        sim = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "from dfu.cli import main; main()", "sim", "serve", "--socket", str(sock),
            "--count", str(dfus), "--address-base", peripherals[0], "--time-scale", scale,
            stdout=asyncio.subprocess.PIPE, cwd=REPO,
        )  # fmt: skip
        assert sim.stdout is not None
        await sim.stdout.readline()
        logs: list[str] = []
        try:
            with running_broker(tmp / "broker") as broker:
                async with firmware_server(
                    broker.pki.ca, bundle.files("T1/APP*1e29dfa3*2.0.0/app")
                ) as server:
                    config = write_config(
                        tmp / "agent.toml", broker, tmp / "state",
                        peripherals=[(p, "nrf52840-s140") for p in peripherals],
                        extra=f'[ble]\nbackend = "simulator"\n[ble.options]\nsocket = "{sock}"\n',
                    )  # fmt: skip
                    config.write_text(config.read_text().replace("concurrency = 2", f"concurrency = {dfus}"))
                    async with FakeCloud(broker) as cloud:
                        agent = await asyncio.create_subprocess_exec(
                            sys.executable, "-m", "gateway_agent", "run", "--config", str(config),
                            stderr=asyncio.subprocess.PIPE, cwd=REPO,
                        )  # fmt: skip

                        async def pump() -> None:
                            assert agent.stderr is not None
                            async for line in agent.stderr:
                                logs.append(line.decode())

                        reader = asyncio.create_task(pump())
                        await cloud.wait_for(lambda: set(cloud.requests) >= set(peripherals))
                        rss_idle = _status_kib(agent.pid, "VmRSS")
                        cpu0 = _cpu_s(agent.pid)
                        for i, p in enumerate(peripherals):
                            await cloud.send_job(
                                job_tuple(
                                    p,
                                    f"bench-{i}",
                                    server.file_host,
                                    "T1/APP*1e29dfa3*2.0.0/app",
                                    bundle.size,
                                )
                            )
                        jobs = [f"bench-{i}" for i in range(dfus)]
                        await cloud.wait_for(lambda: all(cloud.terminal(j) for j in jobs))
                        cpu = _cpu_s(agent.pid) - cpu0
                        rss_peak = _status_kib(agent.pid, "VmHWM")
                        ok = sum(cloud.terminal(j)[0].status.name == "SUCCEEDED" for j in jobs)
                        agent.send_signal(signal.SIGTERM)
                        await agent.wait()
                        await reader
        finally:
            sim.send_signal(signal.SIGTERM)
            await sim.wait()
    first = next((m for line in logs if (m := re.search(r"since_connect_ms=([0-9.]+)", line))), None)
    mib = dfus * len(bundle.bin) / 2**20
    return {
        "dfus": dfus,
        "succeeded": ok,
        "firmware_bytes_each": len(bundle.bin),
        "rss_idle_mib": round(rss_idle / 1024, 1),
        "rss_peak_mib": round(rss_peak / 1024, 1),
        "cpu_s": round(cpu, 3),
        "cpu_s_per_mib": round(cpu / mib, 2),
        "connect_to_first_req_ms": float(first.group(1)) if first else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dfus", type=int, default=4)
    parser.add_argument("--size", type=lambda s: int(s, 0), default=0x10000, help="application bytes")
    parser.add_argument("--time-scale", default="0.1")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    figures = asyncio.run(measure(args.dfus, args.size, args.time_scale))
    if args.json:
        print(json.dumps(figures))
    else:
        for key, value in figures.items():
            print(f"{key:>26}: {value}")


if __name__ == "__main__":
    main()
