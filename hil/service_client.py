"""The fleet's REST client of the job service (nRF Cloud's paths and answers)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hil.processes import FleetError, wait_for


@dataclass
class ServiceClient:
    """The job service's REST API (nRF Cloud's paths), as an operator's script would call it."""

    http: Any
    """an `httpx.AsyncClient` with the base URL and the bearer token"""

    async def _ok(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self.http.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise FleetError(f"{method} {path}: HTTP {response.status_code} {response.text}")
        return response.json() if response.content else None

    async def put_device(self, device_id: str, **body: Any) -> dict[str, Any]:
        result: dict[str, Any] = await self._ok("PUT", f"/v1/devices/{device_id}", json=body)
        return result

    async def device(self, device_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._ok("GET", f"/v1/devices/{device_id}")
        return result

    async def upload_firmware(self, data: bytes, *, name: str) -> str:
        """The bundle id: nRF Cloud's UploadFirmware answers `{uris}`, `<tenant>/<bundleId>/<file>` each."""
        result: dict[str, Any] = await self._ok(
            "POST",
            "/v1/firmwares",
            params={"name": name},
            content=data,
            headers={"content-type": "application/zip"},
        )
        return str(result["uris"][0].split("/")[1])

    async def create_job(self, **body: Any) -> str:
        created = await self._ok("POST", "/v1/fota-jobs", json=body)
        return str(created["jobId"])

    async def apply_job(self, job_id: str) -> dict[str, Any]:
        """Apply (202, no body, as nRF Cloud answers), then the job as it stands."""
        await self._ok("POST", f"/v1/fota-jobs/{job_id}/apply")
        return await self.job(job_id)

    async def job(self, job_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._ok("GET", f"/v1/fota-jobs/{job_id}")
        return result

    async def jobs(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            params: dict[str, Any] = {"pageLimit": 100}
            if token:
                params["pageNextToken"] = token
            page = await self._ok("GET", "/v1/fota-jobs", params=params)
            items += page["items"]
            token = page.get("pageNextToken")
            if not token:
                return items

    async def executions(self, job_id: str) -> list[dict[str, Any]]:
        page = await self._ok("GET", f"/v1/fota-job-execution-statuses/{job_id}")
        items: list[dict[str, Any]] = page["items"]
        return items

    async def groups(self) -> dict[str, list[str]]:
        return {g["name"]: list(g["deviceIds"]) for g in await self._ok("GET", "/v1/groups")}

    async def wait_job(
        self, job_id: str, status: str, *, within: float, diagnose: Callable[[], str] = lambda: ""
    ) -> dict[str, Any]:
        last: dict[str, Any] = {}

        async def probe() -> dict[str, Any] | None:
            nonlocal last
            last = await self.job(job_id)
            return last if last["status"] == status else None

        return await wait_for(
            probe,
            within=within,
            step=0.2,  # a REST call per step: leave the CPU to the fleet
            what=f"job {job_id} to be {status}",
            diagnose=lambda: (
                f"job now: {json.dumps(last.get('executionStats'))} {last.get('status')}\n" + diagnose()
            ),
        )
