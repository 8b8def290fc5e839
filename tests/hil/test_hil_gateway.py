"""A gateway under test: a job created through the job service's REST API reaches the peripheral through a
real gateway agent process and ends SUCCEEDED with the peripheral on the new version."""

from __future__ import annotations

import pytest

from hil.fleet import Fleet, app_bundle

pytestmark = [pytest.mark.e2e]


async def test_gateway_runs_a_job_for_its_peripheral(gateway_under_test: Fleet) -> None:
    fleet = gateway_under_test
    (peripheral,) = fleet.peripherals
    bundle_id = await fleet.api.upload_firmware(app_bundle(2, profile=fleet.profile), name="hil-v2")
    job_id = await fleet.api.create_job(bundleId=bundle_id, name="hil", deviceIds=[peripheral])
    job = await fleet.api.wait_job(job_id, "COMPLETED", within=60, diagnose=fleet.diagnose)
    assert job["executionStats"]["succeeded"] == 1
    assert (await fleet.app_versions())[peripheral] == 2
