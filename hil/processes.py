"""Real processes for the bench (the fleet, the demo): start them the way an operator does, wait on their
public edges with bounded polling, and never leave one behind."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
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
