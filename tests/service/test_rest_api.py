"""The REST API through real HTTP semantics (httpx against the ASGI app): nRF Cloud's paths and shapes.

The nRF Cloud facts below come from its REST API (the OpenAPI spec, as the generated `python_nRF_cloud_client`
carries it) and hello.nrfcloud.com's recorded responses; docs/fota-service.md lists them with what still
differs."""

from __future__ import annotations

import base64
import io
import json
import re
import zipfile

import httpx
import pytest

from dfu.package import DfuPackage
from fota_service.api import create_app
from fota_service.model import Effect, Notify
from fota_service.service import FotaService
from tests.service.conftest import TOKEN, app_zip, sd_app_zip


async def upload(api: httpx.AsyncClient, data: bytes | None = None) -> str:
    """UploadFirmware answers 202 `{uris}`; the bundle id is the uri's second segment, as nRF Cloud's own
    docs tell clients to read it."""
    r = await api.post(
        "/v1/firmwares", content=data or app_zip(), headers={"content-type": "application/zip"}
    )
    assert r.status_code == 202, r.text
    assert list(r.json()) == ["uris"]
    return str(r.json()["uris"][0].split("/")[1])


def cloud_zip(files: list[tuple[str, bytes, str]], fwversion: str = "2.0.0", folder: str = "") -> bytes:
    """nRF Cloud's own bundle zip (UploadFirmware): manifest.json with `fwversion`, `format-version` 1 and
    `files[{file, type, size}]`, every file `.bin`; nRF Cloud's device simulator keeps it in a folder."""
    manifest = {
        "name": "thingy app",
        "fwversion": fwversion,
        "format-version": 1,
        "files": [{"file": name, "type": kind, "size": len(data)} for name, data, kind in files],
    }
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(f"{folder}manifest.json", json.dumps(manifest))
        for name, data, _ in files:
            z.writestr(f"{folder}{name}", data)
    return buf.getvalue()


async def fleet(api: httpx.AsyncClient, gateways: int = 1, per_gateway: int = 2) -> list[str]:
    peripherals = []
    for g in range(gateways):
        r = await api.put(f"/v1/devices/gw-{g}", json={"type": "ip", "fotaV2Ble": True})
        assert r.status_code == 200, r.text
        for p in range(per_gateway):
            pid = f"C8:2E:1A:00:{g:02X}:{p:02X}"
            r = await api.put(f"/v1/devices/{pid}", json={"type": "ble", "gatewayId": f"gw-{g}"})
            assert r.status_code == 200, r.text
            peripherals.append(pid)
    return peripherals


async def test_requests_without_the_bearer_token_are_refused(api: httpx.AsyncClient) -> None:
    for headers in ({"Authorization": ""}, {"Authorization": "Bearer wrong"}):
        r = await api.get("/v1/fota-jobs", headers=headers)
        assert r.status_code == 401
        assert r.json() == {
            "code": 40100,
            "message": "a valid bearer token is required",
            "error": "Unauthorized",
        }


async def test_upload_hosts_an_nrfutil_zip_the_way_nrf_cloud_hosts_bundles(api: httpx.AsyncClient) -> None:
    """Bundle ids `<TYPE>*<8 hex>*<version>` (e.g. `APP*1e29dfa3*v2.0.1`), files under `<tenant>/<bundle>/`,
    every file `.bin`, the init packet `<name>dat.bin` (lte-gateway `src/ble/cli.c`:
    `app_thingy_s132dat.bin`)."""
    data = app_zip(version=7)
    bundle_id = await upload(api, data)
    assert re.fullmatch(r"APP\*[0-9a-f]{8}\*7", bundle_id), bundle_id
    listed = (await api.get("/v1/firmwares")).json()
    assert listed["total"] == 1
    (bundle,) = listed["items"]
    assert (bundle["type"], bundle["version"]) == ("APP", "7")
    assert bundle["filenames"] == ["appdat.bin", "app.bin"]
    assert bundle["uris"] == [f"T/{bundle_id}/appdat.bin", f"T/{bundle_id}/app.bin"]
    (image,) = DfuPackage.from_zip(data).images
    assert bundle["size"] == len(image.init_packet) + len(image.firmware)
    # hosted without the API token, like nRF Cloud's download URLs; `*` in the path as it is
    async with httpx.AsyncClient(transport=api._transport, base_url="http://fota.test") as anonymous:
        r = await anonymous.get(f"/T/{bundle_id}/app.bin")
        assert r.status_code == 200
        assert r.content == image.firmware
        r = await anonymous.get(f"/T/{bundle_id}/appdat.bin", headers={"Range": "bytes=4-"})
        assert r.status_code == 206
        assert r.content == image.init_packet[4:]
        assert r.headers["content-range"] == f"bytes 4-{len(image.init_packet) - 1}/{len(image.init_packet)}"
        assert (await anonymous.get(f"/T/{bundle_id}/nope.bin")).status_code == 404
        assert (await anonymous.get(f"/OTHER/{bundle_id}/app.bin")).status_code == 404


@pytest.mark.parametrize("init_type", ["init_packet", "application"])
async def test_upload_takes_nrf_clouds_own_bundle_zip(api: httpx.AsyncClient, init_type: str) -> None:
    """nRF Cloud UploadFirmware: "For Bluetooth LE devices using FOTA, the .zip file must contain both the
    init_packet and the firmware image"; its docs disagree on the init packet's `type`, so both are taken and
    the bytes decide. The image may be listed first."""
    (image,) = DfuPackage.from_zip(app_zip(version=3)).images
    data = cloud_zip(
        [("thingy.bin", image.firmware, "application"), ("thingydat.bin", image.init_packet, init_type)],
        fwversion="v3.1.0",
        folder="thingy/",
    )
    bundle_id = await upload(api, data)
    assert re.fullmatch(r"APP\*[0-9a-f]{8}\*v3\.1\.0", bundle_id), bundle_id
    (bundle,) = (await api.get("/v1/firmwares")).json()["items"]
    assert bundle["filenames"] == ["thingydat.bin", "thingy.bin"]  # init packet first in FILE_PATH
    assert bundle["name"] == "thingy app"


async def test_upload_accepts_base64_like_nrf_cloud(api: httpx.AsyncClient) -> None:
    bundle_id = await upload(api, base64.b64encode(app_zip()))
    assert bundle_id


async def test_multi_image_and_invalid_zips_are_refused(api: httpx.AsyncClient) -> None:
    """A bundle is one init packet + one image; a SoftDevice + application zip is two bundles (decision).
    Refusals are 422 with nRF Cloud's 42200 "Validation failed"."""
    r = await api.post("/v1/firmwares", content=sd_app_zip())
    assert (r.status_code, r.json()["code"]) == (422, 42200)
    assert "exactly one image" in r.json()["message"]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("manifest.json", "{}")
    r = await api.post("/v1/firmwares", content=buf.getvalue())
    assert (r.status_code, r.json()["error"]) == (422, "ValidationFailed")
    (image,) = DfuPackage.from_zip(app_zip()).images
    for files in (
        [("app.bin", image.firmware, "application")],  # no init packet
        [("app.hex", image.firmware, "application"), ("appdat.bin", image.init_packet, "init_packet")],
        [("app.bin", image.firmware, "application"), ("appdat.bin", b"\x00" * 40, "init_packet")],
    ):
        r = await api.post("/v1/firmwares", content=cloud_zip(files))
        assert r.status_code == 422, (files[0][0], r.text)
    r = await api.post("/v1/firmwares", content=cloud_zip([("a.bin", b"x", "application")], fwversion="a b"))
    assert "fwversion" in r.json()["message"]
    r = await api.post("/v1/firmwares", content=b"not a zip at all!")
    assert r.status_code == 400
    assert (await api.get("/v1/firmwares")).json()["total"] == 0


async def test_job_life_cycle_over_rest(api: httpx.AsyncClient, effects: list[Effect]) -> None:
    """CreateFOTAJob → 201 {jobId}; ApplyFOTAJob, UpdateFOTAJobExecutionStatus and DeleteFOTAJob → 202 with
    an empty body; a deleted job's executions stay (nRF Cloud: "Does not affect executions")."""
    bundle_id = await upload(api)
    peripherals = await fleet(api)
    r = await api.post(
        "/v1/fota-jobs",
        json={
            "bundleId": bundle_id,
            "name": "update",
            "description": "d",
            "deviceIds": peripherals,
            "autoApply": False,
        },
    )
    assert r.status_code == 201
    job_id = r.json()["jobId"]
    assert list(r.json()) == ["jobId"]
    job = (await api.get(f"/v1/fota-jobs/{job_id}")).json()
    assert job["status"] == "CREATED"
    assert job["target"] == {"deviceIds": peripherals, "tags": []}
    assert job["firmware"]["firmwareType"] == "APP"
    assert job["firmware"]["host"] == "files.test:8443"
    assert job["firmware"]["uris"] == [f"T/{bundle_id}/appdat.bin", f"T/{bundle_id}/app.bin"]
    assert [e for e in effects if isinstance(e, Notify)] == []

    r = await api.post(f"/v1/fota-jobs/{job_id}/apply")
    assert (r.status_code, r.content) == (202, b"")
    job = (await api.get(f"/v1/fota-jobs/{job_id}")).json()
    assert job["status"] == "IN_PROGRESS"
    assert sorted(e.device_id for e in effects if isinstance(e, Notify)) == peripherals
    statuses = (await api.get(f"/v1/fota-job-execution-statuses/{job_id}")).json()
    assert statuses["total"] == 2
    assert {i["status"] for i in statuses["items"]} == {"QUEUED"}

    r = await api.patch(
        f"/v1/fota-job-executions/{peripherals[0]}/{job_id}", json={"status": "DOWNLOADING", "progress": 40}
    )
    assert (r.status_code, r.content) == (202, b"")
    execution = (await api.get(f"/v1/fota-job-executions/{peripherals[0]}/{job_id}")).json()
    assert (execution["status"], execution["progress"]) == ("DOWNLOADING", 40)
    await api.patch(f"/v1/fota-job-executions/{peripherals[0]}/{job_id}", json={"status": "SUCCEEDED"})
    await api.patch(
        f"/v1/fota-job-executions/{peripherals[1]}/{job_id}", json={"status": "CANCELLED", "details": "gone"}
    )
    assert (await api.get(f"/v1/fota-job-executions/{peripherals[1]}/{job_id}")).json()[
        "statusDetail"
    ] == "gone"
    execution = (await api.get(f"/v1/fota-job-executions/{peripherals[0]}/{job_id}")).json()
    assert execution["status"] == "SUCCEEDED"
    assert execution["gatewayId"] == "gw-0"

    job = (await api.get(f"/v1/fota-jobs/{job_id}")).json()
    assert job["status"] == "COMPLETED"
    assert job["completedAt"] is not None
    assert job["executionStats"] == {
        "devices": 2,
        "executions": 2,
        "completedExecutions": 2,
        "queued": 0,
        "inProgress": 0,
        "downloading": 0,
        "succeeded": 1,
        "failed": 0,
        "timedOut": 0,
        "rejected": 0,
        "cancelled": 1,
        "removed": 0,
    }
    r = await api.patch(f"/v1/fota-job-executions/{peripherals[0]}/{job_id}", json={"status": "FAILED"})
    assert (r.status_code, r.json()["code"]) == (409, 40000)

    r = await api.delete(f"/v1/fota-jobs/{job_id}")
    assert (r.status_code, r.content) == (202, b"")
    assert (await api.get(f"/v1/fota-jobs/{job_id}")).status_code == 404
    assert (await api.get("/v1/fota-jobs")).json() == {"items": [], "total": 0, "pageNextToken": None}
    kept = (await api.get(f"/v1/fota-job-executions/{peripherals[0]}/{job_id}")).json()
    assert kept["status"] == "SUCCEEDED"
    assert (await api.get(f"/v1/fota-job-execution-statuses/{job_id}")).json()["total"] == 2


async def test_state_errors_use_the_error_shape(api: httpx.AsyncClient) -> None:
    """Seed: "You can cancel a job in the CREATED or IN_PROGRESS state." / delete only COMPLETED, CREATED,
    CANCELLED."""
    bundle_id = await upload(api)
    peripherals = await fleet(api)
    # autoApply defaults to true (CreateJobInput: "[default to True]"); name is optional
    r = await api.post("/v1/fota-jobs", json={"bundleId": bundle_id, "deviceIds": peripherals})
    job_id = r.json()["jobId"]
    assert (await api.get(f"/v1/fota-jobs/{job_id}")).json()["status"] == "IN_PROGRESS"
    r = await api.delete(f"/v1/fota-jobs/{job_id}")
    assert r.status_code == 409
    assert r.json() == {
        "code": 40000,
        "message": f"cannot delete job {job_id} in state IN_PROGRESS",
        "error": "Conflict",
    }
    assert (await api.put(f"/v1/fota-jobs/{job_id}/cancel")).status_code == 202
    assert (await api.get(f"/v1/fota-jobs/{job_id}")).json()["status"] == "CANCELLED"
    r = await api.put(f"/v1/fota-jobs/{job_id}/cancel")
    assert (r.status_code, r.json()["code"]) == (409, 40000)
    r = await api.post(f"/v1/fota-jobs/{job_id}/apply")
    assert r.status_code == 409
    r = await api.get("/v1/fota-jobs/nope")
    assert (r.status_code, r.json()["code"], r.json()["error"]) == (404, 40410, "NotFound")


async def test_request_validation_errors_are_422_in_the_error_shape(api: httpx.AsyncClient) -> None:
    """nRF Cloud: 42200 "Validation failed"; 40001 means an invalid device certificate there, never used."""
    r = await api.post("/v1/fota-jobs", json={"name": "no bundle"})
    assert r.status_code == 422
    body = r.json()
    assert (body["code"], body["error"]) == (42200, "ValidationFailed")
    assert "bundleId" in body["message"]
    r = await api.post("/v1/fota-jobs", json={"bundleId": "missing", "name": "n"})
    assert (r.status_code, r.json()["code"]) == (404, 40410)
    r = await api.get("/v1/fota-jobs", params={"pageNextToken": "garbage!"})
    assert r.status_code == 400


async def test_validation_error_lands_in_status_detail(api: httpx.AsyncClient) -> None:
    """Seed: "If a job is determined to be invalid, it is moved directly to the CANCELLED state and one of the
    following errors are provided in the job's status detail field.\""""
    bundle_id = await upload(api)
    r = await api.post(
        "/v1/fota-jobs", json={"bundleId": bundle_id, "name": "n", "tags": ["empty"], "autoApply": False}
    )
    job_id = r.json()["jobId"]
    assert (await api.post(f"/v1/fota-jobs/{job_id}/apply")).status_code == 202
    job = (await api.get(f"/v1/fota-jobs/{job_id}")).json()
    assert (job["status"], job["statusDetail"]) == ("CANCELLED", "Empty job target")


async def test_list_jobs_pages_with_next_token(api: httpx.AsyncClient) -> None:
    """ListFOTAJobs `GET /fota-jobs?pageLimit=&pageNextToken=` → `{items, total, pageNextToken?}`."""
    bundle_id = await upload(api)
    for i in range(5):
        await api.post("/v1/fota-jobs", json={"bundleId": bundle_id, "name": f"job {i}", "autoApply": False})
    names: list[str] = []
    token = None
    pages = 0
    while True:
        params: dict[str, str | int] = {"pageLimit": 2}
        if token:
            params["pageNextToken"] = token
        page = (await api.get("/v1/fota-jobs", params=params)).json()
        assert page["total"] == 5
        names += [j["name"] for j in page["items"]]
        pages += 1
        token = page.get("pageNextToken")
        if not token:
            break
    assert pages == 3
    assert names == [f"job {i}" for i in range(5)]


async def test_groups_change_what_a_created_job_deploys_to(api: httpx.AsyncClient) -> None:
    """Seed: "you can change the devices that a job deploys to by adding devices to device groups (tags) or
    removing them from the groups.\""""
    bundle_id = await upload(api)
    peripherals = await fleet(api, per_gateway=3)
    await api.put("/v1/groups/lab", json={"deviceIds": peripherals[:1]})
    r = await api.post(
        "/v1/fota-jobs", json={"bundleId": bundle_id, "name": "n", "tags": ["lab"], "autoApply": False}
    )
    job_id = r.json()["jobId"]
    r = await api.post("/v1/groups/lab/devices", json={"deviceIds": peripherals[1:]})
    assert r.json()["deviceIds"] == peripherals
    await api.post(f"/v1/fota-jobs/{job_id}/apply")
    job = (await api.get(f"/v1/fota-jobs/{job_id}")).json()
    assert job["executionStats"]["devices"] == 3
    device = (await api.get(f"/v1/devices/{peripherals[0]}")).json()
    assert device["tags"] == ["lab"]
    assert device["gatewayId"] == "gw-0"


async def test_failed_job_creates_a_listed_retry_job(api: httpx.AsyncClient) -> None:
    """Seed: "In the REST API, it appears in the server's response to the ListFOTAJobs endpoint.\""""
    bundle_id = await upload(api)
    (device,) = await fleet(api, per_gateway=1)
    # hello.nrfcloud.com's backend still sends the deprecated `deviceIdentifiers`
    r = await api.post(
        "/v1/fota-jobs", json={"bundleId": bundle_id, "name": "fw", "deviceIdentifiers": [device]}
    )
    job_id = r.json()["jobId"]
    await api.patch(f"/v1/fota-job-executions/{device}/{job_id}", json={"status": "FAILED"})
    jobs = (await api.get("/v1/fota-jobs")).json()["items"]
    assert [j["name"] for j in jobs] == ["fw", "fw Retry"]
    assert jobs[1]["status"] == "CREATED"
    assert jobs[1]["target"] == {"deviceIds": [], "tags": [f"retry-fw-{job_id}"]}
    groups = (await api.get("/v1/groups")).json()
    assert groups == [{"name": f"retry-fw-{job_id}", "deviceIds": [device]}]


def test_openapi_document_lists_the_nrf_cloud_paths(service: FotaService) -> None:
    paths = create_app(service, token=TOKEN).openapi()["paths"]
    for path in (
        "/v1/fota-jobs",
        "/v1/fota-jobs/{jobId}",
        "/v1/fota-jobs/{jobId}/apply",
        "/v1/fota-jobs/{jobId}/cancel",
        "/v1/fota-job-execution-statuses/{jobId}",
        "/v1/fota-job-executions/{deviceId}/{jobId}",
        "/v1/firmwares",
    ):
        assert path in paths


@pytest.mark.parametrize("kind", ["ble-without-gateway", "bad-type"])
async def test_device_registration_is_validated(api: httpx.AsyncClient, kind: str) -> None:
    body = {"type": "ble"} if kind == "ble-without-gateway" else {"type": "zigbee"}
    r = await api.put("/v1/devices/x", json=body)
    assert r.status_code in (400, 422)


async def test_deleting_a_device_removes_its_execution(api: httpx.AsyncClient, service: FotaService) -> None:
    bundle_id = await upload(api)
    peripherals = await fleet(api)
    r = await api.post(
        "/v1/fota-jobs",
        json={"bundleId": bundle_id, "name": "n", "deviceIds": peripherals, "autoApply": True},
    )
    job_id = r.json()["jobId"]
    assert (await api.delete(f"/v1/devices/{peripherals[1]}")).status_code == 204
    stats = (await api.get(f"/v1/fota-jobs/{job_id}")).json()["executionStats"]
    assert (stats["executions"], stats["removed"]) == (1, 1)
    assert peripherals[1] not in service.model.devices
