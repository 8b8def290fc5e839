"""Hardware-in-the-loop DFU tests: simulated in CI, a real board with `--hil-address ...`."""

from __future__ import annotations

from pathlib import Path

import pytest

from dfu.errors import DfuRejected
from dfu.protocol import ResultCode
from dfu.signing import generate_private_key, private_key_pem
from dfu.updater import UpdateOptions, update
from hil.target import DfuTarget

pytestmark = pytest.mark.hil


async def _installed(target: DfuTarget) -> int:
    return int(await target.firmware_revision())


async def test_update_to_the_next_application_version(dfu_target: DfuTarget) -> None:
    before = await _installed(dfu_target)
    package = dfu_target.app_package(before + 1)
    result = await update(dfu_target.backend, dfu_target.profile, package, address=dfu_target.address)
    assert result.firmware_revision == str(before + 1)
    assert await _installed(dfu_target) == before + 1


async def test_a_package_signed_with_another_key_is_refused_by_the_bootloader(
    dfu_target: DfuTarget, tmp_path: Path
) -> None:
    stranger = tmp_path / "stranger.pem"
    stranger.write_bytes(private_key_pem(generate_private_key()))
    before = await _installed(dfu_target)
    package = dfu_target.app_package(before + 1, key_file=stranger)
    with pytest.raises(DfuRejected) as refused:  # the bootloader's own verdict, not our preflight's
        await update(
            dfu_target.backend,
            dfu_target.profile,
            package,
            address=dfu_target.address,
            options=UpdateOptions(preflight=False),
        )
    assert refused.value.result is ResultCode.INVALID_OBJECT
    assert await _installed(dfu_target) == before


async def test_a_link_drop_mid_image_resumes_instead_of_restarting(dfu_target: DfuTarget) -> None:
    if not dfu_target.simulated:
        pytest.skip("dropping the link on cue needs the simulator's fault injection")
    dfu_target.inject(drop_after_bytes=10_000)
    before = await _installed(dfu_target)
    result = await update(
        dfu_target.backend, dfu_target.profile, dfu_target.app_package(before + 1), address=dfu_target.address
    )
    assert result.resumes >= 1
    assert result.images[-1].bytes == 16 * 1024
    assert result.bytes_sent < 2 * 16 * 1024  # resumed from the bootloader's offset, not from zero


@pytest.mark.hil(requires_board=True)
async def test_the_board_answers_with_its_profile_hardware(dfu_target: DfuTarget) -> None:
    """Only meaningful on hardware: a real board's firmware revision is readable over BlueZ."""
    assert await dfu_target.firmware_revision()
