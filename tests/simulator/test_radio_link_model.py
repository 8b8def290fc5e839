"""The link model charges the air time of docs/secure-dfu.md "Radio"; a central's links share one air."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from profiles.model import LinkPreferences, Phy
from simulator.radio import Central, CentralSettings, Direction, LinkConfigError, LinkModel, LinkSlot, to_us

DLE_1M = LinkModel.create(phy="1M", data_length=251, att_mtu=247)
DLE_2M = LinkModel.create(phy="2M", data_length=251, att_mtu=247)
NO_DLE_1M = LinkModel.create(phy="1M", data_length=27, att_mtu=247)


def test_pdu_airtime_matches_reference_section_7() -> None:
    assert DLE_1M.pdu_airtime_us(251) == 2088
    assert DLE_1M.pdu_airtime_us(0) == 80
    assert DLE_1M.exchange_us(251) == 2468
    assert DLE_2M.pdu_airtime_us(251) == 1048
    assert DLE_2M.pdu_airtime_us(0) == 44
    assert DLE_2M.exchange_us(251) == 1392


def test_encryption_adds_a_mic_to_data_pdus_but_not_to_empty_ones() -> None:
    enc = LinkModel.create(phy="1M", data_length=251, att_mtu=247, encrypted=True)
    assert enc.pdu_airtime_us(251) == 2088 + 4 * 8
    assert enc.pdu_airtime_us(0) == 80


def test_att_write_is_fragmented_at_the_data_length_with_its_l2cap_header() -> None:
    assert DLE_1M.write_fragments(244) == (251,)
    assert NO_DLE_1M.write_fragments(244) == (27,) * 9 + (8,)
    assert LinkModel.create(att_mtu=23).write_fragments(20) == (27,)
    assert DLE_1M.write_fragments(200) == (207,)


def test_write_larger_than_the_mtu_is_refused() -> None:
    with pytest.raises(LinkConfigError):
        DLE_1M.write_fragments(245)


def test_ceilings_are_computed_from_airtime() -> None:
    assert DLE_1M.ceiling_bps == pytest.approx(244 / 2468e-6)
    assert round(DLE_1M.ceiling_bps / 1000, 1) == 98.9
    assert round(DLE_2M.ceiling_bps / 1000) == 175
    assert NO_DLE_1M.ceiling_bps == pytest.approx(244 / (9 * 676 + 524) * 1e6)
    assert 35_000 < NO_DLE_1M.ceiling_bps < 38_000


def test_event_length_bounds_exchanges_per_event() -> None:
    assert DLE_1M.exchanges_per_event == 3  # 3 × 2468 = 7404 ≤ 7500
    assert DLE_2M.exchanges_per_event == 5  # 5 × 1392 = 6960
    long_events = LinkModel.create(phy="2M", data_length=251, att_mtu=247, interval_ms=15, event_length_ms=15)
    assert long_events.exchanges_per_event == 10


def test_streaming_200kb_at_1m_dle_takes_273_full_events_and_a_tail() -> None:
    # 819 full writes fill 273 events of 3; the last 164-byte write starts event 273.
    tail = DLE_1M.exchange_us(164 + 7)
    assert to_us(DLE_1M.stream_seconds(200_000)) == 273 * 15_000 + tail


def test_sustained_rate_is_the_event_share_of_the_ceiling() -> None:
    # 100 full events: 99 whole intervals plus the busy part of the last event.
    assert to_us(DLE_1M.stream_seconds(244 * 3 * 100)) == 99 * 15_000 + 3 * 2468
    assert to_us(DLE_2M.stream_seconds(244 * 5 * 100)) == 99 * 15_000 + 5 * 1392


def test_negotiation_takes_the_lesser_of_central_and_peripheral() -> None:
    prefs = LinkPreferences(
        att_mtu=247, phy=Phy.LE_2M, data_length=251, conn_interval_ms=15, event_length_ms=7.5
    )
    old = CentralSettings(
        att_mtu=185, supports_2m=False, max_data_length=27, min_interval_ms=30, event_length_ms=5
    )
    link = LinkModel.negotiate(prefs, old)
    assert (link.phy, link.att_mtu, link.data_length) == (Phy.LE_1M, 185, 27)
    assert (link.interval_us, link.event_length_us) == (30_000, 5_000)
    assert LinkModel.negotiate(prefs, CentralSettings()) == DLE_2M


def test_impossible_link_parameters_are_refused() -> None:
    with pytest.raises(LinkConfigError):
        LinkModel(data_length=300)
    with pytest.raises(LinkConfigError):
        LinkModel(interval_us=10_100)  # not on the 1.25 ms grid
    with pytest.raises(LinkConfigError):
        LinkModel(att_mtu=22)


def test_back_to_back_writes_fill_the_event_then_wait_for_the_next_anchor() -> None:
    central = Central()
    link = central.open("a", DLE_1M, now=0.0)
    done = []
    t = 0.0
    for _ in range(4):
        t = central.transmit(link, DLE_1M.write_fragments(244), not_before=t)
        done.append(to_us(t))
    assert done == [2468, 4936, 7404, 15_000 + 2468]


def test_a_response_costs_at_least_one_connection_interval() -> None:
    central = Central()
    link = central.open("a", DLE_2M, now=0.0)
    request = central.transmit(link, DLE_2M.write_fragments(2), not_before=0.0)
    response = central.transmit(
        link,
        DLE_2M.fragments(1),
        not_before=request,
        direction=Direction.PERIPHERAL_TO_CENTRAL,
        next_event=True,
    )
    assert to_us(response) == 15_000 + DLE_2M.exchange_us(5)
    assert central.next_event(link, request) == pytest.approx(0.015)


def test_second_link_is_staggered_into_the_first_links_idle_time() -> None:
    central = Central()
    a = central.open("a", DLE_1M, now=0.0)
    b = central.open("b", DLE_1M, now=0.0)
    assert (a.anchor_us, b.anchor_us) == (0, 7_500)
    ta = central.transmit(a, (251,) * 3, not_before=0.0)
    tb = central.transmit(b, (251,) * 3, not_before=0.0)
    assert (to_us(ta), to_us(tb)) == (7_404, 7_500 + 7_404)


def test_links_beyond_the_air_capacity_share_it() -> None:
    # A third link's events land on the first link's: together they get what one event holds.
    central = Central()
    links = [central.open(k, DLE_1M, now=0.0) for k in "abc"]
    t = {k.key: 0.0 for k in links}
    for _ in range(30):
        for link in links:
            t[link.key] = central.transmit(link, (251,), not_before=t[link.key])
    assert links[2].anchor_us == links[0].anchor_us
    assert to_us(t["b"]) == 9 * 15_000 + 7_500 + 7_404  # b alone in its window: 3 per event
    assert to_us(max(t["a"], t["c"])) >= 19 * 15_000  # a and c split one window: 60 PDUs ≥ 20 events


@given(
    st.lists(
        st.tuples(st.integers(0, 2), st.integers(0, 27), st.booleans(), st.integers(0, 40_000)),
        min_size=1,
        max_size=40,
    )
)
def test_reservations_never_overlap_and_stay_inside_their_events(
    ops: list[tuple[int, int, bool, int]],
) -> None:
    central = Central()
    models = [DLE_1M, DLE_2M, LinkModel.create(phy="1M", data_length=27, att_mtu=23, interval_ms=7.5)]
    links = [central.open(str(i), m, now=0.0) for i, m in enumerate(models)]
    for index, start, end in _disjoint_reservations(central, links, ops, back_to_back=False):
        link = links[index]
        k = link.event_index(start)
        event_start = link.event_start_us(k)
        assert start >= event_start
        assert end <= event_start + max(link.model.event_length_us, end - start)


def test_a_late_link_is_anchored_in_the_idle_part_of_the_interval() -> None:
    central = Central()
    central.open("a", DLE_1M, now=0.0)
    late = central.open("b", DLE_1M, now=1.002)  # a's event runs 1.005..1.0125: b starts when it ends
    assert late.anchor_us == 1_012_500
    third = central.open("c", DLE_1M, now=2.0)  # no room left: contention from its earliest anchor
    assert third.anchor_us == 2_000_000


EXT_2M = LinkModel.create(phy="2M", data_length=251, att_mtu=247, event_extension=True)


def test_event_extension_is_negotiated_from_both_sides() -> None:
    prefs = LinkPreferences(event_extension=True)
    assert LinkModel.negotiate(prefs, CentralSettings()).event_extension
    assert not LinkModel.negotiate(prefs, CentralSettings(event_extension=False)).event_extension
    assert not LinkModel.negotiate(LinkPreferences(), CentralSettings()).event_extension


def test_an_extended_event_runs_past_its_length_while_writes_follow_back_to_back() -> None:
    central = Central()
    link = central.open("a", EXT_2M, now=0.0, anchor=0.0)
    t = 0.0
    for _ in range(10):  # 10 x 1392 us = 13.9 ms, past the 7.5 ms event length
        t = central.transmit(link, EXT_2M.write_fragments(244), not_before=t)
    assert to_us(t) == 10 * EXT_2M.exchange_us(251)
    # An 11th would cross the next anchor (13.92 + 1.39 > 15 ms): the event ends, the write opens the next.
    t = central.transmit(link, EXT_2M.write_fragments(244), not_before=t)
    assert to_us(t) == 15_000 + EXT_2M.exchange_us(251)
    # So a streaming link carries 10 exchanges per 15 ms interval instead of 5 (7.5 ms) or 10.78 (raw air).
    assert EXT_2M.stream_bps() == pytest.approx(10 * 244 / 0.015, rel=0.002)
    assert DLE_2M.stream_bps() < 0.5 * DLE_2M.ceiling_bps  # the same link without extension


def test_a_gap_closes_an_extended_event_until_the_next_anchor() -> None:
    central = Central()
    link = central.open("a", EXT_2M, now=0.0, anchor=0.0)
    t = 0.0
    for _ in range(6):  # 8.35 ms: already past the event length
        t = central.transmit(link, EXT_2M.write_fragments(244), not_before=t)
    late = central.transmit(link, EXT_2M.write_fragments(244), not_before=t + 1e-6)
    assert to_us(late) == 15_000 + EXT_2M.exchange_us(251)


def test_another_links_reservation_closes_an_extended_event() -> None:
    central = Central()
    a = central.open("a", EXT_2M, now=0.0, anchor=0.0)
    b = central.open("b", EXT_2M, now=0.0, anchor=0.0075)
    t = 0.0
    for _ in range(5):  # a: 0 .. 6.96 ms
        t = central.transmit(a, EXT_2M.write_fragments(244), not_before=t)
    central.transmit(b, EXT_2M.write_fragments(244), not_before=t)  # b's anchor, 7.5 ms
    nxt = central.transmit(a, EXT_2M.write_fragments(244), not_before=t)  # would fit 6.96..8.35: taken
    assert to_us(nxt) == 15_000 + EXT_2M.exchange_us(251)


def test_an_extended_event_never_enters_another_links_window() -> None:
    central = Central()
    a = central.open("a", EXT_2M, now=0.0, anchor=0.0)
    central.open("b", EXT_2M, now=0.0, anchor=0.0100)  # b's window: 10.0 .. 17.5 ms, idle
    t = 0.0
    for _ in range(7):  # 0 .. 9.74 ms: the 6th and 7th run past a's 7.5 ms into idle air
        t = central.transmit(a, EXT_2M.write_fragments(244), not_before=t)
    assert to_us(t) == 7 * EXT_2M.exchange_us(251)
    t = central.transmit(a, EXT_2M.write_fragments(244), not_before=t)  # would overlap b's window
    assert to_us(t) == 15_000 + EXT_2M.exchange_us(251)


def test_a_response_booked_for_a_later_event_does_not_close_the_current_one() -> None:
    central = Central()
    link = central.open("a", EXT_2M, now=0.0, anchor=0.0)
    t = 0.0
    for _ in range(5):
        t = central.transmit(link, EXT_2M.write_fragments(244), not_before=t)
    # a notification the peripheral will send in the next event, booked now
    central.transmit(
        link, EXT_2M.fragments(6), not_before=t, direction=Direction.PERIPHERAL_TO_CENTRAL, next_event=True
    )
    for _ in range(3):  # the 6th..8th writes still extend this event
        t = central.transmit(link, EXT_2M.write_fragments(244), not_before=t)
    assert to_us(t) == 8 * EXT_2M.exchange_us(251)


@given(
    st.lists(
        st.tuples(st.integers(0, 2), st.integers(0, 251), st.booleans(), st.integers(0, 60_000)),
        min_size=1,
        max_size=60,
    )
)
def test_extended_events_stay_before_the_next_anchor_and_out_of_other_windows(
    ops: list[tuple[int, int, bool, int]],
) -> None:
    _check_extended_events(ops)


def test_the_extension_property_test_does_extend_events() -> None:
    """The property above only means something if its cases reach the extension rule."""
    ops = [(0, 251, False, 1)] * 12 + [(1, 251, False, 1)] * 8  # back to back on links 0 and 1
    assert _check_extended_events(ops).count(0) >= 4
    assert 1 in _check_extended_events(ops)


def _check_extended_events(ops: list[tuple[int, int, bool, int]]) -> list[int]:
    """Runs `ops`, checks every reservation; returns the link index of every extended exchange."""
    extended: list[int] = []
    central = Central()

    def model(phy: str, extension: bool) -> LinkModel:
        return LinkModel.create(
            phy=phy, data_length=251, att_mtu=247, interval_ms=45, event_extension=extension
        )

    # 7.5 ms windows 15 ms apart in a 45 ms interval: each link has idle air behind its window to extend into
    models = [model("2M", True), model("1M", True), model("2M", False)]
    links = [central.open(str(i), m, now=0.0, anchor=i * 0.015) for i, m in enumerate(models)]
    for index, start, end in _disjoint_reservations(central, links, ops, back_to_back=True):
        link = links[index]
        k = link.event_index(start)
        event_start = link.event_start_us(k)
        assert start >= event_start
        if end > event_start + max(link.model.event_length_us, end - start):  # extended
            assert link.model.event_extension
            assert end <= link.event_start_us(k + 1), "crossed its own next anchor"
            assert not any(o.window_overlaps(start, end) for o in links if o is not link)
            extended.append(index)
    return extended


def test_air_use_counts_busy_idle_and_slivers() -> None:
    central = Central()
    central.history = []
    link = central.open("a", DLE_2M, now=0.0, anchor=0.0)
    central.transmit(link, (251,), not_before=0.0)  # 0 .. 1392
    central.transmit(link, (251,), not_before=0.002)  # 2000 .. 3392: a 608 us sliver before it
    central.forget_before(0.0025)  # the first goes to the history, the second is still reserved
    busy, idle, short = central.air_use(0.0, 0.005, short_us=1392)
    assert to_us(busy) == 2 * 1392
    assert to_us(idle) == 5000 - 2 * 1392
    assert to_us(short) == 608  # the 1608 us after the second one is long enough for a packet


def _disjoint_reservations(
    central: Central, links: list[LinkSlot], ops: list[tuple[int, int, bool, int]], *, back_to_back: bool
) -> list[tuple[int, int, int]]:
    """Transmit `ops` (link, payload, response?, moment); return (link, start, end) of every reservation in
    time order, checked to never overlap. With `back_to_back`, odd moments mean: right after that link's
    previous exchange (the case event extension is about)."""
    spans: list[tuple[int, int, int]] = []
    done = [0.0] * len(links)
    for index, payload, response, at in ops:
        before = set(central.reserved())
        start = done[index] if back_to_back and at % 2 else at / 1e6
        done[index] = central.transmit(links[index], (payload,), not_before=start, next_event=response)
        spans += [(index, to_us(s), to_us(e)) for s, e in central.reserved() if (s, e) not in before]
    ordered = sorted(spans, key=lambda x: x[1])
    for (_, _, end), (_, begin, _) in itertools.pairwise(ordered):
        assert end <= begin
    return ordered
