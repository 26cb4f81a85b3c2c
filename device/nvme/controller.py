"""The NVMe controller: registers, queues, command dispatch, completions, AENs.

Everything here runs on the controller's IOThread (docs/internals.md): BAR0
accesses arrive from the vfio-user server on that thread, the mmapped doorbell
page is polled by an IOThread poller, and control-plane callers go through
``ctrl.iothread.run(...)``. So there is no locking, and command processing is
synchronous: a handler runs to completion (or returns ``DEFERRED`` and finishes
later with ``complete()``).

Data path, per processing round: for every active SQ, fetch at most
``config.sq_batch`` entries (fairness between queues, and a bound on how long
the socket waits), decode each into a ``Command``, dispatch through the admin
table (SQ 0) or the addressed namespace's table, post the CQE, and at the end
of the round raise one MSI-X interrupt per CQ that got entries (coalescing).
A full CQ keeps its completions pending and stops its SQs until the host moves
the CQ head. No exception escapes: NvmeError -> its status, DmaError -> Data
Transfer Error, anything else -> Internal Error plus a log line.
"""

from __future__ import annotations

import logging
import mmap
import os
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from nvshell.device.layout import Layout
from nvshell.device.nvme.commands import ADMIN, DEFERRED, NVM, Command
from nvshell.device.nvme.config import ControllerConfig
from nvshell.device.nvme.queues import CompletionQueue, SubmissionQueue
from nvshell.device.nvme.spec import (BAR0_SIZE, BROADCAST_NSID, CQE_SIZE_LOG2, DOORBELL_PAGE_OFFSET, DOORBELL_PAGE_SIZE,
                                      HOST_READ_OPCODES, HOST_WRITE_OPCODES, LBA_OPCODES, NVME_VERSION, SQE,
                                      SQE_SIZE_LOG2, AsyncEventType, LogPage, Reg, mdts_bytes, opcode_label)
from nvshell.device.nvme.status import NvmeError, Status, status_field, status_name
from nvshell.device.pci.function import PciFunction
from nvshell.device.vfio_user.dma import DmaError
from nvshell.device import trace as T

if TYPE_CHECKING:
    from nvshell.device.iothread import IOThread
    from nvshell.device.vfio_user.dma import GuestMemory
    from nvshell.device.vfio_user.interface import InterruptSink


_AEN_TYPE_NAMES = {int(t): t.name.lower().replace("_", "-") for t in AsyncEventType}



def _reg_name(offset: int) -> str:
    """'CC', 'ASQ+4', ... for register traces."""
    for reg in sorted(Reg, key=int, reverse=True):
        if reg <= offset < reg + 8 and reg != Reg.DOORBELLS:
            return reg.name if offset == reg else f"{reg.name}+{offset - reg}"
    return f"{offset:#x}"

log = logging.getLogger(__name__)

# ---------------------------------------------------------------- registers
CC_EN = 1 << 0
CC_SHN_SHIFT = 14
CC_SHN_MASK = 0x3 << CC_SHN_SHIFT
CSTS_RDY = 1 << 0
CSTS_CFS = 1 << 1
CSTS_SHST_MASK = 0x3 << 2
CSTS_SHST_COMPLETE = 0x2 << 2
CAP_TO = 0x0F                   # 7.5 s ready timeout (500 ms units)
#: CAP.CRMS: CRWMS (bit 59), mandatory since NVMe 2.0: ready "with media", the only
#: mode here (CRIMS, bit 60, clear: CC.CRIME stays 0).
CAP_CRWMS = 1 << 59
#: CRTO: CRWMT (15:0) and CRIMT (31:16) in 500 ms units; both CAP.TO.
CRTO = CAP_TO | (CAP_TO << 16)
CAP_CSS_NVM = 1 << 0
CAP_CSS_IOCS = 1 << 6           # "one or more I/O command sets": CC.CSS=110b, CNS 05/06
CSS_NVM = 0
CSS_ALL_IOCS = 6
IOSQES = SQE_SIZE_LOG2
IOCQES = CQE_SIZE_LOG2

#: Async event information, error type.
AER_INFO_INVALID_DB_REGISTER = 0x00
AER_INFO_INVALID_DB_VALUE = 0x01

#: Changed Namespace List: at most 1024 entries, then just FFFFFFFFh.
CHANGED_NS_MAX = 1024

_SQE_UNPACK = SQE.struct.unpack_from
_DMA_ERROR = int(Status.DATA_TRANSFER_ERROR)
_INTERNAL_ERROR = int(Status.INTERNAL_ERROR)

_dataxfer_map: Callable[..., Any] | None = None


def _map_data() -> Callable[..., Any]:
    """``device.nvme.dataxfer.map_data``, imported on first use (it imports us back)."""
    global _dataxfer_map
    if _dataxfer_map is None:
        from nvshell.device.nvme.dataxfer import map_data
        _dataxfer_map = map_data
    return _dataxfer_map


def _doorbell_layout(count: int) -> Layout:
    return Layout(f"Doorbells{count}", [(f"db{i}", "I") for i in range(count)])


_DOORBELL_LAYOUTS: dict[int, Layout] = {}


# ------------------------------------------------------------------ helpers
@dataclass
class ControllerHooks:
    """Tracing / fault-injection hooks; None (the default) costs one attribute check.

    ``on_submit(cmd)`` runs before dispatch: it may raise ``NvmeError`` (complete
    with that status), return ``DEFERRED`` (keep the command; finish it later
    with ``ctrl.complete``), or return None to let the command run normally.
    ``on_complete(cmd, status)`` sees every completion about to be posted.
    ``on_interrupt(cq_qid, vector)`` may return False to swallow the interrupt.
    """

    on_submit: Callable[[Command], Any] | None = None
    on_complete: Callable[[Command, int], None] | None = None
    on_interrupt: Callable[[int, int], bool] | None = None


class SmartStats:
    """Counters behind the SMART / Health Information log page.

    Byte tallies are kept exact; the log page handler converts them to the
    spec's "data units" (1000 x 512 bytes, rounded up).
    """

    def __init__(self) -> None:
        self.bytes_read = 0
        self.bytes_written = 0
        self.host_read_commands = 0
        self.host_write_commands = 0
        #: Nanoseconds spent processing I/O commands (Controller Busy Time is in minutes).
        self.busy_ns = 0
        self.power_cycles = 1
        self.unsafe_shutdowns = 0
        self.media_errors = 0
        self.critical_warning = 0
        #: Composite temperature in Kelvin (constant: there is no thermal model).
        self.temperature = 323
        #: time.monotonic() at power on: Power On Hours = (now - this) / 3600.
        self.power_on_base = time.monotonic()

    def add_read(self, nbytes: int) -> None:
        self.bytes_read += nbytes

    def add_write(self, nbytes: int) -> None:
        self.bytes_written += nbytes

    @staticmethod
    def data_units(nbytes: int) -> int:
        return (nbytes + 512_000 - 1) // 512_000

    @property
    def data_units_read(self) -> int:
        return self.data_units(self.bytes_read)

    @property
    def data_units_written(self) -> int:
        return self.data_units(self.bytes_written)

    @property
    def power_on_hours(self) -> int:
        return int((time.monotonic() - self.power_on_base) // 3600)

    @property
    def busy_minutes(self) -> int:
        return self.busy_ns // 60_000_000_000


@dataclass(frozen=True)
class ErrorLogEntry:
    """One Error Information log entry (the log page handler packs it)."""

    error_count: int
    sqid: int
    cid: int
    #: Status value ((SCT << 8) | SC) and its DNR bit.
    status: int
    dnr: bool
    nsid: int = 0
    lba: int = 0
    #: Parameter Error Location (FFFFh = not known).
    param_loc: int = 0xFFFF
    cmd_specific: int = 0


class ErrorLog:
    """Ring of the last ``capacity`` failed commands (Identify ELPE = capacity - 1)."""

    def __init__(self, capacity: int = 64):
        self.capacity = capacity
        #: Errors ever recorded: the Error Count of the newest entry, and SMART's
        #: "Number of Error Information Log Entries".
        self.error_count = 0
        self._ring: deque[ErrorLogEntry] = deque(maxlen=capacity)

    def record(self, sqid: int, cid: int, status: int, dnr: bool = False, *, nsid: int = 0, lba: int = 0,
               param_loc: int = 0xFFFF, cmd_specific: int = 0) -> ErrorLogEntry:
        self.error_count += 1
        entry = ErrorLogEntry(self.error_count, sqid, cid, int(status), dnr, nsid, lba, param_loc, cmd_specific)
        self._ring.append(entry)
        return entry

    def entries(self) -> list[ErrorLogEntry]:
        """Newest first, as the log page lists them."""
        return list(reversed(self._ring))

    def clear(self) -> None:
        self._ring.clear()

    def __len__(self) -> int:
        return len(self._ring)


@dataclass
class Features:
    """Current values of the Set/Get Features attributes (admin_features.py).

    Other modules read them: Identify looks at nothing here, but Flush and the
    Write path consult ``volatile_wc``; the SMART log uses the thresholds.
    """

    arbitration: int = 0x7                  # AB=111b: no burst limit
    power_state: int = 0                    # PS | WH << 5
    #: (TMPSEL, THSEL) -> Kelvin; THSEL 0 = over, 1 = under. Only TMPSEL 0 (composite).
    temp_over: int = 0x157                  # 343 K = 70 C
    temp_under: int = 0
    #: Error Recovery is namespace specific: nsid -> TLER (100 ms units); DULBE unsupported.
    error_recovery: dict[int, int] = field(default_factory=dict)
    volatile_wc: bool = True
    int_coalescing: int = 0                 # THR | TIME << 8 (accepted, not applied)
    #: vector -> Coalescing Disable bit.
    int_vector_cd: dict[int, bool] = field(default_factory=dict)
    write_atomicity: int = 0
    async_event_config: int = 0
    #: Host's timestamp in ms and the monotonic time it was set (None: since reset).
    timestamp_ms: int = 0
    timestamp_set_at: float | None = None
    timestamp_base: float = field(default_factory=time.monotonic)
    host_behavior: bytes = bytes(512)
    #: Number of Queues requested by the host (0-based NSQR, NCQR), or None.
    num_queues_requested: tuple[int, int] | None = None
    #: Keep Alive Timeout in ms (0: no timer); ``admin_keepalive`` runs the timer.
    keep_alive_ms: int = 0

    def timestamp_now(self) -> tuple[int, int]:
        """(milliseconds, origin): origin 1 if the host set it, else 0 (since reset)."""
        now = time.monotonic()
        if self.timestamp_set_at is None:
            return int((now - self.timestamp_base) * 1000) & 0xFFFFFFFFFFFF, 0
        return (self.timestamp_ms + int((now - self.timestamp_set_at) * 1000)) & 0xFFFFFFFFFFFF, 1


# --------------------------------------------------------------- controller
class Controller:
    """One NVMe controller behind one PCIe function (see module docstring)."""

    #: Called (on the IOThread) each time a host enables a controller: at power-on
    #: and after every reset. Admin modules that keep history register here (the
    #: Persistent Event Log's Power-on or Reset event, firmware activation at reset).
    enable_hooks: list[Callable[["Controller"], None]] = []

    def __init__(self, config: ControllerConfig, subsystem: Any = None, iothread: "IOThread | None" = None):
        self.config = config
        self.subsystem = subsystem
        self.iothread = iothread
        #: Controller ID; the subsystem overwrites it in ``add_controller``.
        self.cntlid = config.cntlid or 1
        #: Name in traces, events and fault rules (the device id, set by the object model).
        self.name = config.serial or f"cntlid{self.cntlid}"
        #: Attached and active namespaces of THIS controller, by NSID.
        self.namespaces: dict[int, Any] = {}
        self.hooks = ControllerHooks()
        #: While a long operation restricts what may run (Sanitize): ``admission(cmd)``
        #: returns the status to refuse a command with, or 0. None costs one check.
        self.admission: Callable[[Command], int] | None = None
        self.stats = SmartStats()
        self.error_log = ErrorLog()
        self.features = Features()
        #: Changed Namespace List log contents ([0xffffffff] after overflow).
        self.changed_namespaces: list[int] = []
        self.memory: "GuestMemory | None" = None
        self.fatal_reason: str | None = None
        #: Set by ``surprise_remove``: BAR0 reads all ones and ignores writes, as a
        #: PCIe function gone from the bus.
        self.removed = False

        self.cap = (config.mqes & 0xFFFF) | (1 << 16) | (CAP_TO << 24) \
            | ((CAP_CSS_NVM | CAP_CSS_IOCS) << 37) | CAP_CRWMS
        self.vs = NVME_VERSION
        self.cc = 0
        self.csts = 0
        self.aqa = 0
        self.asq = 0
        self.acq = 0
        self.intms = 0

        nq = config.max_ioqpairs + 1
        self._sqs: list[SubmissionQueue | None] = [None] * nq
        self._cqs: list[CompletionQueue | None] = [None] * nq
        #: Active SQs in QID order (rebuilt on create/delete; iterated every round).
        self._sq_order: tuple[SubmissionQueue, ...] = ()
        self._ready = False
        self._in_round = False
        self._more = False
        self._continue_scheduled = False
        self._irq_cqs: list[CompletionQueue] = []
        self._aer_cmds: deque[Command] = deque()
        self._events: deque[tuple[int, int, int]] = deque()
        #: Event type -> log page that unmasks it once read.
        self._masked: dict[int, int] = {}
        self._deliver_pending = False
        self._poller_on = False

        self._db_fd: int | None = None
        self._db_map: mmap.mmap | None = None
        self._db_bytes = 0
        self._db_last = bytearray()
        if config.doorbells == "mmap":
            self._db_fd, self._db_map = _doorbell_page()
        self.pci = PciFunction(self, msix_vectors=config.max_intr_vectors, doorbell_fd=self._db_fd,
                               bar0_size=BAR0_SIZE, doorbell_area=(DOORBELL_PAGE_OFFSET, DOORBELL_PAGE_SIZE),
                               vendor_id=config.vendor_id, device_id=config.device_id,
                               subsystem_vendor_id=config.ssvid, subsystem_id=0)
        if subsystem is not None:
            subsystem.add_controller(self, config.cntlid)

    def __repr__(self) -> str:
        return f"Controller(cntlid={self.cntlid}, csts={self.csts:#x})"

    # ------------------------------------------------------------ identity
    @property
    def subnqn(self) -> str:
        if self.subsystem is not None:
            return str(self.subsystem.subnqn)
        return f"nqn.2024-01.io.nvshell:ctrl-{self.config.serial or self.cntlid}"

    @property
    def page_size(self) -> int:
        return 4096 << ((self.cc >> 7) & 0xF)

    @property
    def enabled(self) -> bool:
        return bool(self.csts & CSTS_RDY)

    # ----------------------------------------------------- Bar0Handler hooks
    def bind(self, memory: "GuestMemory", interrupts: "InterruptSink") -> None:
        """Called once by the PCI function when the vfio-user server is created."""
        self.memory = memory

    def client_connected(self) -> None:
        pass

    def client_disconnected(self) -> None:
        """The VM is gone: count an unsafe shutdown if it did not shut us down, reset."""
        if self.csts & CSTS_RDY and (self.csts & CSTS_SHST_MASK) != CSTS_SHST_COMPLETE:
            self.stats.unsafe_shutdowns += 1
        self.reset()
        self._renew_doorbells()

    def _renew_doorbells(self) -> None:
        """A fresh doorbell page for the next client: a former client that kept its
        mapping of the old memfd must not ring the next client's doorbells."""
        if self._db_fd is None:
            return
        old_fd, old_map = self._db_fd, self._db_map
        self._db_fd, self._db_map = _doorbell_page()
        self.pci.doorbell_fd = self._db_fd
        if old_map is not None:
            try:
                old_map.close()
            except BufferError:
                pass
        os.close(old_fd)

    def dma_unmapping(self, addr: int, size: int) -> None:
        """Nothing to drop: queue entries are looked up per access, views never kept."""

    def reset(self) -> None:
        """Function reset (DEVICE_RESET, FLR, client gone): registers to power-on values."""
        if T.NVME_CTRL_RESET.enabled:
            T.NVME_CTRL_RESET.emit(ctrl=self.name, kind="device")
        self._controller_reset()
        self.cc = self.csts = self.aqa = self.asq = self.acq = self.intms = 0

    # ------------------------------------------------------------ registers
    def _reg32(self, off: int) -> int:
        if off == Reg.CAP:
            return self.cap & 0xFFFFFFFF
        if off == Reg.CAP + 4:
            return self.cap >> 32
        if off == Reg.VS:
            return self.vs
        if off in (Reg.INTMS, Reg.INTMC):
            return self.intms
        if off == Reg.CC:
            return self.cc
        if off == Reg.CSTS:
            return self.csts
        if off == Reg.AQA:
            return self.aqa
        if off == Reg.ASQ:
            return self.asq & 0xFFFFFFFF
        if off == Reg.ASQ + 4:
            return self.asq >> 32
        if off == Reg.ACQ:
            return self.acq & 0xFFFFFFFF
        if off == Reg.ACQ + 4:
            return self.acq >> 32
        if off == Reg.CRTO:
            return CRTO
        if DOORBELL_PAGE_OFFSET <= off < DOORBELL_PAGE_OFFSET + DOORBELL_PAGE_SIZE and self._db_map is not None:
            return int.from_bytes(self._db_map[off:off + 4], "little")
        return 0  # reserved, NSSR, CMB/PMR/BP registers (absent), trapped doorbells

    def read(self, offset: int, size: int) -> int:
        """BAR0 read of 1/2/4/8 bytes; any alignment works (combined from dwords)."""
        if self.removed:
            return (1 << (8 * size)) - 1
        start = offset & ~3
        value = 0
        for i, off in enumerate(range(start, offset + size, 4)):
            value |= self._reg32(off) << (32 * i)
        value = (value >> (8 * (offset - start))) & ((1 << (8 * size)) - 1)
        if T.NVME_REG_READ.enabled and offset < DOORBELL_PAGE_OFFSET:
            T.NVME_REG_READ.emit(ctrl=self.name, reg=_reg_name(offset), offset=offset, size=size, value=value)
        return value

    def write(self, offset: int, size: int, value: int) -> None:
        """BAR0 write: registers or doorbells; a guest mistake is ignored, never raised."""
        if self.removed:
            return
        if T.NVME_REG_WRITE.enabled and offset < DOORBELL_PAGE_OFFSET:
            T.NVME_REG_WRITE.emit(ctrl=self.name, reg=_reg_name(offset), offset=offset, size=size, value=value)
        if offset >= DOORBELL_PAGE_OFFSET:
            if offset < DOORBELL_PAGE_OFFSET + DOORBELL_PAGE_SIZE:
                self._doorbell_region_write(offset, size, value)
            return
        if size == 8 and not offset & 7:
            self._write32(offset, value & 0xFFFFFFFF)
            self._write32(offset + 4, value >> 32)
            return
        start = offset & ~3
        shift = 8 * (offset - start)
        if size == 4 and not shift:
            self._write32(offset, value)
            return
        if offset + size > start + 4:
            # Straddles two dwords (an odd access): do it byte by byte.
            for i in range(size):
                self.write(offset + i, 1, (value >> (8 * i)) & 0xFF)
            return
        mask = ((1 << (8 * size)) - 1) << shift
        if start in (Reg.INTMS, Reg.INTMC):
            self._write32(start, (value << shift) & mask)  # set/clear only the bytes written
        else:
            self._write32(start, (self._reg32(start) & ~mask) | ((value << shift) & mask))

    def _write32(self, off: int, value: int) -> None:
        value &= 0xFFFFFFFF
        if off == Reg.INTMS:
            self.intms |= value
        elif off == Reg.INTMC:
            self.intms &= ~value
        elif off == Reg.CC:
            self._write_cc(value)
        elif off == Reg.AQA:
            self.aqa = value & 0x0FFF0FFF
        elif off == Reg.ASQ:
            self.asq = (self.asq & ~0xFFFFFFFF) | value
        elif off == Reg.ASQ + 4:
            self.asq = (self.asq & 0xFFFFFFFF) | (value << 32)
        elif off == Reg.ACQ:
            self.acq = (self.acq & ~0xFFFFFFFF) | value
        elif off == Reg.ACQ + 4:
            self.acq = (self.acq & 0xFFFFFFFF) | (value << 32)
        # CAP, VS, CSTS: read-only; NSSR: subsystem reset unsupported (NSSRS=0); rest reserved.

    def _write_cc(self, value: int) -> None:
        old = self.cc
        if value & CC_EN and not old & CC_EN:
            self.cc = value
            reason = self._enable_error()
            if reason:
                log.warning("controller %d: enable failed: %s", self.cntlid, reason)
                self.fatal_reason = reason
                self.csts = CSTS_CFS
            else:
                self._start()
                self.csts = CSTS_RDY
                if T.NVME_CTRL_ENABLE.enabled:
                    T.NVME_CTRL_ENABLE.emit(ctrl=self.name, cc=value)
        elif not value & CC_EN and old & CC_EN:
            if T.NVME_CTRL_DISABLE.enabled:
                T.NVME_CTRL_DISABLE.emit(ctrl=self.name, reason="cc.en")
            self._controller_reset()
            self.cc = value
            self.csts = 0
        else:
            self.cc = value
        new_shn = value & CC_SHN_MASK
        if new_shn and not old & CC_SHN_MASK:
            self._shutdown_notify()
            self.csts = (self.csts & ~CSTS_SHST_MASK) | CSTS_SHST_COMPLETE
        elif not new_shn and old & CC_SHN_MASK:
            self.csts &= ~CSTS_SHST_MASK

    def _enable_error(self) -> str | None:
        """Why CC.EN=1 cannot be honoured (-> CSTS.CFS), or None."""
        cc = self.cc
        css = (cc >> 4) & 7
        if css not in (CSS_NVM, CSS_ALL_IOCS):
            return f"CC.CSS {css} not supported"
        if (cc >> 7) & 0xF:
            return f"CC.MPS {(cc >> 7) & 0xF} outside MPSMIN..MPSMAX (0..0)"
        if (cc >> 11) & 7:
            return f"CC.AMS {(cc >> 11) & 7} not supported"
        if (cc >> 16) & 0xF != IOSQES:
            return f"CC.IOSQES {(cc >> 16) & 0xF} (need {IOSQES})"
        if (cc >> 20) & 0xF != IOCQES:
            return f"CC.IOCQES {(cc >> 20) & 0xF} (need {IOCQES})"
        asqs, acqs = self.aqa & 0xFFF, (self.aqa >> 16) & 0xFFF
        if not asqs or not acqs:
            return f"AQA {self.aqa:#x}: admin queues need at least 2 entries"
        for name, addr, size in (("ASQ", self.asq, (asqs + 1) * 64), ("ACQ", self.acq, (acqs + 1) * 16)):
            if not addr or addr & (self.page_size - 1):
                return f"{name} {addr:#x} is not page aligned"
            if not self._mapped(addr, size):
                return f"{name} [{addr:#x}, +{size:#x}) is not in guest memory"
        return None

    def _mapped(self, addr: int, size: int) -> bool:
        """Is every page of [addr, addr+size) in guest memory (may span DMA regions)."""
        memory = self.memory
        if memory is None:
            return False
        end = addr + size
        pos = addr
        while pos < end:
            if pos not in memory:
                return False
            pos = (pos & ~0xFFF) + 0x1000
        return (end - 1) in memory

    def _start(self) -> None:
        if self._db_map is not None:
            # Watch the slots of every valid QID (a write to a queue that does not
            # exist must raise an AEN), capped at the page: one small slice per poll.
            self._db_bytes = min(8 * len(self._sqs), DOORBELL_PAGE_SIZE)
            self._db_map[DOORBELL_PAGE_OFFSET:DOORBELL_PAGE_OFFSET + DOORBELL_PAGE_SIZE] = bytes(DOORBELL_PAGE_SIZE)
            self._db_last = bytearray(self._db_bytes)
        acq = CompletionQueue(0, self.acq, ((self.aqa >> 16) & 0xFFF) + 1, True, 0)
        asq = SubmissionQueue(0, self.asq, (self.aqa & 0xFFF) + 1, acq)
        self._add_queues(acq, asq)
        self._ready = True
        self.fatal_reason = None
        if self._db_map is not None and self.iothread is not None and not self._poller_on:
            self.iothread.add_poller(self.poll_doorbells)
            self._poller_on = True
        for hook in Controller.enable_hooks:
            try:
                hook(self)
            except Exception:
                log.exception("controller %d: enable hook %r failed", self.cntlid, hook)

    def _shutdown_notify(self) -> None:
        """CC.SHN: make written data durable (the host waits for SHST=complete)."""
        for ns in list(self.namespaces.values()):
            backend = getattr(ns, "backend", None)
            try:
                if backend is not None:
                    backend.flush()
            except Exception:
                log.exception("controller %d: flush of nsid %s at shutdown failed", self.cntlid,
                              getattr(ns, "nsid", "?"))

    def _controller_reset(self) -> None:
        """Controller Level Reset: queues deleted, AERs and events dropped, features to defaults."""
        self._ready = False
        if self._poller_on and self.iothread is not None:
            self.iothread.remove_poller(self.poll_doorbells)
        self._poller_on = False
        for sq in self._sq_order:
            sq.deleted = True
            sq.deferred.clear()
        self._sqs = [None] * len(self._sqs)
        self._cqs = [None] * len(self._cqs)
        self._sq_order = ()
        self._irq_cqs.clear()
        self._aer_cmds.clear()
        self._events.clear()
        self._masked.clear()
        self._more = False
        self.features = Features()
        if self._db_map is not None:
            self._db_map[DOORBELL_PAGE_OFFSET:DOORBELL_PAGE_OFFSET + DOORBELL_PAGE_SIZE] = bytes(DOORBELL_PAGE_SIZE)
        self._db_bytes = 0
        self._db_last = bytearray()

    def surprise_remove(self) -> None:
        """device_del while a host runs (IOThread only): a Persistent Internal Error AEN makes
        Linux reset the controller at once; the reset then finds the function gone (reads all
        ones) and the host removes the device, failing its I/O over to other paths, instead of
        hanging until an I/O timeout."""
        self.post_async_event(AsyncEventType.ERROR, 0x03, LogPage.ERROR)
        self.removed = True
        self._ready = False
        self._more = False

    def fatal(self, reason: str) -> None:
        """Controller Fatal Status: stop processing until the host resets us."""
        log.error("controller %d: fatal: %s", self.cntlid, reason)
        if T.NVME_CTRL_FATAL.enabled:
            T.NVME_CTRL_FATAL.emit(ctrl=self.name, reason=reason)
        self.fatal_reason = reason
        self.csts |= CSTS_CFS
        self._ready = False
        self._more = False

    # --------------------------------------------------------------- queues
    def sq(self, qid: int) -> SubmissionQueue | None:
        return self._sqs[qid] if 0 <= qid < len(self._sqs) else None

    def cq(self, qid: int) -> CompletionQueue | None:
        return self._cqs[qid] if 0 <= qid < len(self._cqs) else None

    def _add_queues(self, *queues: SubmissionQueue | CompletionQueue) -> None:
        for q in queues:
            if isinstance(q, SubmissionQueue):
                self._sqs[q.qid] = q
                q.cq.sqs.append(q)
            else:
                self._cqs[q.qid] = q
            self._zero_doorbells(q.qid, isinstance(q, CompletionQueue))
        self._rebuild()

    def create_cq(self, qid: int, base: int, size: int, ien: bool, vector: int) -> CompletionQueue:
        cq = CompletionQueue(qid, base, size, ien, vector)
        self._add_queues(cq)
        if qid and T.NVME_CREATE_CQ.enabled:
            T.NVME_CREATE_CQ.emit(ctrl=self.name, qid=qid, size=size, vector=vector, ien=bool(ien))
        return cq

    def create_sq(self, qid: int, base: int, size: int, cq: CompletionQueue, qprio: int = 0) -> SubmissionQueue:
        sq = SubmissionQueue(qid, base, size, cq, qprio)
        self._add_queues(sq)
        if qid and T.NVME_CREATE_SQ.enabled:
            T.NVME_CREATE_SQ.emit(ctrl=self.name, qid=qid, cqid=cq.qid, size=size, prio=qprio)
        return sq

    def delete_sq(self, qid: int) -> None:
        """Remove an I/O SQ; commands it still holds complete with SQ Deletion Abort."""
        sq = self._sqs[qid]
        if sq is None:
            return
        if T.NVME_DELETE_SQ.enabled:
            T.NVME_DELETE_SQ.emit(ctrl=self.name, qid=qid)
        for cmd in list(sq.deferred.values()):
            self.complete(cmd, Status.SQ_DELETION_ABORT)
        sq.deleted = True
        self._sqs[qid] = None
        try:
            sq.cq.sqs.remove(sq)
        except ValueError:
            pass
        self._zero_doorbells(qid, False)
        self._rebuild()

    def delete_cq(self, qid: int) -> None:
        cq = self._cqs[qid]
        if cq is None:
            return
        if T.NVME_DELETE_CQ.enabled:
            T.NVME_DELETE_CQ.emit(ctrl=self.name, qid=qid)
        self._cqs[qid] = None
        cq.pending.clear()
        if cq in self._irq_cqs:
            self._irq_cqs.remove(cq)
        self._zero_doorbells(qid, True)
        self._rebuild()

    def _rebuild(self) -> None:
        self._sq_order = tuple(q for q in self._sqs if q is not None)

    def _zero_doorbells(self, qid: int, is_cq: bool) -> None:
        """A new or deleted queue's doorbell starts at 0 (stale values would be lost writes)."""
        if self._db_map is None:
            return
        index = 2 * qid + int(is_cq)
        off = DOORBELL_PAGE_OFFSET + 4 * index
        self._db_map[off:off + 4] = bytes(4)
        if 4 * index + 4 <= len(self._db_last):
            self._db_last[4 * index:4 * index + 4] = bytes(4)

    @property
    def io_queues_exist(self) -> bool:
        return any(q is not None for q in self._sqs[1:]) or any(q is not None for q in self._cqs[1:])

    # ------------------------------------------------------------ doorbells
    def _doorbell_region_write(self, offset: int, size: int, value: int) -> None:
        if size == 8 and not offset & 7:
            self._doorbell_region_write(offset, 4, value & 0xFFFFFFFF)
            self._doorbell_region_write(offset + 4, 4, value >> 32)
            return
        if size != 4 or offset & 3:
            log.debug("controller %d: ignoring %d-byte doorbell write at %#x", self.cntlid, size, offset)
            return
        if self._db_map is not None:
            self._db_map[offset:offset + 4] = (value & 0xFFFFFFFF).to_bytes(4, "little")
            self.poll_doorbells()
            return
        self._ring((offset - DOORBELL_PAGE_OFFSET) >> 2, value)
        self._run()

    def poll_doorbells(self) -> bool:
        """IOThread poller (mmap mode): process doorbell slots that changed since the last look.

        Cost when idle: one slice of the active queues' slots and a bytes compare.
        """
        if not self._ready:
            return False
        nbytes = self._db_bytes
        cur = self._db_map[DOORBELL_PAGE_OFFSET:DOORBELL_PAGE_OFFSET + nbytes]  # type: ignore[index]
        if cur != self._db_last:
            count = nbytes // 4
            layout = _DOORBELL_LAYOUTS.get(count)
            if layout is None:
                layout = _DOORBELL_LAYOUTS[count] = _doorbell_layout(count)
            new = layout.struct.unpack_from(cur)
            old = layout.struct.unpack_from(self._db_last)
            self._db_last = bytearray(cur)
            for index in range(count):
                if new[index] != old[index]:
                    self._ring(index, new[index])
            self._more = self._round()
            return True
        if self._more:
            self._more = self._round()
            return True
        return False

    def _ring(self, index: int, value: int) -> None:
        """One doorbell write: SQ y tail at index 2y, CQ y head at 2y+1."""
        if not self._ready:
            return
        qid = index >> 1
        if T.NVME_DOORBELL.enabled:
            T.NVME_DOORBELL.emit(ctrl=self.name, qid=qid, kind="cq" if index & 1 else "sq", value=value)
        if index & 1:
            cq = self._cqs[qid] if qid < len(self._cqs) else None
            if cq is None:
                self._invalid_doorbell(AER_INFO_INVALID_DB_REGISTER, index, value)
            elif value >= cq.size:
                self._invalid_doorbell(AER_INFO_INVALID_DB_VALUE, index, value)
            else:
                cq.head = value
                if cq.pending:
                    self._flush_pending(cq)
        else:
            sq = self._sqs[qid] if qid < len(self._sqs) else None
            if sq is None:
                self._invalid_doorbell(AER_INFO_INVALID_DB_REGISTER, index, value)
            elif value >= sq.size:
                self._invalid_doorbell(AER_INFO_INVALID_DB_VALUE, index, value)
            else:
                sq.tail = value

    def _invalid_doorbell(self, info: int, index: int, value: int) -> None:
        log.debug("controller %d: invalid doorbell write %#x to %s %d", self.cntlid, value,
                  "CQ" if index & 1 else "SQ", index >> 1)
        self.post_async_event(AsyncEventType.ERROR, info, LogPage.ERROR)

    def _flush_pending(self, cq: CompletionQueue) -> None:
        memory = self.memory
        pending = cq.pending
        try:
            while pending and not cq.full():
                if not cq.irq_pending:
                    self._irq_cqs.append(cq)
                cq.write_entry(memory, *pending[0])
                pending.popleft()
        except DmaError as exc:
            self.fatal(f"CQ {cq.qid} not in guest memory: {exc}")
        if not self._in_round:
            self._fire_irqs()

    def _run(self) -> None:
        """One round now; if queues still hold work, continue soon (keeps the socket served)."""
        if self._round():
            self._schedule_continue()

    def _schedule_continue(self) -> None:
        if self._poller_on:
            self._more = True
        elif self.iothread is not None and not self._continue_scheduled:
            self._continue_scheduled = True
            self.iothread.call_soon(self._continue)

    def _continue(self) -> None:
        self._continue_scheduled = False
        self._run()

    def process(self) -> bool:
        """Run one processing round (tests, or a caller without a poller); True if work remains."""
        return self._round()

    # ----------------------------------------------------------- processing
    def _round(self) -> bool:
        if not self._ready:
            return False
        more = False
        batch = self.config.sq_batch
        io_started = 0
        self._in_round = True
        try:
            for sq in self._sq_order:
                if sq.head == sq.tail or sq.deleted:
                    continue
                cq = sq.cq
                n = batch
                if sq.qid and not io_started:
                    io_started = time.monotonic_ns()
                while sq.head != sq.tail:
                    if cq.pending or cq.full():
                        break       # resumed by the CQ head doorbell
                    if not n:
                        more = True
                        break
                    n -= 1
                    self._execute(sq)
                    if not self._ready or sq.deleted:
                        break
                if not self._ready:
                    return False
        finally:
            self._in_round = False
            if io_started:
                self.stats.busy_ns += time.monotonic_ns() - io_started
            if self._irq_cqs:
                self._fire_irqs()
        return more

    def _fire_irqs(self) -> None:
        hook = self.hooks.on_interrupt
        trigger = self.pci.trigger
        for cq in self._irq_cqs:
            cq.irq_pending = False
            if cq.ien and self._cqs[cq.qid] is cq:
                if hook is None or hook(cq.qid, cq.vector) is not False:
                    if T.NVME_IRQ.enabled:
                        T.NVME_IRQ.emit(ctrl=self.name, vector=cq.vector)
                    trigger(cq.vector)
        self._irq_cqs.clear()

    def _execute(self, sq: SubmissionQueue) -> None:
        head = sq.head
        try:
            raw = _SQE_UNPACK(self.memory.view(sq.base + (head << SQE_SIZE_LOG2), SQE.size))  # type: ignore[union-attr]
        except (DmaError, AttributeError) as exc:
            self.fatal(f"SQ {sq.qid} entry {head} not in guest memory: {exc}")
            return
        head += 1
        if head == sq.size:
            head = 0
        sq.head = head
        sq.fetched += 1
        cmd = Command.from_sqe(sq.qid, raw)
        hooks = self.hooks
        if hooks.on_complete is not None or T.NVME_CMD_COMPLETE.enabled:
            cmd.fetched_ns = time.monotonic_ns()
        if T.NVME_CMD_SUBMIT.enabled:
            self._trace_submit(cmd)
        if hooks.on_submit is not None:
            try:
                if hooks.on_submit(cmd) is DEFERRED:
                    self._defer(sq, cmd)
                    return
            except NvmeError as exc:
                self._post(sq, cmd, exc.status, exc.dnr, exc.more)
                return
            except Exception:
                log.exception("controller %d: on_submit hook failed", self.cntlid)
        outcome = self._dispatch(cmd)
        if outcome is None:
            self._defer(sq, cmd)
        else:
            self._post(sq, cmd, *outcome)

    def _dispatch(self, cmd: Command) -> tuple[int, bool, bool] | None:
        """Look up and run the command's handler: (status, dnr, more), or None when the
        handler keeps the command (DEFERRED). Never raises."""
        try:
            if cmd.sqid:
                ns = self.namespaces.get(cmd.nsid)
                info = (NVM if ns is None else ns.commands).get(cmd.opcode)
                if info is None:
                    raise NvmeError(Status.INVALID_OPCODE)
                if ns is None:
                    if info.nsid == "required":
                        # Shared and still reachable through another controller (detached
                        # here while I/O was in flight): a path error, which a multipath host
                        # fails over, instead of an error it returns to the application.
                        if self.subsystem is not None and any(
                                c != self.cntlid for c in self.subsystem.attached_controllers(cmd.nsid)):
                            raise NvmeError(Status.INTERNAL_PATH_ERROR, dnr=False)
                        raise NvmeError(Status.INVALID_NSID)
                elif not ns.ready:
                    raise NvmeError(Status.NS_NOT_READY, dnr=False)
                cmd.ns = ns
            else:
                info = ADMIN.get(cmd.opcode)
                if info is None:
                    raise NvmeError(Status.INVALID_OPCODE)
                if info.nsid != "none":
                    self._lookup_admin_ns(cmd, info.nsid)
            if cmd.flags & 0x3:
                raise NvmeError(Status.INVALID_FIELD)   # fused operations unsupported
            if self.admission is not None:
                refused = self.admission(cmd)
                if refused:
                    raise NvmeError(refused, dnr=False)
            if info.handler(self, cmd) is DEFERRED:
                return None
        except NvmeError as exc:
            if exc.result:
                cmd.result = exc.result
            return exc.status, exc.dnr, exc.more
        except DmaError:
            return _DMA_ERROR, False, False
        except Exception:
            log.exception("controller %d: command %#x on SQ %d (cid %d) failed", self.cntlid, cmd.opcode,
                          cmd.sqid, cmd.cid)
            return _INTERNAL_ERROR, True, False
        return 0, False, False

    def run_deferred(self, cmd: Command) -> bool:
        """Execute a command an ``on_submit`` hook held back (a delay fault), and complete
        it; False if it is gone already (aborted, SQ deleted, controller reset)."""
        sq = self._sqs[cmd.sqid] if 0 <= cmd.sqid < len(self._sqs) else None
        if sq is None or sq.deferred.get(cmd.cid) is not cmd:
            return False
        outcome = self._dispatch(cmd)
        if outcome is None:
            return True             # the handler keeps it (an AER): it completes later
        return self.complete(cmd, outcome[0], outcome[1], outcome[2])

    def _trace_submit(self, cmd: Command) -> None:
        if cmd.sqid:
            slba, nlb = cmd.cdw10 | (cmd.cdw11 << 32), (cmd.cdw12 & 0xFFFF) + 1
        else:
            slba = nlb = 0
        T.NVME_CMD_SUBMIT.emit(ctrl=self.name, qid=cmd.sqid, cid=cmd.cid, opcode=opcode_label(cmd.sqid, cmd.opcode),
                               nsid=cmd.nsid,
                               slba=slba, nlb=nlb, cdw10=cmd.cdw10, cdw11=cmd.cdw11)

    def _trace_complete(self, cmd: Command, status: int) -> None:
        lat = (time.monotonic_ns() - cmd.fetched_ns) / 1000 if cmd.fetched_ns else 0.0
        T.NVME_CMD_COMPLETE.emit(ctrl=self.name, qid=cmd.sqid, cid=cmd.cid,
                                 opcode=opcode_label(cmd.sqid, cmd.opcode),
                                 status=status_name(status), lat_us=lat, result=cmd.result)

    def _lookup_admin_ns(self, cmd: Command, mode: str) -> None:
        nsid = cmd.nsid
        ns = self.namespaces.get(nsid)
        if mode == "required":
            if ns is None:
                raise NvmeError(Status.INVALID_NSID)
            if not ns.ready:
                raise NvmeError(Status.NS_NOT_READY, dnr=False)
        cmd.ns = ns

    def _defer(self, sq: SubmissionQueue, cmd: Command) -> None:
        sq.deferred[cmd.cid] = cmd
        if self._deliver_pending:
            self._deliver_pending = False
            self._deliver_events()

    def _post(self, sq: SubmissionQueue, cmd: Command, status: int, dnr: bool, more: bool = False) -> None:
        if status:
            if status not in (Status.ABORT_REQUESTED, Status.SQ_DELETION_ABORT):
                lba = cmd.cdw10 | (cmd.cdw11 << 32) if sq.qid and cmd.opcode in LBA_OPCODES else 0
                lba = cmd.extra.get("error_lba", lba)  # a PI check names the failing block
                self.error_log.record(sq.qid, cmd.cid, status, dnr, nsid=cmd.nsid, lba=lba)
        elif sq.qid:
            if cmd.opcode in HOST_READ_OPCODES:
                self.stats.host_read_commands += 1
            elif cmd.opcode in HOST_WRITE_OPCODES:
                self.stats.host_write_commands += 1
        if self.hooks.on_complete is not None:
            try:
                self.hooks.on_complete(cmd, status)
            except Exception:
                log.exception("controller %d: on_complete hook failed", self.cntlid)
        if T.NVME_CMD_COMPLETE.enabled:
            self._trace_complete(cmd, status)
        cq = sq.cq
        sf = status_field(status, dnr, more) << 1
        if cq.pending or cq.full():
            cq.pending.append((cmd.result, cmd.result_dw1, sq.head, sq.qid, cmd.cid, sf))
            return
        if not cq.irq_pending:
            self._irq_cqs.append(cq)
        try:
            cq.write_entry(self.memory, cmd.result, cmd.result_dw1, sq.head, sq.qid, cmd.cid, sf)
        except (DmaError, AttributeError) as exc:
            self.fatal(f"CQ {cq.qid} not in guest memory: {exc}")

    def complete(self, cmd: Command, status: int = 0, dnr: bool = False, more: bool = False) -> bool:
        """Complete a command a handler kept (DEFERRED). False if it is gone already
        (aborted, its SQ deleted, or the controller reset since)."""
        sq = self._sqs[cmd.sqid] if 0 <= cmd.sqid < len(self._sqs) else None
        if sq is None or sq.deferred.get(cmd.cid) is not cmd:
            return False
        del sq.deferred[cmd.cid]
        if cmd.sqid == 0:
            for i, aer in enumerate(self._aer_cmds):
                if aer is cmd:
                    del self._aer_cmds[i]
                    break
        self._post(sq, cmd, int(status), dnr, more)
        if not self._in_round:
            self._fire_irqs()
        return True

    # ------------------------------------------------------------ data path
    def transfer(self, cmd: Command, length: int, *, allow_sgl: bool = True) -> Any:
        """Map the command's data buffer (PRP or SGL per PSDT): a ``DataMap``.

        Admin commands never use SGLs (the spec requires PRPs for them).
        """
        return _map_data()(self.memory, cmd, length, page_size=self.page_size,
                           allow_sgl=allow_sgl and cmd.sqid != 0, mdts_bytes=mdts_bytes(self.config.mdts))

    # ---------------------------------------------------- asynchronous events
    def queue_aer(self, cmd: Command) -> object:
        """Asynchronous Event Request: hold ``cmd`` until an event comes (returns DEFERRED)."""
        if len(self._aer_cmds) >= self.config.aerl + 1:
            raise NvmeError(Status.ASYNC_EVENT_REQUEST_LIMIT_EXCEEDED)
        self._aer_cmds.append(cmd)
        self._deliver_pending = True
        return DEFERRED

    @property
    def outstanding_aers(self) -> int:
        return len(self._aer_cmds)

    def post_async_event(self, event_type: int, info: int, log_page: int) -> None:
        """Queue an event for the host; an outstanding AER completes with it, else it waits
        (at most ``max_aer_retention`` kept). An event type reported stays masked until
        the host reads its log page (``log_page_read``)."""
        event = (int(event_type), int(info), int(log_page))
        if event[0] == AsyncEventType.NOTICE and not self.features.async_event_config >> (8 + event[1]) & 1:
            return  # the host did not enable this notice (Asynchronous Event Configuration)
        if event in self._events:
            return  # the same notice is already waiting: one is enough
        if len(self._events) >= self.config.max_aer_retention:
            log.debug("controller %d: async event %s dropped (retention full)", self.cntlid, event)
            return
        self._events.append(event)
        if T.NVME_AEN_QUEUED.enabled:
            T.NVME_AEN_QUEUED.emit(ctrl=self.name, aen_type=_AEN_TYPE_NAMES.get(event[0], str(event[0])),
                                   info=event[1], log_page=event[2])
        self._deliver_events()

    def _deliver_events(self) -> None:
        while self._aer_cmds and self._events:
            for i, (etype, info, page) in enumerate(self._events):
                if etype not in self._masked:
                    break
            else:
                return
            del self._events[i]
            self._masked[etype] = page
            cmd = self._aer_cmds.popleft()
            cmd.result = etype | (info << 8) | (page << 16)
            if T.NVME_AEN_COMPLETE.enabled:
                T.NVME_AEN_COMPLETE.emit(ctrl=self.name, cid=cmd.cid, aen_type=_AEN_TYPE_NAMES.get(etype, str(etype)),
                                         info=info, log_page=page)
            self.complete(cmd, Status.SUCCESS)

    def log_page_read(self, log_id: int, rae: bool = False, cleared: bool = False) -> None:
        """Called by Get Log Page: reading a log page (RAE=0) unmasks its event type.

        ``cleared``: the page accumulates every change and the read emptied it (the
        Changed Namespace List), so events still queued for it are answered by this
        read; delivering them would send the host to a page it has just emptied."""
        if rae:
            return
        for etype, page in list(self._masked.items()):
            if page == log_id:
                del self._masked[etype]
        if cleared and any(page == log_id for _, _, page in self._events):
            self._events = deque(e for e in self._events if e[2] != log_id)
        self._deliver_events()

    def pending_events(self) -> list[tuple[int, int, int]]:
        return list(self._events)

    def note_changed_namespace(self, nsid: int) -> None:
        """Record ``nsid`` in the Changed Namespace List log (the caller posts the AEN)."""
        changed = self.changed_namespaces
        if changed == [BROADCAST_NSID] or nsid in changed:
            return
        if len(changed) >= CHANGED_NS_MAX:
            self.changed_namespaces = [BROADCAST_NSID]
        else:
            changed.append(nsid)
            changed.sort()

    def take_changed_namespaces(self, clear: bool = True) -> list[int]:
        """Contents of the Changed Namespace List log; reading it (RAE=0) clears it."""
        changed = list(self.changed_namespaces)
        if clear:
            self.changed_namespaces = []
        return changed

    # ------------------------------------------------------------ namespaces
    def attach_namespace(self, ns: Any) -> None:
        """Make ``ns`` active on this controller (IOThread only; no AEN here)."""
        self.namespaces[ns.nsid] = ns
        if T.NVME_NS_ATTACH.enabled:
            T.NVME_NS_ATTACH.emit(ctrl=self.name, nsid=ns.nsid)

    def detach_namespace(self, nsid: int) -> None:
        if self.namespaces.pop(nsid, None) is not None and T.NVME_NS_DETACH.enabled:
            T.NVME_NS_DETACH.emit(ctrl=self.name, nsid=nsid)

    # ---------------------------------------------------------------- info
    def queue_info(self) -> list[dict[str, Any]]:
        """State of every queue, for ``info queues`` (call on the IOThread)."""
        out: list[dict[str, Any]] = []
        for qid in range(len(self._sqs)):
            sq, cq = self._sqs[qid], self._cqs[qid]
            if sq is not None:
                out.append({"qid": qid, "kind": "sq", "size": sq.size, "head": sq.head, "tail": sq.tail,
                            "base": sq.base, "cqid": sq.cq.qid, "outstanding": len(sq.deferred),
                            "fetched": sq.fetched})
            if cq is not None:
                out.append({"qid": qid, "kind": "cq", "size": cq.size, "head": cq.head, "tail": cq.tail,
                            "base": cq.base, "vector": cq.vector, "ien": cq.ien, "phase": cq.phase,
                            "outstanding": len(cq.pending), "posted": cq.posted})
        return out

    def shutdown(self) -> None:
        """Before the device goes away: stop polling, drop queues, leave the subsystem."""
        self._controller_reset()
        self.csts = 0
        if self.subsystem is not None:
            try:
                self.subsystem.remove_controller(self)
            except Exception:
                log.debug("controller %d: not in its subsystem any more", self.cntlid, exc_info=True)
        if self._db_map is not None:
            try:
                self._db_map.close()
            except BufferError:
                pass
            self._db_map = None
        if self._db_fd is not None:
            os.close(self._db_fd)
            self._db_fd = None
            self.pci.doorbell_fd = None


def _doorbell_page() -> tuple[int, mmap.mmap]:
    """A BAR0-sized memfd and our mapping of it (the client maps the doorbell page)."""
    fd = os.memfd_create("nvshell-bar0", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, BAR0_SIZE)
        return fd, mmap.mmap(fd, BAR0_SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    except OSError:
        os.close(fd)
        raise
