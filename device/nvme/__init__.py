"""NVMe device model. Importing the package registers every command handler.

Handlers register themselves in ``commands.ADMIN`` / ``commands.NVM`` when
their module is imported; importing them here means ``import device.nvme.x``
anywhere gives a controller with the complete command set.
"""

from importlib import import_module as _import

for _name in ("admin_queues", "admin_features", "admin_aer", "admin_format",
              "admin_identify", "admin_log", "admin_ns", "nvm"):
    try:
        _import(f"device.nvme.{_name}")
    except ModuleNotFoundError as _exc:  # TEMPORARY until every module exists
        if _exc.name != f"device.nvme.{_name}":
            raise
