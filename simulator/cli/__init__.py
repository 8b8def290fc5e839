"""The bench kit's `nrf-dfu` subcommands (`sim`, `simulate`), registered as entry points."""
