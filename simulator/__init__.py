"""Simulated nRF52 peripherals: part of the bench kit (`ble-fota-gateway[bench]`), never of a gateway."""

from dfu.plugins import require_extra

require_extra("simulator", "bench", ("looptime", "trustme"))
