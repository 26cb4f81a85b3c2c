"""What a command handler may use: the ``Namespace`` and ``ControllerContext`` protocols.

Handlers (``admin_*.py``, ``nvm.py``, other command sets) are written against
these two protocols instead of the concrete ``Controller``, so the controller's
parts (registers, doorbells, command engine, async events) can change shape
without touching a handler, and a test or another transport can host the same
handlers. ``Controller`` satisfies ``ControllerContext``; ``NvmNamespace`` and its
subclasses satisfy ``Namespace``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Protocol

if TYPE_CHECKING:
    from nvshell.device.backends import Backend
    from nvshell.device.iothread import IOThread
    from nvshell.device.memory import HostMemory
    from nvshell.device.nvme.commands import Command, CommandTable
    from nvshell.device.nvme.config import ControllerConfig
    from nvshell.device.nvme.health import ErrorLog, Features, SmartStats


class Namespace(Protocol):
    """A namespace as the controller and its handlers see it."""

    nsid: int
    csi: int
    #: The namespace's I/O command table (NVM, zoned...).
    commands: "CommandTable"
    backend: "Backend"
    lba_size: int
    lbads: int
    nlbas: int
    ready: bool
    shared: bool

    def identify_ns(self) -> bytes: ...

    def identify_ns_csi(self) -> bytes: ...

    def id_descriptors(self) -> bytes: ...

    def close(self) -> None: ...


class ControllerContext(Protocol):
    """The controller API a command handler (and the fault injector) uses."""

    config: "ControllerConfig"
    name: str
    cntlid: int
    subsystem: Any
    iothread: "IOThread | None"
    namespaces: dict[int, Namespace]
    features: "Features"
    stats: "SmartStats"
    error_log: "ErrorLog"
    changed_namespaces: list[int]

    @property
    def page_size(self) -> int: ...

    @property
    def memory(self) -> "HostMemory | None": ...

    def transfer(self, cmd: "Command", length: int, *, allow_sgl: bool = True) -> Any: ...

    def complete(self, cmd: "Command", status: int = 0, dnr: bool = False, more: bool = False) -> bool: ...

    def offload(self, cmd: "Command", work: Callable[[], None]) -> object:
        """Run blocking backend ``work`` off the IOThread; the command completes when it is done
        (returns DEFERRED, or None after running it inline when there is no IOThread)."""

    def run_deferred(self, cmd: "Command") -> bool: ...

    def post_async_event(self, event_type: int, info: int, log_page: int) -> None: ...

    def queue_aer(self, cmd: "Command") -> object: ...

    def log_page_read(self, log_id: int, rae: bool = False) -> None: ...

    def note_changed_namespace(self, nsid: int) -> None: ...

    def take_changed_namespaces(self, clear: bool = True) -> list[int]: ...

    def fatal(self, reason: str) -> None: ...
