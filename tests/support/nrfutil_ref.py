"""nrfutil 6.1.7, the reference our packages must match, run in a sidecar venv.

nrfutil 6.1.7 does not install on Python 3.11 the normal way (its BLE/serial dependencies have no wheels),
but its package generation only needs protobuf 3, ecdsa and intelhex. So the venv gets exactly those, nrfutil
itself with `--no-deps --ignore-requires-python`, and a small runner that stands in empty modules for the two
transport libraries its CLI imports at start-up (pc_ble_driver_py, pyspinel) before calling nrfutil's real
`cli` — the same code path as `nrfutil pkg generate`.

The venv is built once under <repo>/.cache/ (gitignored) and reused; a file lock makes concurrent xdist
workers wait for one builder. A failure to build raises: the comparison tests must never skip silently.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import venv
from dataclasses import dataclass
from pathlib import Path

NRFUTIL_VERSION = "6.1.7"
# Only what `nrfutil pkg generate` / `keys` need to import and run. protobuf < 4 is nrfutil's own pin.
SIDECAR_REQUIREMENTS = (
    "protobuf==3.20.3",
    "ecdsa>=0.18,<1",
    "intelhex==2.3.0",
    "click>=8,<9",
    "crcmod==1.7",
    "pyserial==3.5",
    "pyyaml>=6",
    "tqdm>=4",
    # nrfutil's setup.py imports setuptools.command.test, gone from setuptools 72.
    "setuptools<70",
    "wheel",
)
CACHE_DIR = Path(__file__).resolve().parents[2] / ".cache"
VENV_DIR = CACHE_DIR / f"nrfutil-{NRFUTIL_VERSION}-venv"
_READY = VENV_DIR / "ready"

_RUNNER = """\
import sys, types

def _stub(name, **attrs):
    module = types.ModuleType(name)
    module.__path__ = []
    module.__dict__.update(attrs)
    sys.modules[name] = module

_stub("pc_ble_driver_py")
_stub("pc_ble_driver_py.exceptions", NordicSemiException=type("NordicSemiException", (Exception,), {}))
_stub("spinel")
_stub("spinel.util")

from nordicsemi.__main__ import cli

cli(sys.argv[1:], prog_name="nrfutil")
"""


@dataclass(frozen=True)
class Nrfutil:
    python: Path
    runner: Path

    def run(self, *args: str | os.PathLike[str], cwd: Path) -> subprocess.CompletedProcess[str]:
        """Run `nrfutil ARGS...`; raises with nrfutil's output if it fails."""
        env = {**os.environ, "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION": "python", "PYTHONNOUSERSITE": "1"}
        env.pop("PYTHONPATH", None)
        result = subprocess.run(
            [str(self.python), str(self.runner), *map(str, args)],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if result.returncode != 0:
            command = " ".join(map(str, args))
            raise RuntimeError(
                f"nrfutil {command} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
            )
        return result


def _pip(python: Path, *args: str) -> None:
    result = subprocess.run(
        [str(python), "-m", "pip", "--disable-pip-version-check", "install", "--quiet", *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"pip install {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")


def _build(venv_dir: Path) -> None:
    if venv_dir.exists():
        shutil.rmtree(venv_dir)
    venv.EnvBuilder(with_pip=True, clear=True).create(venv_dir)
    python = venv_dir / "bin" / "python"
    _pip(python, *SIDECAR_REQUIREMENTS)
    _pip(
        python,
        "--no-deps",
        "--ignore-requires-python",
        "--no-build-isolation",
        f"nrfutil=={NRFUTIL_VERSION}",
    )
    (venv_dir / "run_nrfutil.py").write_text(_RUNNER)


def nrfutil() -> Nrfutil:
    """The sidecar nrfutil, built on first use (minutes), then reused across runs and workers."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with (CACHE_DIR / f"nrfutil-{NRFUTIL_VERSION}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            # Rebuild when missing, half-built (no marker) or made by another interpreter (a restored cache).
            stamp = f"{sys.version}\n"
            if not _READY.exists() or _READY.read_text() != stamp:
                _build(VENV_DIR)
                _READY.write_text(stamp)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return Nrfutil(VENV_DIR / "bin" / "python", VENV_DIR / "run_nrfutil.py")
