"""A real, throw-away PostgreSQL server for the job service's tests: one cluster per test worker.

Real parts, not mocks: the store and the REST API run against the server the lab would run. The cluster is
made with `initdb` in a short temporary directory and listens on a unix socket there only (no TCP port, so
parallel workers never collide); readiness is the server's own "ready to accept connections" log line. It
runs without durability (fsync off): a test database is thrown away anyway.

PostgreSQL refuses to run as root, and CI runs as root: then initdb and the server run as the `postgres`
user (which Debian's package creates), with the directory handed to it. `make setup` installs the package.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import threading
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import psycopg
from psycopg import sql

READY = "database system is ready to accept connections"
START_TIMEOUT = 30.0
"""Seconds: a guard against a hang only; the server is normally ready within a tenth of a second."""
SERVER_SETTINGS = {
    "listen_addresses": "",  # the unix socket only
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "shared_buffers": "16MB",
    "max_connections": "100",
}


def postgres_bindir() -> Path:
    """The newest installed server's binaries (Debian: /usr/lib/postgresql/<major>/bin), else $PATH."""
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/postgres"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if candidates:
        return candidates[-1].parent
    found = shutil.which("postgres")
    if found is None:
        raise RuntimeError("PostgreSQL is not installed: `make setup` installs it (apt-get postgresql)")
    return Path(found).parent


def _server_user() -> dict[str, Any]:
    """Popen keywords that run a child as the unprivileged `postgres` user when we are root."""
    if os.geteuid() != 0:
        return {}
    try:
        pw = pwd.getpwnam("postgres")
    except KeyError as exc:
        raise RuntimeError("running as root needs the `postgres` user (apt-get install postgresql)") from exc
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}


_LIBC = ctypes.CDLL(None, use_errno=True)
"""loaded in the parent: a dlopen in a forked child of a threaded process can deadlock"""


def _die_with_parent() -> None:
    """In the server's child, after it became `postgres` (a change of user would clear it) and before exec:
    SIGQUIT (immediate shutdown) when the test worker dies, so not even a killed worker leaves a server
    behind."""
    pr_set_pdeathsig = 1
    _LIBC.prctl(pr_set_pdeathsig, signal.SIGQUIT)


class PostgresServer:
    """initdb + postgres in a temporary directory; `scratch_database()` hands each test an empty database."""

    def __init__(self) -> None:
        self.bindir = postgres_bindir()
        self.user = "postgres"
        self._as_server = _server_user()
        # short (a unix socket path is limited to ~107 bytes), and as root under /tmp, which the `postgres`
        # user can traverse (a TMPDIR of root's own might not be)
        self.directory = Path(tempfile.mkdtemp(prefix="fota-pg-", dir="/tmp" if self._as_server else None))
        if self._as_server:
            os.chown(self.directory, self._as_server["user"], self._as_server["group"])
        self.data = self.directory / "data"
        self._proc: subprocess.Popen[str] | None = None
        self._log: deque[str] = deque(maxlen=200)
        self._ready = threading.Event()
        self._reader: threading.Thread | None = None
        self._names = itertools.count(1)
        self._scratch: str | None = None

    @property
    def socket_dir(self) -> str:
        return str(self.directory)

    def url(self, database: str) -> str:
        """A SQLAlchemy URL for `database` over the unix socket."""
        return f"postgresql+psycopg://{self.user}@/{database}?host={self.directory}"

    def connect(self, database: str = "postgres") -> psycopg.Connection[Any]:
        return psycopg.connect(host=self.socket_dir, user=self.user, dbname=database, autocommit=True)

    def start(self) -> None:
        init = subprocess.run(
            [
                str(self.bindir / "initdb"),
                "--pgdata",
                str(self.data),
                "--username",
                self.user,
                "--auth=trust",
                "--no-sync",
                "--no-locale",  # C locale: log lines in English, whatever the machine's language
                "--encoding=UTF8",
                "--no-instructions",
            ],
            cwd=self.directory,
            capture_output=True,
            text=True,
            check=False,
            **self._as_server,
        )
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed: {init.stdout}{init.stderr}")
        settings = [arg for key, value in SERVER_SETTINGS.items() for arg in ("-c", f"{key}={value}")]
        self._proc = subprocess.Popen(
            [str(self.bindir / "postgres"), "-D", str(self.data), "-k", self.socket_dir, *settings],
            cwd=self.directory,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=_die_with_parent,  # runs after the switch to `user`; a ctypes call takes no lock
            **self._as_server,
        )
        assert self._proc.stderr is not None
        self._reader = threading.Thread(
            target=self._read_log, args=(self._proc.stderr,), name="postgres-log", daemon=True
        )
        self._reader.start()
        if not self._ready.wait(START_TIMEOUT) or self._proc.poll() is not None:
            log = "".join(self._log)
            self.stop()
            raise RuntimeError(f"PostgreSQL did not start: {log}")

    def _read_log(self, stderr: IO[str]) -> None:
        """Keep reading the server's stderr (a full pipe would block it); note when it is ready or gone."""
        for line in stderr:
            self._log.append(line)
            if READY in line:
                self._ready.set()
        self._ready.set()  # exited: start() sees poll() is not None

    def log_text(self) -> str:
        return "".join(self._log)

    def create_database(self) -> str:
        """A fresh, empty database of its own (for processes that outlive one test's connections)."""
        name = f"t{os.getpid()}_{next(self._names)}"
        with self.connect() as conn:
            # FILE_COPY rather than WAL-logging the template, where the server has the choice (≥ 15)
            strategy = sql.SQL(" STRATEGY FILE_COPY" if conn.info.server_version >= 150000 else "")
            conn.execute(sql.SQL("CREATE DATABASE {}{}").format(sql.Identifier(name), strategy))
        return name

    def scratch_database(self) -> str:
        """This worker's reusable database, emptied: no other session on it, an empty public schema. A tenth
        of the cost of a new database per test."""
        if self._scratch is None:
            self._scratch = self.create_database()
        with self.connect(self._scratch) as conn:
            # a session left by a failed test (a lease, a transaction) must not leak into the next one
            # the wait-for-exit argument exists from PostgreSQL 14 (bullseye ships 13)
            terminate = (
                "pg_terminate_backend(pid, 10000)"
                if conn.info.server_version >= 140000
                else ("pg_terminate_backend(pid)")
            )
            conn.execute(
                f"SELECT {terminate} FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            conn.execute("DROP SCHEMA public CASCADE")
            conn.execute("CREATE SCHEMA public")
        return self._scratch

    def stop(self) -> None:
        """Fast shutdown (SIGINT: clients disconnected, children gone), escalating if it hangs; then the
        directory goes."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            for sig, wait in ((signal.SIGINT, 20.0), (signal.SIGQUIT, 5.0), (signal.SIGKILL, None)):
                proc.send_signal(sig)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=wait)
                    break
        if proc is not None:
            proc.wait()
        if self._reader is not None:
            self._reader.join()
        if proc is not None and proc.stderr is not None:
            proc.stderr.close()
        shutil.rmtree(self.directory, ignore_errors=True)


@contextlib.contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()
