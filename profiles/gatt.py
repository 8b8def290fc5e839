"""GATT identities of Nordic Secure DFU and the services we read around it.

Facts and sources: docs/secure-dfu.md, "GATT layout".
"""

from __future__ import annotations

from typing import Final


def _sig16(short: int) -> str:
    return f"0000{short:04x}-0000-1000-8000-00805f9b34fb"


SECURE_DFU_SERVICE: Final = _sig16(0xFE59)
SECURE_DFU_SERVICE_16: Final = 0xFE59
CONTROL_POINT: Final = "8ec90001-f315-4f60-9fb8-838830daea50"
DFU_PACKET: Final = "8ec90002-f315-4f60-9fb8-838830daea50"
BUTTONLESS_UNBONDED: Final = "8ec90003-f315-4f60-9fb8-838830daea50"
BUTTONLESS_BONDED: Final = "8ec90004-f315-4f60-9fb8-838830daea50"
LEGACY_DFU_SERVICE: Final = "00001530-1212-efde-1523-785feabcd123"

DEVICE_INFORMATION_SERVICE: Final = _sig16(0x180A)
MANUFACTURER_NAME: Final = _sig16(0x2A29)
MODEL_NUMBER: Final = _sig16(0x2A24)
FIRMWARE_REVISION: Final = _sig16(0x2A26)
HARDWARE_REVISION: Final = _sig16(0x2A27)

GENERIC_ATTRIBUTE_SERVICE: Final = _sig16(0x1801)
SERVICE_CHANGED: Final = _sig16(0x2A05)
CCCD: Final = _sig16(0x2902)

# ATT error a real stack returns when a characteristic is written whose CCCD is not enabled.
ATT_ERROR_CCCD_IMPROPERLY_CONFIGURED: Final = 0xFD

DEFAULT_BOOTLOADER_NAME: Final = "DfuTarg"
