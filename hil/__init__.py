"""Hardware-in-the-loop kit, the fleet and the demo: part of the bench kit (`ble-fota-gateway[bench]`).

The package itself imports nothing, so that pytest can load its entry point (`hil.pytest_plugin`) wherever the
wheel is installed; the modules that need the simulator fail without the bench kit with its one-line hint.
"""
