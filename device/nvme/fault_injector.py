"""Apply fault rules (``device.faults``) to one controller through its hooks.

Why a per-controller object: the rules are shared by the whole process, but the
effects live on one controller's IOThread (held commands, timers, lost
interrupts, a namespace taken away for a while).  ``FaultInjector`` owns that
state and installs ``ctrl.hooks`` entries *only while* a rule may hit this
controller (or while an effect is still running), so with no rules the data
path pays exactly what it did before: one ``is None`` check per hook.

Threads: everything here runs on the controller's IOThread: the hooks, every
timer, and ``sync`` (a rule-set change on another thread reaches it through
``rules_changed``, which submits ``sync`` to the IOThread and waits for it, so a
rule is in force, or gone, when ``fault_add``/``fault_del`` returns).

Actions (what the host sees):

* ``status``: the command completes with the rule's status, DNR and More bits.
* ``delay``: the command is held and executed ``delay`` ms later.
* ``drop``: the command is held and never completed (the host's timeout path
  aborts it or resets the controller; either ends it).
* ``corrupt``: a read runs normally, then ``bits`` bits of the data already in
  guest memory are flipped (within the rule's LBA range) before the CQE.
* ``pi-corrupt``: a read runs normally (the device's own checks pass), then one
  field (``field=guard|apptag|reftag``) of the protection information tuple of
  each block it returns inside the rule's range is damaged in guest memory (the
  metadata buffer, or the interleaved metadata of extended LBAs) before the CQE;
  the data and the media stay intact. A read whose PI does not cross the bus
  (PRACT with metadata that is only the tuple) returns nothing to damage.
* ``dma-error``: the command completes with Data Transfer Error, no data moved.
* ``fatal``: CSTS.CFS is set and the command is held (the host must reset).
* ``ns-not-ready``: for ``duration`` ms, commands to the namespace complete
  with Namespace Not Ready (DNR clear: the condition is transient).
* ``ns-remove``: the namespace is detached from this controller (Changed
  Namespace List + AEN) for ``duration`` ms, then attached again (AEN).
* ``aen``: SMART critical warning / temperature (or a notice) is raised and
  an Asynchronous Event posted; removing the rule clears the warning again.
* ``irq-loss``: the command completes but its CQ's interrupt is not raised.
* ``self-test-fail``: the Device Self-test the command starts (or the next one)
  ends with ``result`` (default 7: a segment failed), ``segment`` (7), failing
  ``lba`` and ``status`` as diagnostic information.
* ``keep-alive-expire``: the Keep Alive Timer expires now, as if the host had
  missed its deadline (error log entry, CSTS.CFS); the command is held, like
  every command a failed controller no longer processes. Without an armed timer
  (KATO 0) there is nothing to expire and the command runs normally.
* ``zone-read-only`` / ``zone-offline``: the zone holding the command's SLBA
  (zoned namespaces only) becomes Read Only / Offline, as a failing medium
  would make it; the command then runs and meets the zone in that state.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from nvshell.device import trace as T
from nvshell.device.faults import AEN_KINDS, AEN_WARNING_BITS, FaultRule, FaultSet
from nvshell.device.nvme.spec import LBA_OPCODES, opcode_label
from nvshell.device.nvme import dif, nvm_meta
from nvshell.device.nvme.commands import DEFERRED, Command
from nvshell.device.nvme.dataxfer import map_metadata
from nvshell.device.nvme.spec import AsyncEventType, LogPage, NoticeInfo
from nvshell.device.nvme import nvm_uncorrectable
from nvshell.device.nvme.status import SCT, NvmeError, Status

if TYPE_CHECKING:
    from nvshell.device.nvme.controller import Controller

log = logging.getLogger(__name__)

#: Key of ``Command.extra`` marking a read whose data must be corrupted.
_CORRUPT = "fault-corrupt"
#: Temperature an ``aen=temperature`` hit reports: 10 K above the over-temperature threshold.
_OVER_TEMP_MARGIN = 10


class FaultInjector:
    """The fault rules' effects on one controller (see module docstring)."""

    def __init__(self, ctrl: "Controller", faults: FaultSet) -> None:
        self.ctrl = ctrl
        self.faults = faults
        #: nsid -> monotonic deadline of a Namespace Not Ready window.
        self._not_ready: dict[int, float] = {}
        #: nsid -> namespace taken away by ns-remove (reattached when the timer fires).
        self._removed: dict[int, Any] = {}
        #: CQ ids whose next interrupt is swallowed.
        self._lose_irq: set[int] = set()
        #: Reads marked for corruption and not completed yet.
        self._corrupting = 0
        #: rule id -> (critical warning bits set, previous temperature or None), undone on removal.
        self._aen_applied: dict[str, tuple[int, int | None]] = {}
        self._installed = False

    # ----------------------------------------------------------- lifecycle
    def install(self) -> "FaultInjector":
        """Watch the rule set; hooks come and go with the rules that concern us."""
        if not self._installed:
            self.faults.watchers.append(self.rules_changed)
            self._installed = True
        self.rules_changed()
        return self

    def rules_changed(self) -> None:
        """The rule set changed (any thread): re-sync on the controller's IOThread."""
        iothread = getattr(self.ctrl, "iothread", None)
        if iothread is None:
            self.sync()
        else:
            iothread.run(self.sync)

    def uninstall(self) -> None:
        """Stop injecting (controller going away): hooks cleared, watcher removed."""
        if self._installed:
            try:
                self.faults.watchers.remove(self.rules_changed)
            except ValueError:
                pass
            self._installed = False
        self._set_hooks(False, False, False)

    def sync(self) -> None:
        """Install exactly the hooks the current rules (and running effects) need."""
        rules = self.faults.concerns(getattr(self.ctrl, "name", ""))
        self._undo_removed_aens({r.id for r in rules})
        if not self._installed:
            return
        actions = {r.action for r in rules}
        submit = bool(rules) or bool(self._not_ready)
        complete = "corrupt" in actions or "pi-corrupt" in actions or self._corrupting > 0
        interrupt = "irq-loss" in actions or bool(self._lose_irq)
        self._set_hooks(submit, complete, interrupt)

    def _set_hooks(self, submit: bool, complete: bool, interrupt: bool) -> None:
        hooks = getattr(self.ctrl, "hooks", None)
        if hooks is None:
            return          # a stand-in controller (object-model tests): nothing to hook
        for name, want, fn in (("on_submit", submit, self.on_submit),
                               ("on_complete", complete, self.on_complete),
                               ("on_interrupt", interrupt, self.on_interrupt)):
            current = getattr(hooks, name)
            if want and current is None:
                setattr(hooks, name, fn)
            elif not want and current == fn:
                setattr(hooks, name, None)
            elif want and current != fn:
                log.warning("%s: %s hook is taken by %r; fault injection cannot use it", self.ctrl.name, name,
                            current)

    def _undo_removed_aens(self, live: set[str]) -> None:
        """A deleted aen rule takes its warning back (the device is healthy again)."""
        for rule_id in [r for r in self._aen_applied if r not in live]:
            bits, temperature = self._aen_applied.pop(rule_id)
            stats = self.ctrl.stats
            still = 0
            for bits_other, _ in self._aen_applied.values():
                still |= bits_other
            stats.critical_warning &= ~(bits & ~still)
            if temperature is not None and not any(t is not None for _, t in self._aen_applied.values()):
                stats.temperature = temperature

    # --------------------------------------------------------------- hooks
    def on_submit(self, cmd: Command) -> Any:
        """Decide a command's fate: None (run normally), DEFERRED (held) or NvmeError."""
        if self._not_ready and cmd.nsid in self._not_ready:
            if time.monotonic() < self._not_ready[cmd.nsid]:
                raise NvmeError(Status.NS_NOT_READY, dnr=False)
            del self._not_ready[cmd.nsid]
            self.sync()
        rule = self.faults.check(self.ctrl.name, cmd.sqid, cmd.opcode, cmd.nsid, cmd.cdw10, cmd.cdw11,
                                 cmd.cdw12, cmd.cid)
        if rule is None:
            return None
        if T.NVME_FAULT_HIT.enabled:
            T.NVME_FAULT_HIT.emit(ctrl=self.ctrl.name, rule=rule.id, action=rule.action, qid=cmd.sqid,
                                  cid=cmd.cid, opcode=opcode_label(cmd.sqid, cmd.opcode))
        return getattr(self, "_do_" + rule.action.replace("-", "_"))(rule, cmd)

    def on_complete(self, cmd: Command, status: int) -> None:
        """Corrupt a marked read's data, now in guest memory, before its CQE is written."""
        extra = cmd.extra
        if not extra:
            return
        rule = extra.pop(_CORRUPT, None)
        if rule is None:
            return
        self._corrupting -= 1
        if status == 0:
            try:
                if rule.action == "pi-corrupt":
                    self._corrupt_pi(rule, cmd)
                else:
                    self._flip_bits(rule, cmd)
            except Exception:
                log.exception("%s: corrupting the data of cid %d failed", self.ctrl.name, cmd.cid)
        if self._corrupting <= 0:
            self._corrupting = 0
            self.sync()

    def on_interrupt(self, cqid: int, vector: int) -> bool:
        """False (swallow) for a CQ whose completion lost its interrupt."""
        if cqid in self._lose_irq:
            self._lose_irq.discard(cqid)
            if not self._lose_irq:
                self.sync()
            return False
        return True

    # ------------------------------------------------------------- actions
    def _do_status(self, rule: FaultRule, cmd: Command) -> Any:
        if rule.status >> 8 == SCT.MEDIA and cmd.sqid and cmd.opcode in LBA_OPCODES:
            ns = self.ctrl.namespaces.get(cmd.nsid)
            if ns is not None:  # a device tracks LBAs it reported a media error for (Get LBA Status)
                nvm_uncorrectable.note_media_error(ns, cmd.cdw10 | (cmd.cdw11 << 32), (cmd.cdw12 & 0xFFFF) + 1)
        raise NvmeError(rule.status, dnr=rule.dnr, more=rule.more)

    def _do_dma_error(self, rule: FaultRule, cmd: Command) -> Any:
        raise NvmeError(Status.DATA_TRANSFER_ERROR, dnr=rule.dnr)

    def _do_delay(self, rule: FaultRule, cmd: Command) -> Any:
        ctrl = self.ctrl

        def release() -> None:
            # False when the host aborted it meanwhile, or reset the controller.
            ctrl.run_deferred(cmd)

        if ctrl.iothread is None:
            return None  # no timers (unit tests without an IOThread): run now
        ctrl.iothread.call_later(rule.delay_ms / 1000.0, release)
        return DEFERRED

    def _do_drop(self, rule: FaultRule, cmd: Command) -> Any:
        return DEFERRED

    def _do_fatal(self, rule: FaultRule, cmd: Command) -> Any:
        self.ctrl.fatal(f"fault rule '{rule.id}' on {opcode_label(cmd.sqid, cmd.opcode)} cid {cmd.cid}")
        return DEFERRED

    def _do_keep_alive_expire(self, rule: FaultRule, cmd: Command) -> Any:
        from nvshell.device.nvme import admin_keepalive
        if not admin_keepalive.armed(self.ctrl):
            return None
        admin_keepalive.expire(self.ctrl, f"keep alive timer expired (fault rule '{rule.id}')")
        return DEFERRED

    def _do_self_test_fail(self, rule: FaultRule, cmd: Command) -> Any:
        from nvshell.device.nvme import admin_selftest
        nsid = rule.nsid if rule.nsid is not None else (cmd.nsid if cmd.nsid not in (0, 0xFFFFFFFF) else None)
        admin_selftest.inject_failure(self.ctrl, admin_selftest.Failure(
            rule.result, rule.segment, nsid, rule.lba, rule.status if rule.result >= 5 else None))
        return None     # the command runs: the test it starts ends with that result

    def _do_corrupt(self, rule: FaultRule, cmd: Command) -> Any:
        cmd.extra[_CORRUPT] = rule
        self._corrupting += 1
        if self.ctrl.hooks.on_complete is None:
            self.sync()
        return None

    _do_pi_corrupt = _do_corrupt

    def _do_irq_loss(self, rule: FaultRule, cmd: Command) -> Any:
        sq = self.ctrl.sq(cmd.sqid)
        if sq is not None:
            self._lose_irq.add(sq.cq.qid)
            if self.ctrl.hooks.on_interrupt is None:
                self.sync()
        return None

    def _do_ns_not_ready(self, rule: FaultRule, cmd: Command) -> Any:
        nsid = rule.nsid if rule.nsid is not None else cmd.nsid
        if nsid in self.ctrl.namespaces:
            self._not_ready[nsid] = time.monotonic() + rule.duration_ms / 1000.0
            if cmd.nsid == nsid:
                raise NvmeError(Status.NS_NOT_READY, dnr=False)
        return None

    def _do_ns_remove(self, rule: FaultRule, cmd: Command) -> Any:
        ctrl = self.ctrl
        nsid = rule.nsid if rule.nsid is not None else cmd.nsid
        ns = ctrl.namespaces.get(nsid)
        if ns is None:
            return None     # not attached (already removed): the command runs as it would
        ctrl.detach_namespace(nsid)
        self._removed[nsid] = ns
        self._tell_host(nsid)
        if ctrl.iothread is not None:
            ctrl.iothread.call_later(rule.duration_ms / 1000.0, lambda: self._reattach(nsid))
        return None         # dispatch finds no namespace: Invalid Namespace, as after a detach

    def _do_zone_read_only(self, rule: FaultRule, cmd: Command) -> Any:
        return self._force_zone(cmd, "READ_ONLY")

    def _do_zone_offline(self, rule: FaultRule, cmd: Command) -> Any:
        return self._force_zone(cmd, "OFFLINE")

    def _force_zone(self, cmd: Command, state_name: str) -> Any:
        ns = self.ctrl.namespaces.get(cmd.nsid)
        zones = getattr(ns, "zones", None)
        if zones is None or cmd.sqid == 0 or cmd.opcode not in LBA_OPCODES:
            return None     # not a zoned namespace or no LBA: the command runs as it would
        from nvshell.device.nvme.zoned import ZoneState
        slba = cmd.cdw10 | (cmd.cdw11 << 32)
        if slba < ns.nlbas:
            zones.force_state(zones.zone_of(slba), ZoneState[state_name])
        return None

    def _reattach(self, nsid: int) -> None:
        """End of an ns-remove window: attach the namespace again if it still belongs here."""
        ns = self._removed.pop(nsid, None)
        ctrl = self.ctrl
        if ns is None or nsid in ctrl.namespaces:
            return
        subsystem = ctrl.subsystem
        if subsystem is not None and not subsystem.is_attached(nsid, ctrl):
            return          # deleted or detached by the user meanwhile: stay away
        ctrl.attach_namespace(ns)
        self._tell_host(nsid)

    def _tell_host(self, nsid: int) -> None:
        self.ctrl.note_changed_namespace(nsid)
        self.ctrl.post_async_event(AsyncEventType.NOTICE, NoticeInfo.NS_ATTRIBUTE_CHANGED, LogPage.CHANGED_NS_LIST)

    def _do_aen(self, rule: FaultRule, cmd: Command) -> Any:
        ctrl = self.ctrl
        event_type, info, page = AEN_KINDS[rule.aen]
        bits = AEN_WARNING_BITS.get(rule.aen, 0)
        stats = ctrl.stats
        old_bits, old_temp = self._aen_applied.get(rule.id, (0, None))
        stats.critical_warning |= bits
        temperature = old_temp
        if rule.aen == "temperature":
            if temperature is None:
                temperature = stats.temperature
            stats.temperature = ctrl.features.temp_over + _OVER_TEMP_MARGIN
        self._aen_applied[rule.id] = (old_bits | bits, temperature)
        ctrl.post_async_event(event_type, info, page)
        return None

    # ------------------------------------------------------------ corrupt
    @staticmethod
    def _rule_blocks(rule: FaultRule, cmd: Command) -> tuple[int, int, int]:
        """(SLBA, first, end) of the command's blocks that lie in the rule's range."""
        slba, nlb = cmd.cdw10 | (cmd.cdw11 << 32), (cmd.cdw12 & 0xFFFF) + 1
        first, end = slba, slba + nlb
        if rule.slba is not None:
            first = max(first, rule.slba)
            end = min(end, rule.slba + (rule.nlb if rule.nlb is not None else end))
        return slba, first, end

    def _corrupt_pi(self, rule: FaultRule, cmd: Command) -> None:
        """Damage ``rule.pi_field`` of the PI tuple of each returned block in the rule's range."""
        ns = cmd.ns
        prot = getattr(ns, "protection", None)
        if prot is None or cmd.opcode not in LBA_OPCODES or nvm_meta.strips(ns, cmd):
            return
        slba, first, end = self._rule_blocks(rule, cmd)
        nlb = (cmd.cdw12 & 0xFFFF) + 1
        ms, where = ns.ms, dif.field_offset(prot, rule.pi_field)
        if ns.fmt.extended:
            step, base = ns.lba_size + ms, ns.lba_size + where
            dmap = self.ctrl.transfer(cmd, nlb * step)
        else:
            step, base = ms, where
            dmap = map_metadata(self.ctrl.memory, cmd, nlb * ms)
        for lba in range(first, end):
            _xor_byte(self.ctrl.memory, dmap, (lba - slba) * step + base, dif.CORRUPT_MASK)

    def _flip_bits(self, rule: FaultRule, cmd: Command) -> None:
        """Flip ``rule.bits`` bits of the read data in guest memory, inside the rule's range."""
        ns = cmd.ns
        if ns is None or cmd.opcode not in LBA_OPCODES:
            return
        lba_size = ns.lba_size
        slba, nlb = cmd.cdw10 | (cmd.cdw11 << 32), (cmd.cdw12 & 0xFFFF) + 1
        first, end = slba, slba + nlb
        if rule.slba is not None:
            first = max(first, rule.slba)
            end = min(end, rule.slba + (rule.nlb if rule.nlb is not None else end))
        if end <= first:
            return
        lo, hi = (first - slba) * lba_size, (end - slba) * lba_size
        # Extended LBAs interleave each block's metadata: data byte N of the read sits further on.
        step = lba_size + ns.ms if getattr(ns, "ms", 0) and ns.fmt.extended and not nvm_meta.strips(ns, cmd) \
            else lba_size
        dmap = self.ctrl.transfer(cmd, nlb * step)
        memory = self.ctrl.memory
        for _ in range(rule.bits):
            pos = rule.flip_position(lo * 8, hi * 8)
            byte, bit = divmod(pos, 8)
            block, inner = divmod(byte, lba_size)
            _xor_byte(memory, dmap, block * step + inner, 1 << bit)


def _xor_byte(memory: Any, dmap: Any, byte: int, mask: int) -> None:
    """XOR ``mask`` into byte ``byte`` of a transfer, in guest memory (bit buckets: nothing)."""
    offset = 0
    for addr, length in dmap.segments:
        if offset <= byte < offset + length:
            if addr is not None:
                view = memory.view(addr + byte - offset, 1, write=True)
                view[0] ^= mask
            return
        offset += length


def install(ctrl: "Controller", faults: FaultSet) -> FaultInjector:
    """Give ``ctrl`` an injector for ``faults`` (``device.objects`` calls this at realize)."""
    return FaultInjector(ctrl, faults).install()


__all__ = ["FaultInjector", "install"]
