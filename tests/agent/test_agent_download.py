"""Downloads against a real HTTPS server (trustme certificates) that breaks connections, honours or ignores
Range, and changes files: resume, caps and refusals as the agent must handle them in the field."""

from __future__ import annotations

from pathlib import Path

import pytest
import trustme

from gateway_agent.cloud.messages import FileRole, JobOffer
from gateway_agent.download import DownloadError, DownloadPolicy, DownloadRefused, download_job
from tests.agent.support import FirmwareServer, firmware_server

A = "C8:2E:1A:00:00:10"
DAT = bytes(range(256)) * 1
BIN = bytes((i * 7) % 251 for i in range(100_000))


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def policy(ca_file: Path, **kw: object) -> DownloadPolicy:
    base: dict[str, object] = {
        "allowed_hosts": ("127.0.0.1:*",),
        "max_bytes": 1 << 20,
        "ca_file": ca_file,
        "wait_initial_s": 0.001,
        "wait_max_s": 0.002,
        "attempts": 4,
    }
    base.update(kw)
    return DownloadPolicy(**base)  # type: ignore[arg-type]


def offer(server: FirmwareServer, size: int | None = None, path: str = "fw/app.bin fw/app.dat") -> JobOffer:
    return JobOffer(A, "job-1", 0, size if size is not None else len(DAT) + len(BIN), server.file_host, path)


@pytest.fixture
def ca_file(tmp_path: Path, ca: trustme.CA) -> Path:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


FILES = {"fw/app.dat": DAT, "fw/app.bin": BIN}


async def test_agent_download_fetches_both_files_with_progress(
    tmp_path: Path, ca: trustme.CA, ca_file: Path
) -> None:
    seen: list[int] = []
    async with firmware_server(ca, FILES) as server:
        files = await download_job(offer(server), tmp_path / "d", policy(ca_file), seen.append)
    assert files[FileRole.INIT_PACKET].read_bytes() == DAT
    assert files[FileRole.FIRMWARE].read_bytes() == BIN
    assert seen == sorted(seen)
    assert seen[-1] == len(DAT) + len(BIN)
    assert [r.path for r in server.requests] == ["fw/app.dat", "fw/app.bin"]  # init packet first


async def test_agent_download_resumes_with_range_after_broken_connections(
    tmp_path: Path, ca: trustme.CA, ca_file: Path
) -> None:
    async with firmware_server(ca, FILES) as server:
        server.break_after["fw/app.bin"] = [30_000, 20_000]
        files = await download_job(offer(server), tmp_path / "d", policy(ca_file), lambda n: None)
    assert files[FileRole.FIRMWARE].read_bytes() == BIN
    bins = [r for r in server.requests if r.path == "fw/app.bin"]
    assert [r.status for r in bins] == [200, 206, 206]
    assert bins[1].headers["range"] == "bytes=30000-"
    assert bins[1].headers["if-range"] == server.etag("fw/app.bin")
    assert bins[2].headers["range"] == "bytes=50000-"


async def test_agent_download_restarts_when_server_ignores_range_or_file_changed(
    tmp_path: Path, ca: trustme.CA, ca_file: Path
) -> None:
    async with firmware_server(ca, FILES) as server:
        server.ignore_range = True
        server.break_after["fw/app.bin"] = [40_000]
        files = await download_job(offer(server), tmp_path / "a", policy(ca_file), lambda n: None)
        assert files[FileRole.FIRMWARE].read_bytes() == BIN
        assert [r.status for r in server.requests if r.path == "fw/app.bin"] == [200, 200]

        server.ignore_range = False
        server.requests.clear()
        server.break_after["fw/app.bin"] = [40_000]
        changed = bytes(reversed(BIN))

        original = server._respond

        async def change_after_first(req, writer):  # type: ignore[no-untyped-def]
            await original(req, writer)
            if req.path == "fw/app.bin":
                server.files["fw/app.bin"] = changed  # the file changed under us: ETag differs

        server._respond = change_after_first  # type: ignore[method-assign]
        files = await download_job(offer(server), tmp_path / "b", policy(ca_file), lambda n: None)
    assert files[FileRole.FIRMWARE].read_bytes() == changed  # never a splice of two versions
    bins = [r for r in server.requests if r.path == "fw/app.bin"]
    assert [r.status for r in bins] == [200, 200]
    assert "if-range" in bins[1].headers


async def test_agent_download_caps_bytes_while_streaming(
    tmp_path: Path, ca: trustme.CA, ca_file: Path
) -> None:
    async with firmware_server(ca, FILES) as server:
        with pytest.raises(DownloadRefused, match="more than FILE_SIZE"):
            await download_job(offer(server, size=50_000), tmp_path / "a", policy(ca_file), lambda n: None)
        with pytest.raises(DownloadRefused, match="max_bytes"):
            await download_job(offer(server), tmp_path / "b", policy(ca_file, max_bytes=1000), lambda n: None)
        with pytest.raises(DownloadRefused, match="FILE_SIZE"):
            await download_job(
                offer(server, size=len(BIN) + 10_000), tmp_path / "c", policy(ca_file), lambda n: None
            )


async def test_agent_download_refusals(tmp_path: Path, ca: trustme.CA, ca_file: Path) -> None:
    async with firmware_server(ca, FILES) as server:
        with pytest.raises(DownloadRefused, match="allowed_hosts"):
            await download_job(
                offer(server), tmp_path / "a", policy(ca_file, allowed_hosts=("*.nrfcloud.com",)), print
            )
        with pytest.raises(DownloadRefused, match="HTTP 404"):
            await download_job(
                offer(server, path="fw/nope.bin fw/app.dat"), tmp_path / "b", policy(ca_file), print
            )
        with pytest.raises(DownloadError, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
            await download_job(offer(server), tmp_path / "c", policy(None), print)  # type: ignore[arg-type]
        server.break_after["fw/app.bin"] = [10, 10, 10, 10, 10]
        with pytest.raises(DownloadError, match=r"app\.bin"):
            await download_job(offer(server), tmp_path / "d", policy(ca_file), lambda n: None)
    assert (tmp_path / "d" / "app.bin.part").stat().st_size == 40  # kept: the next attempt resumes


async def test_agent_download_resumes_partial_file_from_a_previous_run(
    tmp_path: Path, ca: trustme.CA, ca_file: Path
) -> None:
    directory = tmp_path / "d"
    directory.mkdir()
    (directory / "app.dat").write_bytes(DAT)  # finished before the crash
    (directory / "app.bin.part").write_bytes(BIN[:60_000])
    async with firmware_server(ca, FILES) as server:
        seen: list[int] = []
        files = await download_job(offer(server), directory, policy(ca_file), seen.append)
    assert files[FileRole.FIRMWARE].read_bytes() == BIN
    assert [(r.path, r.status) for r in server.requests] == [("fw/app.bin", 206)]
    assert seen[0] > len(DAT) + 60_000
