"""The fault injector fires exactly where its plan says, and its randomness is seeded."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from profiles.gatt import BUTTONLESS_UNBONDED, CONTROL_POINT, DFU_PACKET
from simulator.faults import DropAtRequest, FaultInjector, FaultPlan

PACKET = bytes(range(200))


def test_no_plan_passes_everything_untouched() -> None:
    inj = FaultInjector()
    for _ in range(100):
        verdict = inj.on_write(DFU_PACKET, PACKET)
        assert verdict.data == PACKET
        assert verdict.deliver
        assert not verdict.drop_link
        assert not verdict.corrupted
    assert inj.on_connect_attempt()
    assert inj.bootloader_adv_delay() == 0.0
    assert FaultPlan().empty


def test_drop_after_bytes_fires_once_on_the_write_that_crosses_it() -> None:
    inj = FaultInjector(FaultPlan(drop_after_bytes=500))
    drops = [inj.on_write(DFU_PACKET, PACKET).drop_link for _ in range(6)]
    assert drops == [False, False, True, False, False, False]
    assert inj.packet_bytes == 1200


def test_drop_every_bytes_keeps_dropping() -> None:
    inj = FaultInjector(FaultPlan(drop_every_bytes=400))
    drops = [inj.on_write(DFU_PACKET, PACKET).drop_link for _ in range(8)]
    assert drops == [False, True, False, True, False, True, False, True]


def test_control_point_traffic_does_not_count_as_packet_bytes() -> None:
    inj = FaultInjector(FaultPlan(drop_after_bytes=1))
    assert not inj.on_write(CONTROL_POINT, b"\x06\x02").drop_link
    assert not inj.on_write(BUTTONLESS_UNBONDED, b"\x01").drop_link
    assert inj.on_write(DFU_PACKET, b"\x00").drop_link


def test_drop_at_the_nth_request_of_an_opcode() -> None:
    inj = FaultInjector(FaultPlan(drop_at_request=DropAtRequest(opcode=0x04, nth=2, deliver=False)))
    assert not inj.on_write(CONTROL_POINT, b"\x04").drop_link
    assert not inj.on_write(CONTROL_POINT, b"\x03").drop_link
    second = inj.on_write(CONTROL_POINT, b"\x04")
    assert second.drop_link
    assert not second.deliver
    assert not inj.on_write(CONTROL_POINT, b"\x04").drop_link
    assert inj.fired == ["drop at request 0x04 #2"]


def test_corrupt_nth_packet_flips_exactly_one_bit() -> None:
    inj = FaultInjector(FaultPlan(corrupt_nth_packet=3))
    out = [inj.on_write(DFU_PACKET, PACKET) for _ in range(4)]
    assert [v.corrupted for v in out] == [False, False, True, False]
    diff = [a ^ b for a, b in zip(out[2].data, PACKET, strict=True) if a != b]
    assert len(diff) == 1
    assert bin(diff[0]).count("1") == 1


def test_random_corruption_is_reproducible_from_the_seed() -> None:
    def run(seed: int) -> list[bytes]:
        inj = FaultInjector(FaultPlan(corrupt_probability=0.3, seed=seed))
        return [inj.on_write(DFU_PACKET, PACKET).data for _ in range(200)]

    first, again, other = run(7), run(7), run(8)
    assert first == again
    assert first != other
    corrupted = sum(d != PACKET for d in first)
    assert 30 < corrupted < 90


def test_refusals_count_down_or_last_forever() -> None:
    inj = FaultInjector(FaultPlan(refuse_connections=2))
    assert [inj.on_connect_attempt() for _ in range(4)] == [False, False, True, True]
    forever = FaultInjector(FaultPlan(refuse_connections=-1))
    assert not any(forever.on_connect_attempt() for _ in range(10))


def test_bootloader_advertising_can_be_delayed_or_suppressed() -> None:
    assert FaultInjector(FaultPlan(bootloader_adv_delay_s=3.0)).bootloader_adv_delay() == 3.0
    assert FaultInjector(FaultPlan(suppress_bootloader_adv=True)).bootloader_adv_delay() is None


def test_power_cycle_after_bytes_is_one_shot() -> None:
    inj = FaultInjector(FaultPlan(reset_after_bytes=300))
    assert [inj.on_write(DFU_PACKET, PACKET).power_cycle for _ in range(4)] == [False, True, False, False]


def test_rearming_a_plan_restarts_its_counters() -> None:
    inj = FaultInjector(FaultPlan(drop_after_bytes=300))
    inj.on_write(DFU_PACKET, PACKET)
    inj.set_plan(FaultPlan(drop_after_bytes=300))
    assert not inj.on_write(DFU_PACKET, PACKET).drop_link
    assert inj.on_write(DFU_PACKET, PACKET).drop_link


def test_plans_travel_as_json_and_reject_unknown_fields() -> None:
    plan = FaultPlan(drop_at_request=DropAtRequest(opcode=1), corrupt_probability=0.1, seed=3)
    assert FaultPlan.model_validate_json(plan.model_dump_json()) == plan
    with pytest.raises(ValidationError):
        FaultPlan.model_validate({"drop_after": 3})
