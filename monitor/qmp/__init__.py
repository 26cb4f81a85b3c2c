"""The QMP server: address parsing, JSON stream framing, per-client sessions.

Layers, bottom up (imitating python-qemu-qmp: a generic stream layer, QMP on top):
``parser`` (bytes -> JSON values or parse errors, resynchronising after garbage),
``session`` (one client's negotiation state machine and request dispatch),
``server`` (listening sockets, event broadcast), ``address`` (``-qmp`` syntax).
"""

from nvshell.monitor.qmp.address import QMPAddress, parse_qmp_address
from nvshell.monitor.qmp.server import QMPServer

__all__ = ["QMPAddress", "QMPServer", "parse_qmp_address"]
