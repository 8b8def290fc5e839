"""The local stand-in of nRF Cloud's FOTA job service: `ble-fota-gateway[service]`, never on a gateway."""

from dfu.plugins import require_extra

require_extra("fota_service", "service", ("fastapi", "uvicorn", "sqlalchemy"))
