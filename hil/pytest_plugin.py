"""pytest plugin (entry point `ble_fota_hil`): fixtures for a DFU target, simulated unless a board is named."""
