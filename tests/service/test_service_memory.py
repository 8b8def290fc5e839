"""Issue #13, "Done means": a 200 MB JSON body to `POST /v1/fota-jobs` against a real `fota-service serve`
process is refused, and the process's memory stays flat (before the fix: 85 MB → 496 MB, then a 422).

The client is a plain socket that streams the body chunked (no Content-Length to refuse it by) in 1 MiB
pieces while watching for the answer, so the test itself never holds the body and measures what the server
does with bytes it did not ask for. Memory is read from /proc/<pid>/status: VmRSS before and after, and
VmHWM, the peak resident size over the process's life, so a spike in between cannot hide.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hil.processes import fota_service, running_process
from hil.service_config import service_config
from tests.support.mosquitto import free_port

pytestmark = pytest.mark.e2e

TOKEN = "memory-test-token-0123456789abcdef"
MIB = 1 << 20
BODY = 200 * MIB
GROWTH_LIMIT_KB = 30 * 1024
GUARD = 60.0  # seconds; only a hang guard


@contextlib.asynccontextmanager
async def rest_service(tmp_path: Path, port: int) -> AsyncIterator[int]:
    """`fota-service serve` (REST only, plain HTTP) until it logs "ready"; yields its pid."""
    config = service_config(
        tmp_path / "fota.toml", token=TOKEN, db_url=f"sqlite:///{tmp_path / 'fota.db'}", port=port
    )
    service = fota_service(config, tmp_path / "fota-service.log")
    async with running_process(service, "fota-service ready", within=GUARD):
        yield service.pid


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in kB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


@dataclass
class Outcome:
    sent: int
    status: int
    body: bytes


def stream_json(port: int, total: int, authorization: str | None) -> Outcome:
    """POST a `total`-byte JSON body in 1 MiB chunks, reading whatever the server answers meanwhile; the
    whole body is sent whatever the answer (an attacker does not stop), then the answer is read."""
    head = (
        b"POST /v1/fota-jobs HTTP/1.1\r\nHost: fota.test\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n"
    )
    if authorization is not None:
        head += f"Authorization: {authorization}\r\n".encode()
    opening, filler = b'{"bundleId": "APP*00000000*1", "name": "', b"a" * MIB
    chunks = [opening, *([filler] * ((total - len(opening) - 2) // MIB))]
    chunks.append(b"a" * (total - len(opening) - 2 - (len(chunks) - 1) * MIB) + b'"}')
    answer = bytearray()
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=GUARD) as sock:
        sock.sendall(head + b"\r\n")
        for chunk in chunks:
            frame = memoryview(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
            while frame:
                readable, writable, _ = select.select([sock], [sock], [], GUARD)
                assert readable or writable, "the server neither reads nor answers"
                if readable:
                    answer += sock.recv(65536)
                if writable:
                    frame = frame[sock.send(frame) :]
            sent += len(chunk)
        sock.sendall(b"0\r\n\r\n")
        while b"\r\n\r\n" not in answer or len(answer) < answer.index(b"\r\n\r\n") + 4 + _length(answer):
            data = sock.recv(65536)
            assert data, f"connection closed before the answer was complete: {bytes(answer)!r}"
            answer += data
    status = int(answer.split(b" ", 2)[1])
    return Outcome(sent, status, bytes(answer[answer.index(b"\r\n\r\n") + 4 :]))


def _length(answer: bytearray) -> int:
    head = bytes(answer[: answer.index(b"\r\n\r\n")]).lower()
    return int(head.split(b"content-length:")[1].split(b"\r\n")[0])


@pytest.mark.parametrize(
    ("authorization", "status"), [(None, 401), ("Bearer wrong", 401), (f"Bearer {TOKEN}", 413)]
)
async def test_a_200_mb_body_is_refused_and_memory_stays_flat(
    tmp_path: Path, authorization: str | None, status: int
) -> None:
    port = free_port()
    async with rest_service(tmp_path, port) as pid:
        warm = await asyncio.to_thread(stream_json, port, 1024, f"Bearer {TOKEN}")  # first-request costs
        assert warm.status == 422  # a well-formed small body reaches validation (the bundle id is unknown)
        before = memory_kb(pid)
        outcome = await asyncio.to_thread(stream_json, port, BODY, authorization)
        after = memory_kb(pid)
    print(f"\n{authorization=}: sent {outcome.sent >> 20} MiB, answered {outcome.status}; {before=} {after=}")
    assert outcome.sent == BODY
    assert outcome.status == status, outcome.body
    assert after["VmRSS"] - before["VmRSS"] < GROWTH_LIMIT_KB
    assert after["VmHWM"] - before["VmHWM"] < GROWTH_LIMIT_KB
