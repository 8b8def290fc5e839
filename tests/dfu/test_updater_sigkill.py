"""A real client process killed with SIGKILL mid-image; a fresh `nrf-dfu update` process resumes the transfer.

The peripheral lives in `nrf-dfu sim serve` (its own process), like a real board outliving a crashed gateway.
Real time sped up by `--time-scale`; every wait is for a line on a pipe, never a sleep.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.dfu_sim import app_zip

pytestmark = pytest.mark.e2e

APP = "C8:2E:1A:00:00:01"
SCALE = "0.05"
REPO = Path(__file__).resolve().parents[2]
IMAGE = 160 * 1024
KILL_AFTER = 40 * 1024

CLIENT = """
import asyncio, sys
from dfu.package import DfuPackage
from dfu.updater import Updater, Phase
from profiles.model import load_profile
from simulator.bleak_backend import backend_for
from simulator.remote import RemoteAir

def on(event):
    if event.phase is Phase.TRANSFERRING:
        print("sent", event.image_bytes_sent, flush=True)

async def main():
    backend = backend_for(RemoteAir(sys.argv[1]))
    package = DfuPackage.load(sys.argv[2])
    await Updater(backend, load_profile("nrf52840-s140"), package, address=sys.argv[3], on_progress=on).run()

asyncio.run(main())
"""


async def _spawn(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, cwd=REPO
    )


async def _line(proc: asyncio.subprocess.Process) -> str:
    assert proc.stdout is not None
    return (await asyncio.wait_for(proc.stdout.readline(), 60)).decode().strip()


@pytest.fixture
async def served() -> AsyncIterator[Path]:
    with tempfile.TemporaryDirectory(prefix="dfu", dir="/tmp") as tmp:
        sock = Path(tmp) / "s.sock"
        cli = "from dfu.cli import main; main()"
        proc = await _spawn(
            "-c", cli, "sim", "serve", "--socket", str(sock), "--address-base", APP, "--time-scale", SCALE
        )
        try:
            assert await _line(proc) == f"listening on {sock}"
            yield sock
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                await asyncio.wait_for(proc.wait(), 30)


async def test_sigkilled_client_is_resumed_by_a_fresh_process(served: Path, tmp_path: Path) -> None:
    pkg = tmp_path / "app.zip"
    pkg.write_bytes(app_zip(version=2, size=IMAGE))
    client = await _spawn("-c", CLIENT, str(served), str(pkg), APP)
    sent = 0
    try:
        while sent < KILL_AFTER:
            line = await _line(client)
            assert line.startswith("sent "), line
            sent = int(line.split()[1])
    finally:
        client.send_signal(signal.SIGKILL)
        await client.wait()
    assert sent < IMAGE, "killed mid-image"

    cli = "from dfu.cli import main; main()"
    fresh = await _spawn(
        "-c", cli, "update", str(pkg), "--sim-socket", str(served), "--address", APP,
        "--profile", "nrf52840-s140", "--json",
    )  # fmt: skip
    body = json.loads(await _line(fresh))
    assert await asyncio.wait_for(fresh.wait(), 60) == 0
    assert body["ok"] is True
    assert body["firmware_revision"] == "2"
    image = body["images"][0]
    assert image["resumed_from"] >= sent - 4096, "resumed from the bootloader's progress, not from 0"
    assert body["bytes_sent"] <= IMAGE - image["resumed_from"] + 4096 + 512  # + at most one init packet
