"""Telemetry Host-Initiated (07h) and Controller-Initiated (08h) log pages (LPA bit 3).

What a snapshot holds (Data Area 1, then padding to whole 512-byte blocks): a
JSON document with the controller's state at capture time -- registers, every
queue (``queue_info``), the SMART counters, the current features, the newest
error log entries and the outstanding asynchronous events. It is text on
purpose: a developer reading ``nvme telemetry-log`` output can see what the
device was doing. Areas 2 and 3 are empty (DA2LB = DA3LB = DA1LB).

Host-initiated: LSP bit 0 (Create Telemetry Host-Initiated Data) takes a new
snapshot and increments the generation number; reads without it return the
last snapshot (a first read with none taken captures one). Controller-
initiated: the controller captures a snapshot when something goes wrong that a
developer wants to look at afterwards (``capture_controller``: Keep Alive
expiry, a failed self-test), sets TCIDA and bumps its generation number, and
posts the Telemetry Log Changed notice when the host enabled it (AEC bit 10).
"""

from __future__ import annotations

import json
import time
import weakref
from dataclasses import dataclass
from typing import Any

from nvshell.device.layout import Layout
from nvshell.device.nvme import admin_log
from nvshell.device.nvme.commands import Command
from nvshell.device.nvme.spec import AsyncEventType, LogPage, NoticeInfo

BLOCK = 512
TELEMETRY_HEADER = Layout("TelemetryHeader", [
    (0, "lid", "B"), (5, "ieee", "3s"), (8, "da1lb", "H"), (10, "da2lb", "H"), (12, "da3lb", "H"),
    (381, "host_gen", "B"), (382, "tcida", "B"), (383, "ctrl_gen", "B"), (384, "reason", "128s"),
], size=BLOCK)
#: Nominal size for the offset check (a snapshot is far smaller).
LOG_MAX = 1 << 24
LPA_TELEMETRY = 1 << 3


@dataclass
class _Telemetry:
    host: bytes = b""
    host_gen: int = 0
    ctrl_data: bytes = b""
    ctrl_gen: int = 0
    ctrl_reason: str = ""


_STATE: "weakref.WeakKeyDictionary[Any, _Telemetry]" = weakref.WeakKeyDictionary()


def _state(ctrl: Any) -> _Telemetry:
    st = _STATE.get(ctrl)
    if st is None:
        st = _STATE[ctrl] = _Telemetry()
    return st


def snapshot(ctrl: Any, reason: str) -> bytes:
    """Data Area 1: the controller's state as JSON, padded to whole blocks."""
    stats = ctrl.stats
    doc = {
        "reason": reason,
        "time": time.time(),
        "controller": {"name": ctrl.name, "cntlid": ctrl.cntlid, "cc": ctrl.cc, "csts": ctrl.csts,
                       "fatal_reason": ctrl.fatal_reason},
        "queues": ctrl.queue_info(),
        "smart": {"bytes_read": stats.bytes_read, "bytes_written": stats.bytes_written,
                  "host_read_commands": stats.host_read_commands,
                  "host_write_commands": stats.host_write_commands, "busy_ns": stats.busy_ns,
                  "unsafe_shutdowns": stats.unsafe_shutdowns, "critical_warning": stats.critical_warning,
                  "temperature_k": stats.temperature},
        "features": {k: v for k, v in vars(ctrl.features).items() if isinstance(v, (int, bool, float))},
        "errors": [{"count": e.error_count, "sqid": e.sqid, "cid": e.cid, "status": e.status, "nsid": e.nsid,
                    "lba": e.lba} for e in ctrl.error_log.entries()[:16]],
        "error_count": ctrl.error_log.error_count,
        "pending_events": [list(e) for e in ctrl.pending_events()],
        "namespaces": sorted(ctrl.namespaces),
    }
    data = json.dumps(doc, default=str, separators=(",", ":")).encode()
    return data + bytes(-len(data) % BLOCK)


def _page(ctrl: Any, lid: int, data: bytes, st: _Telemetry, reason: str) -> bytes:
    last = len(data) // BLOCK            # the header is block 0
    header = TELEMETRY_HEADER.pack(lid=lid, ieee=ctrl.config.oui.to_bytes(3, "little"), da1lb=last, da2lb=last,
                                   da3lb=last, host_gen=st.host_gen, tcida=int(bool(st.ctrl_data)),
                                   ctrl_gen=st.ctrl_gen, reason=reason.encode()[:128])
    return header + data


def host_initiated(ctrl: Any, cmd: Command) -> bytes:
    st = _state(ctrl)
    if cmd.cdw10 & (1 << 8) or not st.host:          # LSP bit 0: create new data
        st.host = snapshot(ctrl, "host-initiated")
        st.host_gen = (st.host_gen + 1) & 0xFF
    return _page(ctrl, LogPage.TELEMETRY_HOST, st.host, st, "")


def controller_initiated(ctrl: Any, cmd: Command) -> bytes:
    st = _state(ctrl)
    return _page(ctrl, LogPage.TELEMETRY_CONTROLLER, st.ctrl_data, st, st.ctrl_reason)


def capture_controller(ctrl: Any, reason: str) -> None:
    """Something went wrong: keep a controller-initiated snapshot and tell the host."""
    st = _state(ctrl)
    st.ctrl_data = snapshot(ctrl, reason)
    st.ctrl_reason = reason
    st.ctrl_gen = (st.ctrl_gen + 1) & 0xFF
    ctrl.post_async_event(AsyncEventType.NOTICE, NoticeInfo.TELEMETRY, LogPage.TELEMETRY_CONTROLLER)


admin_log.register(LogPage.TELEMETRY_HOST, "telemetry-host-initiated", host_initiated, LOG_MAX, lpa=LPA_TELEMETRY)
admin_log.register(LogPage.TELEMETRY_CONTROLLER, "telemetry-controller-initiated", controller_initiated, LOG_MAX,
                   lpa=LPA_TELEMETRY)
