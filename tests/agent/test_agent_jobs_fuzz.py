"""Thousands of hostile `jobs/ble/rcv` payloads into the parser and the job core: the agent never dies, and
each payload gets exactly the answer Nordic's code gives (sdk-nrf `nrf_cloud_fota.c`, lte-gateway
`peripheral_dfu.c`; docs/nrf-cloud.md)."""

from __future__ import annotations

import json
import urllib.parse
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway_agent.cloud.wire import BleJob, ExecutionStatus, InvalidJob, UnreadableJob, parse_ble_job
from gateway_agent.jobs import Dropped, JobPolicy, Jobs, Report, StartDownload

A = "C8:2E:1A:00:00:10"
TYPES = {0: frozenset({"application"})}
MANY = settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=50)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
)
hostile_paths = st.sampled_from(
    [
        "../etc/passwd.bin x.dat",
        "/abs/app.bin app.dat",
        "a/../../b.bin a.dat",
        "app.bin",
        "app.exe app.dat",
        "app.bin app.bin",
        "https://evil/app.bin app.dat",
        "a\\b.bin a.dat",
        "a//b.bin a.dat",
        "a/%2e%2e/b.bin a.dat",
        "a/%2E%2e/b.bin a.dat",
        "a/.%2e/b.bin a.dat",
        "a/%2F/b.bin a.dat",
        "a/x%5cb.bin a.dat",
        "a/\x01b.bin a.dat",
        "a/%00b.bin a.dat",
        "a/b\u00e9.bin a.dat",
        "a/<b>.bin a.dat",
        "a/b?.bin a.dat",
        "a/b#.bin a.dat",
        "./a.bin a.dat",
        "a.bin a.dat extra.dat",
        " a.bin a.dat",
        "",
        "x" * 5000 + ".bin a.dat",
    ]
)
hostile_hosts = st.sampled_from(
    [
        "http://fw.example.com",
        "fw.example.com/x",
        "user@fw.example.com",
        "",
        "fw example.com",
        "-bad-.com",
        "h" * 300,
    ]
)
valid_ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9-]{0,35}", fullmatch=True)


def mutated_tuple() -> st.SearchStrategy[list[Any]]:
    base: list[st.SearchStrategy[Any]] = [
        st.just(A) | st.text(max_size=20) | st.integers(),
        valid_ids | st.text(max_size=40) | st.integers(),
        st.integers(-5, 300) | st.text(max_size=3) | st.booleans(),
        st.integers(-(2**40), 2**40) | st.floats(allow_nan=False) | st.text(max_size=5),
        st.just("fw.example.com") | hostile_hosts | st.integers(),
        st.just("T/APP*56693cf8*2.0.0/appdat.bin T/APP*f1078fc9*2.0.0/app.bin") | hostile_paths | st.none(),
    ]
    return st.tuples(*base).map(list) | st.lists(json_values, max_size=9)


def _readable_id(data: Any) -> str | None:
    if isinstance(data, list) and len(data) >= 2 and isinstance(data[1], str):
        import re

        if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}", data[1]):
            return data[1]
    return None


@MANY
@given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_agent_parser_never_raises_on_bytes(payload: bytes) -> None:
    assert isinstance(parse_ble_job(payload), BleJob | InvalidJob | UnreadableJob)


@MANY
@given(mutated_tuple())
def test_agent_core_answers_each_hostile_tuple_as_the_reference_says(data: list[Any]) -> None:
    jobs = Jobs(JobPolicy(firmware_types=TYPES), [A])
    payload = json.dumps(data).encode()
    parsed = parse_ble_job(payload)
    effects = jobs.on_message(payload, now=0.0)
    updates = [e.update for e in effects if isinstance(e, Report)]
    if isinstance(parsed, UnreadableJob):
        assert _readable_id(data) is None or len(data) == 6
        assert updates == []
        assert isinstance(effects[0], Dropped)
    elif isinstance(parsed, InvalidJob):
        assert parsed.job_id == _readable_id(data)
        assert len(updates) == 1
        assert updates[0].status is ExecutionStatus.REJECTED
        assert updates[0].details.startswith("Job info is invalid")
    else:
        assert parsed.file_host == "fw.example.com"
        for path in parsed.paths:  # nothing that could leave FILE_HOST or change meaning when decoded
            segments = [urllib.parse.unquote(seg) for seg in path.split("/")]
            assert not path.startswith("/")
            assert "\\" not in path
            assert all(seg not in ("", ".", "..") and "/" not in seg and "\\" not in seg for seg in segments)
            assert all(0x20 < ord(c) < 0x7F for c in path)
        if parsed.peripheral_id != A:  # not served: ignored without a status (lte-gateway)
            assert updates == []
            assert isinstance(effects[0], Dropped)
        elif parsed.firmware_type not in TYPES:
            assert updates[0].details.startswith("FOTA type not supported")
        else:
            assert any(isinstance(e, StartDownload) for e in effects)
    # redelivery is never answered twice
    assert [e for e in jobs.on_message(payload, now=1.0) if isinstance(e, Report)] == []


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1, max_size=3000))
def test_agent_parser_huge_strings_in_every_field(text: str) -> None:
    for i in range(6):
        data: list[Any] = [A, "job-1", 0, 10, "fw.example.com", "a.dat a.bin"]
        data[i] = text * 3
        result = parse_ble_job(json.dumps(data).encode())
        assert not isinstance(result, BleJob) or i in (0, 1, 4, 5)
