"""`fota-service serve` as a real process: HTTPS REST + hosting, MQTT over mutual TLS, the bench CLI, and a
restart of the process mid-job (SIGTERM, a new process on the same SQLite file) that resumes correctly.

Readiness comes from the service's own log lines ("fota-service ready", "mqtt connected"), and MQTT
ordering is the barrier that an update was handled (see test_mqtt_bridge.py). Timeouts only guard hangs.
"""

from __future__ import annotations

import contextlib
import json
import ssl
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from dfu.package import DfuPackage
from fota_service.cli import main as cli
from fota_service.model import ExecutionStatus
from hil.processes import Managed, fota_service, running_process
from hil.service_config import service_config
from tests.service.conftest import app_zip
from tests.service.test_mqtt_bridge import GUARD, FakeGateway, gateway, peripheral_ids
from tests.support.mosquitto import MosquittoBroker, free_port, running_broker

TOKEN = "process-token-1-0123456789abcdef0123"
pytestmark = pytest.mark.e2e


def write_config(tmp_path: Path, broker: MosquittoBroker, port: int) -> Path:
    return service_config(
        tmp_path / "fota.toml",
        token=TOKEN,
        db_url=f"sqlite:///{tmp_path / 'fota.db'}",
        port=port,
        tls=(broker.pki.server_cert, broker.pki.server_key),  # issued for localhost and 127.0.0.1
        broker=broker,
        topic_prefix="prod/T/",
        rollout={"batch_size": 25, "max_gateways": 4},
    )


def service_process(config: Path, log_file: Path) -> contextlib.AbstractAsyncContextManager[Managed]:
    """Once it serves REST ("fota-service ready") and its MQTT bridge has subscribed ("mqtt connected")."""
    service = fota_service(config, log_file)
    return running_process(service, "fota-service ready", "mqtt connected", within=GUARD)


def run_cli(env: dict[str, str], *args: str) -> str:
    result = CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output.strip()


async def acknowledge(
    gw: FakeGateway, job_id: str, tuples: list[list[object]], status: ExecutionStatus
) -> None:
    for t in tuples:
        await gw.update(str(t[0]), job_id, status, "")


async def test_serve_cli_hosting_and_restart_mid_job(tmp_path: Path) -> None:
    peripherals = peripheral_ids(30)
    with running_broker(tmp_path / "broker") as broker:
        port = free_port()
        config = write_config(tmp_path, broker, port)
        env = {
            "FOTA_SERVICE_URL": f"https://127.0.0.1:{port}",
            "FOTA_SERVICE_TOKEN": TOKEN,
            "FOTA_SERVICE_CA": str(broker.pki.ca_file),
        }
        package = tmp_path / "app.zip"
        package.write_bytes(app_zip(version=9))
        (image,) = DfuPackage.from_zip(package.read_bytes()).images

        async with gateway(broker, "gw-e2e") as gw:
            async with service_process(config, tmp_path / "first.log"):
                await gw.report(peripherals)
                await gw.shadow_get()  # the barrier: what gw sent is handled
                bundle_id = run_cli(env, "bundle", "upload", str(package))
                # ...no execution yet, so nothing answers; the CLI calls below are ordered after it anyway
                args = [f"--device={p}" for p in peripherals]
                job_id = run_cli(
                    env, "job", "create", "--bundle", bundle_id, "--name", "e2e", "--apply", *args
                )
                first = await gw.receive_tuples(25)
                assert {t[1] for t in first} == {job_id}
                host, paths = first[0][4], str(first[0][5]).split()
                assert host == f"127.0.0.1:{port}"
                async with httpx.AsyncClient(
                    verify=ssl.create_default_context(cafile=broker.pki.ca_file)
                ) as http:
                    files = {
                        p.rsplit("/", 1)[1]: (await http.get(f"https://{host}/{p}")).content for p in paths
                    }
                assert files == {"appdat.bin": image.init_packet, "app.bin": image.firmware}  # all .bin
                assert "*" in paths[0]  # bundle ids `<TYPE>*<8 hex>*<version>`, as nRF Cloud's
                assert first[0][3] == len(image.init_packet) + len(image.firmware)
                await acknowledge(gw, job_id, first[:10], ExecutionStatus.SUCCEEDED)
                await gw.request(str(first[10][0]))
                assert (await gw.receive_tuples(1))[0] == first[10]  # the 10 updates were handled before

            async with service_process(config, tmp_path / "second.log"):  # a new process on the same database
                listed = json.loads(run_cli(env, "job", "list", "--json"))
                assert [(j["jobId"], j["status"]) for j in listed] == [(job_id, "IN_PROGRESS")]
                assert listed[0]["executionStats"]["succeeded"] == 10
                assert listed[0]["executionStats"]["executions"] == 25
                await gw.request(str(first[20][0]))
                assert (await gw.receive_tuples(1))[0] == first[20]
                await acknowledge(gw, job_id, first[10:], ExecutionStatus.IN_PROGRESS)
                rest = await gw.receive_tuples(5)
                assert sorted(str(t[0]) for t in first + rest) == sorted(peripherals)
                await acknowledge(gw, job_id, first[10:] + rest, ExecutionStatus.SUCCEEDED)
                await gw.shadow_get()  # the barrier: what gw sent is handled
                watch = CliRunner().invoke(cli, ["job", "watch", job_id], env=env, catch_exceptions=False)
                assert watch.exit_code == 0, watch.output
                assert "30/30 done" in watch.output
                refused = CliRunner().invoke(
                    cli, ["execution", "set", str(rest[0][0]), job_id, "CANCELLED"], env=env
                )
                assert refused.exit_code == 1
                assert "409" in refused.output
