"""Fetch a job's files over HTTPS into the state directory, resumable across broken connections and restarts.

Firmware arrives from the network, so nothing the server says is trusted: the host must be on the allow-list
(redirects too: followed only to HTTPS hosts on it, at most `max_redirects` times), paths were already refused
if they could escape FILE_HOST (cloud/wire.py), and the byte count is checked *while streaming* against the
configured cap (Content-Length is never trusted alone). Bodies are asked for with `Accept-Encoding:
identity`: a compressed body would be inflated in memory before any cap could see its real size.

FILE_SIZE is what nRF Cloud uses for progress (its bundle record's total), not an integrity check: a server
that sends a different total is logged, and the init packet's SHA-256 of the image and its signature, checked
before any radio work, decide whether the files are good.

Files land as `<index>.part` then `<index>` (the remote names may repeat across bundle ids, and never reach
the file system). A retry (or the next agent start) asks for the rest with `Range`, guarded by `If-Range:
<ETag>` when the server gave a strong ETag, so a file that changed meanwhile comes back whole (200) instead of
being spliced. A server that ignores Range answers 200 and the file simply starts again.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import re
import ssl
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from dfu.retry import RetryPolicy
from gateway_agent.cloud.wire import BleJob
from gateway_agent.logs import kv

log = logging.getLogger(__name__)
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


class DownloadError(Exception):
    """The job's files could not be fetched; the message is the cause reported to the cloud."""


class DownloadRefused(DownloadError):
    """Policy or server refusal that retrying cannot fix (host not allowed, too large, 404)."""


class _Retryable(DownloadError):
    """Worth another attempt (broken connection, 5xx, inconsistent resume)."""


DOWNLOAD_RETRY = RetryPolicy(0.5, 15.0, jitter_s=1.0, attempts=6)


@dataclass(frozen=True)
class DownloadPolicy:
    allowed_hosts: tuple[str, ...]
    max_bytes: int
    require_https: bool = True
    timeout_s: float = 30.0
    ca_file: Path | None = None
    retry: RetryPolicy = DOWNLOAD_RETRY
    max_redirects: int = 5

    def host_allowed(self, host: str) -> bool:
        """A pattern matches the host as given ("host" or "host:port"); a port must be allowed explicitly."""
        host = host.lower()
        return any(fnmatch.fnmatchcase(host, pattern.lower()) for pattern in self.allowed_hosts)

    def admit(self, offer: BleJob) -> str | None:
        """Why this offer must not be downloaded, or None. Pure: the job core calls it before DOWNLOADING."""
        if not self.host_allowed(offer.file_host):
            return f"host {offer.file_host} is not in download.allowed_hosts"
        if offer.file_size > self.max_bytes:
            return f"FILE_SIZE {offer.file_size} exceeds download.max_bytes {self.max_bytes}"
        return None

    def url(self, host: str, path: str) -> str:
        return f"{'https' if self.require_https else 'http'}://{host}/{path}"

    def check_redirect(self, base: str, location: str) -> str:
        """The absolute URL a redirect leads to, if the policy allows following it; else DownloadRefused."""
        target = urllib.parse.urljoin(base, location)
        parts = urllib.parse.urlsplit(target)
        if parts.scheme != "https" and (self.require_https or parts.scheme != "http"):
            raise DownloadRefused(f"redirect to a non-HTTPS URL refused: {parts.scheme}://{parts.netloc}")
        if not parts.hostname or not self.host_allowed(parts.netloc):
            raise DownloadRefused(f"redirect to {parts.netloc or '?'} refused: not in download.allowed_hosts")
        return target

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
    files: dict[int, int] = field(default_factory=dict)

    def total(self) -> int:
        return sum(self.files.values())

    def set(self, index: int, size: int) -> None:
        self.files[index] = size
        total = self.total()
        if total > self.limit:
            raise DownloadRefused(f"download exceeds download.max_bytes ({total} > {self.limit})")


@dataclass(frozen=True, slots=True)
class Downloaded:
    """One file of the job on disk: the name it had on the host (a hint only) and where it is."""

    remote_name: str
    path: Path


def job_directory(state_dir: Path, peripheral_id: str, job_id: str) -> Path:
    return state_dir / "downloads" / f"{peripheral_id.replace(':', '')}-{job_id}"


def job_files(offer: BleJob, directory: Path) -> list[Downloaded]:
    """Where the job's files are (or will be), in FILE_PATH order."""
    return [
        Downloaded(urllib.parse.unquote(path.rsplit("/", 1)[-1]), directory / str(i))
        for i, path in enumerate(offer.paths)
    ]


async def download_job(
    offer: BleJob,
    directory: Path,
    policy: DownloadPolicy,
    progress: Callable[[int], None],
    *,
    transport: httpx.AsyncBaseTransport | None = None,
) -> list[Downloaded]:
    """Download every file of the job into `directory`, in FILE_PATH order. Raises DownloadError."""
    refusal = policy.admit(offer)
    if refusal is not None:
        raise DownloadRefused(refusal)
    directory.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - local state dir, microseconds
    budget = _Budget(policy.max_bytes)
    files = job_files(offer, directory)
    for i, f in enumerate(files):  # count what previous runs already have, so progress and caps see it all
        part = f.path.with_suffix(".part")
        budget.files[i] = (
            f.path.stat().st_size if f.path.exists() else part.stat().st_size if part.exists() else 0
        )
    timeout = httpx.Timeout(policy.timeout_s)
    async with httpx.AsyncClient(
        verify=policy.ssl_context(),
        timeout=timeout,
        transport=transport,
        follow_redirects=False,
        headers={"Accept-Encoding": "identity"},
    ) as client:
        for i, (f, path) in enumerate(zip(files, offer.paths, strict=True)):
            if f.path.exists():
                continue
            url = policy.url(offer.file_host, path)
            try:
                async for attempt in policy.retry.retrying(on=(_Retryable, httpx.TransportError)):
                    with attempt:
                        await _fetch(client, policy, url, f.path, i, budget, progress)
            except httpx.TransportError as exc:
                raise DownloadError(
                    f"{f.remote_name}: {type(exc).__name__}: {exc or 'connection failed'}"
                ) from exc
    total = budget.total()
    if total != offer.file_size:
        log.warning(
            "download_size_differs",
            extra=kv(
                job=offer.job_id,
                peripheral=offer.peripheral_id,
                bytes=total,
                file_size=offer.file_size,
                note="FILE_SIZE is only used for progress; the init packet's hash decides",
            ),
        )
    return files


async def _fetch(
    client: httpx.AsyncClient,
    policy: DownloadPolicy,
    url: str,
    final: Path,
    index: int,
    budget: _Budget,
    progress: Callable[[int], None],
) -> None:
    part, meta = final.with_suffix(".part"), final.with_suffix(".meta")
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
    name = url.rsplit("/", 1)[-1]
    for _ in range(policy.max_redirects + 1):
        async with client.stream("GET", url, headers=headers) as response:
            status = response.status_code
            if status in _REDIRECTS:
                location = response.headers.get("Location")
                if not location:
                    raise DownloadRefused(f"{name}: HTTP {status} without a Location")
                url = policy.check_redirect(url, location)
                continue
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
            encoding = response.headers.get("Content-Encoding", "identity").lower()
            if encoding not in ("identity", ""):
                raise DownloadRefused(f"{name}: server sent a {encoding}-encoded body despite identity")
            new_etag = response.headers.get("ETag")
            strong = new_etag if new_etag and not new_etag.startswith("W/") else None
            meta.write_text(json.dumps({"etag": strong}))
            budget.set(index, offset)
            with part.open(mode) as fh:
                async for chunk in response.aiter_raw():
                    budget.set(index, offset + len(chunk))
                    fh.write(chunk)
                    fh.flush()  # in the kernel before we count it: a kill -9 keeps every counted byte
                    offset += len(chunk)
                    progress(budget.total())
            part.replace(final)
            meta.unlink(missing_ok=True)
            log.debug("file_downloaded", extra=kv(file=name, bytes=offset))
            return
    raise DownloadRefused(f"{name}: more than {policy.max_redirects} redirects")
