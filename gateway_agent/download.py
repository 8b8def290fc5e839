"""Fetch a job's files over HTTPS into the state directory, resumable across broken connections and restarts.

Firmware arrives from the network, so nothing the server says is trusted: the host must be on the allow-list,
paths were already refused if they could escape FILE_HOST (cloud/messages.py), and the byte count is checked
*while streaming* against both FILE_SIZE and the configured cap (Content-Length is never trusted alone).

Resume: bytes land in `<name>.part`; a retry (or the next agent start) asks for the rest with `Range`,
guarded by `If-Range: <ETag>` when the server gave a strong ETag, so a file that changed meanwhile comes
back whole (200) instead of being spliced. A server that ignores Range answers 200 and the file
simply starts again.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import stamina

from gateway_agent.cloud.messages import FileRole, JobOffer

log = logging.getLogger(__name__)
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


class DownloadError(Exception):
    """The job's files could not be fetched; the message is the cause reported to the cloud."""


class DownloadRefused(DownloadError):
    """Policy or server refusal that retrying cannot fix (host not allowed, too large, 404)."""


class _Retryable(DownloadError):
    """Worth another attempt (broken connection, 5xx, inconsistent resume)."""


@dataclass(frozen=True)
class DownloadPolicy:
    allowed_hosts: tuple[str, ...]
    max_bytes: int
    require_https: bool = True
    timeout_s: float = 30.0
    attempts: int = 6
    ca_file: Path | None = None
    wait_initial_s: float = 0.5
    wait_max_s: float = 15.0
    chunk_bytes: int = 16 * 1024

    def admit(self, offer: JobOffer) -> str | None:
        """Why this offer must not be downloaded, or None. Pure: the job core calls it before DOWNLOADING."""
        # a pattern matches FILE_HOST as given ("host" or "host:port"); a port must be allowed explicitly
        host = offer.file_host.lower()
        if not any(fnmatch.fnmatchcase(host, pattern.lower()) for pattern in self.allowed_hosts):
            return f"host {offer.file_host} is not in download.allowed_hosts"
        if offer.file_size > self.max_bytes:
            return f"FILE_SIZE {offer.file_size} exceeds download.max_bytes {self.max_bytes}"
        return None

    def url(self, host: str, path: str) -> str:
        return f"{'https' if self.require_https else 'http'}://{host}/{path}"

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.ca_file is not None:
            ctx.load_verify_locations(cafile=str(self.ca_file))
        return ctx


@dataclass
class _Budget:
    """Bytes of the whole job so far, checked on every chunk."""

    limit: int
    file_size: int
    done: int = 0
    files: dict[str, int] = field(default_factory=dict)

    def total(self) -> int:
        return sum(self.files.values())

    def set(self, name: str, size: int) -> None:
        self.files[name] = size
        total = self.total()
        if total > self.file_size:
            raise DownloadRefused(f"server sent more than FILE_SIZE ({total} > {self.file_size} bytes)")
        if total > self.limit:
            raise DownloadRefused(f"download exceeds download.max_bytes ({total} > {self.limit})")


def job_directory(state_dir: Path, peripheral_id: str, job_id: str) -> Path:
    return state_dir / "downloads" / f"{peripheral_id.replace(':', '')}-{job_id}"


async def download_job(
    offer: JobOffer,
    directory: Path,
    policy: DownloadPolicy,
    progress: Callable[[int], None],
    *,
    transport: httpx.AsyncBaseTransport | None = None,
) -> dict[FileRole, Path]:
    """Download every file of the job into `directory`; returns the paths by role. Raises DownloadError."""
    refusal = policy.admit(offer)
    if refusal is not None:
        raise DownloadRefused(refusal)
    directory.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - local state dir, microseconds
    budget = _Budget(policy.max_bytes, offer.file_size)
    files = offer.files
    for f in files:  # count what previous runs already have, so progress and caps see the whole job
        final, part = directory / f.name, directory / f"{f.name}.part"
        budget.files[f.name] = (
            final.stat().st_size if final.exists() else part.stat().st_size if part.exists() else 0
        )
    timeout = httpx.Timeout(policy.timeout_s)
    async with httpx.AsyncClient(
        verify=policy.ssl_context(), timeout=timeout, transport=transport, follow_redirects=False
    ) as client:
        out: dict[FileRole, Path] = {}
        for f in files:
            final = directory / f.name
            if not final.exists():
                url = policy.url(offer.file_host, f.path)
                try:
                    async for attempt in stamina.retry_context(
                        on=(_Retryable, httpx.TransportError),
                        attempts=policy.attempts,
                        timeout=None,
                        wait_initial=policy.wait_initial_s,
                        wait_max=policy.wait_max_s,
                    ):
                        with attempt:
                            await _fetch(client, url, directory, f.name, budget, progress)
                except httpx.TransportError as exc:
                    raise DownloadError(
                        f"{f.name}: {type(exc).__name__}: {exc or 'connection failed'}"
                    ) from exc
            out[f.role] = final
    total = budget.total()
    if total != offer.file_size:
        raise DownloadRefused(f"files total {total} bytes but FILE_SIZE is {offer.file_size}")
    return out


async def _fetch(
    client: httpx.AsyncClient,
    url: str,
    directory: Path,
    name: str,
    budget: _Budget,
    progress: Callable[[int], None],
) -> None:
    final, part, meta = directory / name, directory / f"{name}.part", directory / f"{name}.meta"
    offset = part.stat().st_size if part.exists() else 0
    etag: str | None = None
    if meta.exists():
        try:
            etag = json.loads(meta.read_text()).get("etag")
        except ValueError:
            etag = None
    headers: dict[str, str] = {}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        if etag:
            headers["If-Range"] = etag
    async with client.stream("GET", url, headers=headers) as response:
        status = response.status_code
        if status == 206 and offset:
            match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
            if match is None or int(match.group(1)) != offset:
                part.unlink(missing_ok=True)
                raise _Retryable(f"{name}: server resumed at the wrong offset")
            mode = "ab"
        elif status == 200:
            offset, mode = 0, "wb"  # no Range support, or the file changed (If-Range): start again
        elif status == 416 and offset:
            part.unlink(missing_ok=True)
            raise _Retryable(f"{name}: server refused to resume (416)")
        elif status >= 500 or status in (408, 429):
            raise _Retryable(f"{name}: HTTP {status}")
        else:
            raise DownloadRefused(f"{name}: HTTP {status}")
        new_etag = response.headers.get("ETag")
        strong = new_etag if new_etag and not new_etag.startswith("W/") else None
        meta.write_text(json.dumps({"etag": strong, "url": url}))
        budget.set(name, offset)
        with part.open(mode) as fh:
            async for chunk in response.aiter_bytes():
                budget.set(name, offset + len(chunk))
                fh.write(chunk)
                fh.flush()  # in the kernel before we count it: a kill -9 keeps every counted byte
                offset += len(chunk)
                progress(budget.total())
            fh.flush()
    part.replace(final)
    meta.unlink(missing_ok=True)
    log.debug("event=file_downloaded file=%s bytes=%d", name, offset)
