"""NVM subsystem: owns namespaces and knows its controllers.

A namespace belongs to the subsystem, never to a controller (NVMe base spec,
"NVM Subsystem"): deleting a controller only detaches, and a shared namespace
may be attached to several controllers at once. The subsystem keeps the
authoritative attachment map ``nsid -> {cntlid}`` under its own lock, so that
checks made by admin commands on one controller's IOThread see changes made on
other threads immediately, while each controller's own ``namespaces`` dict is
changed only on that controller's IOThread (the threading contract of
docs/internals.md).

Cross-thread rules (why ``_on_ctrl`` exists):

* called on the controller's own IOThread (the host's Namespace Attachment
  command processed by that controller): call directly;
* called on ANOTHER controller's IOThread: ``submit`` and do not wait; one
  IOThread blocking on another could deadlock when both do it at once;
* called from the control plane (monitor, object model): ``run`` and wait, so
  the caller sees errors and the change is visible when the call returns.

Every attach/detach that changes what a running host sees gets, on the affected
controller, a Changed Namespace List entry and a Namespace Attribute Changed
notice (as QEMU hw/nvme does for each controller in the attachment list).
"""

from __future__ import annotations

import logging
import threading
import uuid as uuid_mod
from typing import Any, Callable, Iterable
from uuid import UUID

from nvshell.device.errors import ObjectError
from nvshell.device.nvme.spec import AsyncEventType, LogPage, NoticeInfo
from nvshell.device.nvme.status import Status

log = logging.getLogger(__name__)

#: Largest controller ID a subsystem hands out (FFF0h-FFFFh are reserved).
MAX_CNTLID = 0xFFEF
#: Default Number of Namespaces (Identify Controller NN): the largest valid NSID.
DEFAULT_MAX_NSID = 256
#: Default NVM capacity the host may allocate with Namespace Management create,
#: beyond the namespaces the user configured (bytes). Guest-created namespaces
#: live in host RAM (the sparse memory backend), so this is how much RAM a guest
#: can make nvshell use without anyone configuring it: kept small, and set per
#: subsystem with the ``ns-mgmt-capacity`` property.
DEFAULT_CAPACITY = 1 << 30

#: Listener signature: ``listener(kind, nsid, ns, ctrl)`` with kind one of
#: ``"namespace-created"``, ``"namespace-deleted"``, ``"attached"``, ``"detached"``.
Listener = Callable[[str, int, Any, Any], None]


class SubsystemError(ObjectError):
    """A subsystem operation was refused (duplicate id, unknown namespace...).

    An ``ObjectError`` so the monitor reports it as a GenericError; ``status`` is the NVMe status an admin command should complete with when the
    same refusal comes from the host rather than from the control plane.
    """

    def __init__(self, msg: str, status: Status = Status.INVALID_FIELD):
        super().__init__(msg)
        self.status = status


class Subsystem:
    """An NVM subsystem: ``controllers {cntlid: ctrl}``, ``namespaces {nsid: ns}``."""

    def __init__(self, subnqn: str | None = None, uuid: UUID | None = None, *,
                 max_nsid: int = DEFAULT_MAX_NSID, capacity: int = DEFAULT_CAPACITY):
        self.uuid: UUID = uuid if uuid is not None else uuid_mod.uuid4()
        self.subnqn: str = subnqn or f"nqn.2014-08.org.nvmexpress:uuid:{self.uuid}"
        if len(self.subnqn.encode()) > 223:
            raise SubsystemError(f"subnqn longer than 223 bytes: {self.subnqn!r}")
        #: NN: the largest NSID; also MNAN (namespaces in the subsystem).
        self.max_nsid = max_nsid
        #: NVM capacity for namespaces the host creates (Namespace Management), on
        #: top of the configured ones (``add_namespace(configured=True)``), which do
        #: not count against it. TNVMCAP = configured + created + what is left.
        self.capacity = capacity
        self._configured: set[int] = set()
        self.controllers: dict[int, Any] = {}
        self.namespaces: dict[int, Any] = {}
        #: NSIDs attached to every controller, including ones added later.
        self.attach_policy_all: set[int] = set()
        #: Called on guest-made changes (NS Management / NS Attachment commands),
        #: so the object model can mirror them. Called on the processing
        #: controller's IOThread: a listener must not block (marshal to its loop).
        self.listeners: list[Listener] = []
        self._attached: dict[int, set[int]] = {}
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return f"Subsystem({self.subnqn!r}, controllers={sorted(self.controllers)}, " \
               f"namespaces={sorted(self.namespaces)})"

    # ------------------------------------------------------------ controllers
    def add_controller(self, ctrl: Any, cntlid: int = 0) -> int:
        """Register ``ctrl``; ``cntlid`` 0 picks the lowest free ID in 1..0xFFEF.

        Namespaces under the attach-to-all policy are attached right away,
        without an AEN: the controller is new, its host has not scanned yet.
        """
        with self._lock:
            if any(c is ctrl for c in self.controllers.values()):
                raise SubsystemError("controller already belongs to this subsystem")
            if cntlid:
                if not 1 <= cntlid <= MAX_CNTLID:
                    raise SubsystemError(f"cntlid {cntlid} out of range 1..{MAX_CNTLID:#x}",
                                         Status.INVALID_CONTROLLER_ID)
                if cntlid in self.controllers:
                    raise SubsystemError(f"cntlid {cntlid} already in use in {self.subnqn}",
                                         Status.INVALID_CONTROLLER_ID)
            else:
                cntlid = next((i for i in range(1, MAX_CNTLID + 1) if i not in self.controllers), 0)
                if not cntlid:
                    raise SubsystemError("no free controller ID", Status.INVALID_CONTROLLER_ID)
            self.controllers[cntlid] = ctrl
            ctrl.cntlid = cntlid
            todo = []
            for nsid in sorted(self.attach_policy_all):
                ns = self.namespaces.get(nsid)
                if ns is not None:
                    self._attached.setdefault(nsid, set()).add(cntlid)
                    todo.append(ns)
        for ns in todo:
            self._on_ctrl(ctrl, _attach_on, ctrl, ns, False)
        return cntlid

    def remove_controller(self, ctrl: Any) -> None:
        """Forget ``ctrl``; its namespaces are detached from it, never destroyed."""
        with self._lock:
            cntlid = self._cntlid_of(ctrl)
            del self.controllers[cntlid]
            nsids = [nsid for nsid, ids in self._attached.items() if cntlid in ids]
            for nsid in nsids:
                self._attached[nsid].discard(cntlid)
        for nsid in nsids:
            try:
                self._on_ctrl(ctrl, _detach_on, ctrl, nsid, False)
            except Exception:  # the controller may already be shut down
                log.debug("detaching nsid %d from removed controller %d failed", nsid, cntlid,
                          exc_info=True)

    def controller(self, cntlid: int) -> Any | None:
        with self._lock:
            return self.controllers.get(cntlid)

    # ------------------------------------------------------------- namespaces
    def add_namespace(self, ns: Any, nsid: int = 0, *, configured: bool = False) -> int:
        """Allocate ``ns`` in the subsystem (not attached anywhere); sets ``ns.nsid``.
        ``configured``: the user's namespace (command line, QMP), outside ``capacity``."""
        with self._lock:
            if any(n is ns for n in self.namespaces.values()):
                raise SubsystemError("namespace already belongs to this subsystem")
            if nsid:
                if not 1 <= nsid <= self.max_nsid:
                    raise SubsystemError(f"nsid {nsid} out of range 1..{self.max_nsid}",
                                         Status.INVALID_NSID)
                if nsid in self.namespaces:
                    raise SubsystemError(f"nsid {nsid} already in use in {self.subnqn}",
                                         Status.NSID_UNAVAILABLE)
            else:
                nsid = self.free_nsid()
                if not nsid:
                    raise SubsystemError(f"no free nsid (max {self.max_nsid})", Status.NSID_UNAVAILABLE)
            self.namespaces[nsid] = ns
            self._attached[nsid] = set()
            if configured:
                self._configured.add(nsid)
            ns.nsid = nsid
            return nsid

    def free_nsid(self) -> int:
        """The lowest unallocated NSID, or 0 when all are taken."""
        with self._lock:
            return next((i for i in range(1, self.max_nsid + 1) if i not in self.namespaces), 0)

    def remove_namespace(self, nsid: int, *, close: bool = False) -> Any:
        """Detach ``nsid`` from every controller (AEN + Changed NS List), then drop it.

        Returns the namespace. With ``close`` the namespace is closed once every
        controller has detached it (on their IOThreads), so no in-flight command
        of another controller finds its backend gone.
        """
        with self._lock:
            ns = self._ns(nsid)
            cntlids = sorted(self._attached.pop(nsid, set()))
            del self.namespaces[nsid]
            self._configured.discard(nsid)
            self.attach_policy_all.discard(nsid)
            ctrls = [self.controllers[c] for c in cntlids if c in self.controllers]
        pending = [self._on_ctrl(ctrl, _detach_on, ctrl, nsid, True) for ctrl in ctrls]
        if close:
            _when_all(pending, ns.close)
        return ns

    def namespace(self, nsid: int) -> Any | None:
        with self._lock:
            return self.namespaces.get(nsid)

    def allocated_bytes(self) -> int:
        """Sum of the sizes of all allocated namespaces (for TNVMCAP/UNVMCAP)."""
        with self._lock:
            return sum(ns.size for ns in self.namespaces.values())

    def unallocated_bytes(self) -> int:
        """What Namespace Management may still allocate: ``capacity`` minus the
        namespaces that are not configured ones (UNVMCAP)."""
        with self._lock:
            created = sum(ns.size for nsid, ns in self.namespaces.items() if nsid not in self._configured)
        return max(0, self.capacity - created)

    # ------------------------------------------------------------ attachments
    def attach(self, nsid: int, ctrl: Any, *, notify: bool = True) -> None:
        """Attach ``nsid`` to ``ctrl``; ``notify`` sends the AEN and logs the change."""
        with self._lock:
            ns = self._ns(nsid)
            cntlid = self._cntlid_of(ctrl)
            ids = self._attached.setdefault(nsid, set())
            if cntlid in ids:
                raise SubsystemError(f"namespace {nsid} already attached to controller {cntlid}",
                                     Status.NS_ALREADY_ATTACHED)
            ids.add(cntlid)
        self._on_ctrl(ctrl, _attach_on, ctrl, ns, notify)

    def detach(self, nsid: int, ctrl: Any, *, notify: bool = True) -> None:
        """Detach ``nsid`` from ``ctrl`` (the namespace stays allocated)."""
        with self._lock:
            self._ns(nsid)
            cntlid = self._cntlid_of(ctrl)
            ids = self._attached.get(nsid, set())
            if cntlid not in ids:
                raise SubsystemError(f"namespace {nsid} not attached to controller {cntlid}",
                                     Status.NS_NOT_ATTACHED)
            ids.discard(cntlid)
        self._on_ctrl(ctrl, _detach_on, ctrl, nsid, notify)

    def attach_all(self, nsid: int, *, notify: bool = True) -> None:
        """Attach ``nsid`` to every controller, now and added later."""
        with self._lock:
            ns = self._ns(nsid)
            self.attach_policy_all.add(nsid)
            ids = self._attached.setdefault(nsid, set())
            todo = [(c, ctrl) for c, ctrl in sorted(self.controllers.items()) if c not in ids]
            ids.update(c for c, _ in todo)
        for _, ctrl in todo:
            self._on_ctrl(ctrl, _attach_on, ctrl, ns, notify)

    def attached_controllers(self, nsid: int) -> list[int]:
        """Sorted controller IDs ``nsid`` is attached to (empty if not allocated)."""
        with self._lock:
            return sorted(self._attached.get(nsid, ()))

    def is_attached(self, nsid: int, ctrl: Any) -> bool:
        with self._lock:
            cntlid = next((c for c, x in self.controllers.items() if x is ctrl), None)
            return cntlid is not None and cntlid in self._attached.get(nsid, ())

    def namespace_changed(self, nsid: int, *, except_ctrl: Any = None) -> None:
        """An attribute of ``nsid`` changed (format, capacity): Changed Namespace List
        entry and Namespace Attribute Changed notice on every controller it is attached
        to but ``except_ctrl`` (the one whose host made the change)."""
        with self._lock:
            ctrls = [self.controllers[c] for c in sorted(self._attached.get(nsid, ()))
                     if c in self.controllers and self.controllers[c] is not except_ctrl]
        for ctrl in ctrls:
            self._on_ctrl(ctrl, _tell_host, ctrl, nsid)

    # --------------------------------------------------------------- listeners
    def notify(self, kind: str, nsid: int, ns: Any, ctrl: Any) -> None:
        """Tell listeners about a guest-made change; a failing listener is logged only."""
        for listener in list(self.listeners):
            try:
                listener(kind, nsid, ns, ctrl)
            except Exception:
                log.exception("subsystem listener %r failed on %s nsid %d", listener, kind, nsid)

    # ---------------------------------------------------------------- helpers
    def _ns(self, nsid: int) -> Any:
        ns = self.namespaces.get(nsid)
        if ns is None:
            raise SubsystemError(f"no namespace {nsid} in {self.subnqn}", Status.INVALID_FIELD)
        return ns

    def _cntlid_of(self, ctrl: Any) -> int:
        for cntlid, c in self.controllers.items():
            if c is ctrl:
                return cntlid
        raise SubsystemError("controller does not belong to this subsystem",
                             Status.CONTROLLER_LIST_INVALID)

    def _on_ctrl(self, ctrl: Any, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn`` on ``ctrl``'s IOThread (see the module docstring for why so).

        Returns None when done synchronously, else the pending Future.
        """
        iothread = ctrl.iothread
        # No IOThread (a controller built without one, in unit tests) or one not
        # running (not started yet, or stopped): nothing else touches the controller.
        if iothread is None or iothread.in_thread() or not iothread.running:
            fn(*args)
            return None
        if self._on_any_iothread():
            future = iothread.submit(fn, *args)
            future.add_done_callback(_log_failure)
            return future
        iothread.run(fn, *args)
        return None

    def _on_any_iothread(self) -> bool:
        with self._lock:
            ctrls = list(self.controllers.values())
        return any(c.iothread is not None and c.iothread.in_thread() for c in ctrls)


def _attach_on(ctrl: Any, ns: Any, notify: bool) -> None:
    """On ``ctrl``'s IOThread: make ``ns`` active there and tell the host."""
    ctrl.attach_namespace(ns)
    if notify:
        _tell_host(ctrl, ns.nsid)


def _detach_on(ctrl: Any, nsid: int, notify: bool) -> None:
    if nsid in ctrl.namespaces:
        ctrl.detach_namespace(nsid)
    if notify:
        _tell_host(ctrl, nsid)


def _tell_host(ctrl: Any, nsid: int) -> None:
    ctrl.note_changed_namespace(nsid)
    ctrl.post_async_event(AsyncEventType.NOTICE, NoticeInfo.NS_ATTRIBUTE_CHANGED, LogPage.CHANGED_NS_LIST)


def _log_failure(future: Any) -> None:
    exc = future.exception()
    if exc is not None:
        log.error("namespace change on another controller failed: %s", exc, exc_info=exc)


def _when_all(pending: Iterable[Any], fn: Callable[[], Any]) -> None:
    """Call ``fn`` once every future in ``pending`` (None = already done) is done."""
    futures = [f for f in pending if f is not None]
    if not futures:
        _safe(fn)
        return
    remaining = [len(futures)]
    lock = threading.Lock()

    def one_done(_f: Any) -> None:
        with lock:
            remaining[0] -= 1
            last = remaining[0] == 0
        if last:
            _safe(fn)
    for f in futures:
        f.add_done_callback(one_done)


def _safe(fn: Callable[[], Any]) -> None:
    try:
        fn()
    except Exception:
        log.exception("closing a removed namespace failed")
