"""Firmware Image Download (11h) and Firmware Commit (10h), OACS bit 2, and the
Firmware Slot Information log (03h) they change.

Slots: ``SLOTS`` of them, slot 1 read-only holding the revision the controller
was configured with (``firmware=``), the others empty until a commit writes
them (Identify FRMW says so, and that activation without a reset works).

An image is bytes the host downloads in pieces (dword offsets; a piece at offset
0 starts a new image, a piece before the end of what was downloaded is
Overlapping Range, one after it leaves a gap: Invalid Field). Its format, so a
commit can check it and know the revision it carries::

    offset 0  8 bytes  magic "NVSHFW01"
    offset 8  8 bytes  firmware revision (ASCII, space padded: what FR reports)
    offset 16 ...      payload (anything; kept with the slot)

Commit actions (CA): 000b replace the image in the slot; 001b replace and
activate at the next Controller Level Reset; 010b activate the slot's image at
the next reset; 011b replace (if an image was downloaded) and activate now,
with the Firmware Activation Starting notice (AEN, if enabled); boot partition
actions (110b, 111b) are Invalid Field. FS 0 picks the first writable slot for
a replace. The pending activation happens at the next reset of the controller
(a reset replaces ``ctrl.features``, which is how this module notices it).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

from nvshell.device.layout import Layout
from nvshell.device.nvme import admin_log
from nvshell.device.nvme.commands import ADMIN, EFFECT_CCC, Command
from nvshell.device.nvme.spec import AdminOpcode, AsyncEventType, LogPage, NoticeInfo
from nvshell.device.nvme.status import NvmeError, Status

SLOTS = 3
#: Identify FRMW: slot 1 read-only, SLOTS slots, activation without reset.
FRMW = 0x1 | (SLOTS << 1) | (1 << 4)
#: Identify FWUG: FFh = no granularity restriction (dword aligned pieces).
FWUG = 0xFF
#: Identify MTFA: activation without reset takes at most this (100 ms units).
MTFA = 1
IMAGE_MAGIC = b"NVSHFW01"
IMAGE_HEADER = Layout("FirmwareImageHeader", [(0, "magic", "8s"), (8, "revision", "8s")], size=16)
#: Largest image accepted (bytes).
MAX_IMAGE = 16 << 20

CA_REPLACE = 0b000
CA_REPLACE_ACTIVATE_RESET = 0b001
CA_ACTIVATE_RESET = 0b010
CA_REPLACE_ACTIVATE_NOW = 0b011

FW_SLOT_LOG = admin_log.FW_SLOT_LOG


@dataclass
class _Firmware:
    features: Any
    #: slot -> (revision bytes, image) ; slot 1 has no image (the built-in one).
    slots: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)
    active: int = 1
    pending: int = 0
    staged: bytearray = field(default_factory=bytearray)


_STATE: "weakref.WeakKeyDictionary[Any, _Firmware]" = weakref.WeakKeyDictionary()


def _fixed(text: str) -> bytes:
    return text.encode("ascii", "replace")[:8].ljust(8, b" ")


def firmware(ctrl: Any) -> _Firmware:
    fw = _STATE.get(ctrl)
    if fw is None:
        fw = _STATE[ctrl] = _Firmware(ctrl.features, {1: (_fixed(ctrl.config.firmware), b"")})
    if fw.features is not ctrl.features:          # a Controller Level Reset happened
        fw.features = ctrl.features
        if fw.pending:
            fw.active, fw.pending = fw.pending, 0
        fw.staged = bytearray()
    return fw


def active_revision(ctrl: Any) -> bytes:
    """Identify FR: the revision of the active slot."""
    fw = firmware(ctrl)
    return fw.slots[fw.active][0]


def _record(ctrl: Any, old: bytes, new: bytes, ca: int, slot: int) -> None:
    from nvshell.device.nvme import admin_pel
    admin_pel.firmware_commit(ctrl, new, old=old, ca=ca, slot=slot)


@ADMIN.command(AdminOpcode.FIRMWARE_DOWNLOAD, direction="from-host")
def firmware_image_download(ctrl: Any, cmd: Command) -> None:
    numd = cmd.cdw10 + 1
    offset = cmd.cdw11 * 4
    length = numd * 4
    fw = firmware(ctrl)
    if offset == 0:
        fw.staged = bytearray()
    if offset < len(fw.staged):
        raise NvmeError(Status.OVERLAPPING_RANGE, msg=f"piece at {offset:#x} overlaps the image")
    if offset > len(fw.staged):
        raise NvmeError(Status.INVALID_FIELD, msg=f"piece at {offset:#x} leaves a gap after {len(fw.staged):#x}")
    if offset + length > MAX_IMAGE:
        raise NvmeError(Status.INVALID_FIELD, msg=f"image larger than {MAX_IMAGE} bytes")
    fw.staged += ctrl.transfer(cmd, length, allow_sgl=False).from_guest()


def _check_image(image: bytes) -> bytes:
    if len(image) < IMAGE_HEADER.size:
        raise NvmeError(Status.INVALID_FIRMWARE_IMAGE, msg="no image downloaded" if not image else "image too short")
    header = IMAGE_HEADER.unpack(image)
    if header.magic != IMAGE_MAGIC or not all(0x20 <= c < 0x7F for c in header.revision):
        raise NvmeError(Status.INVALID_FIRMWARE_IMAGE, msg="not an nvshell firmware image")
    return bytes(header.revision)


@ADMIN.command(AdminOpcode.FIRMWARE_COMMIT, effects=EFFECT_CCC)
def firmware_commit(ctrl: Any, cmd: Command) -> None:
    fs = cmd.cdw10 & 0x7
    ca = (cmd.cdw10 >> 3) & 0x7
    fw = firmware(ctrl)
    if ca not in (CA_REPLACE, CA_REPLACE_ACTIVATE_RESET, CA_ACTIVATE_RESET, CA_REPLACE_ACTIVATE_NOW) \
            or cmd.cdw10 >> 31:
        raise NvmeError(Status.INVALID_FIELD, msg=f"commit action {ca:#b}")
    if fs > SLOTS:
        raise NvmeError(Status.INVALID_FIRMWARE_SLOT)
    replace = ca in (CA_REPLACE, CA_REPLACE_ACTIVATE_RESET) or (ca == CA_REPLACE_ACTIVATE_NOW and fw.staged)
    if replace:
        if fs == 0:
            fs = 2
        if fs == 1:
            raise NvmeError(Status.INVALID_FIRMWARE_SLOT, msg="slot 1 is read-only")
        revision = _check_image(bytes(fw.staged))
        fw.slots[fs] = (revision, bytes(fw.staged))
        fw.staged = bytearray()
    elif fs == 0 or fs not in fw.slots:
        raise NvmeError(Status.INVALID_FIRMWARE_SLOT, msg=f"slot {fs} holds no image")
    old = fw.slots[fw.active][0]
    _record(ctrl, old, fw.slots[fs][0], ca, fs)
    if ca == CA_REPLACE:
        return
    if ca in (CA_REPLACE_ACTIVATE_RESET, CA_ACTIVATE_RESET):
        fw.pending = fs if fs != fw.active else 0
        return
    # Activate now: tell the host (Firmware Activation Starting) and switch.
    fw.active, fw.pending = fs, 0
    ctrl.post_async_event(AsyncEventType.NOTICE, NoticeInfo.FIRMWARE_ACTIVATION, LogPage.FW_SLOT)


def fw_slot_log(ctrl: Any, cmd: Command) -> bytes:
    """AFI: active slot (2:0), slot activated at the next reset (6:4); FRS per slot."""
    fw = firmware(ctrl)
    frs = {f"frs{slot}": rev for slot, (rev, _) in fw.slots.items()}
    return FW_SLOT_LOG.pack(afi=fw.active | (fw.pending << 4), **frs)


admin_log.register(LogPage.FW_SLOT, "firmware-slot", fw_slot_log, FW_SLOT_LOG.size)
