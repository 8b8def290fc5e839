"""Which bootloader key a profile trusts, and whether that key is the repository's demo key.

The demo key's private half is in this repository (profiles/keys/demo-private.pem) so the demo and the tests
can sign packages. A real gateway whose profile trusts it has a signature check that proves nothing: anyone
can sign for it, and packages signed with the operator's own key are refused before any radio work. So the
agent's `check-config` refuses such a profile on a real radio (BlueZ), naming the fix.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from profiles.model import PeripheralProfile

DEMO_PUBLIC_KEY = Path(str(resources.files("profiles") / "keys" / "demo-public.pem"))


def _numbers(pem: bytes) -> ec.EllipticCurvePublicNumbers | None:
    try:
        key = load_pem_public_key(pem)
    except ValueError:
        return None
    return key.public_numbers() if isinstance(key, ec.EllipticCurvePublicKey) else None


def trusts_demo_key(profile: PeripheralProfile) -> bool:
    """True when the profile's bootloader key is the demo key (by value, whatever the file is called)."""
    pem = profile.public_key_pem
    return pem is not None and _numbers(pem) == _numbers(DEMO_PUBLIC_KEY.read_bytes())
