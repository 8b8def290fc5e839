"""The agent's runtime with a scripted DFU behind the `DfuRunner` seam, real broker and real HTTPS host.

These pin the status mapping of DFU outcomes (typed errors → REJECTED / FAILED), the scheduler's limits as
seen from outside and the answers to bad jobs, without the radio; tests/e2e/test_agent_*.py run the updater.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dfu.errors import DfuLinkError, DfuRejected, PreflightError
from dfu.package import DfuPackage
from dfu.protocol import ExtError, OpCode, ResultCode
from gateway_agent.app import Agent
from gateway_agent.cloud.wire import ExecutionStatus, LinkState
from gateway_agent.config import load_config
from gateway_agent.dfu_runner import LinkListener, TransferProgress
from profiles.model import PeripheralProfile
from tests.agent.support import (
    FakeCloud,
    app_bundle,
    assert_honest_sequence,
    broker_outage,
    firmware_server,
    job_tuple,
    persistent_broker,
    write_config,
)
from tests.support.mosquitto import running_broker

A = "C8:2E:1A:00:00:10"
B = "C8:2E:1A:00:00:20"
C = "C8:2E:1A:00:00:30"


class ScriptedRunner:
    """Stands in for the radio: reports progress in 10 steps, then does what the test scripted."""

    def __init__(self) -> None:
        self.outcome: dict[str, BaseException | None] = {}
        self.gates: dict[str, asyncio.Event] = {}
        self.running: set[str] = set()
        self.max_running = 0
        self.order: list[str] = []
        self.started = asyncio.Event()
        self.finished = asyncio.Event()

    async def run(
        self,
        address: str,
        profile: PeripheralProfile,
        package: DfuPackage,
        on_progress: TransferProgress,
        on_link: LinkListener,
    ) -> None:
        on_link(LinkState.CONNECTED)
        self.running.add(address)
        self.order.append(address)
        self.max_running = max(self.max_running, len(self.running))
        self.started.set()
        try:
            total = package.total_firmware_bytes
            for i in range(11):
                on_progress(total * i // 10, total)
                await asyncio.sleep(0)
            gate = self.gates.get(address)
            if gate is not None:
                await gate.wait()
            error = self.outcome.get(address)
            if error is not None:
                raise error
        finally:
            self.running.discard(address)
            self.finished.set()


@contextlib.asynccontextmanager
async def agent_world(
    tmp_path: Path, peripherals: list[str], extra: str = ""
) -> AsyncIterator[tuple[Agent, ScriptedRunner, FakeCloud, str, int]]:
    bundle = app_bundle(version=2, size=0x3000)
    with running_broker(tmp_path / "broker") as broker:
        async with firmware_server(broker.pki.ca, bundle.files("T1/APP*1e29dfa3*2.0.0/app")) as server:
            path = write_config(
                tmp_path / "agent.toml",
                broker,
                tmp_path / "state",
                peripherals=[(p, "nrf52840-s140") for p in peripherals],
                extra=extra,
            )
            runner = ScriptedRunner()
            agent = Agent(load_config(path), runner=runner)
            stop = asyncio.Event()
            async with FakeCloud(broker) as cloud:
                task = asyncio.create_task(agent.run(stop))
                try:
                    # the agent subscribed before it asked: from now on pushed jobs reach it
                    await cloud.wait_for(lambda: set(cloud.requests) >= set(peripherals))
                    yield agent, runner, cloud, server.file_host, bundle.size
                finally:
                    stop.set()
                    await task


async def test_agent_rejected_and_failed_dfus_are_reported_with_their_cause(tmp_path: Path) -> None:
    async with agent_world(tmp_path, [A, B, C]) as (_agent, runner, cloud, host, size):
        runner.outcome[A] = DfuRejected(OpCode.EXECUTE, ResultCode.EXT_ERROR, ExtError.FW_VERSION_FAILURE)
        runner.outcome[B] = PreflightError("hardware version 53 is not this peripheral's 52")
        runner.outcome[C] = DfuLinkError("peripheral stopped answering")
        for p, job in ((A, "job-a"), (B, "job-b"), (C, "job-c")):
            await cloud.send_job(job_tuple(p, job, host, "T1/APP*1e29dfa3*2.0.0/app", size))
        await cloud.wait_for(lambda: all(cloud.terminal(j) for j in ("job-a", "job-b", "job-c")))
    assert_honest_sequence(cloud.statuses("job-a"), ExecutionStatus.REJECTED)
    assert_honest_sequence(cloud.statuses("job-b"), ExecutionStatus.REJECTED)
    assert_honest_sequence(cloud.statuses("job-c"), ExecutionStatus.FAILED)
    assert (
        "FW_VERSION_FAILURE" in cloud.terminal("job-a")[0].details
        or "version" in cloud.terminal("job-a")[0].details
    )
    assert "hardware version" in cloud.terminal("job-b")[0].details
    assert cloud.terminal("job-c")[0].details.startswith("Error applying update: DfuLinkError")


async def test_agent_runs_at_most_concurrency_dfus_one_per_peripheral(tmp_path: Path) -> None:
    async with agent_world(tmp_path, [A, B, C]) as (_agent, runner, cloud, host, size):
        for p in (A, B, C):
            runner.gates[p] = asyncio.Event()
        for p, job in ((A, "j1"), (A, "j2"), (B, "j3"), (C, "j4")):
            await cloud.send_job(job_tuple(p, job, host, "T1/APP*1e29dfa3*2.0.0/app", size))
        await cloud.wait_for(lambda: len(runner.running) == 2)
        assert runner.order == [A, B]  # FIFO across peripherals; A's second job waits for A
        for gate in runner.gates.values():
            gate.set()
        await cloud.wait_for(lambda: all(cloud.terminal(j) for j in ("j1", "j2", "j3", "j4")))
    assert runner.max_running == 2
    assert runner.order.index(C) < runner.order.index(A, 1)  # C was queued before A's second job ran
    for job in ("j1", "j2", "j3", "j4"):
        assert_honest_sequence(cloud.statuses(job))


async def test_agent_answers_invalid_unknown_and_duplicate_jobs(tmp_path: Path) -> None:
    async with agent_world(tmp_path, [A]) as (_agent, runner, cloud, host, size):
        await cloud.send_job(b'["C8:2E:1A:00:00:10","bad-1",0,"big","h","a.bin a.dat"]')
        await cloud.send_job(job_tuple(A, "type-9", host, "T1/APP*1e29dfa3*2.0.0/app", size, fw_type=9))
        await cloud.send_job(job_tuple(A, "modem", host, "T1/APP*1e29dfa3*2.0.0/app", size, fw_type=1))
        await cloud.send_job(job_tuple(A, "wrong-type", host, "T1/APP*1e29dfa3*2.0.0/app", size, fw_type=3))
        await cloud.send_job(b"not json at all")
        await cloud.send_job(job_tuple(A, "ok", host, "T1/APP*1e29dfa3*2.0.0/app", size))
        await cloud.wait_for(
            lambda: all(cloud.terminal(j) for j in ("bad-1", "type-9", "modem", "wrong-type", "ok"))
        )
        await cloud.send_job(
            job_tuple(A, "ok", host, "T1/APP*1e29dfa3*2.0.0/app", size)
        )  # redelivered after it finished
        await cloud.send_job(job_tuple(A, "final", host, "T1/APP*1e29dfa3*2.0.0/app", size))
        await cloud.wait_for(lambda: cloud.terminal("final"))
    assert cloud.terminal("bad-1")[0].details.startswith("Job info is invalid")
    # sdk-nrf `parse_job_info()`: a type outside its enum is invalid job info; a known type the gateway
    # cannot update is "FOTA type not supported" (`start_job()`); a package of another type is FAILED
    assert cloud.terminal("type-9")[0].details.startswith("Job info is invalid")
    assert cloud.terminal("modem")[0].details.startswith("FOTA type not supported")
    (mismatch,) = cloud.terminal("wrong-type")
    assert mismatch.status is ExecutionStatus.FAILED
    assert mismatch.details.startswith("FW file does not match specified FOTA type")
    assert [u.status for u in cloud.statuses("ok")].count(ExecutionStatus.SUCCEEDED) == 1
    assert runner.order == [A, A]  # "ok" and "final" only


async def test_agent_delivers_every_status_in_order_across_a_broker_restart(tmp_path: Path) -> None:
    bundle = app_bundle(version=2, size=0x3000)
    with persistent_broker(tmp_path / "broker") as broker:
        async with firmware_server(broker.pki.ca, bundle.files("T1/APP*1e29dfa3*2.0.0/app")) as server:
            path = write_config(
                tmp_path / "agent.toml", broker, tmp_path / "state", peripherals=[(A, "nrf52840-s140")]
            )
            runner = ScriptedRunner()
            runner.gates[A] = asyncio.Event()
            agent = Agent(load_config(path), runner=runner)
            cloud = FakeCloud(broker, persistent=True)
            await cloud.connect()
            cloud.pending[A] = job_tuple(
                A, "job-r", server.file_host, "T1/APP*1e29dfa3*2.0.0/app", bundle.size
            )
            stop = asyncio.Event()
            task = asyncio.create_task(agent.run(stop))
            await runner.started.wait()
            await broker_outage(broker, cloud, agent)
            runner.gates[A].set()  # the DFU finishes while the broker is away: SUCCEEDED waits in the outbox
            await runner.finished.wait()  # the agent fed the outcome to its core in the same step
            assert not agent.jobs.active
            queued = agent.journal.outbox_len()
            await asyncio.to_thread(broker.start)
            await cloud.connect()
            await cloud.wait_for(lambda: cloud.terminal("job-r"))
            stop.set()
            await task
            await cloud.disconnect()  # before the broker goes: no dangling client to warn at collection
    updates = cloud.statuses("job-r")
    assert_honest_sequence(updates)
    assert queued >= 2  # in-progress updates and the terminal one were held back, then all delivered
    assert agent.outbox_left == 0


def _hostile_payloads() -> list[tuple[bytes, str | None]]:
    """(payload, the JOB_ID it must be answered under, or None when it must be dropped)."""
    rng = random.Random(7)
    out: list[tuple[bytes, str | None]] = [
        (b"", None),
        (b"\xff\xfe", None),
        (b"{}", None),
        (b"[" * 5000 + b"]" * 5000, None),
        (b'"just a string"', None),
        (json.dumps(["x" * 100_000]).encode(), None),
    ]
    bad_fields: list[tuple[int, object]] = [
        (0, "not-an-address"), (0, 42), (2, "0"), (2, None), (3, -1), (3, 2**40), (3, 1.5),
        (4, "http://evil.example.com"), (4, "evil.example.com/path"), (4, ""),
        (5, "../../etc/passwd.bin a.dat"), (5, "a/%2e%2e/b.bin a.bin"), (5, "a\\b.bin a.bin"),
        (5, "/abs/a.bin a.dat"), (5, "a.bin a.bin"), (5, "a.bin b.bin c.bin"),
        (5, "a.bin a.dat " + "x" * 2000),
    ]  # fmt: skip
    for i, (index, value) in enumerate(bad_fields):
        data: list[object] = [A, f"hostile-{i}", 0, 100, "127.0.0.1:1", "T/APP*1*1/a.bin T/APP*1*1/adat.bin"]
        data[index] = value
        out.append((json.dumps(data).encode(), f"hostile-{i}"))
    for i in range(10):
        arity = rng.choice([0, 1, 2, 5, 7, 9])
        data = [A, f"arity-{i}", *(rng.randint(0, 9) for _ in range(max(0, arity - 2)))][:arity]
        out.append((json.dumps(data).encode(), f"arity-{i}" if arity >= 2 else None))
    return out


async def test_agent_answers_hostile_payloads_through_the_broker_and_keeps_working(tmp_path: Path) -> None:
    payloads = _hostile_payloads()
    async with agent_world(tmp_path, [A]) as (_agent, runner, cloud, host, size):
        for payload, _ in payloads:
            await cloud.send_job(payload)
        await cloud.send_job(job_tuple(A, "after-the-storm", host, "T1/APP*1e29dfa3*2.0.0/app", size))
        await cloud.wait_for(lambda: cloud.terminal("after-the-storm"))
    answered = {u.job_id: u for u in cloud.updates}
    for payload, job_id in payloads:
        if job_id is None:
            assert not any(u.job_id == "" for u in cloud.updates)
            continue
        update = answered[job_id]
        assert update.status is ExecutionStatus.REJECTED, (payload[:80], update)
        assert update.details.startswith("Job info is invalid"), update
        assert len(cloud.statuses(job_id)) == 1
    assert_honest_sequence(cloud.statuses("after-the-storm"))
    assert runner.order == [A]


async def test_agent_graceful_stop_mid_dfu_resumes_after_restart_without_repeating(tmp_path: Path) -> None:
    bundle = app_bundle(version=2, size=0x3000)
    with running_broker(tmp_path / "broker") as broker:
        async with (
            firmware_server(broker.pki.ca, bundle.files("T1/APP*1e29dfa3*2.0.0/app")) as server,
            FakeCloud(broker) as cloud,
        ):
            path = write_config(
                tmp_path / "agent.toml", broker, tmp_path / "state", peripherals=[(A, "nrf52840-s140")]
            )
            cloud.pending[A] = job_tuple(
                A, "job-s", server.file_host, "T1/APP*1e29dfa3*2.0.0/app", bundle.size
            )
            first = ScriptedRunner()
            first.gates[A] = asyncio.Event()  # never opened: the DFU is running when SIGTERM comes
            agent = Agent(load_config(path), runner=first)
            stop = asyncio.Event()
            task = asyncio.create_task(agent.run(stop))
            await first.started.wait()
            await cloud.wait_for(lambda: any(u.status is ExecutionStatus.IN_PROGRESS for u in cloud.updates))
            stop.set()
            await task
            assert agent.outbox_left == 0
            assert not cloud.terminal("job-s")
            second = ScriptedRunner()
            again = Agent(load_config(path), runner=second)
            stop = asyncio.Event()
            task = asyncio.create_task(again.run(stop))
            await cloud.wait_for(lambda: cloud.terminal("job-s"))
            stop.set()
            await task
    updates = cloud.statuses("job-s")
    assert_honest_sequence(updates)
    assert [u.details for u in updates if u.status is ExecutionStatus.IN_PROGRESS].count(
        ""
    ) == 1  # not restarted
    assert [u.progress for u in updates if u.status is ExecutionStatus.DOWNLOADING].count(
        0
    ) == 1  # not re-downloaded
    assert second.order == [A]


async def test_agent_a_crashing_job_task_ends_failed_and_frees_the_peripheral(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever a job's task raises (here: a bug in reading the files), the job ends FAILED with the cause,
    its files are removed and the next job for the same peripheral runs (issue: one bad file used to leave
    the job DOWNLOADING forever and every later job QUEUED)."""
    import gateway_agent.app as app_module

    real = app_module.load_package
    calls = {"n": 0}

    def first_call_crashes(files):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("a bug nobody foresaw")
        return real(files)

    monkeypatch.setattr(app_module, "load_package", first_call_crashes)
    async with agent_world(tmp_path, [A]) as (_agent, runner, cloud, host, size):
        await cloud.send_job(job_tuple(A, "crash", host, "T1/APP*1e29dfa3*2.0.0/app", size))
        await cloud.send_job(job_tuple(A, "after", host, "T1/APP*1e29dfa3*2.0.0/app", size))
        await cloud.wait_for(lambda: cloud.terminal("crash") and cloud.terminal("after"))
        downloads = list((tmp_path / "state" / "downloads").iterdir())
    (crashed,) = cloud.terminal("crash")
    assert crashed.status is ExecutionStatus.FAILED
    assert crashed.details == "Error during download: internal error: RuntimeError: a bug nobody foresaw"
    assert cloud.terminal("after")[0].status is ExecutionStatus.SUCCEEDED
    assert runner.order == [A]
    assert downloads == []  # every job's files went with its outcome


async def test_agent_a_job_past_its_deadline_is_abandoned_and_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEWAY_AGENT__DFU__JOB_DEADLINE_S", "600")
    async with agent_world(tmp_path, [A]) as (agent, runner, cloud, host, size):
        runner.gates[A] = asyncio.Event()  # the DFU hangs
        await cloud.send_job(job_tuple(A, "stuck", host, "T1/APP*1e29dfa3*2.0.0/app", size))
        await runner.started.wait()
        agent._apply(agent.jobs.on_tick(agent._now() + 601))  # the maintenance task's tick, 601 s later
        await cloud.wait_for(lambda: cloud.terminal("stuck"))
        await runner.finished.wait()  # the DFU task was cancelled (the updater leaves the board resumable)
    (failed,) = cloud.terminal("stuck")
    assert failed.status is ExecutionStatus.FAILED
    assert "not finished within 600 s" in failed.details
    assert not agent.jobs.active


async def test_agent_removes_leftover_downloads_at_start(tmp_path: Path) -> None:
    stray = tmp_path / "state" / "downloads" / "C82E1A000010-gone-job"
    stray.mkdir(parents=True)
    (stray / "0.part").write_bytes(b"x" * 1000)
    async with agent_world(tmp_path, [A]):
        assert not stray.exists()
