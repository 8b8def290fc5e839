"""A private D-Bus daemon for the simulated bluetoothd (`simulator.bluez`), the bus bleak's BlueZ uses.

bleak connects to the *system* bus; pointing `DBUS_SYSTEM_BUS_ADDRESS` at this daemon gives a process a
system bus of its own, on which `FakeBluetoothd` owns `org.bluez`. The policy allows everything: the bus
lives in a temporary directory and only this user's processes reach it.
"""

from __future__ import annotations

import contextlib
import select
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from hil.broker import stop_process

CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>{deny}
  </policy>
</busconfig>
"""
DENY_BLUEZ = '\n    <deny send_destination="org.bluez"/>'
"""What BlueZ's own bus policy amounts to for a user outside the `bluetooth` group."""


def dbus_daemon_binary() -> str:
    found = shutil.which("dbus-daemon") or (
        "/usr/bin/dbus-daemon" if Path("/usr/bin/dbus-daemon").exists() else None
    )
    if found is None:
        raise RuntimeError(
            "dbus-daemon is not installed: `make test` installs it (apt-get install dbus-daemon)"
        )
    return found


class DbusDaemon:
    """`dbus-daemon` on a unix socket in `directory`; `address` is what DBUS_SYSTEM_BUS_ADDRESS takes."""

    def __init__(self, directory: Path, *, deny_bluez: bool = False) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.socket = directory / "bus"
        self.config_file = directory / "bus.conf"
        self.config_file.write_text(CONFIG.format(socket=self.socket, deny=DENY_BLUEZ if deny_bluez else ""))
        self.address = f"unix:path={self.socket}"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> None:
        """Start and wait (at most `timeout`) until it prints its address: it then accepts connections."""
        self._proc = subprocess.Popen(
            [
                dbus_daemon_binary(),
                f"--config-file={self.config_file}",
                "--nofork",
                "--nosyslog",
                "--print-address",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert self._proc.stdout is not None
        ready, _, _ = select.select([self._proc.stdout], [], [], timeout)
        # the address is printed once the socket listens; EOF if it died
        line = self._proc.stdout.readline() if ready else b""
        if not line.strip():
            err = self._proc.stderr.read().decode() if self._proc.stderr else ""
            self.stop()
            raise RuntimeError(f"dbus-daemon did not start: {err}")

    @property
    def pid(self) -> int:
        assert self._proc is not None, "not started"
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self) -> None:
        if self._proc is not None:
            stop_process(self._proc)
            self._proc = None


@contextlib.contextmanager
def running_dbus(directory: Path, *, deny_bluez: bool = False) -> Iterator[DbusDaemon]:
    daemon = DbusDaemon(directory, deny_bluez=deny_bluez)
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()


async def close_bleak_manager() -> None:
    """bleak keeps one BlueZ manager (a system-bus connection) per event loop: close this loop's, so that a
    private bus can go away with it."""
    import asyncio

    from bleak.backends.bluezdbus import manager

    instance = manager._global_instances.pop(asyncio.get_running_loop(), None)
    if instance is not None and instance._bus is not None:
        instance._bus.disconnect()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(instance._bus.wait_for_disconnect(), 5)  # type: ignore[no-untyped-call]


__all__ = ["DbusDaemon", "close_bleak_manager", "dbus_daemon_binary", "running_dbus"]
