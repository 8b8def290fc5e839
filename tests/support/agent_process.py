"""`gateway-agent run` as a real process whose log lines a test can wait on (no timers)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


class AgentProcess:
    """The agent process; its stderr (the key=value log) is collected into `logs`, shared across restarts."""

    def __init__(self, config: Path, logs: list[str] | None = None) -> None:
        self.config = config
        self.logs = logs if logs is not None else []
        self.proc: asyncio.subprocess.Process | None = None
        self._pump: asyncio.Task[None] | None = None
        self._line = asyncio.Event()

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway_agent",
            "run",
            "--config",
            str(self.config),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            cwd=REPO,
        )
        self._pump = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc is not None
        assert self.proc.stderr is not None
        async for line in self.proc.stderr:
            self.logs.append(line.decode().rstrip())
            self._line.set()
        self._line.set()

    async def wait_log(self, predicate: Callable[[], bool]) -> None:
        """Wait for the process's log to satisfy predicate (each new line re-checks it)."""
        while not predicate():
            assert self.proc is not None
            assert self.proc.returncode is None, "\n".join(self.logs)
            self._line.clear()
            await self._line.wait()

    async def stop(self, sig: int) -> int:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        code = await self.proc.wait()
        if self._pump is not None:
            await self._pump
        return code
