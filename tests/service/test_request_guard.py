"""The REST edge refuses before it reads (issue #13): the token and the body caps come before any body is read
or parsed, chunked bodies are counted as they stream, the Range header is bounded, the docs are off unless
switched on. Real HTTP semantics through httpx over ASGI; bodies are lazy generators that count what the
service actually pulled, so "never read" is measured, not assumed."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from starlette.routing import Route

from fota_service.api import MAX_UPLOAD, create_app
from fota_service.guard import JSON_BODY_LIMIT
from fota_service.service import FotaService
from tests.service.conftest import AUTH, TOKEN, app_zip

MIB = 1 << 20


class Body:
    """A request body produced lazily, `size` bytes in `chunk`-sized pieces; `pulled` counts what was read."""

    def __init__(self, size: int, chunk: int = MIB, fill: bytes = b" ") -> None:
        self.size, self.chunk, self.fill = size, chunk, fill
        self.pulled = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while self.pulled < self.size:
            piece = self.fill * min(self.chunk, self.size - self.pulled)
            self.pulled += len(piece)
            yield piece


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    """SQLite only: the guard answers before any handler touches the database."""
    return f"sqlite:///{tmp_path / 'fota.db'}"


@pytest.fixture
def app(service: FotaService) -> FastAPI:
    return create_app(service, token=TOKEN)


@pytest.fixture
async def anonymous(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://fota.test") as client:
        yield client


WRITES = [
    ("POST", "/v1/fota-jobs"),
    ("POST", "/v1/firmwares"),
    ("PATCH", "/v1/fota-job-executions/C8:2E:1A:00:00:01/job"),
    ("PUT", "/v1/devices/gw-1"),
    ("PUT", "/v1/groups/lab"),
]


@pytest.mark.parametrize(("method", "path"), WRITES)
@pytest.mark.parametrize("authorization", [None, "Bearer wrong", f"Basic {TOKEN}", f"Bearer {TOKEN}x"])
async def test_without_the_token_not_one_byte_of_the_body_is_read(
    anonymous: httpx.AsyncClient, method: str, path: str, authorization: str | None
) -> None:
    """Before issue #13 FastAPI read (and parsed) the whole body, then ran the token dependency."""
    body = Body(200 * MIB)
    headers = {"content-type": "application/json"}
    if authorization is not None:
        headers["authorization"] = authorization
    r = await anonymous.request(method, path, content=body, headers=headers)
    assert r.status_code == 401
    assert r.json() == {"code": 40100, "message": "a valid bearer token is required", "error": "Unauthorized"}
    assert r.headers["www-authenticate"] == "Bearer"
    assert body.pulled == 0


async def test_every_api_route_needs_the_token(app: FastAPI, anonymous: httpx.AsyncClient) -> None:
    """Every route under /v1, each method: 401 without the token (none may be left out of the guard)."""
    routes = [r for r in app.routes if isinstance(r, Route) and r.path.startswith("/v1")]
    assert len(routes) >= 15
    for route in routes:
        path = route.path.replace("{", "").replace("}", "")
        for method in route.methods or ():
            r = await anonymous.request(method, path)
            assert r.status_code == 401, (method, path)


async def test_writes_outside_the_api_need_the_token_too(anonymous: httpx.AsyncClient) -> None:
    """Only GET/HEAD outside /v1 (the hosted files) are public."""
    body = Body(MIB)
    r = await anonymous.post("/T/bundle/app.bin", content=body)
    assert (r.status_code, body.pulled) == (401, 0)


@pytest.mark.parametrize("chunk", [1, 4096, MIB])
async def test_a_chunked_json_body_over_the_cap_is_cut_off_as_it_streams(
    api: httpx.AsyncClient, chunk: int
) -> None:
    """No Content-Length (httpx streams a generator chunked): the bytes are counted as they come, and the
    service stops pulling at the cap instead of reading 200 MB."""
    body = Body(200 * MIB if chunk > 1 else 2 * JSON_BODY_LIMIT, chunk=chunk)
    r = await api.post("/v1/fota-jobs", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert r.json() == {
        "code": 40000,
        "message": f"request body larger than {JSON_BODY_LIMIT} bytes",
        "error": "PayloadTooLarge",
    }
    assert JSON_BODY_LIMIT < body.pulled <= JSON_BODY_LIMIT + chunk


async def test_a_declared_length_over_the_cap_is_refused_unread(api: httpx.AsyncClient) -> None:
    body = Body(200 * MIB)
    headers = {"content-type": "application/json", "content-length": str(200 * MIB)}
    r = await api.post("/v1/fota-jobs", content=body, headers=headers)
    assert (r.status_code, body.pulled) == (413, 0)


@pytest.mark.parametrize("length", ["-1", "1e9", "9" * 40])
async def test_a_nonsensical_content_length_is_a_400(api: httpx.AsyncClient, length: str) -> None:
    r = await api.put("/v1/groups/lab", content=Body(10), headers={"content-length": length})
    assert r.status_code == 400


async def test_a_json_body_at_the_cap_is_still_read(api: httpx.AsyncClient) -> None:
    """Exactly JSON_BODY_LIMIT bytes (a real group body padded with spaces) goes through."""
    text = json.dumps({"deviceIds": ["C8:2E:1A:00:00:01"]}).encode()
    padded = text + b" " * (JSON_BODY_LIMIT - len(text))
    r = await api.put("/v1/groups/lab", content=padded, headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    r = await api.put("/v1/groups/lab", content=padded + b" ", headers={"content-type": "application/json"})
    assert r.status_code == 413


async def test_firmware_uploads_have_the_firmware_cap(api: httpx.AsyncClient) -> None:
    """The upload endpoint takes up to MAX_UPLOAD (8 MiB), far beyond the JSON cap, and not a byte more."""
    data = app_zip(size=4 * JSON_BODY_LIMIT)
    r = await api.post("/v1/firmwares", content=data, headers={"content-type": "application/zip"})
    assert r.status_code == 202, r.text
    body = Body(200 * MIB, chunk=64 * 1024, fill=b"A")
    r = await api.post("/v1/firmwares", content=body, headers={"content-type": "application/zip"})
    assert r.status_code == 413
    assert r.json()["message"] == f"request body larger than {MAX_UPLOAD} bytes"
    assert MAX_UPLOAD < body.pulled <= MAX_UPLOAD + 64 * 1024


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"])
async def test_api_docs_are_off_by_default(
    service: FotaService, anonymous: httpx.AsyncClient, path: str
) -> None:
    assert (await anonymous.get(path)).status_code == 404
    assert (await anonymous.get(path, headers=AUTH)).status_code == 404
    switched_on = httpx.ASGITransport(app=create_app(service, token=TOKEN, api_docs=True))
    async with httpx.AsyncClient(transport=switched_on, base_url="http://fota.test") as client:
        r = await client.get(path)
        assert r.status_code == 200
        if path == "/openapi.json":
            assert "/v1/fota-jobs" in r.json()["paths"]


@pytest.mark.parametrize(
    "header",
    [
        "bytes=" + "1" * 5000 + "-",
        "bytes=0-" + "9" * 5000,
        "bytes=-" + "9" * 5000,
        "bytes=" + "9" * 19 + "-",
        "bytes=0-1," * 2000,
        "bytes=0-" + " " * 10_000,
        "x" * 60_000,
    ],
)
async def test_a_long_or_huge_range_is_a_416_not_a_500(
    api: httpx.AsyncClient, anonymous: httpx.AsyncClient, header: str
) -> None:
    uploaded = await api.post("/v1/firmwares", content=app_zip(), headers={"content-type": "application/zip"})
    bundle_id = uploaded.json()["uris"][0].split("/")[1]
    r = await anonymous.get(f"/T/{bundle_id}/app.bin", headers={"Range": header})
    assert r.status_code == 416
    assert r.headers["content-range"].startswith("bytes */")
    r = await anonymous.get(f"/T/{bundle_id}/app.bin", headers={"Range": "bytes=10-19"})
    assert (r.status_code, len(r.content)) == (206, 10)
