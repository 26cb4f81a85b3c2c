"""NVMe device model. Importing the package registers every command handler.

Handlers register themselves in ``commands.ADMIN`` / ``commands.NVM`` when
their module is imported; importing them here means ``import nvshell.device.nvme.x``
anywhere gives a controller with the complete command set.
"""

from nvshell.device.nvme import admin_aer, admin_features, admin_format, admin_identify  # noqa: F401
from nvshell.device.nvme import admin_log, admin_ns, admin_queues, nvm, zns_commands  # noqa: F401
from nvshell.device.nvme import admin_firmware, admin_keepalive, admin_lba_status, admin_pel  # noqa: F401
from nvshell.device.nvme import admin_ocp, admin_sanitize, admin_selftest, admin_smart_ns, admin_telemetry  # noqa: F401
