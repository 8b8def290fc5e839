"""`nrf-dfu` commands as asyncio subprocesses that say when they serve: `sim serve`, `sim bluez`.

One place for what tests and benchmarks both need: start the command, wait (bounded) for the line it prints
once it serves, and never leave a process behind that did not get there.
"""

from __future__ import annotations

import asyncio
import sys

CLI = "from dfu.cli import main; main()"
READY_TIMEOUT_S = 30.0


async def spawn_cli(*args: str, ready: bytes, what: str) -> asyncio.subprocess.Process:
    """`nrf-dfu ARGS` in a new process, returned once a line containing `ready` was printed."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CLI,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), READY_TIMEOUT_S)
        if ready not in line:
            raise RuntimeError(f"{what} did not start: {line!r}")
    except BaseException:
        proc.kill()
        await proc.wait()
        raise
    return proc


async def stop_cli(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM (the commands shut down cleanly on it) and reap."""
    if proc.returncode is None:
        proc.terminate()
    await asyncio.wait_for(proc.wait(), READY_TIMEOUT_S)


__all__ = ["spawn_cli", "stop_cli"]
