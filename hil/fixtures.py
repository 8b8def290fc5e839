"""pytest plugin (entry point `ble_fota_hil`): a DFU target, simulated unless a board is named.

    pytest -m hil                                                  # simulated nRF52 (CI)
    pytest -m hil --hil-address C8:2E:1A:33:44:55 --hil-profile nrf52840-s140 --hil-key my-key.pem

Tests marked `hil` get the `dfu_target` fixture. `@pytest.mark.hil(requires_board=True)` marks a test that
only means something on hardware: it skips, saying how to name a board, when none is configured. Everything
else runs on the simulator by default, on fast-forwarded loop time, so CI never silently skips the suite.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hil.fleet import Fleet, running_fleet
from hil.target import DEMO_KEY, SIMULATED_ADDRESS, DfuTarget
from profiles.model import load_profile

SKIP_REASON = (
    "needs a real board: pass --hil-address AA:BB:CC:DD:EE:FF --hil-profile NAME "
    "(or set HIL_ADDRESS / HIL_PROFILE)"
)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("hil", "hardware-in-the-loop (BLE FOTA)")
    group.addoption(
        "--hil-address", default=os.environ.get("HIL_ADDRESS"), help="BLE address of a real board"
    )
    group.addoption(
        "--hil-profile",
        default=os.environ.get("HIL_PROFILE", "nrf52840-s140"),
        help="peripheral profile of the board (shipped name or TOML path)",
    )
    group.addoption(
        "--hil-key",
        default=os.environ.get("HIL_KEY"),
        help="private key (PEM) the board's bootloader trusts; the demo key for simulated targets",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "hil(requires_board=False): hardware-in-the-loop test; simulated unless --hil-address is given",
    )


def board_address(config: pytest.Config) -> str | None:
    value = config.getoption("--hil-address")
    return str(value).upper() if value else None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    board = board_address(config)
    for item in items:
        marker = item.get_closest_marker("hil")
        if marker is None:
            continue
        if board is None:
            if marker.kwargs.get("requires_board"):
                item.add_marker(pytest.mark.skip(reason=SKIP_REASON))
            else:
                # simulated radio time: fast-forward it (a real board needs real time, so only here)
                item.add_marker(pytest.mark.looptime)


@pytest.fixture
async def gateway_under_test(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Fleet]:
    """A whole gateway as real processes (broker, job service, `gateway-agent run`) serving one simulated
    peripheral of the chosen profile; jobs go through the REST API (`fleet.api`) exactly as on a bench."""
    if board_address(request.config) is not None:
        pytest.skip(
            "gateway_under_test drives simulated peripherals only; a board-backed gateway is not done yet"
        )
    profile = str(request.config.getoption("--hil-profile"))
    async with running_fleet(tmp_path, gateways=1, per_gateway=1, profile=profile, tenant="hil") as fleet:
        yield fleet


@pytest.fixture
async def dfu_target(request: pytest.FixtureRequest) -> AsyncIterator[DfuTarget]:
    """The board named on the command line, or a factory-fresh simulated peripheral of the same profile."""
    config = request.config
    profile = load_profile(str(config.getoption("--hil-profile")))
    key = config.getoption("--hil-key")
    board = board_address(config)
    if board is not None:
        from dfu.transport.ble import platform_backend

        if key is None:
            pytest.fail("a real board needs --hil-key (the private key its bootloader trusts)")
        yield DfuTarget(board, profile, platform_backend(), Path(str(key)))
        return
    from simulator.air import Air
    from simulator.bleak_backend import backend_for

    air = Air()
    air.add_profile(profile, SIMULATED_ADDRESS)
    try:
        yield DfuTarget(
            SIMULATED_ADDRESS, profile, backend_for(air), Path(str(key)) if key else DEMO_KEY, air
        )
    finally:
        air.close()
