"""The whole product on a Raspberry Pi's stack: `gateway-agent run` with the BlueZ backend.

Every part is a real process, as in test_fleet_rollout: Mosquitto with mutual TLS, `fota-service serve`, an
`nrf-dfu sim serve` air. The one difference is that the agent talks to its peripherals as on a Pi: bleak's
BlueZ backend over D-Bus (bleak-retry-connector connects, packets go over an AcquireWrite socket), reaching a
private bus on which `nrf-dfu sim bluez` serves the air as bluetoothd would. The job is created and applied
through the REST API; the truth is read from the peripherals themselves.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hil.fleet import app_bundle, running_fleet

pytestmark = pytest.mark.e2e

PERIPHERALS = 3


@pytest.mark.timeout(240)
async def test_agent_on_bluez_updates_its_peripherals_through_a_job(tmp_path: Path) -> None:
    async with running_fleet(
        tmp_path, gateways=1, per_gateway=PERIPHERALS, concurrency=2, tenant="pi", bluez=True
    ) as fleet:
        targets = fleet.peripherals
        before = await fleet.app_versions()
        bundle_id = await fleet.api.upload_firmware(app_bundle(2), name="app-v2")
        job_id = await fleet.api.create_job(bundleId=bundle_id, name="pi-v2", deviceIds=targets)
        done = await fleet.api.wait_job(job_id, "COMPLETED", within=120, diagnose=fleet.diagnose)
        assert done["executionStats"]["succeeded"] == PERIPHERALS, done["executionStats"]
        after = await fleet.app_versions()
        log = fleet.gateways[0].process.log_text()
    assert all(v != 2 for v in before.values()), before
    assert {p: after[p] for p in targets} == dict.fromkeys(targets, 2)
    # the agent took the Pi's path: bleak's BlueZ backend, packets on an acquired socket
    assert "packets=acquired socket" in log, log[-2000:]
