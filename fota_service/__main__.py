"""`python -m fota_service` is `fota-service`."""

from fota_service.cli import main

main()
