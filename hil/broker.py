"""A real Mosquitto broker with mutual TLS on a free port, with certificates made per run (trustme).

Real parts, not mocks: the agent and the job service talk to the same broker software they meet in the field.
`restart()` keeps the port so tests can stop the broker mid-job and bring it back.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import trustme


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )
    if found is None:
        raise RuntimeError("mosquitto is not installed: `make test` installs it (apt-get install mosquitto)")
    return found


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    """SIGTERM, SIGKILL after `timeout`, reap it and close its pipes: a helper process never outlives us."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ClientCert:
    cert_file: Path
    key_file: Path


@dataclass
class Pki:
    """A throw-away CA, the broker's server certificate and client certificates issued on demand."""

    directory: Path
    ca: trustme.CA = field(default_factory=trustme.CA)

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.ca_file = self.directory / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        server = self.ca.issue_cert("localhost", "127.0.0.1")
        self.server_cert = self.directory / "server.pem"
        self.server_key = self.directory / "server.key"
        server.cert_chain_pems[0].write_to_path(str(self.server_cert))
        server.private_key_pem.write_to_path(str(self.server_key))

    def client(self, identity: str) -> ClientCert:
        """A client certificate whose CN (and so the broker username) is `identity`."""
        issued = self.ca.issue_cert(identity, common_name=identity)
        cert = self.directory / f"{identity}.pem"
        key = self.directory / f"{identity}.key"
        issued.cert_chain_pems[0].write_to_path(str(cert))
        issued.private_key_pem.write_to_path(str(key))
        return ClientCert(cert, key)

    def client_ssl_context(self, identity: str) -> ssl.SSLContext:
        cert = self.client(identity)
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca_file))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(cert.cert_file), str(cert.key_file))
        return ctx


class MosquittoBroker:
    """Mosquitto with `require_certificate true`, listening on 127.0.0.1:<port> only."""

    START_ATTEMPTS = 5
    """Ports tried when one from `free_port` was taken by another process before Mosquitto bound it."""

    def __init__(self, pki: Pki, directory: Path, port: int | None = None) -> None:
        self.pki = pki
        self.directory = directory
        self._fixed_port = port is not None
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.log_file = directory / "mosquitto.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self.config_file = directory / "mosquitto.conf"
        self._write_config()

    def _write_config(self) -> None:
        pki = self.pki
        self.config_file.write_text(
            "\n".join(
                [
                    # as root Mosquitto would drop to the `mosquitto` user, who cannot read our temp files
                    *(["user root"] if os.geteuid() == 0 else []),
                    f"listener {self.port} 127.0.0.1",
                    f"cafile {pki.ca_file}",
                    f"certfile {pki.server_cert}",
                    f"keyfile {pki.server_key}",
                    "require_certificate true",
                    "use_identity_as_username true",
                    "tls_version tlsv1.2",
                    "allow_anonymous false",
                    "persistence false",
                    "max_inflight_messages 100",
                    "max_queued_messages 10000",
                    "log_type error",
                    "log_type warning",
                    "log_type notice",
                    "log_type information",  # "mosquitto version … running": its listeners are bound
                    "log_type subscribe",  # "<client id> <qos> <topic>": what each client subscribed to
                    "connection_messages true",
                    f"log_dest file {self.log_file}",
                    "",
                ]
            )
        )

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        """Start and wait until *this* Mosquitto listens (its own log says so, not just any open port).

        A port from `free_port` can be taken by another process (a parallel test worker) before Mosquitto
        binds it; then it exits with "Address already in use" and is started again on a fresh port. Once it
        has listened, its port is fixed: `restart()` comes back on it or fails.
        """
        for _ in range(self.START_ATTEMPTS):
            if self._start_once(timeout):
                self._fixed_port = True  # clients know this port now: a restart must come back on it
                return
            if self._fixed_port:
                break
            self.port = free_port()
            self._write_config()
        raise RuntimeError(f"mosquitto could not listen on 127.0.0.1:{self.port}: {self.log_text()[-500:]}")

    def _start_once(self, timeout: float) -> bool:
        """True once listening; False if the port was in use; RuntimeError for any other failure."""
        seen = self.log_file.stat().st_size if self.log_file.exists() else 0
        self._proc = subprocess.Popen(
            [mosquitto_binary(), "-c", str(self.config_file)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            fresh = self._log_since(seen)
            if self._proc.poll() is not None:
                fresh = self._log_since(seen)  # what it logged just before exiting
                err = self._proc.stderr.read().decode() if self._proc.stderr else ""
                if self._proc.stderr:
                    self._proc.stderr.close()
                self._proc = None
                if "Address already in use" in fresh + err:
                    return False
                raise RuntimeError(f"mosquitto exited at start: {err} {fresh}")
            if " running" in fresh:
                with (
                    contextlib.suppress(OSError),
                    socket.create_connection((self.host, self.port), timeout=0.2),
                ):
                    return True
            time.sleep(0.02)  # waiting on a real process to bind: the one place real time is unavoidable
        self.stop()
        raise RuntimeError(f"mosquitto did not listen on {self.port} within {timeout}s")

    def _log_since(self, offset: int) -> str:
        try:
            with self.log_file.open("rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        if self._proc is not None:
            stop_process(self._proc)
            self._proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_text(self) -> str:
        return self.log_file.read_text() if self.log_file.exists() else ""

    def subscriptions(self, client_id: str) -> list[str]:
        """Every topic filter `client_id` subscribed to, in order (from the broker's own log), so a test can
        check a client subscribes to nothing its cloud's policy would refuse."""
        found = []
        for line in self.log_text().splitlines():
            parts = line.split(" ", 3)
            if len(parts) == 4 and parts[1] == client_id and parts[2] in ("0", "1", "2"):
                found.append(parts[3])
        return found


@contextlib.contextmanager
def running_broker(directory: Path) -> Iterator[MosquittoBroker]:
    pki = Pki(directory / "pki")
    broker = MosquittoBroker(pki, directory)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
