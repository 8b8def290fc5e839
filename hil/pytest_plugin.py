"""pytest plugin (entry point `ble_fota_hil`): a DFU target, simulated unless a board is named."""
