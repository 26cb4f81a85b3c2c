"""Persistent Event Log (Get Log Page 0Dh, LPA bit 4).

The subsystem keeps one log (events carry the CNTLID of the controller they
happened on), newest last, at most ``MAX_EVENTS``. Recorded: Power-on or Reset
(each time a host enables a controller), Firmware Commit, Format NVM start and
completion, Sanitize start and completion, and Change Namespace (Namespace
Management create and delete).

Reading follows the specification's reporting context (LSP, Get Log Page CDW10
bits 11:8): action 01b establishes a context (a snapshot of the events) and
reads it, 00b reads the established context (without one: Command Sequence
Error), 10b releases it. So a host reading the log in several pieces sees one
consistent log even if events happen meanwhile.
"""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass
from typing import Any

from nvshell.device.layout import Layout
from nvshell.device.nvme import admin_log
from nvshell.device.nvme.commands import Command
from nvshell.device.nvme.controller import Controller
from nvshell.device.nvme.spec import LogPage
from nvshell.device.nvme.status import NvmeError, Status

MAX_EVENTS = 256
LOG_REVISION = 1

PEL_HEADER = Layout("PersistentEventLogHeader", [
    (0, "lid", "B"), (4, "tnev", "I"), (8, "tll", "Q"), (16, "lr", "B"), (18, "lhl", "H"), (20, "ts", "Q"),
    (28, "poh", "16s"), (44, "pcc", "Q"), (52, "vid", "H"), (54, "ssvid", "H"), (56, "sn", "20s"),
    (76, "mn", "40s"), (116, "subnqn", "256s"), (372, "gn", "H"), (374, "rci", "I"), (480, "seb", "32s"),
], size=512)
EVENT_HEADER = Layout("PersistentEventHeader", [
    (0, "etype", "B"), (1, "etype_rev", "B"), (2, "ehl", "B"), (3, "ehai", "B"), (4, "cntlid", "H"),
    (6, "ets", "Q"), (14, "pelpid", "H"), (20, "vsil", "H"), (22, "el", "H"),
], size=24)

ET_FIRMWARE_COMMIT = 0x02
ET_POWER_ON_RESET = 0x04
ET_CHANGE_NAMESPACE = 0x06
ET_FORMAT_START = 0x07
ET_FORMAT_COMPLETION = 0x08
ET_SANITIZE_START = 0x09
ET_SANITIZE_COMPLETION = 0x0A
SUPPORTED = (ET_FIRMWARE_COMMIT, ET_POWER_ON_RESET, ET_CHANGE_NAMESPACE, ET_FORMAT_START, ET_FORMAT_COMPLETION,
             ET_SANITIZE_START, ET_SANITIZE_COMPLETION)

FIRMWARE_COMMIT_EVENT = Layout("FirmwareCommitEvent", [
    (0, "old_fr", "8s"), (8, "new_fr", "8s"), (16, "ca", "B"), (17, "slot", "B"), (18, "sct", "B"), (19, "sc", "B"),
], size=24)
POWER_ON_RESET_EVENT = Layout("PowerOnResetEvent", [
    (0, "fr", "8s"), (8, "cntlid", "H"), (10, "fa", "B"), (11, "op", "B"), (24, "cpc", "I"), (28, "pom", "Q"),
    (36, "cts", "Q"),
], size=44)
CHANGE_NAMESPACE_EVENT = Layout("ChangeNamespaceEvent", [
    (0, "cdw10", "I"), (8, "nsze", "Q"), (24, "nscap", "Q"), (32, "flbas", "B"), (33, "dps", "B"),
    (34, "nmic", "B"), (36, "anagrpid", "I"), (40, "nvmsetid", "H"), (44, "nsid", "I"),
], size=48)
FORMAT_START_EVENT = Layout("FormatStartEvent", [(0, "nsid", "I"), (4, "fna", "B"), (8, "cdw10", "I")], size=12)
FORMAT_COMPLETION_EVENT = Layout("FormatCompletionEvent", [
    (0, "nsid", "I"), (4, "smallest_fpi", "B"), (5, "status", "B"), (6, "ci", "H"), (8, "sf", "I"),
], size=12)
SANITIZE_START_EVENT = Layout("SanitizeStartEvent", [(0, "sanicap", "I"), (4, "cdw10", "I"), (8, "cdw11", "I")],
                              size=12)
SANITIZE_COMPLETION_EVENT = Layout("SanitizeCompletionEvent", [(0, "sprog", "H"), (2, "sstat", "H"),
                                                               (4, "ci", "H")], size=8)
#: Nominal page size for the Log Page Offset check.
LOG_MAX = PEL_HEADER.size + MAX_EVENTS * (EVENT_HEADER.size + 64)
#: Identify PELS: the log's maximum size in 64 KiB units.
PELS = -(-LOG_MAX // (64 << 10))

ACTION_READ, ACTION_ESTABLISH, ACTION_RELEASE = 0, 1, 2


@dataclass
class _Log:
    events: list[bytes]
    generation: int = 0
    #: cntlid -> snapshot bytes of the established reporting context.
    contexts: dict[int, bytes] | None = None


_LOGS: "weakref.WeakKeyDictionary[Any, _Log]" = weakref.WeakKeyDictionary()
_EPOCH = time.time()


def _owner(ctrl: Any) -> Any:
    return ctrl.subsystem if ctrl.subsystem is not None else ctrl


def _log(ctrl: Any) -> _Log:
    owner = _owner(ctrl)
    log = _LOGS.get(owner)
    if log is None:
        log = _LOGS[owner] = _Log([], contexts={})
    return log


def _ms() -> int:
    return int(time.time() * 1000)


def record(ctrl: Any, etype: int, data: bytes) -> None:
    """Append one event (header + ``data``) to the log of ``ctrl``'s subsystem."""
    log = _log(ctrl)
    header = EVENT_HEADER.pack(etype=etype, etype_rev=0, ehl=EVENT_HEADER.size - 3, cntlid=ctrl.cntlid,
                               ets=_ms() | (1 << 48), el=len(data))   # bit 48 set: timestamp is "real time"
    log.events.append(header + data)
    del log.events[:-MAX_EVENTS]
    log.generation = (log.generation + 1) & 0xFFFF


def _revision(ctrl: Any) -> bytes:
    from nvshell.device.nvme import admin_firmware
    return admin_firmware.active_revision(ctrl)


def _on_enable(ctrl: Any) -> None:
    pom = int((time.monotonic() - ctrl.stats.power_on_base) * 1000)
    record(ctrl, ET_POWER_ON_RESET, POWER_ON_RESET_EVENT.pack(
        fr=_revision(ctrl), cntlid=ctrl.cntlid, cpc=ctrl.stats.power_cycles, pom=pom, cts=_ms()))


def firmware_commit(ctrl: Any, new_revision: bytes, *, old: bytes | None = None, ca: int = 0,
                    slot: int = 0) -> None:
    record(ctrl, ET_FIRMWARE_COMMIT, FIRMWARE_COMMIT_EVENT.pack(
        old_fr=old if old is not None else _revision(ctrl), new_fr=new_revision, ca=ca, slot=slot))


def format_start(ctrl: Any, nsid: int, cdw10: int) -> None:
    record(ctrl, ET_FORMAT_START, FORMAT_START_EVENT.pack(nsid=nsid, cdw10=cdw10))


def format_completion(ctrl: Any, nsid: int, status: int) -> None:
    record(ctrl, ET_FORMAT_COMPLETION, FORMAT_COMPLETION_EVENT.pack(nsid=nsid, status=0 if not status else 1,
                                                                     sf=status << 1))


def sanitize_start(ctrl: Any, sanicap: int, cdw10: int, cdw11: int) -> None:
    record(ctrl, ET_SANITIZE_START, SANITIZE_START_EVENT.pack(sanicap=sanicap, cdw10=cdw10, cdw11=cdw11))


def sanitize_completion(ctrl: Any, sprog: int, sstat: int) -> None:
    record(ctrl, ET_SANITIZE_COMPLETION, SANITIZE_COMPLETION_EVENT.pack(sprog=sprog, sstat=sstat))


def change_namespace(ctrl: Any, cdw10: int, nsid: int, ns: Any) -> None:
    nlbas = getattr(ns, "nlbas", 0) if ns is not None else 0
    record(ctrl, ET_CHANGE_NAMESPACE, CHANGE_NAMESPACE_EVENT.pack(
        cdw10=cdw10, nsze=nlbas, nscap=nlbas, nmic=int(bool(getattr(ns, "shared", False))), nsid=nsid))


def _page(ctrl: Any, log: _Log) -> bytes:
    body = b"".join(log.events)
    cfg = ctrl.config
    seb = bytearray(32)
    for etype in SUPPORTED:
        seb[etype // 8] |= 1 << (etype % 8)
    from nvshell.device.nvme.admin_log import u128
    header = PEL_HEADER.pack(
        lid=LogPage.PERSISTENT_EVENT, tnev=len(log.events), tll=PEL_HEADER.size + len(body), lr=LOG_REVISION,
        lhl=PEL_HEADER.size, ts=_ms() | (1 << 48), poh=u128(ctrl.stats.power_on_hours), pcc=ctrl.stats.power_cycles,
        vid=cfg.vid, ssvid=cfg.ssvid, sn=cfg.serial.encode()[:20].ljust(20, b" "),
        mn=cfg.model.encode()[:40].ljust(40, b" "), subnqn=ctrl.subnqn.encode()[:256], gn=log.generation,
        seb=bytes(seb))
    return header + body


def persistent_event_log(ctrl: Any, cmd: Command) -> bytes:
    action = (cmd.cdw10 >> 8) & 0xF
    log = _log(ctrl)
    contexts = log.contexts if log.contexts is not None else {}
    if action == ACTION_ESTABLISH:
        contexts[ctrl.cntlid] = _page(ctrl, log)
        return contexts[ctrl.cntlid]
    if action == ACTION_READ:
        page = contexts.get(ctrl.cntlid)
        if page is None:
            raise NvmeError(Status.COMMAND_SEQUENCE_ERROR, msg="no persistent event log reporting context")
        return page
    if action == ACTION_RELEASE:
        return contexts.pop(ctrl.cntlid, b"")
    raise NvmeError(Status.INVALID_FIELD, msg=f"persistent event log action {action}")


Controller.enable_hooks.append(_on_enable)
admin_log.register(LogPage.PERSISTENT_EVENT, "persistent-event", persistent_event_log, lambda ctrl: 1 << 32,
                   lpa=1 << 4)
