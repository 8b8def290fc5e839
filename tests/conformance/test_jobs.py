"""Jobs shaped exactly as nRF Cloud sends them, through `gateway-agent run` end to end.

Each case is a `jobs/ble/rcv` tuple as Nordic's code and nRF Cloud's data show it (its source in the case's
comment), sent to a gateway that learned its peripherals from desiredConnections alone. A case ends
SUCCEEDED, with the peripheral running the new application, or exactly as Nordic's gateways end it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from tests.conformance import nordic
from tests.conformance.conftest import TENANT, World

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(120)]


@dataclass(frozen=True)
class Case:
    name: str
    files: Callable[[bytes, bytes], dict[str, bytes]]
    """(init packet, image) -> what the firmware host serves, by path"""
    paths: list[str]
    fw_type: int = 0
    size: Callable[[int], int] = lambda real: real
    host: Callable[[str], str] = lambda host: host
    outcome: str = "SUCCEEDED"
    details: str = ""
    redirects: dict[str, str] | None = None
    """path -> Location the host answers 302 with"""

    @classmethod
    def listed(cls, name: str, dat_path: str, bin_path: str, **kw: Any) -> Case:
        """The two files served where FILE_PATH lists them, the init packet first."""
        return cls(name, _pair(dat_path, bin_path), [dat_path, bin_path], **kw)


def _pair(dat_path: str, bin_path: str) -> Callable[[bytes, bytes], dict[str, bytes]]:
    return lambda dat, image: {dat_path: dat, bin_path: image}


T = TENANT
CASES = [
    # The job: lte-gateway `src/ble/cli.c` examples: bundle ids `APP*<8 hex>*<version>`, the init
    # packet `…dat.bin`, the two files under different bundle ids, the init packet first.
    Case.listed(
        "real-cloud-paths",
        f"{T}/APP*56693cf8*2.0.0/appdat.bin",
        f"{T}/APP*f1078fc9*2.0.0/app.bin",
    ),
    # The image first: nothing publishes the order nRF Cloud uses, and the REST job document lists `uris`
    # without saying (docs/nrf-cloud.md); the bytes decide.
    Case(
        "image-first",
        _pair(f"{T}/APP*1e29dfa3*v2.0.1/appdat.bin", f"{T}/APP*1e29dfa3*v2.0.1/app.bin"),
        [f"{T}/APP*1e29dfa3*v2.0.1/app.bin", f"{T}/APP*1e29dfa3*v2.0.1/appdat.bin"],
    ),
    # lte-gateway's thingy names: `app_thingy_s132dat.bin` (no `.dat` anywhere in the name)
    Case(
        "thingy-names",
        _pair(
            f"{T}/APP*56693cf8*2.2.0/app_thingy_s132dat.bin", f"{T}/APP*f1078fc9*2.2.0/app_thingy_s132.bin"
        ),
        [f"{T}/APP*f1078fc9*2.2.0/app_thingy_s132.bin", f"{T}/APP*56693cf8*2.2.0/app_thingy_s132dat.bin"],
    ),
    # Bundle ids may now be plain UUIDs (nRF Cloud REST spec: bundleId is the pattern or a UUID; a DevZone log
    # shows `bundles.nrfcloud.com/<uuid>/<file>`): no `*` at all
    Case.listed(
        "uuid-bundle-id",
        "64c49359-9733-4f53-b5ed-8a92b8d20fc6/appdat.bin",
        "64c49359-9733-4f53-b5ed-8a92b8d20fc6/app.bin",
    ),
    # Percent-encoding and sub-delimiters are legitimate URL path characters (RFC 3986 pchar)
    Case.listed(
        "percent-encoded",
        f"{T}/APP*0038b655*v1.1.1-debug/app%2Bdebugdat.bin",
        f"{T}/APP*0038b655*v1.1.1-debug/app%2Bdebug.bin",
    ),
    # FILE_SIZE is nRF Cloud's number for progress; lte-gateway takes the real size from the server
    Case.listed(
        "file-size-differs",
        f"{T}/APP*cd5412d9*v2.0.2/appdat.bin",
        f"{T}/APP*cd5412d9*v2.0.2/app.bin",
        size=lambda real: real + 4096,
    ),
    # The host redirects (an S3/CDN-style move): followed, but only to an HTTPS host on the allow-list
    Case(
        "redirected",
        _pair(f"{T}/APP*9c9c9c9c*2.0.0/appdat.bin", f"cdn/{T}/APP*9c9c9c9c*2.0.0/app.bin"),
        [f"{T}/APP*9c9c9c9c*2.0.0/appdat.bin", f"{T}/APP*9c9c9c9c*2.0.0/app.bin"],
        redirects={f"{T}/APP*9c9c9c9c*2.0.0/app.bin": f"/cdn/{T}/APP*9c9c9c9c*2.0.0/app.bin"},
    ),
    # FILE_HOST with a scheme: sdk-nrf's download client takes `https://host` as well as `host`
    Case.listed(
        "host-with-scheme",
        f"{T}/APP*439ddbc7*v2.0.0/appdat.bin",
        f"{T}/APP*439ddbc7*v2.0.0/app.bin",
        host=lambda host: f"https://{host}",
    ),
    # A type the SDK does not know: sdk-nrf `parse_job_info()` fails, `handle_mqtt_evt_publish()` answers
    # REJECTED "Job info is invalid"
    Case.listed(
        "unknown-type",
        f"{T}/APP*2c3cf63b*v2.0.1/appdat.bin",
        f"{T}/APP*2c3cf63b*v2.0.1/app.bin",
        fw_type=9,
        outcome="REJECTED",
        details="Job info is invalid",
    ),
    # A modem update for a BLE peripheral: sdk-nrf `start_job()` answers an unhandled type REJECTED
    # "FOTA type not supported"
    Case.listed(
        "modem-type",
        f"{T}/MODEM*aa11bb22*1.3.5/appdat.bin",
        f"{T}/MODEM*aa11bb22*1.3.5/app.bin",
        fw_type=1,
        outcome="REJECTED",
        details="FOTA type not supported",
    ),
    # BLE bootloader (3, sdk-nrf's `NRF_CLOUD_FOTA_BLE_BOOT` comment) but the files hold an application:
    # sdk-nrf's `http_fota_handler()` reports a type mismatch FAILED, not REJECTED
    Case.listed(
        "type-mismatch",
        f"{T}/BOOTLOADER*bb22cc33*2/bldat.bin",
        f"{T}/BOOTLOADER*bb22cc33*2/bl.bin",
        fw_type=3,
        outcome="FAILED",
        details="FW file does not match specified FOTA type",
    ),
]


def _job_id(case: Case) -> str:
    return f"c0f0{abs(hash(case.name)) % 10**8:08d}-0000-4000-8000-{len(case.name):012d}"[:36]


async def _serve(world: World, address: str) -> None:
    """The operator adds the peripheral to the gateway in the nRF Cloud portal: a desiredConnections delta."""
    cloud = world.gateways["aws"].cloud
    await cloud.wait_for(lambda: cloud.gets >= 1)
    await cloud.send_delta([*cloud.connections, address])


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_a_job_as_nrf_cloud_sends_it(world: World, case: Case) -> None:
    cloud = world.gateways["aws"].cloud
    address = world.peripheral()
    dat, image = world.bundle.dat, world.bundle.bin
    world.server.files.update(case.files(dat, image))
    world.server.redirects.update(case.redirects or {})
    job_id = _job_id(case)
    cloud.pending[address] = nordic.ble_job(
        address,
        job_id,
        case.fw_type,
        case.size(len(dat) + len(image)),
        case.host(world.server.file_host),
        case.paths,
    )
    await _serve(world, address)  # the agent asks for its job (jobs/ble/req) and the cloud answers
    await cloud.wait_for(lambda: cloud.terminal(job_id))
    updates = cloud.statuses(job_id)
    (final,) = cloud.terminal(job_id)
    assert final[2] == nordic.STATUS[case.outcome], updates
    assert len(final) == 4  # the 4th element is always there (gateway-common: "we need the fourth value")
    assert isinstance(final[3], str)
    assert final[3].startswith(case.details), final
    if case.outcome != "SUCCEEDED":
        return
    # DOWNLOADING carries an int percentage, every other status a string
    # (sdk-nrf `nrf_cloud_fota_ble_job_update()`)
    for update in updates:
        assert isinstance(update[3], int) == (update[2] == nordic.STATUS["DOWNLOADING"]), update
    statuses = [u[2] for u in updates]
    assert statuses.count(nordic.STATUS["SUCCEEDED"]) == 1
    assert nordic.STATUS["IN_PROGRESS"] in statuses
    assert await world.app_version(address) == 2


async def test_a_job_for_a_peripheral_the_gateway_does_not_serve_is_ignored_until_it_is_added(
    world: World,
) -> None:
    """lte-gateway `peripheral_dfu.c` `fota_ble_callback()`: "Device not connected; ignoring job", no status
    (REJECTED would be final in the cloud); gateway-common asks for the device's jobs once it connects. Here:
    no status for the job, then the operator adds the peripheral, the gateway asks, and it SUCCEEDS."""
    gw = world.gateways["aws"]
    cloud = gw.cloud
    address = world.peripheral()
    paths = [f"{T}/APP*77aa88bb*2.0.0/appdat.bin", f"{T}/APP*77aa88bb*2.0.0/app.bin"]
    world.server.files.update(_pair(*paths)(world.bundle.dat, world.bundle.bin))
    job = nordic.ble_job(
        address, "11111111-2222-4333-8444-555555555555", 0, world.bundle.size, world.server.file_host, paths
    )
    await cloud.wait_for(lambda: cloud.gets >= 1)
    await cloud.send_job(job)  # pushed while the peripheral is not this gateway's
    # barrier: the agent handles messages in order; a malformed job's answer comes after the first was handled
    await cloud.send_job(b'["' + address.encode() + b'","99999999-2222-4333-8444-555555555555",0]')
    await cloud.wait_for(lambda: cloud.terminal("99999999-2222-4333-8444-555555555555"))
    assert cloud.statuses("11111111-2222-4333-8444-555555555555") == []
    assert any("job_dropped" in line and "not served" in line for line in gw.agent.logs)
    cloud.pending[address] = job
    await _serve(world, address)
    await cloud.wait_for(lambda: cloud.terminal("11111111-2222-4333-8444-555555555555"))
    assert cloud.terminal("11111111-2222-4333-8444-555555555555")[0][2] == nordic.STATUS["SUCCEEDED"]
    assert await world.app_version(address) == 2


async def test_a_malformed_tuple_with_a_readable_job_id_is_rejected_as_invalid(world: World) -> None:
    """sdk-nrf `parse_job_info()` reads JOB_ID first "because it may be needed to reject an invalid job";
    `handle_mqtt_evt_publish()` then answers REJECTED with "Job info is invalid"."""
    cloud = world.gateways["aws"].cloud
    address = world.peripheral()
    await _serve(world, address)
    await cloud.wait_for(lambda: address in cloud.requests)
    job_id = "aaaaaaaa-2222-4333-8444-555555555555"
    await cloud.send_job(json.dumps([address, job_id, 0, "big", "firmware.nrfcloud.com", "a.bin"]).encode())
    await cloud.wait_for(lambda: cloud.terminal(job_id))
    (final,) = cloud.statuses(job_id)
    assert final[:3] == [address, job_id, nordic.STATUS["REJECTED"]]
    assert final[3].startswith("Job info is invalid")
