"""The three shadow conventions of Nordic's code, through `gateway-agent run` end to end.

For each convention the agent must subscribe to exactly the topics Nordic's own client subscribes to (AWS IoT
disconnects a client that subscribes where its policy forbids: sdk-nrf's transport notes it for the `+/r`
message topic; the broker's own log says what the agent subscribed to), read the shadow document shaped as
that convention's cloud sends it, serve the peripherals desiredConnections names (either form) with no
configuration edit, report each peripheral's link truthfully in statusConnections, and update a peripheral
the operator adds later through a delta.
"""

from __future__ import annotations

import pytest

from tests.conformance import nordic
from tests.conformance.conftest import PREFIX, TENANT, World

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(120)]

IDLE = {"connected": False, "connecting": False}
UP = {"connected": True, "connecting": False}


@pytest.mark.parametrize("convention", ["aws", "trim", "prefixed"])
async def test_the_gateway_speaks_each_shadow_convention(world: World, convention: str) -> None:
    gw = world.gateways[convention]
    cloud = gw.cloud
    first, second = world.peripheral(), world.peripheral()
    stem = f"{TENANT}/APP*{abs(hash(convention)) % 16**8:08x}*2.0.0/app"
    world.server.files.update({f"{stem}dat.bin": world.bundle.dat, f"{stem}.bin": world.bundle.bin})
    paths = [f"{stem}dat.bin", f"{stem}.bin"]
    ids = {
        first: f"{convention}-1-0000-4000-8000-0000000000"[:36],
        second: f"{convention}-2-0000-4000-8000-00",
    }
    jobs = {
        address: nordic.ble_job(address, ids[address], 0, world.bundle.size, world.server.file_host, paths)
        for address in (first, second)
    }
    cloud.pending[first] = jobs[first]
    # lte-gateway `get_addr_from_des_conn_array()` reads both forms: the obsolete objects with an `id`, and
    # the address strings nRF Cloud uses now
    cloud.connections = [{"id": first}] if convention == "aws" else [first]
    await cloud.wait_for(lambda: cloud.gets >= 1)
    accepted = cloud.topic("accepted")
    assert accepted is not None
    await cloud.publish(accepted, cloud._accepted())  # the portal changed: the answer to a fresh get
    first_id, second_id = ids[first], ids[second]
    await cloud.wait_for(lambda: cloud.terminal(first_id))
    # ... and the operator adds a second peripheral later: a delta (full delta on the `trim` convention)
    cloud.pending[second] = jobs[second]
    await cloud.send_delta([*cloud.connections, second])
    await cloud.wait_for(lambda: cloud.terminal(second_id))

    for job_id, address in ((first_id, first), (second_id, second)):
        assert cloud.terminal(job_id)[0][2] == nordic.STATUS["SUCCEEDED"], cloud.statuses(job_id)
        assert await world.app_version(address) == 2
        # statusConnections tells the truth: idle (no link: the agent links only to update), up during the
        # DFU, idle again (lte-gateway `device_shadow_data_encode()`:
        # {"id", "status": {"connected", "connecting"}})
        links = cloud.link_reports(address)
        assert links[0] == {"id": address, "status": IDLE}, links
        assert {"id": address, "status": UP} in links
        assert links[-1] == {"id": address, "status": IDLE}
    # gateway messages on the g2c topic the shadow named, as Nordic's gateways send them
    events = [m["event"] for m in cloud.gateway_messages if m.get("gatewayId") == gw.gateway_id]
    kinds = [(e["type"], e["device"]["id"]) for e in events]
    assert ("device_connect_result", first) in kinds
    assert ("device_disconnect", first) in kinds
    connect = next(e for e in events if e["type"] == "device_connect_result")
    assert connect["device"]["status"] == {"connected": True}
    assert connect["device"]["address"] == {"address": connect["device"]["id"]}

    # exactly Nordic's subscriptions for this convention, plus the BLE job topic: nothing a policy refuses
    expected = {
        topic
        for which in ("accepted", "rejected", "delta")
        if (topic := nordic.shadow_topic(convention, which, gw.gateway_id, PREFIX)) is not None
    } | {nordic.job_topic(PREFIX, gw.gateway_id, "rcv")}
    assert set(world.broker.subscriptions(gw.gateway_id)) == expected
