"""REST API (`/v1`, nRF Cloud's paths and shapes) and firmware hosting (`/<tenant>/<bundle>/<file>`).

Thin: each handler parses with pydantic, runs one model command through `FotaService.run`, and renders the
result. Refusals are typed `FotaError`s rendered as `{"code", "message", "error"}`. The token and the body
caps are checked by `RequestGuard` (fota_service/guard.py) before any handler or body parser runs. Firmware
files are served without authentication, like nRF Cloud's pre-signed download URLs, with single-range support
so gateways can resume a download. The API docs are off unless `api_docs` is set.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, FastAPI, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from fota_service.errors import FotaError, InvalidRequest, NotFound, ValidationFailed
from fota_service.guard import RequestGuard
from fota_service.model import DeviceKind, Effect, FotaModel
from fota_service.schemas import (
    BundleOut,
    BundlePage,
    CreateJob,
    DeviceOut,
    DevicePage,
    ErrorBody,
    ExecutionOut,
    ExecutionPage,
    GroupMembers,
    GroupOut,
    JobCreated,
    JobOut,
    JobPage,
    PutDevice,
    UpdateExecution,
    UploadAccepted,
    iso,
)
from fota_service.service import FotaService
from gateway_agent.cloud.wire import ExecutionStatus, FirmwareType

log = logging.getLogger(__name__)

MAX_UPLOAD = 8 * 1024 * 1024
UPLOAD_PATH = "/v1/firmwares"
_RANGE = re.compile(r"^bytes=(\d{0,18})-(\d{0,18})$")
"""One range; 18 digits cover any file (and keep int() cheap): a longer number is a 416, like any range we
cannot serve."""
_RANGE_HEADER_MAX = 64


def _page_token(offset: int) -> str:
    return base64.urlsafe_b64encode(f"o:{offset}".encode()).decode().rstrip("=")


def _page_offset(token: str | None) -> int:
    if not token:
        return 0
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        if not text.startswith("o:"):
            raise ValueError(text)
        return max(0, int(text[2:]))
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise InvalidRequest("invalid pageNextToken") from exc


def create_app(service: FotaService, *, token: str, api_docs: bool = False) -> FastAPI:
    """The REST app behind its `RequestGuard`; `api_docs` serves /docs, /redoc and /openapi.json (public)."""

    async def fresh(request: Request) -> None:
        """Processes sharing a PostgreSQL database: take in what the others wrote before an API call reads
        the model (async so it runs on the loop, with the model's other users, not in a worker thread)."""
        if request.url.path.startswith("/v1/"):
            service.sync()

    app = FastAPI(
        dependencies=[Depends(fresh)],
        title="Local nRF Cloud FOTA job service",
        version="1.0",
        description="A stand-in for nRF Cloud's FOTA REST API (jobs, executions, firmware) for bench use.",
        docs_url="/docs" if api_docs else None,
        redoc_url="/redoc" if api_docs else None,
        openapi_url="/openapi.json" if api_docs else None,
    )
    app.add_middleware(RequestGuard, token=token, upload_path=UPLOAD_PATH, upload_limit=MAX_UPLOAD)
    errors: dict[int | str, dict[str, object]] = {
        400: {"model": ErrorBody},
        401: {"model": ErrorBody},
        404: {"model": ErrorBody},
        409: {"model": ErrorBody},
        422: {"model": ErrorBody},
    }

    @app.exception_handler(FotaError)
    async def _fota_error(_request: Request, exc: FotaError) -> JSONResponse:
        body = ErrorBody(code=exc.code, message=exc.message, error=exc.error)
        return JSONResponse(body.model_dump(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        message = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}" for e in exc.errors()
        )
        refusal = ValidationFailed(message)
        body = ErrorBody(code=refusal.code, message=message, error=refusal.error)
        return JSONResponse(body.model_dump(), status_code=refusal.status)

    model: FotaModel = service.model

    def run(command: Callable[[FotaModel, float], list[Effect]]) -> list[Effect]:
        return service.run(command)

    # ------------------------------------------------------------------------------------------ jobs
    @app.post("/v1/fota-jobs", status_code=201, responses=errors)
    async def create_job(body: CreateJob) -> JobCreated:
        job_id = service.new_id()
        run(
            lambda m, now: m.create_job(
                job_id,
                now,
                bundle_id=body.bundleId,
                name=body.name,
                description=body.description,
                device_ids=body.devices,
                tags=body.tags,
                auto_apply=body.autoApply,
            )
        )
        log.info("job created", extra={"job_id": job_id, "auto_apply": body.autoApply})
        return JobCreated(jobId=job_id)

    @app.get("/v1/fota-jobs", responses=errors)
    async def list_jobs(
        pageLimit: Annotated[int, Query(ge=1, le=100)] = 10,
        pageNextToken: str | None = None,
    ) -> JobPage:
        jobs = model.list_jobs()
        offset = _page_offset(pageNextToken)
        page = jobs[offset : offset + pageLimit]
        more = offset + pageLimit < len(jobs)
        return JobPage(
            items=[JobOut.of(model, j) for j in page],
            total=len(jobs),
            pageNextToken=_page_token(offset + pageLimit) if more else None,
        )

    @app.get("/v1/fota-jobs/{jobId}", responses=errors)
    async def fetch_job(jobId: str) -> JobOut:
        return JobOut.of(model, model.job(jobId))

    # apply, cancel, delete and the execution PATCH answer 202 with an empty body, as nRF Cloud's v1 API does
    # (its OpenAPI spec; docs/nrf-cloud.md "REST API")
    @app.post("/v1/fota-jobs/{jobId}/apply", status_code=202, responses=errors)
    async def apply_job(jobId: str) -> Response:
        effects = run(lambda m, now: m.apply_job(jobId, now))
        job = model.job(jobId)
        log.info("job applied", extra={"job_id": jobId, "status": job.status.value, "notified": len(effects)})
        return Response(status_code=202)

    @app.put("/v1/fota-jobs/{jobId}/cancel", status_code=202, responses=errors)
    async def cancel_job(jobId: str) -> Response:
        run(lambda m, now: m.cancel_job(jobId, now))
        return Response(status_code=202)

    @app.delete("/v1/fota-jobs/{jobId}", status_code=202, responses=errors)
    async def delete_job(jobId: str) -> Response:
        """The job disappears from the lists; its executions stay (nRF Cloud: "Does not affect executions
        associated with this job")."""
        run(lambda m, now: m.delete_job(jobId, now))
        return Response(status_code=202)

    # ------------------------------------------------------------------------------------ executions
    @app.get("/v1/fota-job-execution-statuses/{jobId}", responses=errors)
    async def list_executions(
        jobId: str,
        pageLimit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
        pageNextToken: str | None = None,
    ) -> ExecutionPage:
        executions = model.executions_of(jobId)
        offset = _page_offset(pageNextToken)
        more = offset + pageLimit < len(executions)
        return ExecutionPage(
            items=[ExecutionOut.of(e) for e in executions[offset : offset + pageLimit]],
            total=len(executions),
            pageNextToken=_page_token(offset + pageLimit) if more else None,
        )

    @app.get("/v1/fota-job-executions/{deviceId}/{jobId}", responses=errors)
    async def fetch_execution(deviceId: str, jobId: str) -> ExecutionOut:
        return ExecutionOut.of(model.execution(deviceId, jobId))

    @app.patch("/v1/fota-job-executions/{deviceId}/{jobId}", status_code=202, responses=errors)
    async def update_execution(deviceId: str, jobId: str, body: UpdateExecution) -> Response:
        status = ExecutionStatus.from_name(body.status)
        run(
            lambda m, now: m.update_execution(
                deviceId, jobId, status, now, details=body.details, progress=body.progress
            )
        )
        return Response(status_code=202)

    # ------------------------------------------------------------------------------------- firmwares
    @app.post(UPLOAD_PATH, status_code=202, responses=errors)
    async def upload_firmware(
        request: Request, name: str = "", version: str = "", description: str = ""
    ) -> UploadAccepted:
        """The body is the zip itself (`application/zip`), or base64 of it as nRF Cloud's API takes; the guard
        has capped it at MAX_UPLOAD as it streamed in."""
        data = await request.body()
        if not data.startswith(b"PK"):
            try:
                data = base64.b64decode(data, validate=True)
            except binascii.Error as exc:
                raise InvalidRequest("body is neither a zip nor base64 of one") from exc
        bundle = service.upload_bundle(data, name=name, version=version, description=description)
        return UploadAccepted(uris=_uris(bundle.bundle_id))

    def _uris(bundle_id: str) -> list[str]:
        return list(model.bundles[bundle_id].uris(model.tenant))

    def _bundle_out(bundle_id: str) -> BundleOut:
        b = model.bundles[bundle_id]
        return BundleOut(
            bundleId=b.bundle_id,
            name=b.name,
            description=b.description,
            type=b.firmware_type.name,
            version=b.version,
            size=b.file_size,
            filenames=[n for n, _ in b.files],
            uris=_uris(b.bundle_id),
            createdAt=iso(b.created_at),
        )

    @app.get("/v1/firmwares", responses=errors)
    async def list_firmwares() -> BundlePage:
        items = [_bundle_out(b) for b in sorted(model.bundles, key=lambda k: model.bundles[k].created_at)]
        return BundlePage(items=items, total=len(items))

    # ------------------------------------------------------------------- bench: devices and groups
    @app.put("/v1/devices/{deviceId}", responses=errors)
    async def put_device(deviceId: str, body: PutDevice) -> DeviceOut:
        kind = DeviceKind(body.type)
        if kind is DeviceKind.BLE and not body.gatewayId and deviceId not in model.devices:
            raise InvalidRequest("a Bluetooth LE peripheral needs gatewayId")
        fota_v2 = None if body.fotaV2 is None else [FirmwareType[t] for t in body.fotaV2]
        run(
            lambda m, now: m.upsert_device(
                deviceId,
                kind,
                now,
                gateway_id=body.gatewayId,
                fota_v2=fota_v2,
                fota_v2_ble=body.fotaV2Ble,
                secure_dfu=body.secureDfu,
            )
        )
        return DeviceOut.of(model, model.devices[deviceId])

    @app.get("/v1/devices", responses=errors)
    async def list_devices() -> DevicePage:
        items = [DeviceOut.of(model, model.devices[d]) for d in sorted(model.devices)]
        return DevicePage(items=items, total=len(items))

    @app.get("/v1/devices/{deviceId}", responses=errors)
    async def fetch_device(deviceId: str) -> DeviceOut:
        device = model.devices.get(deviceId)
        if device is None:
            raise NotFound(f"device {deviceId} not found")
        return DeviceOut.of(model, device)

    @app.delete("/v1/devices/{deviceId}", status_code=204, responses=errors)
    async def delete_device(deviceId: str) -> Response:
        run(lambda m, now: m.delete_device(deviceId, now))
        return Response(status_code=204)

    @app.put("/v1/groups/{name}", responses=errors)
    async def put_group(name: str, body: GroupMembers) -> GroupOut:
        run(lambda m, _now: m.set_group(name, body.deviceIds))
        return GroupOut(name=name, deviceIds=sorted(model.groups[name]))

    @app.post("/v1/groups/{name}/devices", responses=errors)
    async def add_to_group(name: str, body: GroupMembers) -> GroupOut:
        run(lambda m, _now: m.add_to_group(name, body.deviceIds))
        return GroupOut(name=name, deviceIds=sorted(model.groups[name]))

    @app.get("/v1/groups", responses=errors)
    async def list_groups() -> list[GroupOut]:
        return [GroupOut(name=n, deviceIds=sorted(m)) for n, m in sorted(model.groups.items())]

    # ------------------------------------------------------------------------------- firmware hosting
    @app.get("/{tenant}/{bundleId}/{fileName}", include_in_schema=False)
    async def firmware_file(tenant: str, bundleId: str, fileName: str, request: Request) -> Response:
        data = service.firmware_file(bundleId, fileName) if tenant == model.tenant else None
        if data is None:
            raise NotFound(f"{tenant}/{bundleId}/{fileName} not found")
        headers = {"accept-ranges": "bytes", "cache-control": "public, max-age=31536000, immutable"}
        requested = request.headers.get("range")
        if requested:
            match = _RANGE.match(requested.strip()) if len(requested) <= _RANGE_HEADER_MAX else None
            if match is None or match.group(1) == match.group(2) == "":
                return Response(status_code=416, headers={"content-range": f"bytes */{len(data)}"})
            if match.group(1) == "":  # suffix range: the last N bytes
                start, end = max(0, len(data) - int(match.group(2))), len(data) - 1
            else:
                start = int(match.group(1))
                end = min(int(match.group(2)), len(data) - 1) if match.group(2) else len(data) - 1
            if start >= len(data) or start > end:
                return Response(status_code=416, headers={"content-range": f"bytes */{len(data)}"})
            headers["content-range"] = f"bytes {start}-{end}/{len(data)}"
            return Response(
                data[start : end + 1], status_code=206, media_type="application/octet-stream", headers=headers
            )
        return Response(data, media_type="application/octet-stream", headers=headers)

    return app
