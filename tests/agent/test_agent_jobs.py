"""The sans-I/O job core: which status to report when, idempotent and deduplicated, fed explicit `now`."""

from __future__ import annotations

import json

from gateway_agent.cloud.wire import BleJob, ExecutionStatus, JobUpdate
from gateway_agent.jobs import (
    Abandon,
    DfuOutcome,
    Dropped,
    Effect,
    Execution,
    JobPolicy,
    Jobs,
    Report,
    RequestJobs,
    StartDfu,
    StartDownload,
)
from gateway_agent.lifecycle import Phase

A = "C8:2E:1A:00:00:10"
B = "C8:2E:1A:00:00:20"
TYPES = {0: frozenset({"application"}), 3: frozenset({"bootloader"}), 4: frozenset({"softdevice"})}


def core(**kw: object) -> Jobs:
    return Jobs(JobPolicy(firmware_types=TYPES, **kw), [A, B])  # type: ignore[arg-type]


def offer(peripheral: str = A, job: str = "job-1", size: int = 1000, fw_type: int = 0) -> bytes:
    # shaped as nRF Cloud sends it (docs/nrf-cloud.md, "Job tuple"): bundle ids with `*`, every file `.bin`
    paths = "T/APP*56693cf8*2.0.0/appdat.bin T/APP*f1078fc9*2.0.0/app.bin"
    return json.dumps([peripheral, job, fw_type, size, "firmware.nrfcloud.com", paths]).encode()


def reports(effects: list[Effect]) -> list[JobUpdate]:
    return [e.update for e in effects if isinstance(e, Report)]


def test_agent_jobs_happy_path_reports_in_order_and_rate_limited() -> None:
    j = core()
    eff = j.on_message(offer(), now=0.0)
    assert reports(eff) == [JobUpdate(A, "job-1", ExecutionStatus.DOWNLOADING, progress=0)]
    assert any(isinstance(e, StartDownload) for e in eff)
    key = (A, "job-1")
    seen: list[JobUpdate] = []
    for received in range(0, 1001, 10):  # 1 % steps, all at the same instant
        seen += reports(j.on_download_progress(key, received, now=1.0))
    assert [u.progress for u in seen] == list(range(5, 101, 5))
    eff = j.on_downloaded(key, ["application"], now=1.5)
    assert [u.status for u in reports(eff)] == [ExecutionStatus.IN_PROGRESS]
    assert any(isinstance(e, StartDfu) for e in eff)
    assert reports(j.on_dfu_progress(key, 1, 100, now=1.6)) == []  # 1 %: too little, too soon
    assert reports(j.on_dfu_progress(key, 2, 100, now=3.7))[0].details == "transfer 2%"  # 2 s passed
    eff = j.on_dfu_finished(key, DfuOutcome.SUCCEEDED, "", now=4.0)
    assert reports(eff) == [JobUpdate(A, "job-1", ExecutionStatus.SUCCEEDED)]
    assert RequestJobs(A) in eff  # ask for the next job after a DFU
    assert j.on_message(offer(), now=5.0) == [Dropped("job already finished for this peripheral", A, "job-1")]


def test_agent_jobs_second_job_for_busy_peripheral_waits_its_turn() -> None:
    j = core()
    j.on_message(offer(job="j1"), 0.0)
    eff = j.on_message(offer(job="j2"), 0.1)
    assert eff == []  # accepted, silent, waiting
    eff = j.on_message(offer(peripheral=B, job="j3"), 0.2)
    assert any(isinstance(e, StartDownload) for e in eff)
    assert isinstance(j.on_message(offer(job="j2"), 0.3)[0], Dropped)  # duplicate delivery
    j.on_downloaded((A, "j1"), ["application"], 1.0)
    eff = j.on_dfu_finished((A, "j1"), DfuOutcome.FAILED, "Error applying update: x", 2.0)
    starts = [e.execution.key for e in eff if isinstance(e, StartDownload)]
    assert starts == [(A, "j2")]


def test_agent_jobs_concurrency_limits_dfus_fifo() -> None:
    j = Jobs(JobPolicy(firmware_types=TYPES, concurrency=1), [A, B])
    j.on_message(offer(peripheral=A, job="a"), 0.0)
    j.on_message(offer(peripheral=B, job="b"), 0.0)
    first = j.on_downloaded((B, "b"), ["application"], 1.0)
    assert [e.execution.key for e in first if isinstance(e, StartDfu)] == [(B, "b")]
    second = j.on_downloaded((A, "a"), ["application"], 1.1)
    assert not any(isinstance(e, StartDfu) for e in second)  # the only radio slot is taken
    done = j.on_dfu_finished((B, "b"), DfuOutcome.SUCCEEDED, "", 2.0)
    assert [e.execution.key for e in done if isinstance(e, StartDfu)] == [(A, "a")]


def test_agent_jobs_rejections() -> None:
    j = core()
    # sdk-nrf `parse_job_info()`: a type outside its enum is invalid job info (REJECTED "Job info is invalid")
    (update,) = reports(j.on_message(offer(fw_type=7), 0))
    assert (update.status, update.job_id) == (ExecutionStatus.REJECTED, "job-1")
    assert update.details.startswith("Job info is invalid: firmware_type")
    # a known type this gateway cannot update: REJECTED "FOTA type not supported" (sdk-nrf `start_job()`)
    assert reports(j.on_message(offer(job="modem", fw_type=1), 0)) == [
        JobUpdate(
            A, "modem", ExecutionStatus.REJECTED, details="FOTA type not supported: FIRMWARE_TYPE 1 (MODEM)"
        )
    ]
    bad = b'["C8:2E:1A:00:00:10","job-2",0,-5,"h","a.bin b.bin"]'
    (update,) = reports(j.on_message(bad, 0))
    assert (update.status, update.job_id) == (ExecutionStatus.REJECTED, "job-2")
    assert update.details.startswith("Job info is invalid")
    assert reports(j.on_message(bad, 1)) == []  # answered once
    # files that are not what FIRMWARE_TYPE says: FAILED, as sdk-nrf's `http_fota_handler()` reports a
    # type mismatch (REJECTED is for invalid job info)
    j.on_message(offer(job="job-3", fw_type=3), 0)
    (mismatch,) = reports(j.on_downloaded((A, "job-3"), ["application"], 1))
    assert mismatch.status is ExecutionStatus.FAILED
    assert mismatch.details.startswith("FW file does not match specified FOTA type")


def test_agent_jobs_ignore_a_peripheral_they_do_not_serve_until_it_is_added() -> None:
    """lte-gateway `peripheral_dfu.c` `fota_ble_callback()`: "Device not connected; ignoring job", no
    status (REJECTED is terminal in the cloud); once the peripheral is served the gateway asks again."""
    j = core()
    other = "C8:2E:1A:00:00:99"
    (dropped,) = j.on_message(offer(peripheral=other, job="x"), 0)
    assert isinstance(dropped, Dropped)
    assert "not served" in dropped.reason
    assert j.set_peripherals([A, B, other]) == [RequestJobs(other)]
    assert any(isinstance(e, StartDownload) for e in j.on_message(offer(peripheral=other, job="x"), 1))


def test_agent_jobs_admission_policy_fails_before_downloading() -> None:
    j = Jobs(JobPolicy(firmware_types=TYPES, admit=lambda o: "host not allowed"), [A])
    (update,) = reports(j.on_message(offer(), 0))
    assert update == JobUpdate(
        A, "job-1", ExecutionStatus.FAILED, details="Error during download: host not allowed"
    )


def test_agent_jobs_restart_resumes_without_repeating_statuses() -> None:
    j = core()
    j.on_message(offer(job="dl"), 0)
    j.on_message(offer(peripheral=B, job="tx"), 0)
    j.on_download_progress((A, "dl"), 400, 1)
    j.on_downloaded((B, "tx"), ["application"], 1)
    j.on_dfu_progress((B, "tx"), 50, 100, 5)
    saved = {e.key: e for e in j.take_dirty()}
    # a new process: restore what the journal holds
    k = core()
    k.restore(
        [Execution(**{f: getattr(e, f) for f in e.__dataclass_fields__}) for e in saved.values()], set()
    )
    eff = k.resume(10)
    assert reports(eff) == []  # no second DOWNLOADING 0, no second IN_PROGRESS
    assert {type(e) for e in eff} == {StartDownload, StartDfu}
    assert reports(k.on_download_progress((A, "dl"), 1000, 11))[0].progress == 100
    (done,) = reports(k.on_dfu_finished((B, "tx"), DfuOutcome.SUCCEEDED, "", 12)[:1])
    assert done.status is ExecutionStatus.SUCCEEDED
    assert k.on_dfu_finished((B, "tx"), DfuOutcome.SUCCEEDED, "", 13) == []  # terminal once


def test_agent_jobs_interrupted_dfu_stays_applying_and_stop_takes_no_work() -> None:
    j = core()
    j.on_message(offer(), 0)
    j.on_downloaded((A, "job-1"), ["application"], 1)
    j.take_dirty()
    assert j.on_dfu_finished((A, "job-1"), DfuOutcome.INTERRUPTED, "", 2) == []
    (row,) = j.take_dirty()
    assert row.phase is Phase.APPLYING
    j.stop()
    assert isinstance(j.on_message(offer(job="new"), 3)[0], Dropped)


def test_agent_jobs_offer_round_trips_json() -> None:
    o = BleJob(A, "j", 0, 10, "h.example.com", "x.dat x.bin")
    assert BleJob.from_json(json.loads(o.encode())) == o
    assert BleJob(*o.to_json()) == o


def test_agent_jobs_queues_are_bounded_without_a_wrong_status() -> None:
    """Beyond its queue a job is not accepted and gets no status (it stays pending in the cloud, which sends
    a peripheral's oldest pending job when asked); the gateway asks again once there is room."""
    j = Jobs(JobPolicy(firmware_types=TYPES, queue_per_peripheral=2, queue_total=3), [A, B])
    j.on_message(offer(job="a1"), 0)
    j.on_message(offer(job="a2"), 0)
    (dropped,) = j.on_message(offer(job="a3"), 0)
    assert isinstance(dropped, Dropped)
    assert "queue full" in dropped.reason
    j.on_message(offer(peripheral=B, job="b1"), 0)
    (full,) = j.on_message(offer(peripheral=B, job="b2"), 0)  # the gateway's total of 3 is reached
    assert isinstance(full, Dropped)
    assert "gateway queue full" in full.reason
    j.on_downloaded((A, "a1"), ["application"], 1)
    effects = j.on_dfu_finished((A, "a1"), DfuOutcome.SUCCEEDED, "", 2)
    assert RequestJobs(A) in effects  # after every DFU
    assert RequestJobs(B) in effects  # B was turned away: room again
    assert not any(u.status.terminal for u in reports(effects) if u.job_id in ("a3", "b2"))
    assert j.on_message(offer(job="a3"), 3) == []  # accepted now, waiting behind a2


def test_agent_jobs_deadline_ends_a_job_failed_and_abandons_its_task() -> None:
    j = Jobs(JobPolicy(firmware_types=TYPES, deadline_s=600.0), [A, B])
    j.on_message(offer(job="slow"), 100.0)  # started downloading at 100
    j.on_message(offer(job="next"), 100.0)
    assert j.on_tick(699.0) == []
    effects = j.on_tick(700.0)
    assert effects[0] == Abandon((A, "slow"))
    (failed,) = [u for u in reports(effects) if u.job_id == "slow"]
    assert failed.status is ExecutionStatus.FAILED
    assert failed.details == "Error during download: not finished within 600 s (dfu.job_deadline_s)"
    assert [e.execution.key for e in effects if isinstance(e, StartDownload)] == [(A, "next")]
    assert j.on_tick(10_000.0)[0] == Abandon((A, "next"))  # its own deadline counts from its own start


def test_agent_jobs_a_crashed_task_still_ends_its_job_once() -> None:
    j = core()
    j.on_message(offer(), 0)
    (update,) = reports(j.on_task_crashed((A, "job-1"), "NotImplementedError: compression 99", 1))
    assert update.status is ExecutionStatus.FAILED
    assert update.details == "Error during download: internal error: NotImplementedError: compression 99"
    assert j.on_task_crashed((A, "job-1"), "again", 2) == []  # terminal once
    assert isinstance(j.on_message(offer(), 3)[0], Dropped)  # and the redelivery is recognised
