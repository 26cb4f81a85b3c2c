"""Fault injection rules: make the device misbehave on purpose, precisely.

A rule has an id, a *match* (controller, queue, opcode, namespace, LBA range),
a *when* (every time, the first N, after skipping K, with probability P from a
seeded generator) and an *action* (complete with a status, delay, drop, corrupt
read data, fail the DMA, controller fatal status, namespace not ready, inject
an AEN, lose the interrupt). The rule set is consulted by the controller for
every command, but only when it is non-empty: with no rules the data path pays
one attribute check.

Rules are created from the same keyword arguments everywhere: the shell's
``fault_add id=f1,ctrl=ctrl0,opcode=read,...``, QMP ``x-nvme-fault-add`` and the
command line. ``FaultRule.from_args`` validates them and says exactly what is
wrong with a bad one.
"""

from __future__ import annotations

import logging
import random
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterator, Mapping

from nvshell.device.errors import PropertyError
from nvshell.device.keyval import parse_bool
from nvshell.device.nvme.spec import ADMIN_OPCODE_NAMES, IO_OPCODE_NAMES, LBA_OPCODES, NvmOpcode, opcode_label
from nvshell.device.nvme.status import Status

log = logging.getLogger(__name__)

ACTIONS = ("status", "delay", "drop", "corrupt", "pi-corrupt", "dma-error", "fatal", "ns-not-ready", "ns-remove",
           "aen", "irq-loss", "keep-alive-expire", "self-test-fail", "zone-read-only", "zone-offline")
#: Protection information fields action=pi-corrupt damages (``field=``).
PI_FIELDS = ("guard", "apptag", "reftag")

#: Queue kinds an opcode name is looked up in.
QUEUE_KINDS = ("admin", "io")


@dataclass(frozen=True)
class FaultArg:
    """One argument of a fault rule, declared once: ``FaultRule.from_args`` checks names
    against these, and the monitor derives the QMP declaration (``query-qmp-schema``),
    the shell's ``fault_add`` usage line and its completion from the same table."""

    name: str
    doc: str
    #: The words it takes, when it is one of a fixed set (QMP enum, completion values).
    choices: tuple[str, ...] = ()
    #: "str" or "any" (a number, or a string holding one: keyval has only strings).
    type: str = "any"
    #: The usage line's placeholder for the value.
    meta: str = "n"
    #: Words completion offers for an argument that is not a fixed set (it also takes numbers),
    #: given the other arguments typed so far (``{name: value}``).
    words: Callable[[Mapping[str, str]], tuple[str, ...]] | None = None


#: QMP event sent for every hit of a rule whose ``event`` is on.
FAULT_EVENT = "X_NVME_FAULT_INJECTED"

#: Opcode names users type (``spec.opcode_name``: the command tables' and traces' names too).
IO_OPCODES = {name: op for op, name in IO_OPCODE_NAMES.items()}
ADMIN_OPCODES = {name: op for op, name in ADMIN_OPCODE_NAMES.items()}

def opcode_words(typed: Mapping[str, str]) -> tuple[str, ...]:
    """The opcode names a rule may give, for the queue kind the other arguments fix
    (``queue``, or ``qid``: 0 is the admin queue), else every name (I/O first)."""
    kind = typed.get("queue")
    if kind is None and "qid" in typed:
        try:
            kind = "admin" if int(str(typed["qid"]), 0) == 0 else "io"
        except ValueError:
            kind = None
    if kind == "admin":
        return tuple(ADMIN_OPCODES)
    if kind == "io":
        return tuple(IO_OPCODES)
    return tuple(dict.fromkeys([*IO_OPCODES, *ADMIN_OPCODES]))


#: AEN kinds for action=aen: (event type, event info, log page).
AEN_KINDS = {
    "smart-critical": (1, 0x00, 0x02),      # SMART / health: reliability
    "temperature": (1, 0x01, 0x02),         # SMART / health: temperature threshold
    "spare": (1, 0x02, 0x02),               # SMART / health: spare below threshold
    "ns-changed": (2, 0x00, 0x04),          # notice: namespace attribute changed
}

#: SMART Critical Warning bits an AEN kind sets (what ``nvme smart-log`` then shows).
AEN_WARNING_BITS = {"smart-critical": 0x04, "temperature": 0x02, "spare": 0x01, "ns-changed": 0}




#: Every fault rule argument, in the order usage lines and schemas list them.
FAULT_ARGS: tuple[FaultArg, ...] = (
    FaultArg("id", "rule name", type="str", meta="str"),
    FaultArg("action", "what a hit does (default status)", ACTIONS, "str", "action"),
    FaultArg("ctrl", "controller (device id) to match", type="str", meta="dev"),
    FaultArg("qid", "submission queue id to match (0: admin)"),
    FaultArg("queue", "admin or io: which opcode table 'opcode' names", QUEUE_KINDS, "str", "kind"),
    FaultArg("opcode", "opcode name (read, write, identify, namespace-management, ...) or number", meta="name|n",
             words=opcode_words),
    FaultArg("nsid", "namespace id to match"),
    FaultArg("slba", "first LBA of the range to match (overlap)"),
    FaultArg("nlb", "number of LBAs of the range (default: to the end)"),
    FaultArg("count", "hit at most this many times"),
    FaultArg("skip", "let this many matching commands through first"),
    FaultArg("probability", "hit with this probability (0..1)", meta="p"),
    FaultArg("seed", "seed of the probability (and of the bits corrupt flips)"),
    FaultArg("status", "action=status: status name, number or SCT/SC", meta="name|n|sct/sc"),
    FaultArg("dnr", "Do Not Retry bit (status, dma-error)", meta="on|off"),
    FaultArg("more", "More bit (status)", meta="on|off"),
    FaultArg("delay", "action=delay: milliseconds", meta="ms"),
    FaultArg("bits", "action=corrupt: bits to flip (default 1)"),
    FaultArg("duration", "ns-not-ready / ns-remove: milliseconds (default 1000)", meta="ms"),
    FaultArg("aen", "action=aen: the event and warning raised", tuple(AEN_KINDS), "str", "kind"),
    FaultArg("field", "action=pi-corrupt: guard (default), apptag or reftag", PI_FIELDS, "str", "field"),
    FaultArg("event", "send X_NVME_FAULT_INJECTED per hit (default on)", meta="on|off"),
    FaultArg("result", "action=self-test-fail: self-test result code 1..9 (default 7, segment failed)"),
    FaultArg("segment", "action=self-test-fail: number of the failing segment (default 7)"),
    FaultArg("lba", "action=self-test-fail: failing LBA reported in the self-test log"),
)


def parse_status(value: Any) -> int:
    """A status by name ('unrecovered-read-error'), number (0x281) or 'SCT/SC' ('2/0x81')."""
    if isinstance(value, bool):
        raise PropertyError(f"Parameter 'status' expects a status name or number, not {value!r}")
    if isinstance(value, int):
        number = value
    else:
        text = str(value).strip().lower()
        if "/" in text:
            sct, _, sc = text.partition("/")
            try:
                number = (int(sct, 0) << 8) | int(sc, 0)
            except ValueError:
                raise PropertyError(f"Parameter 'status' expects SCT/SC numbers, got '{value}'") from None
        else:
            key = text.replace("_", "-")
            names = {s.label: int(s) for s in Status}
            if key in names:
                number = names[key]
            else:
                try:
                    number = int(text, 0)
                except ValueError:
                    raise PropertyError(f"Parameter 'status' expects a status name (e.g. "
                                        f"'unrecovered-read-error') or number, got '{value}'") from None
    if not 0 <= number <= 0x7FF:
        raise PropertyError(f"Parameter 'status' must fit in SCT (3 bits) and SC (8 bits), got {number:#x}")
    return number


def _int(args: dict[str, Any], name: str, lo: int, hi: int) -> int | None:
    if name not in args or args[name] is None:
        return None
    value = args[name]
    if isinstance(value, bool):
        raise PropertyError(f"Parameter '{name}' expects an integer")
    try:
        number = int(value, 0) if isinstance(value, str) else int(value)
    except (TypeError, ValueError):
        raise PropertyError(f"Parameter '{name}' expects an integer, got '{value}'") from None
    if not lo <= number <= hi:
        raise PropertyError(f"Parameter '{name}' must be between {lo} and {hi}, got {number}")
    return number


def _bool(args: dict[str, Any], name: str) -> bool:
    return parse_bool(args.get(name, False), name)


@dataclass
class FaultRule:
    id: str
    action: str
    ctrl: str | None = None
    qid: int | None = None
    #: "admin" or "io" when the opcode was given (admin and I/O opcodes overlap).
    queue_kind: str | None = None
    opcode: int | None = None
    opcode_name: str | None = None
    nsid: int | None = None
    slba: int | None = None
    nlb: int | None = None
    count: int | None = None
    skip: int = 0
    probability: float | None = None
    seed: int = 0
    # action parameters
    status: int = int(Status.UNRECOVERED_READ_ERROR)
    dnr: bool = False
    more: bool = False
    delay_ms: int = 0
    bits: int = 1
    duration_ms: int = 1000
    aen: str = "smart-critical"
    #: action=self-test-fail: result code (DSTS 3:0), failing segment, failing LBA.
    result: int = 7
    segment: int = 7
    lba: int | None = None
    #: The PI tuple field action=pi-corrupt damages.
    pi_field: str = "guard"
    #: Send X_NVME_FAULT_INJECTED for each hit (off for high-rate probabilistic rules).
    event: bool = True
    # counters
    matched: int = 0
    hits: int = 0
    _rng: random.Random = field(default_factory=random.Random, repr=False)
    #: Guards the counters and random generators: one rule may match on several
    #: controllers' IOThreads at once (``count=1`` must fire once, not once per thread).
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    #: Chooses the bits action=corrupt flips (seeded apart from ``_rng``: reproducible).
    bit_rng: random.Random = field(default_factory=random.Random, repr=False)

    ARGUMENTS: ClassVar[tuple[str, ...]] = tuple(a.name for a in FAULT_ARGS)

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> "FaultRule":
        """Build a rule from user arguments (shell keyval, QMP, command line)."""
        unknown = sorted(set(args) - set(cls.ARGUMENTS))
        if unknown:
            raise PropertyError(f"Parameter '{unknown[0]}' is unexpected (fault rules take: "
                                f"{', '.join(cls.ARGUMENTS)})")
        rule_id = args.get("id")
        if not rule_id or not isinstance(rule_id, str):
            raise PropertyError("Parameter 'id' is missing")
        if not all(c.isalnum() or c in "-_." for c in rule_id) or not rule_id[0].isalpha():
            raise PropertyError(f"Parameter 'id' expects an identifier (a letter, then letters, digits, "
                                f"'-', '_' or '.'), got '{rule_id}'")
        action = str(args.get("action", "status"))
        if action not in ACTIONS:
            raise PropertyError(f"Parameter 'action' expects one of {', '.join(ACTIONS)}, got '{action}'")
        rule = cls(id=rule_id, action=action)
        rule.ctrl = str(args["ctrl"]) if args.get("ctrl") not in (None, "") else None
        rule.qid = _int(args, "qid", 0, 0xFFFF)
        queue = args.get("queue")
        if queue is not None and str(queue) not in QUEUE_KINDS:
            raise PropertyError(f"Parameter 'queue' expects admin or io, got '{queue}'")
        rule.queue_kind = str(queue) if queue is not None else None
        if rule.qid is not None and rule.queue_kind is None:
            rule.queue_kind = "admin" if rule.qid == 0 else "io"
        if "opcode" in args and args["opcode"] is not None:
            rule._set_opcode(args["opcode"])
        rule.nsid = _int(args, "nsid", 1, 0xFFFFFFFF)
        rule.slba = _int(args, "slba", 0, (1 << 64) - 1)
        rule.nlb = _int(args, "nlb", 1, 1 << 32)
        if rule.nlb is not None and rule.slba is None:
            rule.slba = 0
        rule.count = _int(args, "count", 1, 1 << 62)
        rule.skip = _int(args, "skip", 0, 1 << 62) or 0
        if "probability" in args and args["probability"] is not None:
            try:
                rule.probability = float(args["probability"])
            except (TypeError, ValueError):
                raise PropertyError(f"Parameter 'probability' expects a number, got '{args['probability']}'") from None
            if not 0.0 <= rule.probability <= 1.0:
                raise PropertyError(f"Parameter 'probability' must be between 0 and 1, got {rule.probability}")
        rule.seed = _int(args, "seed", 0, (1 << 63) - 1) or 0
        rule._rng = random.Random(rule.seed)
        rule.bit_rng = random.Random(rule.seed ^ 0x5EED)
        if "status" in args:
            rule.status = parse_status(args["status"])
        elif action == "status" and rule.opcode is not None and rule.opcode != int(NvmOpcode.READ):
            rule.status = int(Status.WRITE_FAULT) if rule.opcode == int(NvmOpcode.WRITE) else int(Status.INTERNAL_ERROR)
        rule.dnr = _bool(args, "dnr")
        rule.more = _bool(args, "more")
        rule.delay_ms = _int(args, "delay", 0, 3_600_000) or 0
        if action == "delay" and "delay" not in args:
            raise PropertyError("Parameter 'delay' is missing (milliseconds, for action=delay)")
        rule.bits = _int(args, "bits", 1, 64) or 1
        rule.duration_ms = _int(args, "duration", 0, 3_600_000) if "duration" in args else 1000  # type: ignore[assignment]
        rule.event = _bool(args, "event") if "event" in args else True
        rule.result = _int(args, "result", 1, 9) or 7
        rule.segment = _int(args, "segment", 0, 255) if "segment" in args else 7  # type: ignore[assignment]
        rule.lba = _int(args, "lba", 0, (1 << 64) - 1)
        if action == "self-test-fail" and rule.slba is not None:
            raise PropertyError("action=self-test-fail matches the Device Self-test command: give the failing "
                                "LBA as lba=, not slba=")
        rule.aen = str(args.get("aen", "smart-critical"))
        if rule.aen not in AEN_KINDS:
            raise PropertyError(f"Parameter 'aen' expects one of {', '.join(AEN_KINDS)}, got '{rule.aen}'")
        rule.pi_field = str(args.get("field", "guard"))
        if rule.pi_field not in PI_FIELDS:
            raise PropertyError(f"Parameter 'field' expects one of {', '.join(PI_FIELDS)}, got '{rule.pi_field}'")
        if "field" in args and action != "pi-corrupt":
            raise PropertyError("Parameter 'field' is only used by action=pi-corrupt")
        if action in ("corrupt", "pi-corrupt") and rule.opcode not in (None, int(NvmOpcode.READ)):
            raise PropertyError(f"action={action} applies to reads: use opcode=read")
        if action in ("corrupt", "pi-corrupt"):
            rule.opcode, rule.opcode_name, rule.queue_kind = int(NvmOpcode.READ), "read", "io"
        return rule

    def _set_opcode(self, value: Any) -> None:
        if isinstance(value, str) and not value.strip().lstrip("-").isdigit() and not value.lower().startswith("0x"):
            name = value.strip().lower().replace("_", "-")
            if self.queue_kind != "admin" and name in IO_OPCODES:
                self.opcode, self.queue_kind = IO_OPCODES[name], "io"
            elif self.queue_kind != "io" and name in ADMIN_OPCODES:
                self.opcode, self.queue_kind = ADMIN_OPCODES[name], "admin"
            else:
                known = sorted(IO_OPCODES) + sorted(ADMIN_OPCODES)
                raise PropertyError(f"Parameter 'opcode' expects an opcode name ({', '.join(known)}) "
                                    f"or number, got '{value}'")
            self.opcode_name = name
        else:
            number = _int({"opcode": value}, "opcode", 0, 0xFF)
            assert number is not None
            self.opcode = number
            self.opcode_name = f"{number:#04x}"

    # --------------------------------------------------------------- match
    def matches(self, ctrl: str, qid: int, opcode: int, nsid: int, cdw10: int, cdw11: int, cdw12: int) -> bool:
        """Whether the command is in scope (counters untouched)."""
        if self.ctrl is not None and self.ctrl != ctrl:
            return False
        if self.qid is not None and self.qid != qid:
            return False
        if self.queue_kind is not None and (self.queue_kind == "admin") != (qid == 0):
            return False
        if self.opcode is not None and self.opcode != opcode:
            return False
        if self.nsid is not None and self.nsid != nsid:
            return False
        if self.slba is not None:
            if qid == 0 or opcode not in LBA_OPCODES:
                return False
            slba = cdw10 | (cdw11 << 32)
            nlb = (cdw12 & 0xFFFF) + 1
            end = self.slba + (self.nlb if self.nlb is not None else 1 << 64)
            if not (slba < end and self.slba < slba + nlb):
                return False
        return True

    def fire(self) -> int:
        """Count a match and decide whether this one is hit (skip, count, probability):
        0 for a miss, else the hit's number (1 for the first)."""
        with self._lock:
            self.matched += 1
            if self.matched <= self.skip:
                return 0
            if self.count is not None and self.hits >= self.count:
                return 0
            if self.probability is not None and self._rng.random() >= self.probability:
                return 0
            self.hits += 1
            return self.hits

    def flip_position(self, lo: int, hi: int) -> int:
        """A random bit number in ``[lo, hi)`` for action=corrupt (seeded, thread-safe)."""
        with self._lock:
            return self.bit_rng.randrange(lo, hi)

    @property
    def exhausted(self) -> bool:
        return self.count is not None and self.hits >= self.count

    def describe(self) -> dict[str, Any]:
        """The rule as QMP returns it (and `info faults` prints it)."""
        with self._lock:
            hits, matched = self.hits, self.matched
        out: dict[str, Any] = {"id": self.id, "action": self.action, "hits": hits, "matched": matched}
        for key in ("ctrl", "qid", "nsid", "slba", "nlb", "count", "probability"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        if self.opcode is not None:
            out["opcode"] = self.opcode_name
            out["queue"] = self.queue_kind
        if self.skip:
            out["skip"] = self.skip
        if self.probability is not None:
            out["seed"] = self.seed
        if self.action == "status":
            out["status"] = f"{self.status:#05x}"
            out["status-name"] = Status(self.status).label if self.status in Status._value2member_map_ else "?"
            out["dnr"], out["more"] = self.dnr, self.more
        if self.action == "delay":
            out["delay"] = self.delay_ms
        if self.action == "corrupt":
            out["bits"] = self.bits
        if self.action == "pi-corrupt":
            out["field"] = self.pi_field
        if self.action in ("ns-not-ready", "ns-remove"):
            out["duration"] = self.duration_ms
        if self.action == "dma-error" and self.dnr:
            out["dnr"] = True
        if not self.event:
            out["event"] = False
        if self.action == "aen":
            out["aen"] = self.aen
        if self.action == "self-test-fail":
            out["result"], out["segment"] = self.result, self.segment
            if self.lba is not None:
                out["lba"] = self.lba
            if self.status != int(Status.UNRECOVERED_READ_ERROR):
                out["status"] = f"{self.status:#05x}"
        return out


class FaultSet:
    """All fault rules of one nvshell process; shared by every controller.

    ``rules`` is replaced, never mutated, so a controller thread iterating it
    needs no lock.  ``listeners`` are told about every hit (tests, tools);
    ``publish(event, data)`` (the machine's) sends ``X_NVME_FAULT_INJECTED`` for
    rules with ``event`` on; ``watchers`` are called after every change of the
    rule set, so each controller's injector can install its hooks only while a
    rule concerns it (the data path pays nothing otherwise).
    """

    def __init__(self, publish: Callable[[str, dict[str, Any]], None] | None = None) -> None:
        self.rules: tuple[FaultRule, ...] = ()
        self._lock = threading.Lock()
        self.listeners: list[Callable[[FaultRule, str, dict[str, Any]], None]] = []
        self.watchers: list[Callable[[], None]] = []
        self.publish = publish

    def _changed(self) -> None:
        for watcher in list(self.watchers):
            try:
                watcher()
            except Exception:  # one controller's trouble must not stop the others
                log.exception("fault rule watcher %r failed", watcher)

    def add(self, rule: FaultRule) -> FaultRule:
        with self._lock:
            if any(r.id == rule.id for r in self.rules):
                raise PropertyError(f"Fault rule '{rule.id}' already exists")
            self.rules = self.rules + (rule,)
        self._changed()
        return rule

    def remove(self, rule_id: str) -> FaultRule:
        with self._lock:
            for rule in self.rules:
                if rule.id == rule_id:
                    self.rules = tuple(r for r in self.rules if r is not rule)
                    break
            else:
                raise PropertyError(f"Fault rule '{rule_id}' not found")
        self._changed()
        return rule

    def clear(self) -> None:
        with self._lock:
            self.rules = ()
        self._changed()

    def get(self, rule_id: str) -> FaultRule | None:
        return next((r for r in self.rules if r.id == rule_id), None)

    def check(self, ctrl: str, qid: int, opcode: int, nsid: int, cdw10: int, cdw11: int,
              cdw12: int, cid: int = 0) -> FaultRule | None:
        """The first rule that hits this command, counting matches on the way."""
        for rule in self.rules:
            if not rule.matches(ctrl, qid, opcode, nsid, cdw10, cdw11, cdw12):
                continue
            hit = rule.fire()
            if hit:
                detail = {"ctrl": ctrl, "qid": qid, "cid": cid, "opcode": opcode, "nsid": nsid}
                for listener in list(self.listeners):
                    try:
                        listener(rule, rule.action, detail)
                    except Exception:  # a broken listener must not break the data path
                        pass
                if self.publish is not None and rule.event:
                    data: dict[str, Any] = {"id": rule.id, "action": rule.action, "device": ctrl, "qid": qid,
                                            "cid": cid, "opcode": opcode_label(qid, opcode), "nsid": nsid,
                                            "hits": hit}
                    if qid and opcode in LBA_OPCODES:
                        data["slba"], data["nlb"] = cdw10 | (cdw11 << 32), (cdw12 & 0xFFFF) + 1
                    try:
                        self.publish(FAULT_EVENT, data)
                    except Exception:
                        log.exception("publishing %s failed", FAULT_EVENT)
                return rule
        return None

    def concerns(self, ctrl: str) -> list[FaultRule]:
        """The rules that may hit commands of controller ``ctrl``."""
        return [r for r in self.rules if r.ctrl is None or r.ctrl == ctrl]

    def __bool__(self) -> bool:
        return bool(self.rules)

    def __len__(self) -> int:
        return len(self.rules)

    def __iter__(self) -> Iterator[FaultRule]:
        return iter(self.rules)
