"""OCP Datacenter NVMe SSD log pages, offered only by a controller with ``ocp=on``
(``ControllerConfig.ocp``; QEMU's nvme device has the same switch).

SMART / Health Information Extended (C0h, 512 bytes, log page GUID
AFD514C9-7C6F-4F9C-A4F2-BFEA2810AFC5, version 3), as ``nvme ocp smart-add-log``
reads it. The counters are real where the emulator has them: physical media
units written/read (bytes moved, in bytes as OCP defines them), uncorrectable
read errors (completions with Unrecovered Read Error), incomplete shutdowns
(the SMART unsafe shutdown count), the NUSE total of the attached namespaces,
power state changes; the NAND-specific ones (bad blocks, XOR recovery, refresh,
erase counts, capacitor health) are zero because there is no NAND, which is
what zero means there.
"""

from __future__ import annotations

from typing import Any

from nvshell.device.layout import Layout
from nvshell.device.nvme import admin_log
from nvshell.device.nvme.commands import Command
from nvshell.device.nvme.spec import LogPage
from nvshell.device.nvme.status import NvmeError, Status

#: The GUID as the log stores it (little endian), what nvme-cli compares against.
SMART_EXTENDED_GUID = bytes.fromhex("C5AF1028EABFF2A49C4F6F7CC914D5AF")
SMART_EXTENDED_VERSION = 3
#: DSSD specification version the page follows (2.0): major, minor, point, errata.
DSSD_VERSION = bytes([0, 0, 0, 0, 2, 0])

OCP_SMART_EXTENDED = Layout("OcpSmartExtended", [
    (0, "pmuw", "16s"), (16, "pmur", "16s"), (32, "bunb", "8s"), (40, "bsnb", "8s"), (48, "xrc", "Q"),
    (56, "urec", "Q"), (64, "seec", "Q"), (72, "e2e_detected", "I"), (76, "e2e_corrected", "I"),
    (80, "sdpu", "B"), (81, "refresh", "7s"), (88, "udec_max", "I"), (92, "udec_min", "I"),
    (96, "ttc", "B"), (97, "tts", "B"), (98, "dssd_version", "6s"), (104, "pcie_cec", "Q"),
    (112, "incomplete_shutdowns", "I"), (120, "free_blocks", "B"), (128, "capacitor_health", "H"),
    (130, "errata", "B"), (136, "unaligned_io", "Q"), (144, "svn", "Q"), (152, "nuse", "Q"),
    (160, "plp_start", "16s"), (176, "endurance", "16s"), (192, "pcie_retrain", "Q"),
    (200, "power_state_changes", "Q"), (494, "version", "H"), (496, "guid", "16s"),
], size=512)


def _u128(value: int) -> bytes:
    return int(value).to_bytes(16, "little")


def smart_extended(ctrl: Any, cmd: Command) -> bytes:
    if not getattr(ctrl.config, "ocp", False):
        raise NvmeError(Status.INVALID_LOG_PAGE)
    stats = ctrl.stats
    unrecovered = sum(1 for e in ctrl.error_log.entries() if e.status == Status.UNRECOVERED_READ_ERROR)
    nuse = sum(getattr(ns, "nlbas", 0) for ns in ctrl.namespaces.values())
    return OCP_SMART_EXTENDED.pack(
        pmuw=_u128(stats.bytes_written), pmur=_u128(stats.bytes_read), bunb=bytes(6) + (100).to_bytes(2, "little"),
        bsnb=bytes(6) + (100).to_bytes(2, "little"), urec=unrecovered, dssd_version=DSSD_VERSION,
        incomplete_shutdowns=stats.unsafe_shutdowns, free_blocks=100, capacitor_health=100, nuse=nuse,
        version=SMART_EXTENDED_VERSION, guid=SMART_EXTENDED_GUID)


admin_log.register(LogPage.OCP_SMART_EXTENDED, "ocp-smart-extended", smart_extended, OCP_SMART_EXTENDED.size,
                   available=lambda ctrl: bool(getattr(ctrl.config, "ocp", False)))
