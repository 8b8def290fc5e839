"""Done-means of "Local FOTA job service": a fleet rollout end to end, every part a real process.

Mosquitto with mutual TLS; `fota-service serve --config` (REST over HTTPS, firmware hosting, MQTT bridge);
one `nrf-dfu sim serve` air per gateway site; three `gateway-agent run --config` processes using the
simulator backend (20 nRF52840 each, `[dfu] concurrency` = CONCURRENCY below; gateway 3 also serves one
nRF52832). The test acts as an operator (REST) and as a wiretap (a separate MQTT client recording every
`jobs/ble/*` tuple) and reads the truth from the peripherals themselves (the simulator's device state),
never from the components' own bookkeeping alone.

Rules under test (docs/fota-service.md, fota_service/model.py; seed page "Execution rollout", "FOTA retry
groups and jobs"):
- executions roll out in batches of 25, round-robin across gateways; the next batch goes out once every
  execution of the current one was acknowledged (left QUEUED) — or after `batch_interval`, set high here so
  only acknowledgements drive the waves;
- a job is COMPLETED when every execution is terminal, with exact `executionStats`;
- executions that end FAILED or TIMED_OUT (not REJECTED, not CANCELLED) put their devices in a group
  `retry-<job name>-<job id>` targeted by a new, unapplied job `<name> Retry` with the same document.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from hil.fleet import (
    Fleet,
    WireEvent,
    app_bundle,
    rollout_waves,
    running_fleet,
    wait_for,
)

GATEWAYS = 3
PER_GATEWAY = 20
BATCH = 25
ODD = "C8:2E:1A:03:01:01"
"""An nRF52832 with S132 behind gateway 3: an S140 bundle does not suit it (preflight refuses: REJECTED)."""
ODD_PROFILE = "nrf52832-s132"
JOB_TIMEOUT_S = 100.0
CONCURRENCY = 3
"""`[dfu] concurrency` of each agent: several links share each gateway's simulated central."""

ZERO_STATS = {
    "devices": 0,
    "executions": 0,
    "completedExecutions": 0,
    "queued": 0,
    "inProgress": 0,
    "downloading": 0,
    "succeeded": 0,
    "failed": 0,
    "timedOut": 0,
    "rejected": 0,
    "cancelled": 0,
    "removed": 0,
}


def stats(**counts: int) -> dict[str, int]:
    return {**ZERO_STATS, **counts}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def fleet(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Fleet]:
    directory: Path = tmp_path_factory.mktemp("fleet")
    async with running_fleet(
        directory,
        gateways=GATEWAYS,
        per_gateway=PER_GATEWAY,
        concurrency=CONCURRENCY,
        batch_size=BATCH,
        extra=[(3, ODD, ODD_PROFILE)],
    ) as running:
        yield running


def _terminal_updates(events: list[WireEvent], job_id: str) -> dict[str, list[int]]:
    """Terminal statuses each peripheral reported for the job, as seen on the wire."""
    out: dict[str, list[int]] = {}
    for e in events:
        if e.kind == "update" and e.job_id == job_id and int(e.payload[2]) in (2, 3, 4, 5, 6):
            out.setdefault(e.peripheral, []).append(int(e.payload[2]))
    return out


async def _wire_settled(fleet: Fleet, job_id: str, count: int) -> dict[str, list[int]]:
    """The observer is a separate client: wait (bounded) until it saw `count` terminal updates of the job."""

    async def probe() -> dict[str, list[int]] | None:
        seen = _terminal_updates(fleet.observer.events, job_id)
        return seen if sum(map(len, seen.values())) >= count else None

    return await wait_for(probe, within=20, what=f"{count} terminal updates of {job_id} on the wire")


@pytest.mark.e2e
@pytest.mark.timeout(240)  # the fleet's setup counts against the first test; JOB_TIMEOUT_S bounds each wait
@pytest.mark.asyncio(loop_scope="module")
async def test_one_job_updates_60_peripherals_in_waves_of_25(fleet: Fleet) -> None:
    api = fleet.api
    targets = fleet.peripherals
    assert len(targets) == GATEWAYS * PER_GATEWAY
    before = await fleet.app_versions()

    bundle_id = await api.upload_firmware(app_bundle(2), name="app-v2")
    assert re.fullmatch(r"APP\*[0-9a-f]{8}\*2", bundle_id), bundle_id  # nRF Cloud's bundle id form
    # created without applying (nRF Cloud's autoApply defaults to true)
    job_id = await api.create_job(bundleId=bundle_id, name="fleet-v2", deviceIds=targets, autoApply=False)
    assert (await api.job(job_id))["status"] == "CREATED"
    assert fleet.observer.of_job(job_id) == []  # nothing is pushed before the job is applied

    applied = await api.apply_job(job_id)
    assert applied["status"] == "IN_PROGRESS"
    done = await api.wait_job(job_id, "COMPLETED", within=JOB_TIMEOUT_S, diagnose=fleet.diagnose)
    assert done["executionStats"] == stats(devices=60, executions=60, completedExecutions=60, succeeded=60)

    # On the wire: no more than 25 notified before all of them answered, and the next wave only after
    # that (see rollout_waves) ...
    waves = rollout_waves(fleet.observer.events, job_id, BATCH)
    assert waves.violations == []
    assert [len(w) for w in waves.waves] == [25, 25, 10]
    assert sorted(waves.order) == sorted(targets)
    # Each notification went to the gateway of its peripheral, and only there.
    misrouted = [
        (e.gateway, e.peripheral)
        for e in fleet.observer.of_job(job_id, "rcv")
        if fleet.gateway_of(e.peripheral).gateway_id != e.gateway
    ]
    assert misrouted == []
    # Round-robin: each wave spreads over the gateways (counts differ by at most one).
    for per_gateway in waves.gateways_per_wave:
        assert max(per_gateway.values()) - min(per_gateway.values()) <= 1, waves.gateways_per_wave
    # ... and the service's own record of batches is exactly that partition (which the wire alone cannot
    # tell from a service sending smaller batches that happen to line up).
    executions = await api.executions(job_id)
    batches: dict[int, set[str]] = {}
    for execution in executions:
        batches.setdefault(execution["batch"], set()).add(execution["deviceId"])
    assert [batches[k] for k in sorted(batches)] == [set(w) for w in waves.waves]
    assert {e["status"] for e in executions} == {"SUCCEEDED"}

    # Each peripheral's gateway reported exactly one terminal status, SUCCEEDED, through the broker ...
    terminal = await _wire_settled(fleet, job_id, 60)
    assert terminal == {p: [3] for p in targets}
    # ... and the peripherals themselves run version 2 now (they ran something else before).
    assert all(v != 2 for v in before.values()), before
    after = await fleet.app_versions()
    assert {p: after[p] for p in targets} == dict.fromkeys(targets, 2)
    assert after[ODD] == before[ODD]  # not targeted, not touched


@pytest.mark.e2e
@pytest.mark.timeout(240)  # the fleet's setup counts against the first test; JOB_TIMEOUT_S bounds each wait
@pytest.mark.asyncio(loop_scope="module")
async def test_failed_peripherals_get_a_retry_job_that_completes_the_set(fleet: Fleet) -> None:
    """A second rollout (version 3, so it does not depend on the first test having run) to the 60 and the
    nRF52832: three peripherals unreachable (FAILED), the nRF52832 refusing the bundle (REJECTED)."""
    api = fleet.api
    targets = [*fleet.peripherals, ODD]
    # One peripheral per gateway refuses every connection: its gateway cannot reach it (FAILED).
    failing = [gw.air.addresses[7 + 3 * i] for i, gw in enumerate(fleet.gateways)]
    for address in failing:
        await fleet.gateway_of(address).air.set_faults(address, refuse_connections=-1)

    bundle_id = await api.upload_firmware(app_bundle(3), name="app-v3")
    job_id = await api.create_job(bundleId=bundle_id, name="fleet-v3", deviceIds=targets)  # autoApply
    try:
        done = await api.wait_job(job_id, "COMPLETED", within=JOB_TIMEOUT_S, diagnose=fleet.diagnose)
    finally:
        for address in failing:
            await fleet.gateway_of(address).air.clear_faults(address)
    assert done["executionStats"] == stats(
        devices=61, executions=61, completedExecutions=61, succeeded=57, failed=3, rejected=1
    )
    executions = {e["deviceId"]: e for e in await api.executions(job_id)}
    assert {d for d, e in executions.items() if e["status"] == "FAILED"} == set(failing)
    assert executions[ODD]["status"] == "REJECTED"
    assert executions[ODD]["statusDetail"].startswith("PreflightError"), executions[ODD]
    assert "SoftDevice" in executions[ODD]["statusDetail"]
    assert all(executions[d]["statusDetail"].startswith("Error applying update") for d in failing), [
        executions[d] for d in failing
    ]
    versions = await fleet.app_versions()
    assert {p for p in fleet.peripherals if versions[p] == 3} == set(fleet.peripherals) - set(failing)
    assert versions[ODD] == 1

    # The retry job: same document, its own group of exactly the FAILED devices (the REJECTED one is not
    # retried: it refused this very document), created but not applied.
    group = f"retry-fleet-v3-{job_id}"
    retries = [j for j in await api.jobs() if j["name"].startswith("fleet-v3 Retry")]
    assert [j["name"] for j in retries] == ["fleet-v3 Retry"]
    (retry,) = retries
    assert retry["status"] == "CREATED"
    assert retry["target"] == {"deviceIds": [], "tags": [group]}
    assert retry["firmware"] == done["firmware"]
    assert sorted((await api.groups())[group]) == sorted(failing)
    assert fleet.observer.of_job(retry["jobId"]) == []

    # Faults cleared (above); deploy the retry: it completes the set.
    applied = await api.apply_job(retry["jobId"])
    assert applied["status"] == "IN_PROGRESS"
    finished = await api.wait_job(retry["jobId"], "COMPLETED", within=JOB_TIMEOUT_S, diagnose=fleet.diagnose)
    assert finished["executionStats"] == stats(devices=3, executions=3, completedExecutions=3, succeeded=3)
    notified = {e.peripheral for e in fleet.observer.of_job(retry["jobId"], "rcv")}
    assert notified == set(failing)
    versions = await fleet.app_versions()
    assert {p: versions[p] for p in fleet.peripherals} == dict.fromkeys(fleet.peripherals, 3)
    assert not [j for j in await api.jobs() if j["name"].startswith("fleet-v3 Retry 2")]


# ------------------------------------------------------------------------------ the wire check itself
def _wire(script: str) -> list[WireEvent]:
    """ "r0 u0 ..." = rcv / update of peripheral P0 .., in delivery order, one job; gateway by parity."""
    return [
        WireEvent(i, "rcv" if w[0] == "r" else "update", f"gw-{int(w[1:]) % 2}", [f"P{w[1:]}", "J", 0, 0])
        for i, w in enumerate(script.split())
    ]


def test_wave_check_accepts_batches_sent_after_acknowledgement() -> None:
    # the last r0 is a re-delivery (an answer to jobs/ble/req), not a new wave
    waves = rollout_waves(_wire("r0 r1 u1 u0 r2 r3 u2 u3 r4 u4 r0"), "J", 2)
    assert waves.waves == [["P0", "P1"], ["P2", "P3"], ["P4"]]
    assert waves.violations == []
    assert waves.gateways_per_wave == [{"gw-0": 1, "gw-1": 1}, {"gw-0": 1, "gw-1": 1}, {"gw-0": 1}]


@pytest.mark.parametrize(
    "script",
    [
        pytest.param("r0 r1 r2 u0 u1 u2", id="all-at-once"),
        pytest.param("r0 r1 u0 r2 u1 u2", id="next-batch-before-the-last-acknowledgement"),
        pytest.param("r0 r1 u0 r2", id="next-batch-with-a-device-never-answering"),
    ],
)
def test_wave_check_flags_a_rollout_that_breaks_the_rule(script: str) -> None:
    assert rollout_waves(_wire(script), "J", 2).violations
