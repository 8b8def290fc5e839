"""Real processes for the bench (the fleet, the demo): start them the way an operator does, wait on their
public edges with bounded polling, and never leave one behind."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

SERVICE_MAIN = "fota_service.cli:main"
AGENT_MAIN = "gateway_agent.__main__:main"
SIM_MAIN = "dfu.cli:main"
POLL_S = 0.05
"""Polling step on real processes (bounded by a deadline each time)."""

T = TypeVar("T")


class FleetError(AssertionError):
    """A part of the fleet did not do what the test waited for; the message carries the relevant logs."""


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

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} was not started"
        return self.proc.pid

    def count(self, pattern: str) -> int:
        """How often `pattern` (a regex, `^`/`$` per line) matches the log so far."""
        return sum(1 for _ in re.finditer(pattern, self.log_text(), re.MULTILINE))

    async def wait_for_log(self, pattern: str, *, within: float = 20.0, count: int = 1) -> re.Match[str]:
        """The `count`th match of `pattern` in the log; FleetError if the process exits without it."""
        regex = re.compile(pattern, re.MULTILINE)
        what = f"{pattern!r}" + (f" x{count}" if count > 1 else "")

        async def probe() -> re.Match[str] | None:
            alive = self.running  # read before the log: a last line written just before exiting is found
            found = list(itertools.islice(regex.finditer(self.log_text()), count))
            if len(found) == count:
                return found[-1]
            if not alive:
                raise FleetError(f"{self.name} exited before logging {what}\n{self.tail()}")
            return None

        return await wait_for(probe, within=within, what=f"{self.name}: {what}", diagnose=self.tail)

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

    def kill(self) -> int | None:
        """SIGKILL and reap: no cleanup at all, as a crash or a pulled plug. Returns the exit code."""
        if self.proc is None:
            return None
        self.proc.kill()
        return self.proc.wait()

    async def shutdown(self, within: float = 10.0) -> int | None:
        """SIGTERM and wait without blocking the loop (the caller's own clients keep being served). A process
        still running `within` seconds later is a hang: SIGKILL, then FleetError. Returns the exit code."""
        if self.proc is None:
            return None
        self.terminate()
        try:
            return await asyncio.to_thread(self.proc.wait, within)
        except subprocess.TimeoutExpired:
            self.kill()
            raise FleetError(f"{self.name} still ran {within:.0f}s after SIGTERM\n{self.tail()}") from None


@contextlib.asynccontextmanager
async def running_process(process: Managed, *ready: str, within: float = 20.0) -> AsyncIterator[Managed]:
    """Start `process`, wait (up to `within` s each) for each `ready` log pattern in turn, and shut it down
    however the block ends: nothing is left behind, and a hang on SIGTERM fails a block that passed."""
    process.start()
    try:
        for pattern in ready:
            await process.wait_for_log(pattern, within=within)
        yield process
    except BaseException:
        with contextlib.suppress(FleetError):  # the block's own error is the one to see
            await process.shutdown(within)
        raise
    await process.shutdown(within)


def fota_service(config: Path, log_file: Path, *options: str, name: str = "fota-service") -> Managed:
    """`fota-service serve --config` as an operator starts it; `options` such as `--log-level debug`."""
    return Managed(name, python_command(SERVICE_MAIN, "serve", "--config", str(config), *options), log_file)


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
