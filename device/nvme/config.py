"""Controller configuration: every knob of an ``x-nvme-ctrl`` device, validated once.

The object model (``device/objects.py``) turns ``-device x-nvme-ctrl,...``
properties into a ``ControllerConfig``; the controller, the PCI function and
the Identify handler read it. Validation lives here so that a bad value is
refused when the device is created, with a message naming the property, and
never surfaces later as a guest-visible oddity.
"""

from __future__ import annotations

from dataclasses import dataclass

from nvshell.device.iothread import SPIN_MAX_NS

#: SPDK's vfio-user NVMe IDs: the Linux driver binds by class code and applies
#: no quirks for this vendor/device pair.
PCI_VENDOR_ID = 0x4E58
PCI_DEVICE_ID = 0x0001


@dataclass
class ControllerConfig:
    """Static parameters of one NVMe controller (one PCIe function)."""

    serial: str = ""
    model: str = "nvshell NVMe Ctrl"
    firmware: str = "1.0"
    #: Controller ID; 0 = picked by the subsystem (or 1 without a subsystem).
    cntlid: int = 0
    #: I/O queue pairs the host may create (QIDs 1..max_ioqpairs).
    max_ioqpairs: int = 64
    #: MSI-X vectors, admin queue's vector 0 included.
    max_intr_vectors: int = 65
    #: CAP.MQES: largest queue size minus one (0-based), for I/O queues.
    mqes: int = 0x7FF
    #: Asynchronous events kept while no AER command is outstanding.
    max_aer_retention: int = 100
    #: Identify AERL: outstanding AER commands allowed, minus one.
    aerl: int = 3
    #: Identify MDTS (power of two of the minimum page size; 0 = no limit).
    mdts: int = 7
    #: "trap" (default): doorbell writes are vfio-user messages, made rare by shadow
    #: doorbells; the IOThread sleeps until one comes. "mmap": the doorbell page is
    #: shared through a memfd and polled (README, "Doorbells", says why trap is the default).
    doorbells: str = "trap"
    vendor_id: int = PCI_VENDOR_ID
    device_id: int = PCI_DEVICE_ID
    #: Identify VID / SSVID (PCI vendor and subsystem vendor IDs).
    vid: int = PCI_VENDOR_ID
    ssvid: int = PCI_VENDOR_ID
    #: IEEE OUI for Identify IEEE (3 bytes): SPDK's vfio-user target's (50-6B-8D, the
    #: Nutanix OUI), matching the PCI vendor ID 4E58h above.
    oui: int = 0x506B8D
    #: OCP Datacenter NVMe SSD log pages (C0h SMART / Health Information Extended).
    ocp: bool = False
    #: The MSI-X capability (and its BAR4/BAR5). Off, the host falls back to MSI (one message)
    #: or INTx: what a platform that cannot do MSI-X sees.
    msix: bool = True
    #: Ceiling of the IOThread's adaptive spin window, ns (``iothread.SPIN_MAX``); 0: never spin,
    #: sleep as soon as no work is seen (least CPU, a doorbell message or wake-up per gap).
    poll_max_ns: int = SPIN_MAX_NS
    #: Commands fetched from one SQ per processing round (fairness between
    #: queues, and a bound on how long the socket waits behind the data path).
    sq_batch: int = 64

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first out-of-range parameter."""
        if self.doorbells not in ("mmap", "trap"):
            raise ValueError(f"Parameter 'doorbells' expects 'mmap' or 'trap', not {self.doorbells!r}")
        if not 0 <= self.poll_max_ns <= 10_000_000:
            raise ValueError("Parameter 'poll-max-ns' expects a value between 0 and 10000000")
        if not 0 <= self.cntlid <= 0xFFEF:
            raise ValueError("Parameter 'cntlid' expects a value between 0 and 0xffef")
        if not 1 <= self.max_ioqpairs <= 0xFFFE:
            raise ValueError("Parameter 'max-ioqpairs' expects a value between 1 and 65534")
        if not 1 <= self.max_intr_vectors <= 2048:
            raise ValueError("Parameter 'max-intr-vectors' expects a value between 1 and 2048")
        if not 1 <= self.mqes <= 0xFFFF:
            raise ValueError("Parameter 'mqes' expects a value between 1 and 65535")
        if not 0 <= self.aerl <= 0xFF:
            raise ValueError("Parameter 'aerl' expects a value between 0 and 255")
        if not 1 <= self.max_aer_retention <= 0xFFFF:
            raise ValueError("Parameter 'max-aer-retention' expects a value between 1 and 65535")
        if not 0 <= self.mdts <= 0xFF:
            raise ValueError("Parameter 'mdts' expects a value between 0 and 255")
        if len(self.serial.encode()) > 20:
            raise ValueError("Parameter 'serial' expects at most 20 characters")
        if len(self.model.encode()) > 40:
            raise ValueError("Parameter 'model' expects at most 40 characters")
        if len(self.firmware.encode()) > 8:
            raise ValueError("Parameter 'firmware' expects at most 8 characters")
        if self.sq_batch < 1:
            raise ValueError("Parameter 'sq-batch' expects a positive value")
