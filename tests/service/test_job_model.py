"""The sans-I/O job model, rule by rule. Each docstring quotes the seed sentence (or reference line) the test
pins down; no I/O, no clock: `now` is passed explicitly."""

from __future__ import annotations

import itertools
import json

import pytest

from fota_service.errors import (
    BundleNotFound,
    ExecutionFinal,
    ExecutionNotFound,
    Forbidden,
    InvalidJobState,
    InvalidRequest,
    JobNotFound,
)
from fota_service.model import (
    Bundle,
    DeviceKind,
    ExecutionStatus,
    FirmwareType,
    FotaModel,
    JobStatus,
    Notify,
    RolloutConfig,
    ValidationError,
)

S = ExecutionStatus


def make_model(*, batch_size: int = 25, max_gateways: int = 50, interval: float = 60.0) -> FotaModel:
    counter = itertools.count(1)
    model = FotaModel(
        tenant="T",
        file_host="fw.example:8443",
        new_id=lambda: f"job-{next(counter)}",
        rollout=RolloutConfig(batch_size=batch_size, batch_interval=interval, max_gateways=max_gateways),
    )
    for fw_type in FirmwareType:
        model.add_bundle(
            Bundle(f"b-{fw_type.name}", "fw", fw_type, "1.0", (("app.dat", 100), ("app.bin", 4000)), 0.0)
        )
    return model


def add_fleet(model: FotaModel, gateways: int, per_gateway: int, *, ble: bool = True) -> list[str]:
    peripherals = []
    for g in range(gateways):
        gw = f"gw-{g:02d}"
        model.upsert_device(gw, DeviceKind.IP, 0.0, fota_v2_ble=ble)
        for p in range(per_gateway):
            pid = f"AA:00:00:00:{g:02X}:{p:02X}"
            model.upsert_device(pid, DeviceKind.BLE, 0.0, gateway_id=gw)
            peripherals.append(pid)
    return peripherals


def notified(effects: object) -> list[str]:
    assert isinstance(effects, list)
    return [e.device_id for e in effects if isinstance(e, Notify)]


def run_job(model: FotaModel, devices: list[str], now: float = 1.0, **kwargs: object) -> list[str]:
    model.create_job("J", now, bundle_id="b-APP", name="update", device_ids=devices, **kwargs)  # type: ignore[arg-type]
    return notified(model.apply_job("J", now))


# ---------------------------------------------------------------- creation, target, immutability


def test_job_starts_created_and_target_resolves_at_deploy_time() -> None:
    """Seed: "A job starts in the CREATED state. ... the job target is not resolved immediately: you can
    change the devices that a job deploys to by adding devices to device groups (tags) or removing them from
    the groups."""
    model = make_model()
    peripherals = add_fleet(model, 1, 3)
    model.set_group("lab", peripherals[:1])
    model.create_job("J", 1.0, bundle_id="b-APP", name="n", tags=["lab"])
    assert model.job("J").status is JobStatus.CREATED
    model.add_to_group("lab", peripherals[1:])
    model.remove_from_group("lab", peripherals[:1])
    sent = notified(model.apply_job("J", 2.0))
    assert sorted(sent) == sorted(peripherals[1:])
    assert model.job("J").status is JobStatus.IN_PROGRESS


def test_document_and_target_are_fixed_at_creation() -> None:
    """Seed: "Once a job has been created, these fields cannot be changed." (the target is kept as given, the
    document refers to the bundle as it was)"""
    model = make_model()
    add_fleet(model, 1, 1)
    model.create_job("J", 1.0, bundle_id="b-APP", name="n", device_ids=["x"], tags=["t"])
    job = model.job("J")
    with pytest.raises(AttributeError):
        job.document.bundle_id = "other"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        job.target.tags = ()  # type: ignore[misc]
    assert job.document.uris == ("T/b-APP/app.dat", "T/b-APP/app.bin")
    assert job.document.file_size == 4100


def test_unknown_bundle_is_refused() -> None:
    """The job document "Includes firmware version and type along with links to the actual file": it needs a
    bundle that exists."""
    with pytest.raises(BundleNotFound):
        make_model().create_job("J", 1.0, bundle_id="nope", name="n")


def test_auto_apply_deploys_at_creation() -> None:
    """Seed: "Deploy, deployment: The action of creating and starting a FOTA job." (autoApply=true)"""
    model = make_model()
    peripherals = add_fleet(model, 1, 2)
    effects = model.create_job("J", 1.0, bundle_id="b-APP", name="n", device_ids=peripherals, auto_apply=True)
    assert sorted(notified(effects)) == peripherals


# ---------------------------------------------------------------- eligibility


def test_ineligible_devices_get_no_execution_but_do_not_fail_the_job() -> None:
    """Seed: "Ineligible devices do not prevent a job from executing, but they are not given job executions."
    and "An IP device can specify the types of firmware it supports using the device.serviceInfo.fota_v2
    property"."""
    model = make_model()
    model.upsert_device("ip-1", DeviceKind.IP, 0.0, fota_v2=[FirmwareType.APP])
    model.upsert_device("ip-2", DeviceKind.IP, 0.0, fota_v2=[FirmwareType.MODEM])
    assert run_job(model, ["ip-1", "ip-2"]) == ["ip-1"]
    assert model.job("J").status is JobStatus.IN_PROGRESS
    assert model.stats(model.job("J")).devices == 1


@pytest.mark.parametrize(
    "fw_type", [FirmwareType.APP, FirmwareType.MODEM, FirmwareType.SOFTDEVICE, FirmwareType.BOOTLOADER]
)
def test_secure_dfu_peripherals_support_app_modem_softdevice_and_bootloader(fw_type: FirmwareType) -> None:
    """Seed: "devices that support secure DFU automatically support APP, MODEM, and SOFTDEVICE updates." plus
    BOOTLOADER: "Updates bootloader firmware on a Bluetooth LE device." (our decision, see the docs)"""
    model = make_model()
    peripherals = add_fleet(model, 1, 1)
    model.create_job("J", 1.0, bundle_id=f"b-{fw_type.name}", name="n", device_ids=peripherals)
    assert notified(model.apply_job("J", 1.0)) == peripherals


@pytest.mark.parametrize("fw_type", [FirmwareType.BOOT, FirmwareType.MDM_FULL])
def test_peripherals_are_ineligible_for_nrf91_only_types(fw_type: FirmwareType) -> None:
    """Seed: "Bluetooth LE devices cannot individually specify supported firmware types." BOOT (MCUboot on the
    nRF9160) and MDM_FULL are not among the Secure DFU types: no eligible device is an empty target."""
    model = make_model()
    peripherals = add_fleet(model, 1, 1)
    model.create_job("J", 1.0, bundle_id=f"b-{fw_type.name}", name="n", device_ids=peripherals)
    assert model.apply_job("J", 1.0) == []
    assert model.job("J").status_detail == ValidationError.EMPTY_TARGET


def test_peripheral_without_secure_dfu_is_ineligible() -> None:
    """Seed: "devices that support secure DFU automatically support ..." — the others support nothing."""
    model = make_model()
    peripherals = add_fleet(model, 1, 2)
    model.upsert_device(peripherals[0], DeviceKind.BLE, 0.0, secure_dfu=False)
    assert run_job(model, peripherals) == peripherals[1:]


# ---------------------------------------------------------------- validation errors


def test_empty_target_cancels_the_job() -> None:
    """Seed: "Empty job target: The provided job target did not contain any eligible devices." and "If a job
    is determined to be invalid, it is moved directly to the CANCELLED state and one of the following errors
    are provided in the job's status detail field.\""""
    model = make_model()
    assert run_job(model, ["unknown"]) == []
    job = model.job("J")
    assert (job.status, job.status_detail) == (JobStatus.CANCELLED, "Empty job target")


def test_mixed_ble_and_ip_target_cancels_the_job() -> None:
    """Seed: "Job may not contain Bluetooth LE and IP devices: Job targets must contain either all IP devices
    or all Bluetooth LE devices.\""""
    model = make_model()
    peripherals = add_fleet(model, 1, 1)
    model.upsert_device("ip-1", DeviceKind.IP, 0.0, fota_v2=[FirmwareType.APP])
    assert run_job(model, [*peripherals, "ip-1"]) == []
    job = model.job("J")
    assert (job.status, job.status_detail) == (JobStatus.CANCELLED, ValidationError.MIXED_TARGET.value)
    assert model.stats(job).executions == 0


def test_too_many_gateways_counts_each_gateway_once() -> None:
    """Seed: "Jobs that update Bluetooth LE devices only support up to a maximum number of unique connected
    gateways. Gateways that are connected to multiple devices within the target are only counted once.\""""
    model = make_model(max_gateways=2)
    peripherals = add_fleet(model, 2, 3)  # 6 peripherals, 2 gateways: allowed
    assert len(run_job(model, peripherals)) == 6
    model.upsert_device("gw-99", DeviceKind.IP, 0.0, fota_v2_ble=True)
    model.upsert_device("BB:00:00:00:00:01", DeviceKind.BLE, 0.0, gateway_id="gw-99")
    model.create_job("K", 2.0, bundle_id="b-APP", name="n", device_ids=[*peripherals, "BB:00:00:00:00:01"])
    assert model.apply_job("K", 2.0) == []
    assert model.job("K").status_detail == "Job specified more than the max number of gateways"


def test_gateway_without_ble_support_fails_the_job() -> None:
    """Seed: "Unlike the other eligibility checks, including a peripheral connected to a gateway that does not
    support Bluetooth LE causes the job to fail." ("Not all gateways support Bluetooth LE updates")"""
    model = make_model()
    good = add_fleet(model, 1, 2)
    model.upsert_device("gw-old", DeviceKind.IP, 0.0, fota_v2_ble=False)
    model.upsert_device("CC:00:00:00:00:01", DeviceKind.BLE, 0.0, gateway_id="gw-old")
    assert run_job(model, [*good, "CC:00:00:00:00:01"]) == []
    job = model.job("J")
    assert (job.status, job.status_detail) == (
        JobStatus.CANCELLED,
        "Not all gateways support Bluetooth LE updates",
    )


def test_gateway_support_comes_from_its_shadow_report() -> None:
    """Seed: "An IP (non-phone) gateway to which a Bluetooth LE device is connected must also indicate in the
    gateway's shadow that it supports Bluetooth LE FOTA ... through the device.serviceInfo.fota_v2_ble
    property." and statusConnections tells which peripherals are behind it."""
    model = make_model()
    model.gateway_reported("gw-1", 0.0, peripherals=["DD:00:00:00:00:01"])
    assert run_job(model, ["DD:00:00:00:00:01"]) == []
    assert model.job("J").status_detail == ValidationError.GATEWAY_WITHOUT_BLE
    model.gateway_reported("gw-1", 1.0, fota_v2_ble=True)
    model.create_job("K", 2.0, bundle_id="b-APP", name="n", device_ids=["DD:00:00:00:00:01"])
    effects = model.apply_job("K", 2.0)
    assert [(e.gateway_id, e.device_id) for e in effects if isinstance(e, Notify)] == [
        ("gw-1", "DD:00:00:00:00:01")
    ]


# ---------------------------------------------------------------- rollout in batches


def test_executions_roll_out_in_batches_of_25() -> None:
    """Seed: "Because jobs can contain large numbers of devices, executions are rolled out progressively in
    batches of 25. This means that not all devices receive an execution notification right away.\""""
    model = make_model()
    peripherals = add_fleet(model, 4, 15)  # 60
    first = run_job(model, peripherals)
    assert len(first) == 25
    assert model.stats(model.job("J")).executions == 25
    assert model.stats(model.job("J")).devices == 60
    # a batch spreads over the gateways
    assert {model.devices[p].gateway_id for p in first} == {"gw-00", "gw-01", "gw-02", "gw-03"}
    second: list[str] = []
    for i, device in enumerate(first):
        effects = model.update_execution(device, "J", S.DOWNLOADING, 2.0, progress=0)
        if i < 24:
            assert effects == []  # not until the whole batch is acknowledged
        else:
            second = notified(effects)
    assert len(second) == 25
    assert not set(second) & set(first)
    third: list[str] = []
    for device in second:
        third += notified(model.update_execution(device, "J", S.IN_PROGRESS, 3.0))
    assert len(third) == 10
    assert sorted(first + second + third) == sorted(peripherals)


def test_next_batch_rolls_out_on_tick_when_a_device_stays_silent() -> None:
    """Seed: "executions are rolled out progressively in batches of 25" — an offline device in a batch delays
    the next one only by the batch interval (our decision)."""
    model = make_model(interval=30.0)
    peripherals = add_fleet(model, 1, 30)
    run_job(model, peripherals, now=100.0)
    assert model.next_deadline == 130.0
    assert model.tick(129.9) == []
    second = notified(model.tick(130.0))
    assert len(second) == 5
    assert model.next_deadline is None


def test_execution_starts_queued_and_notification_carries_the_tuple() -> None:
    """Seed: "QUEUED: Execution has been created and a job notification has been sent to the device over
    MQTT." and FILE_PATH is a "Space-separated list of paths to the firmware files relative to the
    FILE_HOST"."""
    model = make_model()
    peripherals = add_fleet(model, 1, 1)
    model.create_job("J", 1.0, bundle_id="b-APP", name="n", device_ids=peripherals)
    (effect,) = model.apply_job("J", 1.0)
    assert isinstance(effect, Notify)
    assert json.loads(effect.ble_job().encode()) == [
        peripherals[0],
        "J",
        0,
        4100,
        "fw.example:8443",
        "T/b-APP/app.dat T/b-APP/app.bin",
    ]
    assert model.execution(peripherals[0], "J").status is S.QUEUED


# ---------------------------------------------------------------- execution updates


def test_pending_states_repeat_with_new_details() -> None:
    """Seed: "The DOWNLOADING and IN_PROGRESS states can be applied multiple times with different status
    messages to provide more detailed updates.\""""
    model = make_model()
    (device,) = add_fleet(model, 1, 1)
    run_job(model, [device])
    for progress in (0, 50, 100):
        model.update_execution(device, "J", S.DOWNLOADING, 2.0, progress=progress)
        assert model.execution(device, "J").progress == progress
    model.update_execution(device, "J", S.IN_PROGRESS, 3.0, details="image 1/2")
    model.update_execution(device, "J", S.IN_PROGRESS, 4.0, details="image 2/2")
    execution = model.execution(device, "J")
    assert (execution.status, execution.details) == (S.IN_PROGRESS, "image 2/2")


@pytest.mark.parametrize("final", [S.SUCCEEDED, S.FAILED, S.REJECTED, S.TIMED_OUT, S.CANCELLED])
def test_terminal_states_are_final(final: ExecutionStatus) -> None:
    """Seed: "An execution in a terminal state is finished and cannot be changed.\""""
    model = make_model()
    (device,) = add_fleet(model, 1, 1)
    run_job(model, [device])
    model.update_execution(device, "J", final, 2.0, details="done")
    with pytest.raises(ExecutionFinal):
        model.update_execution(device, "J", S.IN_PROGRESS, 3.0)
    assert model.execution(device, "J").status is final


def test_queued_cannot_be_reported_and_unknown_executions_are_refused() -> None:
    """Seed: "Aside from the initial status of QUEUED, progression is entirely based on updates from the
    device"."""
    model = make_model()
    (device,) = add_fleet(model, 1, 1)
    run_job(model, [device])
    with pytest.raises(InvalidRequest):
        model.update_execution(device, "J", S.QUEUED, 2.0)
    with pytest.raises(ExecutionNotFound):
        model.update_execution("someone-else", "J", S.SUCCEEDED, 2.0)
    with pytest.raises(JobNotFound):
        model.update_execution(device, "nope", S.SUCCEEDED, 2.0)


def test_job_completes_when_all_executions_are_terminal() -> None:
    """Seed: "COMPLETED: All executions have reached a terminal status.\""""
    model = make_model()
    devices = add_fleet(model, 1, 2)
    run_job(model, devices)
    model.update_execution(devices[0], "J", S.SUCCEEDED, 2.0)
    assert model.job("J").status is JobStatus.IN_PROGRESS
    model.update_execution(devices[1], "J", S.SUCCEEDED, 3.0)
    job = model.job("J")
    assert (job.status, job.completed_at) == (JobStatus.COMPLETED, 3.0)


def test_job_does_not_complete_while_batches_remain() -> None:
    """Seed: "COMPLETED: All executions have reached a terminal status." — including those not rolled out
    yet."""
    model = make_model(batch_size=2)
    devices = add_fleet(model, 1, 3)
    first = run_job(model, devices)
    model.update_execution(first[0], "J", S.SUCCEEDED, 2.0)
    second = notified(model.update_execution(first[1], "J", S.SUCCEEDED, 2.0))
    assert model.job("J").status is JobStatus.IN_PROGRESS
    model.update_execution(second[0], "J", S.SUCCEEDED, 3.0)
    assert model.job("J").status is JobStatus.COMPLETED


def test_api_can_cancel_an_execution_so_the_job_completes() -> None:
    """Seed: "If you want nRF Cloud to end a job execution so the overall job can complete, use the
    UpdateFOTAJobExecutionStatus endpoint to set the status to CANCELLED.\""""
    model = make_model()
    devices = add_fleet(model, 1, 2)
    run_job(model, devices)
    model.update_execution(devices[0], "J", S.SUCCEEDED, 2.0)
    model.update_execution(devices[1], "J", S.CANCELLED, 3.0, details="device lost")
    assert model.job("J").status is JobStatus.COMPLETED
    assert not any(j.name.endswith("Retry") for j in model.list_jobs())


def test_execution_stats_are_exact() -> None:
    """Job "Contains the job document, target, and aggregate statistics about its contained executions."
    (executionStats, docs/fota-service.md)"""
    model = make_model(batch_size=7)
    devices = add_fleet(model, 1, 9)
    first = run_job(model, devices)
    statuses = [S.DOWNLOADING, S.IN_PROGRESS, S.SUCCEEDED, S.FAILED, S.TIMED_OUT, S.REJECTED]
    for device, status in zip(first, statuses, strict=False):
        model.update_execution(device, "J", status, 2.0)
    stats = model.stats(model.job("J"))
    assert stats.__dict__ == {
        "devices": 9,
        "executions": 7,
        "completedExecutions": 4,
        "queued": 1,
        "inProgress": 1,
        "downloading": 1,
        "succeeded": 1,
        "failed": 1,
        "timedOut": 1,
        "rejected": 1,
        "cancelled": 0,
        "removed": 0,
    }


def test_deleting_a_device_removes_its_unfinished_execution() -> None:
    """executionStats.removed counts executions whose device left the fleet; "COMPLETED: All executions have
    reached a terminal status." then holds without it."""
    model = make_model()
    devices = add_fleet(model, 1, 2)
    run_job(model, devices)
    model.update_execution(devices[0], "J", S.SUCCEEDED, 2.0)
    model.delete_device(devices[1], 3.0)
    job = model.job("J")
    assert job.status is JobStatus.COMPLETED
    assert (model.stats(job).executions, model.stats(job).removed) == (1, 1)


# ---------------------------------------------------------------- cancel and delete


@pytest.mark.parametrize("applied", [False, True])
def test_cancel_created_or_in_progress(applied: bool) -> None:
    """Seed: "You can cancel a job in the CREATED or IN_PROGRESS state.\""""
    model = make_model()
    devices = add_fleet(model, 1, 2)
    model.create_job("J", 1.0, bundle_id="b-APP", name="n", device_ids=devices, auto_apply=applied)
    model.cancel_job("J", 2.0)
    job = model.job("J")
    assert job.status is JobStatus.CANCELLED
    assert model.stats(job).cancelled == (2 if applied else 0)
    if applied:  # the cancelled executions are final: a late device update is refused
        with pytest.raises(ExecutionFinal):
            model.update_execution(devices[0], "J", S.SUCCEEDED, 3.0)


@pytest.mark.parametrize("state", ["COMPLETED", "CANCELLED"])
def test_cancel_refused_in_other_states(state: str) -> None:
    """Seed: "You can cancel a job in the CREATED or IN_PROGRESS state." — and in no other."""
    model = make_model()
    (device,) = add_fleet(model, 1, 1)
    run_job(model, [device])
    if state == "COMPLETED":
        model.update_execution(device, "J", S.SUCCEEDED, 2.0)
    else:
        model.cancel_job("J", 2.0)
    with pytest.raises(InvalidJobState):
        model.cancel_job("J", 3.0)


def test_delete_removes_from_list_and_refuses_in_progress() -> None:
    """Seed: "You can delete jobs in COMPLETED, CREATED, or CANCELLED states using the REST API. This removes
    them from your job list." and DELETION_IN_PROGRESS: "Deleted jobs do not show in your job list.\""""
    model = make_model()
    (device,) = add_fleet(model, 1, 1)
    run_job(model, [device])
    with pytest.raises(InvalidJobState):
        model.delete_job("J", 2.0)
    model.update_execution(device, "J", S.SUCCEEDED, 2.0)
    model.create_job("K", 3.0, bundle_id="b-APP", name="k")
    model.delete_job("J", 4.0)
    model.delete_job("K", 4.0)
    assert model.list_jobs() == []
    with pytest.raises(JobNotFound):
        model.job("J")
    assert model.pending_execution(device) is None
    # nRF Cloud DeleteFOTAJob: "Does not affect executions associated with this job"
    assert model.execution(device, "J").status is S.SUCCEEDED
    changes = model.take_changes()
    assert {"J", "K"} <= changes.jobs  # kept, marked DELETION_IN_PROGRESS
    assert not changes.deleted_executions


# ---------------------------------------------------------------- retry jobs


def test_failed_executions_create_retry_group_and_job() -> None:
    """Seed: "If a job execution fails, a new job and a new device group will be created after the job
    completes. The new group contains all failed devices, and the new job has ... The same job document as the
    original job. The new device group as its only target." Group: "retry followed by the job name and ID of
    the failed job"."""
    model = make_model()
    devices = add_fleet(model, 1, 3)
    model.create_job("J", 1.0, bundle_id="b-APP", name="update-my-devices", device_ids=devices)
    model.apply_job("J", 1.0)
    model.update_execution(devices[0], "J", S.FAILED, 2.0)
    assert len(model.list_jobs()) == 1  # "after the job completes"
    model.update_execution(devices[1], "J", S.SUCCEEDED, 2.0)
    model.update_execution(devices[2], "J", S.TIMED_OUT, 2.0)
    original, retry = model.list_jobs()
    assert retry.name == "update-my-devices Retry"
    assert retry.status is JobStatus.CREATED
    assert retry.document == original.document
    assert retry.target.device_ids == ()
    assert retry.target.tags == ("retry-update-my-devices-J",)
    assert model.groups["retry-update-my-devices-J"] == {devices[0], devices[2]}


def test_rejected_and_cancelled_do_not_create_a_retry() -> None:
    """Seed: "If a job execution fails" — FAILED and TIMED_OUT count; REJECTED (the device refused this
    document) and CANCELLED (an operator's choice) do not (our decision)."""
    model = make_model()
    devices = add_fleet(model, 1, 2)
    run_job(model, devices)
    model.update_execution(devices[0], "J", S.REJECTED, 2.0)
    model.update_execution(devices[1], "J", S.CANCELLED, 2.0)
    assert [j.job_id for j in model.list_jobs()] == ["J"]


def test_retries_of_retries_are_numbered_and_deployable() -> None:
    """Seed: "If you deploy the retry FOTA job and any of its job executions fail, another retry job and group
    will be created ..." and "subsequent retry jobs will be named with the suffix Retry 2, Retry 3, and so
    on." and "You can deploy or delete the retry job at any time\""""
    model = make_model()
    (device,) = add_fleet(model, 1, 1)
    run_job(model, [device])
    model.update_execution(device, "J", S.FAILED, 2.0)
    names = []
    for n in range(3):
        retry = model.list_jobs()[-1]
        names.append(retry.name)
        assert notified(model.apply_job(retry.job_id, 3.0 + n)) == [device]
        model.update_execution(device, retry.job_id, S.FAILED, 3.5 + n)
    assert names == ["update Retry", "update Retry 2", "update Retry 3"]
    last = model.list_jobs()[-1]
    assert last.name == "update Retry 4"
    first_retry = model.list_jobs()[1]
    assert f"retry-update Retry-{first_retry.job_id}" in model.groups
    model.delete_job(last.job_id, 9.0)
    assert last.job_id not in [j.job_id for j in model.list_jobs()]


# ---------------------------------------------------------------- requests from devices


def test_request_returns_the_oldest_unfinished_execution() -> None:
    """Seed: "the device can request that a new execution notification is sent for its latest queued job
    execution" — executions are handed to a device oldest first (docs/fota-service.md: FIFO)."""
    model = make_model()
    (device,) = add_fleet(model, 1, 1)
    model.create_job("J1", 1.0, bundle_id="b-APP", name="a", device_ids=[device], auto_apply=True)
    model.create_job("J2", 2.0, bundle_id="b-SOFTDEVICE", name="b", device_ids=[device], auto_apply=True)
    first = model.pending_execution(device)
    assert first is not None
    assert first.job_id == "J1"
    specific = model.pending_execution(device, "J2")
    assert specific is not None
    assert specific.firmware_type is FirmwareType.SOFTDEVICE
    model.update_execution(device, "J1", S.IN_PROGRESS, 3.0)
    again = model.pending_execution(device)
    assert again is not None
    assert again.job_id == "J1"
    model.update_execution(device, "J1", S.SUCCEEDED, 4.0)
    after = model.pending_execution(device)
    assert after is not None
    assert after.job_id == "J2"
    assert model.pending_execution("no-such-device") is None


def test_statusconnections_moves_a_peripheral_and_desired_connections_follow() -> None:
    """Seed: "A gateway connected to a Bluetooth LE device" is the one that receives its notifications: a
    peripheral reported by another gateway moves there."""
    model = make_model()
    model.upsert_device("gw-a", DeviceKind.IP, 0.0, fota_v2_ble=True)
    model.upsert_device("gw-b", DeviceKind.IP, 0.0, fota_v2_ble=True)
    model.upsert_device("EE:00:00:00:00:01", DeviceKind.BLE, 0.0, gateway_id="gw-a")
    assert model.peripherals_of("gw-a") == ["EE:00:00:00:00:01"]
    model.gateway_reported("gw-b", 1.0, peripherals=["EE:00:00:00:00:01"])
    assert model.peripherals_of("gw-a") == []
    assert model.peripherals_of("gw-b") == ["EE:00:00:00:00:01"]


def test_only_a_gateway_serving_a_peripheral_may_report_its_execution() -> None:
    """Issue #13: any gateway could set any execution over MQTT. A gateway reports only the peripherals it
    serves: the one the execution went through, or the one the peripheral moved to; an IP device reports
    only itself, and a peripheral's execution never comes from a device topic of its own."""
    model = make_model()
    a, b = add_fleet(model, 2, 1)  # a behind gw-00, b behind gw-01
    model.upsert_device("ip-1", DeviceKind.IP, 0.0, fota_v2=[FirmwareType.APP])
    assert run_job(model, [a, b]) == [a, b]
    model.create_job("IP", 1.0, bundle_id="b-APP", name="ip", device_ids=["ip-1"])
    assert notified(model.apply_job("IP", 1.0)) == ["ip-1"]
    model.check_reporter(a, "J", "gw-00")
    model.check_reporter("ip-1", "IP", None)
    for device, job, reporter in (
        (a, "J", "gw-01"),
        (b, "J", "gw-00"),
        (a, "J", None),
        ("ip-1", "IP", "gw-00"),
        (a, "J", "ip-1"),
    ):
        with pytest.raises(Forbidden):
            model.check_reporter(device, job, reporter)
    model.gateway_reported("gw-01", 2.0, peripherals=[a])  # a moves to gw-01 mid-job
    model.check_reporter(a, "J", "gw-01")
    model.check_reporter(a, "J", "gw-00")  # the gateway its execution went through may still finish it
    with pytest.raises(Forbidden):
        model.check_reporter(a, "J", "gw-99")
    with pytest.raises(ExecutionNotFound):
        model.check_reporter("AA:00:00:00:09:09", "J", "gw-00")


def test_transition_tables_say_what_the_seed_says() -> None:
    """Seed: "You can cancel a job in the CREATED or IN_PROGRESS state." / "You can delete jobs in COMPLETED,
    CREATED, or CANCELLED states" / "An execution in a terminal state is finished and cannot be changed." /
    "The DOWNLOADING and IN_PROGRESS states can be applied multiple times"."""
    from fota_service.model import EXECUTION_TRANSITIONS, JOB_TRANSITIONS, TERMINAL_STATUSES, JobEvent

    def sources(event: JobEvent) -> set[JobStatus]:
        return {state for (state, e) in JOB_TRANSITIONS if e is event}

    assert sources(JobEvent.CANCEL) == {JobStatus.CREATED, JobStatus.IN_PROGRESS}
    assert sources(JobEvent.DELETE) == {JobStatus.COMPLETED, JobStatus.CREATED, JobStatus.CANCELLED}
    assert sources(JobEvent.APPLY) == sources(JobEvent.REJECT) == {JobStatus.CREATED}
    assert JOB_TRANSITIONS[(JobStatus.CREATED, JobEvent.REJECT)] is JobStatus.CANCELLED
    assert all(not EXECUTION_TRANSITIONS[s] for s in TERMINAL_STATUSES)
    for pending in (S.DOWNLOADING, S.IN_PROGRESS):
        assert pending in EXECUTION_TRANSITIONS[pending]
    assert all(S.QUEUED not in allowed for allowed in EXECUTION_TRANSITIONS.values())
