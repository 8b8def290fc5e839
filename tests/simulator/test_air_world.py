"""The simulated air: advertising, connections, GATT timing, resets, faults and persistence (toy device)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from profiles.gatt import BUTTONLESS_UNBONDED, CONTROL_POINT, DFU_PACKET, FIRMWARE_REVISION
from profiles.model import load_profile
from simulator.air import Air
from simulator.air_api import (
    AttProtocolError,
    ConnectFailedError,
    DeviceNotFoundError,
    LinkLostError,
    ScanReport,
)
from simulator.device import DeviceState, Mode
from simulator.faults import DropAtRequest, FaultPlan
from simulator.radio import CentralSettings
from tests.simulator.toy_peripheral import ToyPeripheral, toy_factory

PROFILE = load_profile("nrf52840-s140")
APP = "C8:2E:1A:00:00:01"
BOOT = "C8:2E:1A:00:00:02"


class Recorder:
    def __init__(self) -> None:
        self.notes: list[tuple[float, str, bytes]] = []
        self.downs: list[tuple[float, str]] = []

    def on_notify(self, char_uuid: str, payload: bytes) -> None:
        self.notes.append((asyncio.get_running_loop().time(), char_uuid, payload))

    def on_disconnect(self, reason: str) -> None:
        self.downs.append((asyncio.get_running_loop().time(), reason))


def make_air(**kwargs: object) -> tuple[Air, ToyPeripheral]:
    air = Air(factory=toy_factory)
    toy = ToyPeripheral(PROFILE, DeviceState.initial(PROFILE, APP))
    air.add(toy, **kwargs)  # type: ignore[arg-type]
    return air, toy


@pytest.mark.looptime
async def test_scan_reports_each_advertiser_at_its_advertising_events() -> None:
    air, _ = make_air(rssi=-42, adv_interval_s=0.1)
    air.add(ToyPeripheral(PROFILE, DeviceState.initial(PROFILE, "C8:2E:1A:00:00:10")), rssi=-70)
    seen: list[tuple[float, ScanReport]] = []
    loop = asyncio.get_running_loop()
    scan = await air.start_scan("hci0", lambda r: seen.append((loop.time(), r)))
    await asyncio.sleep(2.05)
    await air.stop_scan(scan)
    by_addr = {r.address: r for _, r in seen}
    assert by_addr[APP].rssi == -42
    assert by_addr[APP].name == "Nordic_Buttonless"
    assert by_addr["C8:2E:1A:00:00:10"].rssi == -70
    assert by_addr[APP].connectable
    # first report at scan start, then refreshed once a second (duplicate filter)
    assert [round(t, 3) for t, r in seen if r.address == APP] == [0.0, 1.0, 2.0]
    count = len(seen)
    await asyncio.sleep(5)
    assert len(seen) == count


@pytest.mark.looptime
async def test_connect_negotiates_link_and_costs_discovery_round_trips() -> None:
    air, toy = make_air()
    rec = Recorder()
    info = await air.connect("hci0", APP, rec, wait_s=5)
    assert (info.att_mtu, info.phy, info.data_length, info.interval_ms) == (247, "2M", 251, 15.0)
    [(t_connect, mtu)] = toy.connects
    assert t_connect == pytest.approx(0.00125)
    assert mtu == 247
    # 3 link procedures + 1 + 2 services + 2 characteristics = 8 round trips of 1 interval each (+ tail)
    assert 8 * 0.015 < asyncio.get_running_loop().time() < 9 * 0.015 + 0.002
    assert [c.uuid for s in info.services for c in s.characteristics] == [
        BUTTONLESS_UNBONDED,
        FIRMWARE_REVISION,
    ]
    assert air.advertisers() == []


@pytest.mark.looptime
async def test_mtu_is_the_lesser_of_central_and_peripheral() -> None:
    air, _ = make_air()
    air.add_central("old", CentralSettings(att_mtu=185, supports_2m=False))
    info = await air.connect("old", APP, Recorder(), wait_s=5)
    assert (info.att_mtu, info.phy) == (185, "1M")


@pytest.mark.looptime
async def test_connect_to_nobody_fails_after_the_wait() -> None:
    air, _ = make_air()
    loop = asyncio.get_running_loop()
    with pytest.raises(DeviceNotFoundError):
        await air.connect("hci0", "00:11:22:33:44:55", Recorder(), wait_s=3)
    assert loop.time() == pytest.approx(3.0)


@pytest.mark.looptime
async def test_write_request_answer_and_read_cost_a_connection_interval_each() -> None:
    air, toy = make_air()
    info = await air.connect("hci0", APP, Recorder(), wait_s=5)
    loop = asyncio.get_running_loop()
    anchor = 0.00125  # first advertising event at 0 + the transmit window

    def event_of(t: float) -> int:
        return int((t - anchor) // 0.015)

    t0 = loop.time()
    assert await air.read(info.link_id, FIRMWARE_REVISION) == b"1"
    assert event_of(loop.time()) == event_of(t0) + 1  # the answer comes in the next connection event
    assert (loop.time() - anchor) % 0.015 < 0.001
    t1 = loop.time()
    with pytest.raises(AttProtocolError) as err:
        await air.write(info.link_id, BUTTONLESS_UNBONDED, b"\x01", with_response=True)
    assert err.value.code == 0xFD
    assert event_of(loop.time()) == event_of(t1) + 1
    assert toy.writes[-1][0] == BUTTONLESS_UNBONDED


@pytest.mark.looptime
async def test_indication_then_reset_drops_the_link_and_the_bootloader_advertises_later() -> None:
    air, toy = make_air(boot_delay_s=0.5)
    rec = Recorder()
    info = await air.connect("hci0", APP, rec, wait_s=5)
    loop = asyncio.get_running_loop()
    await air.subscribe(info.link_id, BUTTONLESS_UNBONDED, notify=False, indicate=True)
    t_write = loop.time()
    await air.write(info.link_id, BUTTONLESS_UNBONDED, b"\x01", with_response=True)
    await asyncio.sleep(0.5)
    assert [n[2] for n in rec.notes] == [b"\x20\x01\x01"]
    assert rec.notes[0][0] - t_write >= 0.015
    assert len(rec.downs) == 1
    assert rec.downs[0][1].startswith("reset")
    assert toy.state.mode is Mode.BOOTLOADER
    with pytest.raises(DeviceNotFoundError):
        await air.connect("hci0", APP, Recorder(), wait_s=0.1)
    info2 = await air.connect("hci0", BOOT, Recorder(), wait_s=5)
    assert loop.time() >= rec.downs[0][0] + 0.5
    assert [c.uuid for s in info2.services for c in s.characteristics] == [CONTROL_POINT, DFU_PACKET]


@pytest.mark.looptime
async def test_writes_without_response_stream_at_the_air_rate() -> None:
    air, toy = make_air()
    toy.state.mode = Mode.BOOTLOADER
    info = await air.connect("hci0", BOOT, Recorder(), wait_s=5)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    for _ in range(50):  # 10 full events of 5 packets on 2M
        await air.write(info.link_id, DFU_PACKET, bytes(244), with_response=False)
    elapsed = loop.time() - t0
    assert len(toy.received) == 50 * 244
    assert 9 * 0.015 < elapsed <= 10 * 0.015 + 1e-6


@pytest.mark.looptime
async def test_oversized_write_without_response_is_refused() -> None:
    air, toy = make_air()
    toy.state.mode = Mode.BOOTLOADER
    info = await air.connect("hci0", BOOT, Recorder(), wait_s=5)
    with pytest.raises(AttProtocolError):
        await air.write(info.link_id, DFU_PACKET, bytes(245), with_response=False)


@pytest.mark.looptime
async def test_notification_waits_for_ready_at_and_the_next_event() -> None:
    air, toy = make_air()
    toy.state.mode = Mode.BOOTLOADER
    rec = Recorder()
    info = await air.connect("hci0", BOOT, rec, wait_s=5)
    await air.subscribe(info.link_id, CONTROL_POINT, notify=True, indicate=False)
    await air.write(info.link_id, DFU_PACKET, b"abc", with_response=False)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await air.write(info.link_id, CONTROL_POINT, b"\x06\x02", with_response=True)
    await asyncio.sleep(0.1)
    assert len(rec.notes) == 1
    t_note, uuid, payload = rec.notes[0]
    assert uuid == CONTROL_POINT
    assert payload[:3] == b"\x60\x06\x01"
    assert int.from_bytes(payload[7:11], "little") == 3
    assert t_note - t0 >= 0.015


@pytest.mark.looptime
async def test_unsubscribed_notifications_are_not_delivered() -> None:
    air, toy = make_air()
    toy.state.mode = Mode.BOOTLOADER
    rec = Recorder()
    info = await air.connect("hci0", BOOT, rec, wait_s=5)
    await air.write(info.link_id, CONTROL_POINT, b"\x06\x02", with_response=True)
    await asyncio.sleep(0.1)
    assert rec.notes == []


@pytest.mark.looptime
async def test_refused_connections_fail_then_succeed() -> None:
    air, _ = make_air(faults=FaultPlan(refuse_connections=2))
    for _ in range(2):
        with pytest.raises(ConnectFailedError):
            await air.connect("hci0", APP, Recorder(), wait_s=5)
    await air.connect("hci0", APP, Recorder(), wait_s=5)
    assert air.faults_fired(APP) == ["refuse_connection", "refuse_connection"]


@pytest.mark.looptime
async def test_link_drops_after_n_packet_bytes_and_the_central_learns_it() -> None:
    air, toy = make_air()
    toy.state.mode = Mode.BOOTLOADER
    rec = Recorder()
    info = await air.connect("hci0", BOOT, rec, wait_s=5)
    air.set_faults(BOOT, FaultPlan(drop_after_bytes=1000))
    for _ in range(4):
        await air.write(info.link_id, DFU_PACKET, bytes(244), with_response=False)
    with pytest.raises(LinkLostError):
        await air.write(info.link_id, DFU_PACKET, bytes(244), with_response=False)
    assert len(toy.received) == 1220  # the crossing packet still arrived
    await asyncio.sleep(1)
    assert len(rec.downs) == 1
    assert toy.disconnects
    info2 = await air.connect("hci0", BOOT, Recorder(), wait_s=5)
    assert info2.link_id != info.link_id


@pytest.mark.looptime
async def test_drop_at_control_point_step_without_delivery() -> None:
    air, toy = make_air()
    toy.state.mode = Mode.BOOTLOADER
    info = await air.connect("hci0", BOOT, Recorder(), wait_s=5)
    air.set_faults(BOOT, FaultPlan(drop_at_request=DropAtRequest(opcode=0x06, nth=1, deliver=False)))
    with pytest.raises(LinkLostError):
        await air.write(info.link_id, CONTROL_POINT, b"\x06\x02", with_response=True)
    assert not any(w[0] == CONTROL_POINT for w in toy.writes)


@pytest.mark.looptime
async def test_corrupted_packet_reaches_the_peripheral_altered() -> None:
    air, toy = make_air()
    toy.state.mode = Mode.BOOTLOADER
    info = await air.connect("hci0", BOOT, Recorder(), wait_s=5)
    air.set_faults(BOOT, FaultPlan(corrupt_nth_packet=2))
    for _ in range(3):
        await air.write(info.link_id, DFU_PACKET, bytes(100), with_response=False)
    assert bytes(toy.received[:100]) == bytes(100)
    assert bytes(toy.received[100:200]) != bytes(100)
    assert bytes(toy.received[200:]) == bytes(100)


@pytest.mark.looptime
async def test_power_cycle_loses_ram_keeps_flash_and_reboots() -> None:
    air, toy = make_air(boot_delay_s=0.3)
    toy.state.mode = Mode.BOOTLOADER
    rec = Recorder()
    info = await air.connect("hci0", BOOT, rec, wait_s=5)
    await air.write(info.link_id, DFU_PACKET, b"xyz", with_response=False)
    air.power_cycle(BOOT)
    assert toy.power_cycles == 1
    assert toy.received == b""
    assert toy.state.mode is Mode.BOOTLOADER
    await asyncio.sleep(1)
    assert rec.downs
    assert rec.downs[0][1] == "power cycle"
    await air.connect("hci0", BOOT, Recorder(), wait_s=5)


@pytest.mark.looptime
async def test_suppressed_bootloader_advertising_until_the_fault_is_cleared() -> None:
    air, toy = make_air(faults=FaultPlan(suppress_bootloader_adv=True))
    info = await air.connect("hci0", APP, Recorder(), wait_s=5)
    await air.subscribe(info.link_id, BUTTONLESS_UNBONDED, notify=False, indicate=True)
    await air.write(info.link_id, BUTTONLESS_UNBONDED, b"\x01", with_response=True)
    await asyncio.sleep(1)
    assert toy.state.mode is Mode.BOOTLOADER
    with pytest.raises(ConnectFailedError):
        await air.connect("hci0", BOOT, Recorder(), wait_s=5)
    air.clear_faults(BOOT)
    await air.connect("hci0", BOOT, Recorder(), wait_s=5)


@pytest.mark.looptime
async def test_delayed_bootloader_advertising() -> None:
    air, _ = make_air(boot_delay_s=0.2, faults=FaultPlan(bootloader_adv_delay_s=4.0))
    rec = Recorder()
    info = await air.connect("hci0", APP, rec, wait_s=5)
    await air.subscribe(info.link_id, BUTTONLESS_UNBONDED, notify=False, indicate=True)
    await air.write(info.link_id, BUTTONLESS_UNBONDED, b"\x01", with_response=True)
    await asyncio.sleep(0.5)
    t_reset = rec.downs[0][0]
    await air.connect("hci0", BOOT, Recorder(), wait_s=10)
    assert asyncio.get_running_loop().time() >= t_reset + 4.2


@pytest.mark.looptime
async def test_saved_air_comes_back_with_device_state(tmp_path: Path) -> None:
    air, toy = make_air(rssi=-61, faults=FaultPlan(refuse_connections=1))
    toy.state.mode = Mode.BOOTLOADER
    path = tmp_path / "air.json"
    air.save(path)
    assert json.loads(path.read_text())["devices"][0]["state"]["mode"] == "bootloader"
    again = Air.load(path, factory=toy_factory)
    [peripheral] = again.peripherals
    assert peripheral.address == BOOT
    assert peripheral.state == toy.state
    assert again.snapshot() == air.snapshot()
    with pytest.raises(ConnectFailedError):
        await again.connect("hci0", BOOT, Recorder(), wait_s=5)


@pytest.mark.looptime
async def test_state_file_is_written_after_a_reset(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    air, _ = make_air()
    air.state_path = path
    info = await air.connect("hci0", APP, Recorder(), wait_s=5)
    await air.subscribe(info.link_id, BUTTONLESS_UNBONDED, notify=False, indicate=True)
    await air.write(info.link_id, BUTTONLESS_UNBONDED, b"\x01", with_response=True)
    await asyncio.sleep(1)
    assert json.loads(path.read_text())["devices"][0]["state"]["mode"] == "bootloader"
    air.close()


@pytest.mark.looptime
async def test_three_links_on_one_central_share_the_air() -> None:
    air = Air(factory=toy_factory)
    toys = []
    for i in range(3):
        toy = ToyPeripheral(PROFILE, DeviceState.initial(PROFILE, f"C8:2E:1A:00:01:{2 * i:02X}"))
        toy.state.mode = Mode.BOOTLOADER
        air.add(toy)
        toys.append(toy)
    links = [await air.connect("hci0", t.address, Recorder(), wait_s=5) for t in toys]
    loop = asyncio.get_running_loop()

    async def stream(link_id: str) -> float:
        t0 = loop.time()
        for _ in range(100):
            await air.write(link_id, DFU_PACKET, bytes(244), with_response=False)
        return loop.time() - t0

    alone = await stream(links[0].link_id)
    together = await asyncio.gather(*(stream(lk.link_id) for lk in links))
    # Three links of 7.5 ms events in a 15 ms interval cannot all get a full event.
    assert max(together) > alone * 1.3
    assert all(len(t.received) >= 100 * 244 for t in toys)


@pytest.mark.looptime
async def test_a_connect_given_up_mid_setup_leaves_no_link_behind() -> None:
    air, toy = make_air()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(air.connect("hci0", APP, Recorder(), wait_s=5), 0.05)
    assert toy.connects
    assert toy.disconnects
    assert [r.address for r in air.advertisers()] == [APP]
    await air.connect("hci0", APP, Recorder(), wait_s=5)


@pytest.mark.looptime
async def test_periodic_drops_let_a_resuming_client_through_in_pieces() -> None:
    air, toy = make_air(faults=FaultPlan(drop_every_bytes=2440))
    toy.state.mode = Mode.BOOTLOADER
    drops = 0
    sent = 0
    while sent < 10 * 2440:
        info = await air.connect("hci0", BOOT, Recorder(), wait_s=5)
        try:
            while sent < 10 * 2440:
                sent += 244
                await air.write(info.link_id, DFU_PACKET, bytes(244), with_response=False)
        except LinkLostError:
            drops += 1
    assert drops == 10  # the last packet crosses the 10th boundary too
    assert len(toy.received) == sent


@pytest.mark.looptime
async def test_power_cycle_fault_after_bytes() -> None:
    air, toy = make_air(faults=FaultPlan(reset_after_bytes=500))
    toy.state.mode = Mode.BOOTLOADER
    rec = Recorder()
    info = await air.connect("hci0", BOOT, rec, wait_s=5)
    await air.write(info.link_id, DFU_PACKET, bytes(244), with_response=False)
    await air.write(info.link_id, DFU_PACKET, bytes(244), with_response=False)
    with pytest.raises(LinkLostError):
        await air.write(info.link_id, DFU_PACKET, bytes(244), with_response=False)
    assert toy.power_cycles == 1
    assert toy.received == b""  # RAM gone with the power
    await asyncio.sleep(1)
    assert [reason for _, reason in rec.downs] == ["power cycle after 732 bytes"]


def test_air_refuses_a_time_scale_above_one() -> None:
    """Real seconds per simulated second above 1 would slow the simulated boards below their profiles."""
    with pytest.raises(ValueError, match="time_scale 2"):
        Air(time_scale=2.0)


@pytest.mark.looptime
async def test_a_sped_up_air_still_updates_in_process() -> None:
    """`[ble.options] time_scale` below 1 (the air runs faster than the loop): the client, pacing by the
    profile in loop time, only ever waits longer than the board needs."""
    from dfu.updater import update
    from simulator.bleak_backend import backend_for
    from tests.support.dfu_sim import APP_ADDRESS, app_package

    air = Air(time_scale=0.25)
    profile = load_profile("nrf52840-s140")
    air.add_profile(profile, APP_ADDRESS)
    result = await update(backend_for(air), profile, app_package(size=0x6000), address=APP_ADDRESS)
    assert result.retries == 0
    assert air.device_state(APP_ADDRESS)["app"]["version"] == 2


@pytest.mark.looptime
async def test_while_an_nrf52832_erases_a_page_its_link_carries_nothing() -> None:
    """No partial erase: the SoftDevice runs the erase whole, through the connection events; a packet
    written meanwhile waits in the central and arrives after it (nothing is lost for that)."""
    from simulator.peripheral import SimPeripheral

    p = load_profile("nrf52832-s132")
    state = DeviceState.initial(p, APP)
    state.mode = Mode.BOOTLOADER
    air = Air()
    dev = air.add(SimPeripheral(p, state))
    assert isinstance(dev, SimPeripheral)
    info = await air.connect("hci0", dev.address, Recorder(), wait_s=5)
    bootloader = dev.bootloader
    assert bootloader is not None
    assert bootloader.flash.erase(air.now(), 1)
    (start, end), *_ = bootloader.flash._queue[-1].blocking
    assert end - start == 85_000
    await air.sleep_until(start / 1e6 + 0.001)  # the erase is running
    await air.write(info.link_id, DFU_PACKET, b"\x00" * 244, with_response=False)
    assert air.now() >= end / 1e6, "delivered at the first connection event after the erase"
