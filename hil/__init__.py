"""Hardware-in-the-loop kit, the fleet and the demo: part of the bench kit (`ble-fota-gateway[bench]`)."""

from dfu.plugins import require_extra

require_extra("hil", "bench", ("looptime", "trustme"))
