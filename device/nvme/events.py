"""Asynchronous events: outstanding AERs, queued events, masking, Changed Namespace List.

An event is ``(type, info, log page)``. It completes an outstanding Asynchronous
Event Request at once, or waits (at most ``max_aer_retention``; the same notice
twice is kept once). Once reported, its type stays masked until the host reads
that log page with RAE=0 (``log_page_read``). Runs on the controller's IOThread.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import TYPE_CHECKING

from nvshell.device import trace as T
from nvshell.device.nvme.commands import DEFERRED, Command
from nvshell.device.nvme.spec import BROADCAST_NSID, AsyncEventType
from nvshell.device.nvme.status import NvmeError, Status

if TYPE_CHECKING:
    from nvshell.device.nvme.controller import Controller

log = logging.getLogger(__name__)

_AEN_TYPE_NAMES = {int(t): t.name.lower().replace("_", "-") for t in AsyncEventType}

#: Changed Namespace List: at most 1024 entries, then just FFFFFFFFh.
CHANGED_NS_MAX = 1024


class AsyncEvents:
    """The AER/AEN state of one controller."""

    def __init__(self, ctrl: "Controller"):
        self.ctrl = ctrl
        self.aer_cmds: deque[Command] = deque()
        self.events: deque[tuple[int, int, int]] = deque()
        #: Event type -> log page that unmasks it once read.
        self.masked: dict[int, int] = {}
        #: An AER was queued inside its own dispatch: deliver once it is held.
        self._deliver_pending = False
        #: Changed Namespace List log contents ([0xffffffff] after overflow).
        self.changed_namespaces: list[int] = []

    def clear(self) -> None:
        """Controller reset: outstanding AERs and waiting events are dropped (the log stays)."""
        self.aer_cmds.clear()
        self.events.clear()
        self.masked.clear()
        self._deliver_pending = False

    def queue_aer(self, cmd: Command) -> object:
        """Asynchronous Event Request: hold ``cmd`` until an event comes (returns DEFERRED)."""
        if len(self.aer_cmds) >= self.ctrl.config.aerl + 1:
            raise NvmeError(Status.ASYNC_EVENT_REQUEST_LIMIT_EXCEEDED)
        self.aer_cmds.append(cmd)
        self._deliver_pending = True
        return DEFERRED

    def forget_aer(self, cmd: Command) -> None:
        for i, aer in enumerate(self.aer_cmds):
            if aer is cmd:
                del self.aer_cmds[i]
                return

    def deliver_if_pending(self) -> None:
        if self._deliver_pending:
            self._deliver_pending = False
            self.deliver()

    def post(self, event_type: int, info: int, log_page: int) -> None:
        event = (int(event_type), int(info), int(log_page))
        if event[0] == AsyncEventType.NOTICE and not self.ctrl.features.async_event_config >> (8 + event[1]) & 1:
            return  # the host did not enable this notice (Asynchronous Event Configuration)
        if event in self.events:
            return  # the same notice is already waiting: one is enough
        if len(self.events) >= self.ctrl.config.max_aer_retention:
            log.debug("controller %d: async event %s dropped (retention full)", self.ctrl.cntlid, event)
            return
        self.events.append(event)
        if T.NVME_AEN_QUEUED.enabled:
            T.NVME_AEN_QUEUED.emit(ctrl=self.ctrl.name, aen_type=_AEN_TYPE_NAMES.get(event[0], str(event[0])),
                                   info=event[1], log_page=event[2])
        self.deliver()

    def deliver(self) -> None:
        while self.aer_cmds and self.events:
            for i, (etype, info, page) in enumerate(self.events):
                if etype not in self.masked:
                    break
            else:
                return
            del self.events[i]
            self.masked[etype] = page
            cmd = self.aer_cmds.popleft()
            cmd.result = etype | (info << 8) | (page << 16)
            if T.NVME_AEN_COMPLETE.enabled:
                T.NVME_AEN_COMPLETE.emit(ctrl=self.ctrl.name, cid=cmd.cid,
                                         aen_type=_AEN_TYPE_NAMES.get(etype, str(etype)), info=info, log_page=page)
            self.ctrl.engine.complete(cmd, Status.SUCCESS)

    def log_page_read(self, log_id: int, rae: bool = False, cleared: bool = False) -> None:
        """Reading a log page (RAE=0) unmasks its event type. ``cleared``: the page
        accumulates every change and the read emptied it (the Changed Namespace List), so
        events still queued for it are answered by this read; delivering them would send
        the host to a page it has just emptied."""
        if rae:
            return
        for etype, page in list(self.masked.items()):
            if page == log_id:
                del self.masked[etype]
        if cleared and any(page == log_id for _, _, page in self.events):
            self.events = deque(e for e in self.events if e[2] != log_id)
        self.deliver()

    def note_changed_namespace(self, nsid: int) -> None:
        changed = self.changed_namespaces
        if changed == [BROADCAST_NSID] or nsid in changed:
            return
        if len(changed) >= CHANGED_NS_MAX:
            self.changed_namespaces = [BROADCAST_NSID]
        else:
            changed.append(nsid)
            changed.sort()

    def take_changed_namespaces(self, clear: bool = True) -> list[int]:
        changed = list(self.changed_namespaces)
        if clear:
            self.changed_namespaces = []
        return changed
