"""pytest's entry point for the HIL kit (`ble_fota_hil`): the fixtures and options of `hil.fixtures`.

The entry point ships in the one wheel, so it is also seen where the product alone is installed (a firmware
engineer's venv with pytest for their own tests). Without the [bench] extra the plugin adds nothing instead of
stopping pytest at start with an ImportError.
"""

from __future__ import annotations

import importlib.util

if all(importlib.util.find_spec(m) is not None for m in ("looptime", "trustme")):
    from hil.fixtures import *  # noqa: F403 - pytest finds hooks and fixtures by name in this module
