"""The one place that loads the monitor's command groups, in a fixed order.

Why explicit: registration by import side effect made the command tables depend on
which module happened to be imported first (a QMP command module importing its
HMP module, an HMP module replacing another's table entry).  Here the QMP groups
load first, then the HMP groups (each built only on QMP commands and ``hmp.py``),
always in this order; nothing else imports a ``commands_*`` or ``hmp_*`` module to
register it, and the QMP protocol layer (``monitor/qmp/``) imports none of them.

A new group is added to the tuple it belongs to (tests/test_monitor_layers.py
fails for a module left out).
"""

from __future__ import annotations

import importlib

from nvshell.monitor.registry import REGISTRY, Registry

#: QMP command groups (``@qmp_command`` / ``qmp_event``), in registration order.
QMP_GROUPS = ("commands_core", "commands_qom", "commands_nvme", "commands_faults", "commands_trace",
              "commands_tracing", "commands_iostat", "commands_zones")
#: HMP command groups (``@hmp_command`` / ``@info_command``), loaded after every QMP group.
HMP_GROUPS = ("hmp_commands", "hmp_faults", "hmp_tracing", "hmp_iostat", "hmp_zones")

_loaded = False


def load() -> Registry:
    """Register every command group (idempotent); the process-wide QMP registry."""
    global _loaded
    if not _loaded:
        for name in QMP_GROUPS + HMP_GROUPS:
            importlib.import_module(f"nvshell.monitor.{name}")
        _loaded = True
    return REGISTRY
