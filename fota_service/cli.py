"""`fota-service`: run the service (`serve`) and drive it from a bench script (jobs, bundles, devices).

The client commands speak the REST API with httpx; the URL and token come from options or from
FOTA_SERVICE_URL / FOTA_SERVICE_TOKEN (and FOTA_SERVICE_CA for a private CA): a bench script sets them once.
Exit status: 0 success, 1 refused by the service or unreachable, 2 usage error; `job watch` exits 0 when the
job COMPLETED without failed executions, 3 when it completed with some, 4 when it was CANCELLED.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import sys
import time
from pathlib import Path
from typing import Any

import click
import httpx
from rich.console import Console
from rich.live import Live
from rich.table import Table

from fota_service.config import ConfigError, load_config

TERMINAL_JOB_STATES = ("COMPLETED", "CANCELLED")
STATUS_STYLE = {
    "QUEUED": "dim",
    "DOWNLOADING": "cyan",
    "IN_PROGRESS": "blue",
    "SUCCEEDED": "green",
    "FAILED": "red",
    "TIMED_OUT": "red",
    "REJECTED": "magenta",
    "CANCELLED": "yellow",
}


class _LogfmtFormatter(logging.Formatter):
    """One line per event: time, level, logger, message, then the `extra` fields as key=value."""

    _STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        fields = {k: v for k, v in record.__dict__.items() if k not in self._STANDARD}
        parts = [
            self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            record.levelname.lower(),
            record.name,
            json.dumps(record.getMessage()),
        ]
        parts += [f"{k}={json.dumps(v, default=str)}" for k, v in fields.items()]
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LogfmtFormatter())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


@click.group()
def main() -> None:
    """Local stand-in of nRF Cloud's FOTA job service."""


@main.command()
@click.option("--config", "config_path", type=click.Path(path_type=Path, dir_okay=False), required=True)
@click.option("--log-level", default="info", type=click.Choice(["debug", "info", "warning", "error"]))
def serve(config_path: Path, log_level: str) -> None:
    """Run the REST API, firmware hosting and the MQTT bridge until interrupted."""
    from fota_service.server import serve as run_server

    _setup_logging(log_level)
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from exc
    asyncio.run(run_server(config))


# ------------------------------------------------------------------------------------------- client


class Api:
    """A thin REST client: raises click exceptions carrying the service's error message."""

    def __init__(self, url: str, token: str, ca_file: str | None) -> None:
        self.client = httpx.Client(
            base_url=url.rstrip("/") + "/v1",
            headers={"Authorization": f"Bearer {token}"},
            verify=ssl.create_default_context(cafile=ca_file) if ca_file else True,
            timeout=httpx.Timeout(30.0),
        )

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise click.ClickException(f"cannot reach the service: {exc}") from exc
        if response.status_code >= 400:
            try:
                body = response.json()
                message = f"{body.get('message')} (code {body.get('code')})"
            except ValueError:
                message = response.text
            raise click.ClickException(f"{response.status_code}: {message}")
        return response.json() if response.content else None


def _api(ctx: click.Context) -> Api:
    obj = ctx.find_object(dict)
    assert obj is not None
    api = obj.get("api")
    if api is None:
        if not obj.get("token"):
            raise click.UsageError("a token is needed: --token or FOTA_SERVICE_TOKEN")
        api = Api(obj["url"], obj["token"], obj.get("ca_file"))
        obj["api"] = api
        ctx.call_on_close(api.client.close)
    return api


def _client_options(f: Any) -> Any:
    f = click.option(
        "--ca-file", envvar="FOTA_SERVICE_CA", default=None, help="CA of the service's TLS cert"
    )(f)
    f = click.option("--token", envvar="FOTA_SERVICE_TOKEN", default=None, help="bearer token")(f)
    return click.option(
        "--url", envvar="FOTA_SERVICE_URL", default="http://127.0.0.1:8443", show_default=True
    )(f)


def _group(name: str, help_text: str) -> click.Group:
    @click.group(name=name, help=help_text)
    @_client_options
    @click.pass_context
    def group(ctx: click.Context, url: str, token: str | None, ca_file: str | None) -> None:
        ctx.ensure_object(dict)
        ctx.obj.update(url=url, token=token, ca_file=ca_file)

    return group


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2))


job = _group("job", "Create, list, deploy and watch FOTA jobs.")
bundle = _group("bundle", "Upload and list firmware bundles.")
device = _group("device", "Register bench devices (gateways, peripherals, IP devices).")
group_cmd = _group("group", "Device groups (tags).")
execution = _group("execution", "Job executions.")
for _command in (job, bundle, device, group_cmd, execution):
    main.add_command(_command)


@job.command("create")
@click.option("--bundle", "bundle_id", required=True)
@click.option("--name", default="")
@click.option("--description", default="")
@click.option("--device", "devices", multiple=True, help="device id (repeatable)")
@click.option("--tag", "tags", multiple=True, help="group name (repeatable)")
@click.option(
    "--apply/--no-apply",
    default=True,
    show_default=True,
    help="deploy at once (autoApply, nRF Cloud's default)",
)
@click.pass_context
def job_create(
    ctx: click.Context,
    bundle_id: str,
    name: str,
    description: str,
    devices: tuple[str, ...],
    tags: tuple[str, ...],
    apply: bool,
) -> None:
    """Create a job; prints its id."""
    body = {
        "bundleId": bundle_id,
        "name": name,
        "description": description,
        "deviceIds": list(devices),
        "tags": list(tags),
        "autoApply": apply,
    }
    click.echo(_api(ctx).call("POST", "/fota-jobs", json=body)["jobId"])


@job.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def job_list(ctx: click.Context, as_json: bool) -> None:
    """Every job, oldest first."""
    api = _api(ctx)
    items: list[dict[str, Any]] = []
    token = None
    while True:
        params: dict[str, Any] = {"pageLimit": 100}
        if token:
            params["pageNextToken"] = token
        page = api.call("GET", "/fota-jobs", params=params)
        items += page["items"]
        token = page.get("pageNextToken")
        if not token:
            break
    if as_json:
        _echo_json(items)
        return
    table = Table("job id", "name", "status", "detail", "type", "done/devices")
    for j in items:
        s = j["executionStats"]
        table.add_row(
            j["jobId"],
            j["name"] or "",
            j["status"],
            j["statusDetail"] or "",
            j["firmware"]["firmwareType"],
            f"{s['completedExecutions']}/{s['devices']}",
        )
    Console().print(table)


@job.command("show")
@click.argument("job_id")
@click.pass_context
def job_show(ctx: click.Context, job_id: str) -> None:
    _echo_json(_api(ctx).call("GET", f"/fota-jobs/{job_id}"))


@job.command("apply")
@click.argument("job_id")
@click.pass_context
def job_apply(ctx: click.Context, job_id: str) -> None:
    """Deploy a CREATED job (a retry job, or one created with --no-apply)."""
    api = _api(ctx)
    api.call("POST", f"/fota-jobs/{job_id}/apply")  # 202, empty, as nRF Cloud answers
    result = api.call("GET", f"/fota-jobs/{job_id}")
    click.echo(f"{result['status']} {result['statusDetail'] or ''}".strip())


@job.command("cancel")
@click.argument("job_id")
@click.pass_context
def job_cancel(ctx: click.Context, job_id: str) -> None:
    api = _api(ctx)
    api.call("PUT", f"/fota-jobs/{job_id}/cancel")
    click.echo(api.call("GET", f"/fota-jobs/{job_id}")["status"])


@job.command("delete")
@click.argument("job_id")
@click.pass_context
def job_delete(ctx: click.Context, job_id: str) -> None:
    _api(ctx).call("DELETE", f"/fota-jobs/{job_id}")


def _watch_table(job_doc: dict[str, Any], executions: list[dict[str, Any]]) -> Table:
    s = job_doc["executionStats"]
    title = (
        f"{job_doc['name'] or job_doc['jobId']} [{job_doc['status']}] "
        f"{s['completedExecutions']}/{s['devices']} done · "
        f"queued {s['queued']} · downloading {s['downloading']} · in progress {s['inProgress']} · "
        f"succeeded {s['succeeded']} · failed {s['failed']} · timed out {s['timedOut']} · "
        f"rejected {s['rejected']} · cancelled {s['cancelled']}"
    )
    table = Table("device", "gateway", "status", "progress", "detail", "batch", title=title)
    for e in executions:
        status = e["status"]
        progress = "" if e["progress"] is None else f"{e['progress']}%"
        table.add_row(
            e["deviceId"],
            e["gatewayId"] or "",
            f"[{STATUS_STYLE.get(status, '')}]{status}[/]",
            progress,
            e["statusDetail"],
            str(e["batch"]),
        )
    return table


@job.command("watch")
@click.argument("job_id")
@click.option("--interval", default=1.0, show_default=True, help="seconds between polls")
@click.pass_context
def job_watch(ctx: click.Context, job_id: str, interval: float) -> None:
    """A live per-execution table; returns when the job is COMPLETED or CANCELLED."""
    api = _api(ctx)
    console = Console()
    with Live(console=console, auto_refresh=False) as live:
        while True:
            job_doc = api.call("GET", f"/fota-jobs/{job_id}")
            executions = api.call("GET", f"/fota-job-execution-statuses/{job_id}")["items"]
            live.update(_watch_table(job_doc, executions), refresh=True)
            if job_doc["status"] in TERMINAL_JOB_STATES:
                break
            time.sleep(interval)  # a poll interval of a human-facing CLI
    s = job_doc["executionStats"]
    if job_doc["status"] == "CANCELLED":
        console.print(f"job cancelled: {job_doc['statusDetail'] or ''}")
        ctx.exit(4)
    if s["failed"] or s["timedOut"] or s["rejected"]:
        ctx.exit(3)


@bundle.command("upload")
@click.argument("zip_path", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option("--name", default="")
@click.option("--version", "version", default="")
@click.option("--description", default="")
@click.pass_context
def bundle_upload(ctx: click.Context, zip_path: Path, name: str, version: str, description: str) -> None:
    """Upload nRF Cloud's bundle zip or an nrfutil package (one image); prints the bundle id."""
    params = {"name": name or zip_path.stem, "version": version, "description": description}
    result = _api(ctx).call(
        "POST",
        "/firmwares",
        params=params,
        content=zip_path.read_bytes(),
        headers={"content-type": "application/zip"},
    )
    # UploadFirmware answers {uris}: `<tenant>/<bundleId>/<file>`, as nRF Cloud does
    click.echo(result["uris"][0].split("/")[1])


@bundle.command("list")
@click.pass_context
def bundle_list(ctx: click.Context) -> None:
    _echo_json(_api(ctx).call("GET", "/firmwares")["items"])


@device.command("add")
@click.argument("device_id")
@click.option("--type", "kind", type=click.Choice(["ble", "ip"]), default="ble", show_default=True)
@click.option("--gateway", default=None, help="the gateway a peripheral is connected to")
@click.option("--fota-v2", "fota_v2", multiple=True, help="IP: supported firmware type (repeatable)")
@click.option("--ble-fota/--no-ble-fota", default=None, help="IP gateway: supports BLE FOTA")
@click.pass_context
def device_add(
    ctx: click.Context,
    device_id: str,
    kind: str,
    gateway: str | None,
    fota_v2: tuple[str, ...],
    ble_fota: bool | None,
) -> None:
    """Register (or update) a device."""
    body: dict[str, Any] = {"type": kind}
    if gateway:
        body["gatewayId"] = gateway
    if fota_v2:
        body["fotaV2"] = list(fota_v2)
    if ble_fota is not None:
        body["fotaV2Ble"] = ble_fota
    _api(ctx).call("PUT", f"/devices/{device_id}", json=body)


@device.command("list")
@click.pass_context
def device_list(ctx: click.Context) -> None:
    _echo_json(_api(ctx).call("GET", "/devices")["items"])


@group_cmd.command("add")
@click.argument("name")
@click.argument("device_ids", nargs=-1, required=True)
@click.pass_context
def group_add(ctx: click.Context, name: str, device_ids: tuple[str, ...]) -> None:
    """Add devices to a group (created if new)."""
    _api(ctx).call("POST", f"/groups/{name}/devices", json={"deviceIds": list(device_ids)})


@group_cmd.command("set")
@click.argument("name")
@click.argument("device_ids", nargs=-1)
@click.pass_context
def group_set(ctx: click.Context, name: str, device_ids: tuple[str, ...]) -> None:
    """Replace a group's members."""
    _api(ctx).call("PUT", f"/groups/{name}", json={"deviceIds": list(device_ids)})


@group_cmd.command("list")
@click.pass_context
def group_list(ctx: click.Context) -> None:
    _echo_json(_api(ctx).call("GET", "/groups"))


@execution.command("set")
@click.argument("device_id")
@click.argument("job_id")
@click.argument(
    "status",
    type=click.Choice(
        ["DOWNLOADING", "IN_PROGRESS", "SUCCEEDED", "FAILED", "REJECTED", "TIMED_OUT", "CANCELLED"]
    ),
)
@click.option("--details", default="")
@click.pass_context
def execution_set(ctx: click.Context, device_id: str, job_id: str, status: str, details: str) -> None:
    """Set an execution's status, e.g. CANCELLED so a job with a dead device can complete."""
    _api(ctx).call(
        "PATCH", f"/fota-job-executions/{device_id}/{job_id}", json={"status": status, "details": details}
    )
