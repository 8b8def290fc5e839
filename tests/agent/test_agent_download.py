"""Downloads against a real HTTPS server (trustme certificates) that breaks connections, honours or ignores
Range, redirects, and changes files: resume, caps and refusals as the agent must handle them in the field.

Paths are shaped as nRF Cloud serves firmware: `<tenant>/<TYPE>*<8 hex>*<version>/<file>.bin`, the init packet
named `…dat.bin` too (Nordic's lte-gateway `src/ble/cli.c` shell examples; docs/nrf-cloud.md,
"The job tuple").
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trustme

from dfu.retry import RetryPolicy
from gateway_agent.cloud.wire import BleJob
from gateway_agent.download import DownloadError, DownloadPolicy, DownloadRefused, download_job
from tests.agent.support import FirmwareServer, firmware_server

A = "C8:2E:1A:00:00:10"
DAT = bytes(range(256)) * 1
BIN = bytes((i * 7) % 251 for i in range(100_000))
DAT_PATH = "T1/APP*56693cf8*2.2.0/app_thingy_s132dat.bin"
BIN_PATH = "T1/APP*f1078fc9*2.2.0/app_thingy_s132.bin"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def policy(ca_file: Path | None, **kw: object) -> DownloadPolicy:
    base: dict[str, object] = {
        "allowed_hosts": ("127.0.0.1:*",),
        "max_bytes": 1 << 20,
        "ca_file": ca_file,
        "retry": RetryPolicy(0.001, 0.002, attempts=4),
    }
    base.update(kw)
    return DownloadPolicy(**base)  # type: ignore[arg-type]


def offer(server: FirmwareServer, size: int | None = None, path: str = f"{BIN_PATH} {DAT_PATH}") -> BleJob:
    return BleJob(A, "job-1", 0, size if size is not None else len(DAT) + len(BIN), server.file_host, path)


@pytest.fixture
def ca_file(tmp_path: Path, ca: trustme.CA) -> Path:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


FILES = {DAT_PATH: DAT, BIN_PATH: BIN}


async def test_agent_download_fetches_files_in_file_path_order_with_progress(
    tmp_path: Path, ca: trustme.CA, ca_file: Path
) -> None:
    seen: list[int] = []
    async with firmware_server(ca, FILES) as server:
        files = await download_job(offer(server), tmp_path / "d", policy(ca_file), seen.append)
    assert [f.remote_name for f in files] == ["app_thingy_s132.bin", "app_thingy_s132dat.bin"]
    assert [f.path.read_bytes() for f in files] == [BIN, DAT]
    assert seen == sorted(seen)
    assert seen[-1] == len(DAT) + len(BIN)
    assert [r.path for r in server.requests] == [BIN_PATH, DAT_PATH]  # `*` reaches the host unencoded
    assert all(r.headers.get("accept-encoding") == "identity" for r in server.requests)


async def test_agent_download_resumes_with_range_after_broken_connections(
    tmp_path: Path, ca: trustme.CA, ca_file: Path
) -> None:
    async with firmware_server(ca, FILES) as server:
        server.break_after[BIN_PATH] = [30_000, 20_000]
        files = await download_job(offer(server), tmp_path / "d", policy(ca_file), lambda n: None)
    assert files[0].path.read_bytes() == BIN
    bins = [r for r in server.requests if r.path == BIN_PATH]
    assert [r.status for r in bins] == [200, 206, 206]
    assert bins[1].headers["range"] == "bytes=30000-"
    assert bins[1].headers["if-range"] == server.etag(BIN_PATH)
    assert bins[2].headers["range"] == "bytes=50000-"


async def test_agent_download_restarts_when_server_ignores_range_or_file_changed(
    tmp_path: Path, ca: trustme.CA, ca_file: Path
) -> None:
    async with firmware_server(ca, FILES) as server:
        server.ignore_range = True
        server.break_after[BIN_PATH] = [40_000]
        files = await download_job(offer(server), tmp_path / "a", policy(ca_file), lambda n: None)
        assert files[0].path.read_bytes() == BIN
        assert [r.status for r in server.requests if r.path == BIN_PATH] == [200, 200]

        server.ignore_range = False
        server.requests.clear()
        server.break_after[BIN_PATH] = [40_000]
        changed = bytes(reversed(BIN))

        original = server._respond

        async def change_after_first(req, writer):  # type: ignore[no-untyped-def]
            await original(req, writer)
            if req.path == BIN_PATH:
                server.files[BIN_PATH] = changed  # the file changed under us: ETag differs

        server._respond = change_after_first  # type: ignore[method-assign]
        files = await download_job(offer(server), tmp_path / "b", policy(ca_file), lambda n: None)
    assert files[0].path.read_bytes() == changed  # never a splice of two versions
    bins = [r for r in server.requests if r.path == BIN_PATH]
    assert [r.status for r in bins] == [200, 200]
    assert "if-range" in bins[1].headers


async def test_agent_download_caps_bytes_while_streaming(
    tmp_path: Path, ca: trustme.CA, ca_file: Path
) -> None:
    async with firmware_server(ca, FILES) as server:
        with pytest.raises(DownloadRefused, match="max_bytes"):
            await download_job(
                offer(server, size=500), tmp_path / "b", policy(ca_file, max_bytes=1000), lambda n: None
            )


async def test_agent_download_file_size_mismatch_is_only_logged(
    tmp_path: Path, ca: trustme.CA, ca_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """nRF Cloud's FILE_SIZE drives progress only; the init packet's hash decides whether the files are
    good (lte-gateway `peripheral_dfu.c` takes the size from the server, not from FILE_SIZE)."""
    caplog.set_level(logging.WARNING)
    async with firmware_server(ca, FILES) as server:
        seen: list[int] = []
        files = await download_job(offer(server, size=50_000), tmp_path / "a", policy(ca_file), seen.append)
    assert [f.path.read_bytes() for f in files] == [BIN, DAT]
    assert seen[-1] == len(BIN) + len(DAT)
    assert any(r.getMessage() == "download_size_differs" for r in caplog.records)


async def test_agent_download_follows_redirects_only_to_allowed_https_hosts(
    tmp_path: Path, ca: trustme.CA, ca_file: Path
) -> None:
    async with firmware_server(ca, FILES) as server:
        target = f"https://{server.file_host}/{BIN_PATH}"
        server.files["cdn/app.bin"] = BIN
        server.redirects["r1/app.bin"] = f"https://{server.file_host}/cdn/app.bin"
        server.redirects["r0/app.bin"] = "/r1/app.bin"  # relative Location, then absolute
        files = await download_job(
            offer(server, path=f"r0/app.bin {DAT_PATH}"), tmp_path / "a", policy(ca_file), lambda n: None
        )
        assert files[0].path.read_bytes() == BIN
        assert [r.path for r in server.requests][:3] == ["r0/app.bin", "r1/app.bin", "cdn/app.bin"]

        server.redirects["evil/app.bin"] = "https://firmware.example.org/app.bin"
        with pytest.raises(DownloadRefused, match="allowed_hosts"):
            await download_job(
                offer(server, path=f"evil/app.bin {DAT_PATH}"), tmp_path / "b", policy(ca_file), print
            )
        server.redirects["plain/app.bin"] = target.replace("https://", "http://")
        with pytest.raises(DownloadRefused, match="non-HTTPS"):
            await download_job(
                offer(server, path=f"plain/app.bin {DAT_PATH}"), tmp_path / "c", policy(ca_file), print
            )
        server.redirects["loop/app.bin"] = "/loop/app.bin"
        with pytest.raises(DownloadRefused, match="redirects"):
            await download_job(
                offer(server, path=f"loop/app.bin {DAT_PATH}"), tmp_path / "d", policy(ca_file), print
            )
        assert sum(1 for r in server.requests if r.path == "loop/app.bin") == 6  # 1 + max_redirects


async def test_agent_download_refuses_a_body_encoding_it_did_not_ask_for(
    tmp_path: Path, ca: trustme.CA, ca_file: Path
) -> None:
    """A gzip body would be inflated in memory before any size cap could count it."""
    async with firmware_server(ca, FILES) as server:
        server.headers[BIN_PATH] = {"Content-Encoding": "gzip"}
        with pytest.raises(DownloadRefused, match="gzip"):
            await download_job(offer(server), tmp_path / "a", policy(ca_file), lambda n: None)


async def test_agent_download_refusals(tmp_path: Path, ca: trustme.CA, ca_file: Path) -> None:
    async with firmware_server(ca, FILES) as server:
        with pytest.raises(DownloadRefused, match="allowed_hosts"):
            await download_job(
                offer(server), tmp_path / "a", policy(ca_file, allowed_hosts=("*.nrfcloud.com",)), print
            )
        with pytest.raises(DownloadRefused, match="HTTP 404"):
            await download_job(
                offer(server, path=f"fw/nope.bin {DAT_PATH}"), tmp_path / "b", policy(ca_file), print
            )
        with pytest.raises(DownloadError, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
            await download_job(offer(server), tmp_path / "c", policy(None), print)
        server.break_after[BIN_PATH] = [10, 10, 10, 10, 10]
        with pytest.raises(DownloadError, match=r"app_thingy_s132\.bin"):
            await download_job(offer(server), tmp_path / "d", policy(ca_file), lambda n: None)
    assert (tmp_path / "d" / "0.part").stat().st_size == 40  # kept: the next attempt resumes


async def test_agent_download_resumes_partial_file_from_a_previous_run(
    tmp_path: Path, ca: trustme.CA, ca_file: Path
) -> None:
    directory = tmp_path / "d"
    directory.mkdir()
    (directory / "1").write_bytes(DAT)  # finished before the crash
    (directory / "0.part").write_bytes(BIN[:60_000])
    async with firmware_server(ca, FILES) as server:
        seen: list[int] = []
        files = await download_job(offer(server), directory, policy(ca_file), seen.append)
    assert files[0].path.read_bytes() == BIN
    assert [(r.path, r.status) for r in server.requests] == [(BIN_PATH, 206)]
    assert seen[0] > len(DAT) + 60_000
