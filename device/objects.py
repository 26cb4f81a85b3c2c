"""The x-nvme-* QOM types: properties as data, plus the glue to the NVMe model.

Types (``-object help`` / ``-device help`` list them)::

    x-nvme-subsystem  (object)   subnqn, uuid; read-only controllers, namespaces
    x-nvme-ctrl       (device)   subsys, socket, cntlid, serial, max-ioqpairs, ... doorbells
    x-nvme-ns         (abstract) subsys, nsid, uuid, eui64, nguid, attached-to; read-only attached
      x-nvme-ns-nvm              size, file, backend, lba-size, ms, mset, pi, pil, pif, mssrl, mcl, msrc
        x-nvme-ns-zoned          zone-size, zone-capacity, zone-max-open, zone-max-active, ...

Why the glue lives here and not in the NVMe model: the model (``device/nvme``) stays
usable from tests without any object system, and ``device/qom`` stays ignorant of
NVMe.  These classes translate property values into constructor arguments and call
the model (``Subsystem``, ``Controller``, ``NvmNamespace``, ``VfioUserServer``);
model classes are imported lazily so the object system works (and ``-object help``
answers) even where a part of the model is missing.

Semantics the users asked for:

* a namespace belongs to a subsystem; ``attached-to`` names controllers (now or
  later) or ``all`` (also controllers added later); it is the only property of a
  namespace that may change after creation (``qom-set``), and the change attaches /
  detaches with an AEN to the hosts;
* a controller without ``subsys`` gets a private subsystem ``/objects/<id>-subsys``,
  deleted with it when it has no namespaces left;
* a subsystem with members cannot be deleted;
* namespaces the guest creates with Namespace Management appear as
  ``/objects/ns-auto-<nsid>`` and disappear when the guest deletes them.
"""

from __future__ import annotations

import logging
import os
import re
import uuid as uuid_mod
from typing import TYPE_CHECKING, Any

from nvshell.device.errors import NvshellError, ObjectError, PropertyError
from nvshell.device.iothread import SPIN_MAX_NS
from nvshell.device.nvme.spec import CSI
from nvshell.device.nvme.subsystem import DEFAULT_CAPACITY as DEFAULT_NS_MGMT_CAPACITY
from nvshell.device.qom import (TYPE_DEVICE, TYPES, USER_CREATABLE, BoolType, EnumType, IntType, LinkType, ListType,
                        Object, Property, SizeType, StrType, TypeInfo, TypeRegistry)

if TYPE_CHECKING:  # pragma: no cover
    from nvshell.device.machine import Machine

log = logging.getLogger(__name__)

TYPE_SUBSYSTEM = "x-nvme-subsystem"
TYPE_CTRL = "x-nvme-ctrl"
TYPE_NS = "x-nvme-ns"
TYPE_NS_NVM = "x-nvme-ns-nvm"
TYPE_NS_ZONED = "x-nvme-ns-zoned"
#: Id prefix of objects mirroring namespaces the guest created (Namespace Management).
AUTO_NS_PREFIX = "ns-auto-"


# ----------------------------------------------------------------- value types
class UuidType(StrType):
    """A UUID in any form ``uuid.UUID`` accepts; stored canonical (lower case, dashed)."""

    def parse(self, pname: str, raw: Any, ctx: Any = None) -> str:
        s = super().parse(pname, raw, ctx)
        if s == "auto":
            return str(uuid_mod.uuid4())
        try:
            return str(uuid_mod.UUID(s))
        except ValueError:
            raise PropertyError(f"Parameter '{pname}' expects a UUID such as "
                                f"'12345678-9abc-def0-1234-56789abcdef0'") from None


class HexIdType(StrType):
    """A fixed-length identifier in hex (EUI-64: 16 digits, NGUID: 32); ':' and '-' allowed.

    Stored as lower-case hex without separators; "" means "not reported".
    """

    def __init__(self, nbytes: int):
        self.nbytes = nbytes

    def parse(self, pname: str, raw: Any, ctx: Any = None) -> str:
        if isinstance(raw, int) and not isinstance(raw, bool):
            if not 0 <= raw < 1 << (8 * self.nbytes):
                raise PropertyError(f"Parameter '{pname}' expects {self.nbytes * 2} hex digits")
            return f"{raw:0{self.nbytes * 2}x}"
        s = super().parse(pname, raw, ctx)
        if s == "":
            return ""
        h = re.sub(r"[:\-]", "", s).lower()
        if h.startswith("0x"):
            h = h[2:]
        if len(h) != self.nbytes * 2 or not re.fullmatch(r"[0-9a-f]+", h):
            raise PropertyError(f"Parameter '{pname}' expects {self.nbytes * 2} hex digits")
        return h


def _str_limit(maxlen: int) -> StrType:
    class _Limited(StrType):
        def parse(self, pname: str, raw: Any, ctx: Any = None) -> str:
            s = super().parse(pname, raw, ctx)
            if len(s.encode()) > maxlen or not s.isascii():
                raise PropertyError(f"Parameter '{pname}' expects at most {maxlen} ASCII characters")
            return s
    return _Limited()


class AttachTargetType(StrType):
    """An element of ``attached-to``: a controller id or ``all``."""

    def parse(self, pname: str, raw: Any, ctx: Any = None) -> str:
        s = super().parse(pname, raw, ctx)
        if s != "all" and not re.fullmatch(r"[A-Za-z][A-Za-z0-9_.\-]*", s):
            raise PropertyError(f"Parameter '{pname}' expects controller ids or 'all', got '{s}'")
        return s


def _ns_ctrl_ids(obj: "SubsystemObject") -> list[str]:
    return [c.id or c.path() for c in obj.controller_objects()]


# ------------------------------------------------------------------ subsystem
class SubsystemObject(Object):
    """``x-nvme-subsystem``: wraps ``device.nvme.subsystem.Subsystem``."""

    model: Any = None
    machine: Any = None
    #: id of the controller this private subsystem was created for, or None.
    implicit_for: str | None = None

    def complete(self, ctx: Any) -> None:
        from nvshell.device.nvme.subsystem import Subsystem, SubsystemError
        try:
            uid = uuid_mod.UUID(self.get("uuid"))
            self.model = Subsystem(self.get("subnqn") or None, uid, capacity=self.get("ns-mgmt-capacity"))
        except SubsystemError as e:
            raise ObjectError(f"{self.id}: {e}") from None
        self._values["subnqn"] = self.model.subnqn
        self.machine = ctx
        self.model.listeners.append(self._on_guest_change)

    def is_live(self) -> bool:
        return self.model is not None

    def property_changed(self, name: str, old: Any, new: Any, ctx: Any) -> None:
        if name == "ns-mgmt-capacity" and self.model is not None:
            self.model.capacity = int(new)  # namespaces already created stay; new ones must fit

    def _on_guest_change(self, kind: str, nsid: int, ns: Any, ctrl: Any) -> None:
        """Subsystem listener (on an IOThread): must not block, so hand over to the machine."""
        m = self.machine
        if m is not None and hasattr(m, "defer"):
            m.defer(lambda: _mirror_guest_change(m, self, kind, nsid, ns, ctrl))

    def controller_objects(self) -> list["ControllerDevice"]:
        m = self.machine
        if m is None:
            return []
        return [d for d in m.devices() if isinstance(d, ControllerDevice) and d.subsys_obj() is self]

    def namespace_objects(self) -> list["NamespaceObject"]:
        m = self.machine
        if m is None:
            return []
        return [o for o in m.objects() if isinstance(o, NamespaceObject) and o.get("subsys") is self]

    def check_delete(self, ctx: Any) -> None:
        ctrls = [c.id or c.path() for c in self.controller_objects()]
        nss = [n.id or "" for n in self.namespace_objects()]
        if self.model is not None:
            ctrls += [f"cntlid {c}" for c, x in self.model.controllers.items()
                      if not any(d.model is x for d in self.controller_objects())]
            nss += [f"nsid {n}" for n, x in self.model.namespaces.items()
                    if not any(o.model is x for o in self.namespace_objects())]
        if ctrls or nss:
            parts = []
            if ctrls:
                parts.append("controllers " + ", ".join(ctrls))
            if nss:
                parts.append("namespaces " + ", ".join(nss))
            raise ObjectError(f"x-nvme-subsystem '{self.id}' still has members ({'; '.join(parts)}); "
                              f"delete them first")

    def finalize(self, ctx: Any) -> None:
        if self.model is not None:
            try:
                self.model.listeners.remove(self._on_guest_change)
            except ValueError:
                pass
        self.model = None


# ----------------------------------------------------------------- namespaces
class NamespaceObject(Object):
    """``x-nvme-ns`` and subtypes: wraps an ``NvmNamespace`` allocated in a subsystem."""

    model: Any = None
    #: True for mirrors of guest-created namespaces (``ns-auto-<nsid>``).
    guest_created = False

    def is_live(self) -> bool:
        return self.model is not None

    def subsystem(self) -> SubsystemObject:
        s = self.get("subsys")
        assert isinstance(s, SubsystemObject)
        return s

    def _get_nsid(self) -> int:
        if self.model is not None and getattr(self.model, "nsid", None):
            return int(self.model.nsid)
        return int(self._values.get("nsid", 0))

    def _attached_ids(self) -> list[str]:
        if self.model is None:
            return []
        sub = self.subsystem()
        ids = set(sub.model.attached_controllers(self.model.nsid))
        return [c.id or c.path() for c in sub.controller_objects() if c.model is not None and c.cntlid() in ids]

    # ---- creation
    def _pick_subsystem(self, m: "Machine") -> SubsystemObject:
        if self.is_set("subsys") and self.get("subsys") is not None:
            return self.subsystem()
        targets = [t for t in self.get("attached-to") if t != "all"]
        for t in targets:
            dev = m.find_device(t)
            if isinstance(dev, ControllerDevice) and dev.subsys_obj() is not None:
                return dev.subsys_obj()
        subs = [o for o in m.objects() if isinstance(o, SubsystemObject)]
        if len(subs) == 1:
            return subs[0]
        raise PropertyError("Parameter 'subsys' is missing")

    def complete(self, ctx: Any) -> None:
        from nvshell.device.nvme.subsystem import SubsystemError
        m: Machine = ctx
        sub = self._pick_subsystem(m)
        if sub.model is None:
            raise ObjectError(f"x-nvme-subsystem '{sub.id}' is not ready")
        self._values["subsys"] = sub
        self._check_targets(m, self.get("attached-to"))
        ns = self.build_model(m)
        try:
            sub.model.add_namespace(ns, self._values.get("nsid", 0), configured=True)
        except SubsystemError as e:
            _close(ns)
            raise PropertyError(f"Parameter 'nsid': {e}") from None
        self.model = ns
        try:
            self._apply_attachments([], self.get("attached-to"), m, notify=True)
        except BaseException:
            self.model = None
            try:
                sub.model.remove_namespace(ns.nsid, close=True)
            except Exception:
                log.exception("rolling back namespace %s", self.id)
            raise

    def build_model(self, m: "Machine") -> Any:
        raise ObjectError(f"{self.typename} is abstract")

    def _check_targets(self, m: "Machine", targets: list[str]) -> None:
        sub = self.get("subsys")
        for t in targets:
            if t == "all":
                continue
            dev = m.find_device(t)
            if dev is None:
                continue  # may be created later
            if not isinstance(dev, ControllerDevice):
                raise PropertyError(f"Parameter 'attached-to': '{t}' is a {dev.typename}, not an {TYPE_CTRL}")
            if dev.subsys_obj() is not sub:
                raise PropertyError(f"Parameter 'attached-to': controller '{t}' is not in x-nvme-subsystem "
                                    f"'{sub.id if sub else '?'}'")

    def _apply_attachments(self, old: list[str], new: list[str], m: "Machine", notify: bool = True) -> None:
        """Make the subsystem's attachments of this namespace match ``new``."""
        sub = self.subsystem().model
        nsid = self.model.nsid
        if "all" in new:
            if nsid not in sub.attach_policy_all:
                sub.attach_all(nsid, notify=notify)
            return
        sub.attach_policy_all.discard(nsid)
        want = set(new)
        for ctrl in self.subsystem().controller_objects():
            if ctrl.model is None:
                continue
            attached = sub.is_attached(nsid, ctrl.model)
            if ctrl.id in want and not attached:
                sub.attach(nsid, ctrl.model, notify=notify)
            elif ctrl.id not in want and attached:
                sub.detach(nsid, ctrl.model, notify=notify)

    def property_changed(self, name: str, old: Any, new: Any, ctx: Any) -> None:
        if name == "attached-to" and self.model is not None:
            from nvshell.device.nvme.subsystem import SubsystemError
            self._check_targets(ctx, new)
            try:
                self._apply_attachments(old, new, ctx)
            except SubsystemError as e:
                raise ObjectError(str(e)) from None

    def finalize(self, ctx: Any) -> None:
        ns, self.model = self.model, None
        if ns is None:
            return
        sub = self.get("subsys")
        if self.guest_created and getattr(self, "_guest_deleted", False):
            return
        try:
            if sub is not None and sub.model is not None and sub.model.namespace(ns.nsid) is ns:
                sub.model.remove_namespace(ns.nsid, close=True)
            else:
                _close(ns)
        except Exception:
            log.exception("removing namespace %s", self.id)


class NvmNamespaceObject(NamespaceObject):
    """``x-nvme-ns-nvm``: an NVM command set namespace on a memory, file or null backend."""

    def backend_kind(self) -> str:
        kind = self.get("backend")
        if kind:
            return kind
        return "file" if self.get("file") else "memory"

    def _open_backend(self) -> Any:
        from nvshell.device.backends import BackendError, open_backend
        kind = self.backend_kind()
        size = self.get("size")
        path = self.get("file")
        lba = self.get("lba-size")
        if kind == "file":
            if not path:
                raise PropertyError("Parameter 'file' is missing")
            if not size and not os.path.exists(path):
                raise PropertyError("Parameter 'size' is missing")
        else:
            if path:
                raise PropertyError(f"Parameter 'file' is not used by backend '{kind}'")
            if not size:
                raise PropertyError("Parameter 'size' is missing")
        if size and size % lba:
            raise PropertyError(f"Parameter 'size' expects a multiple of the lba-size ({lba})")
        direct = bool(self.get("direct"))
        if direct and kind != "file":
            raise PropertyError(f"Parameter 'direct' is not used by backend '{kind}'")
        try:
            return open_backend(kind, size or None, path or None, direct=direct)
        except (BackendError, OSError) as e:
            raise ObjectError(f"{self.id}: cannot open backend: {e}") from None

    def model_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"lba_size": self.get("lba-size"), "uuid": uuid_mod.UUID(self.get("uuid"))}
        if self.get("eui64"):
            kw["eui64"] = bytes.fromhex(self.get("eui64"))
        if self.get("nguid"):
            kw["nguid"] = bytes.fromhex(self.get("nguid"))
        for p in ("mssrl", "mcl", "msrc", "ms", "mset", "pi", "pil", "pif"):
            kw[p] = self.get(p)
        if kw["mcl"] < kw["mssrl"]:
            raise PropertyError("Parameter 'mcl' expects a value not below mssrl")
        return kw

    def model_class(self) -> Any:
        from nvshell.device.nvme.namespace import NvmNamespace
        return NvmNamespace

    def build_model(self, m: "Machine") -> Any:
        cls = self.model_class()
        backend = self._open_backend()
        try:
            return _construct(cls, backend, self.model_kwargs())
        except NvshellError:
            backend.close()
            raise
        except (ValueError, TypeError) as e:
            backend.close()
            raise ObjectError(f"{self.id}: {e}") from None


class ZonedNamespaceObject(NvmNamespaceObject):
    """``x-nvme-ns-zoned``: a Zoned Namespace command set namespace (``device/nvme/zoned.py``).
    A file-backed one keeps its zone table next to the data, in ``FILE.zones``."""

    def model_class(self) -> Any:
        from nvshell.device.nvme.zoned import ZonedNamespace
        return ZonedNamespace

    def model_kwargs(self) -> dict[str, Any]:
        from nvshell.device.nvme.zoned import state_file_for
        kw = super().model_kwargs()
        for p in ("zone-size", "zone-capacity", "zone-max-open", "zone-max-active",
                  "zone-descriptor-extension-size", "zone-cross-read"):
            kw[p.replace("-", "_")] = self.get(p)
        if self.backend_kind() == "file":
            kw["zone_state_file"] = state_file_for(self.get("file"))
        return kw


def _construct(cls: Any, backend: Any, kw: dict[str, Any]) -> Any:
    """Build the namespace model on its backend (every property maps to a keyword)."""
    return cls(backend, **kw)


def _close(ns: Any) -> None:
    try:
        ns.close()
    except Exception:
        log.exception("closing namespace")


def _mirror_guest_change(m: "Machine", sub: SubsystemObject, kind: str, nsid: int, ns: Any, ctrl: Any) -> None:
    """Apply a guest-made change to the tree (runs under the machine lock)."""
    if sub.model is None:
        return
    if kind == "namespace-created":
        if any(o.model is ns for o in sub.namespace_objects()):
            return
        base = f"{AUTO_NS_PREFIX}{nsid}"
        if sub.implicit_for is None and len([s for s in m.objects() if isinstance(s, SubsystemObject)]) > 1:
            base = f"{AUTO_NS_PREFIX}{sub.id}-{nsid}"
        name, i = base, 1
        while m.find_object(name) is not None:
            name, i = f"{base}.{i}", i + 1
        typename = TYPE_NS_ZONED if ns.csi == CSI.ZONED else TYPE_NS_NVM
        obj = m.registry.instantiate(typename, name)
        assert isinstance(obj, NamespaceObject)
        # Everything else reads back live from the model (Property.live).
        obj._values.update({"subsys": sub, "nsid": nsid, "attached-to": []})
        obj.model = ns
        obj.guest_created = True
        m.objects_node.add_child(name, obj)
        obj.completed = True
    elif kind == "namespace-deleted":
        for o in sub.namespace_objects():
            if o.model is ns or (ns is None and o.model is not None and o._get_nsid() == nsid):
                o._guest_deleted = True  # type: ignore[attr-defined]
                o.guest_created = True
                o.model = None
                o.completed = False
                m.objects_node.remove_child(o.name or "")
    elif kind in ("attached", "detached"):
        dev = next((d for d in sub.controller_objects() if d.model is ctrl), None)
        for o in sub.namespace_objects():
            if o.model is not None and o._get_nsid() == nsid and dev is not None and dev.id:
                targets = list(o.get("attached-to"))
                if kind == "attached" and "all" not in targets and dev.id not in targets:
                    targets.append(dev.id)
                elif kind == "detached" and dev.id in targets:
                    targets.remove(dev.id)
                o._values["attached-to"] = targets


# ----------------------------------------------------------------- controller
class ControllerDevice(Object):
    """``x-nvme-ctrl``: one NVMe controller (PCI function) served on its own vfio-user socket."""

    model: Any = None
    server: Any = None
    iothread: Any = None
    machine: Any = None
    injector: Any = None
    socket_path: str | None = None

    def is_live(self) -> bool:
        return self.model is not None

    def subsys_obj(self) -> SubsystemObject | None:
        s = self._values.get("subsys")
        return s if isinstance(s, SubsystemObject) else None

    def cntlid(self) -> int:
        if self.model is not None and getattr(self.model, "cntlid", None):
            return int(self.model.cntlid)
        return int(self._values.get("cntlid", 0))

    def connected(self) -> bool:
        return bool(self.server is not None and getattr(self.server, "connected", False))

    def _socket(self) -> str:
        if self.socket_path:
            return self.socket_path
        if self.get("socket"):
            return str(self.get("socket"))
        m = self.machine
        run_dir = getattr(m, "run_dir", ".") if m is not None else "."
        return os.path.join(run_dir, f"{self.id or self.name}.sock")

    def config_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {}
        for p in self.registry.properties(self.typename).values():
            if p.name in ("subsys", "socket") or p.read_only or p.getter is not None and p.name != "cntlid":
                continue
            kw[p.name.replace("-", "_")] = self.get(p.name)
        kw["cntlid"] = int(self._values.get("cntlid", 0))
        if not kw.get("serial"):
            kw["serial"] = (self.id or self.name or "nvshell")[:20]
        return kw

    def complete(self, ctx: Any) -> None:
        m: Machine = ctx
        self.machine = m
        implicit = None
        if self.subsys_obj() is None:
            implicit = m.create_private_subsystem(self)
            self._values["subsys"] = implicit
        sub = self.subsys_obj()
        assert sub is not None
        try:
            self._realize(m, sub)
        except BaseException:
            if implicit is not None:
                self._values.pop("subsys", None)
                try:
                    m.object_del(implicit.id or "")
                except NvshellError:
                    log.exception("removing private subsystem")
            raise

    def _realize(self, m: "Machine", sub: SubsystemObject) -> None:
        import dataclasses

        from nvshell.device.iothread import IOThread
        from nvshell.device.nvme.config import ControllerConfig
        from nvshell.device.nvme.controller import Controller
        from nvshell.device.nvme.subsystem import SubsystemError
        from nvshell.device.vfio_user.server import VfioUserServer

        path = self._socket()
        for d in m.devices():
            if isinstance(d, ControllerDevice) and d is not self and d.socket_path == os.path.abspath(path):
                raise PropertyError(f"Parameter 'socket': '{path}' is already used by '{d.id}'")
        self.socket_path = os.path.abspath(path)
        names = {f.name for f in dataclasses.fields(ControllerConfig)}
        kw = {k: v for k, v in self.config_kwargs().items() if k in names}
        try:
            config = ControllerConfig(**kw)
        except (TypeError, ValueError) as e:
            raise PropertyError(str(e)) from None
        iothread = IOThread(self.id or self.name or "ctrl", spin_max=config.poll_max_ns / 1e9)
        ctrl = None
        server = None
        try:
            try:
                # The controller registers itself with its subsystem (and
                # leaves it in shutdown()).
                ctrl = Controller(config, sub.model, iothread)
                ctrl.name = self.id or self.name or ctrl.name
            except SubsystemError as e:
                raise PropertyError(f"Parameter 'cntlid': {e}") from None
            except ValueError as e:
                raise ObjectError(f"{self.id}: {e}") from None
            self.model = ctrl
            self.iothread = iothread
            faults = getattr(m, "faults", None)
            if faults is not None:
                from nvshell.device.nvme.fault_injector import install as install_faults
                self.injector = install_faults(ctrl, faults)
            for ns in sub.namespace_objects():
                if ns.model is None or sub.model.is_attached(ns.model.nsid, ctrl):
                    continue
                if "all" in ns.get("attached-to") or self.id in ns.get("attached-to"):
                    sub.model.attach(ns.model.nsid, ctrl, notify=False)
            os.makedirs(os.path.dirname(self.socket_path) or ".", exist_ok=True)
            server = VfioUserServer(self.socket_path, ctrl.pci, iothread, name=self.id or "",
                                    on_event=self._on_server_event)
            iothread.start()
            server.start()
            self.server = server
        except BaseException as e:
            self.model = None
            if self.injector is not None:
                _quiet(self.injector.uninstall)
                self.injector = None
            if server is not None:
                _quiet(server.close)
            if ctrl is not None:
                _quiet(ctrl.shutdown)
            _quiet(iothread.stop)
            if isinstance(e, OSError):
                raise ObjectError(f"{self.id}: cannot listen on '{self.socket_path}': {e.strerror or e}") from None
            raise

    def _on_server_event(self, kind: str, data: Any = None) -> None:
        m = self.machine
        if m is None:
            return
        name = {"connected": "X_NVME_CLIENT_CONNECTED", "disconnected": "X_NVME_CLIENT_DISCONNECTED"}.get(kind)
        if name:
            event = {"device": self.id or self.path(), "socket": self.socket_path or ""}
            if isinstance(data, dict) and data.get("pid"):
                event["pid"] = data["pid"]
            if kind == "disconnected" and isinstance(data, dict) and data.get("reason"):
                event["reason"] = str(data["reason"])
            m.publish(name, event)

    def detach_for_removal(self) -> bool:
        """First step of ``device_del`` while a host uses the controller: detach every
        namespace with the Namespace Attribute Changed AEN, so a multipath host drops these
        paths cleanly (a path that just dies can fail a bio with EIO instead of failing it
        over). Returns whether a host was told (the machine then gives it time to read the
        Changed Namespace List, off the control plane, before ``finalize``)."""
        ctrl, sub = self.model, self.subsys_obj()
        if ctrl is None or not self.connected() or self.iothread is None or not self.iothread.running:
            return False
        if sub is not None and sub.model is not None:
            for nsid in list(sub.model.namespaces):
                if sub.model.is_attached(nsid, ctrl):
                    _quiet(lambda n=nsid: sub.model.detach(n, ctrl, notify=True))
        return True

    def host_took_changes(self) -> bool:
        """Whether the host has read the Changed Namespace List (or is gone); asked on the
        controller's IOThread, which owns that state."""
        ctrl, iothread = self.model, self.iothread
        if ctrl is None or iothread is None or not iothread.running or not self.connected():
            return True
        try:
            return not iothread.run(lambda: bool(ctrl.changed_namespaces), timeout=1.0)
        except Exception:
            return True

    def finalize(self, ctx: Any) -> None:
        sub = self.subsys_obj()
        if (self.model is not None and self.connected() and self.iothread is not None and self.iothread.running
                and hasattr(self.model, "surprise_remove")):
            # A host is still connected: make the removal visible at once (see
            # Controller.surprise_remove) rather than leaving I/O to time out on a closed socket.
            _quiet(self.iothread.run, self.model.surprise_remove)
        if self.server is not None:
            _quiet(self.server.close)
        if self.injector is not None:
            _quiet(self.injector.uninstall)
            self.injector = None
        if self.model is not None:
            # Controller state belongs to its IOThread: shut it down there.
            if self.iothread is not None and self.iothread.running:
                _quiet(self.iothread.run, self.model.shutdown)
            else:
                _quiet(self.model.shutdown)
        if self.iothread is not None:
            _quiet(self.iothread.stop)
        self.server = self.model = self.iothread = None
        if sub is not None and sub.implicit_for is not None and sub.implicit_for == (self.id or self.name):
            self._values.pop("subsys", None)
            if not sub.namespace_objects() and not (sub.model and sub.model.namespaces):
                try:
                    ctx.object_del(sub.id)
                except NvshellError:
                    log.exception("removing private subsystem %s", sub.id)


def _quiet(fn: Any, *args: Any) -> None:
    try:
        fn(*args)
    except Exception:
        log.exception("teardown step %r failed", fn)


# ------------------------------------------------------------------ registration
def _uuid4() -> str:
    return str(uuid_mod.uuid4())


# Live getters (Property.live): the value in effect, read from the running model.  Each one
# reads what the guest sees (Identify, registers), so introspection follows guest-made changes.
def _model_attr(attr: str, convert: Any = None) -> Any:
    """``obj.model.<attr>`` (optionally converted): subsystem, namespace."""
    def live(o: Object) -> Any:
        v = getattr(o.model, attr)  # type: ignore[attr-defined]
        return convert(v) if convert is not None else v
    return live


def _config(field: str) -> Any:
    """A controller's ``ControllerConfig`` field, as the controller runs with it."""
    return lambda o: getattr(o.model.config, field)  # type: ignore[attr-defined]


def _ns_format(read: Any) -> Any:
    """A field of the namespace's current format (``NsFormat``): a guest Format NVM changes it."""
    return lambda o: read(o.model.fmt)  # type: ignore[attr-defined]


def _ns_block_bytes(attr: str) -> Any:
    """A Copy limit the namespace keeps in blocks of its current format, as bytes."""
    return lambda o: int(getattr(o.model, attr)) << int(o.model.lbads)  # type: ignore[attr-defined]


SUBSYSTEM_PROPS = [
    Property("subnqn", _str_limit(223), description="NVMe Qualified Name (default: derived from the uuid)",
             live=_model_attr("subnqn")),
    Property("uuid", UuidType(), default=_uuid4, hidden_default=True, description="subsystem UUID (default: random)",
             live=_model_attr("uuid", str)),
    Property("ns-mgmt-capacity", SizeType(), default=DEFAULT_NS_MGMT_CAPACITY, mutable=True,
             description="bytes the guest may allocate with Namespace Management create, beyond the configured "
                         "namespaces; such namespaces live in host RAM (default 1G, 0 = none)",
             live=_model_attr("capacity")),
    Property("controllers", ListType(StrType()), read_only=True, description="ids of the member controllers",
             getter=_ns_ctrl_ids),
    Property("namespaces", ListType(StrType()), read_only=True, description="ids of the member namespaces",
             getter=lambda o: [n.id or "" for n in o.namespace_objects()]),
]

NS_PROPS = [
    Property("subsys", LinkType(TYPE_SUBSYSTEM),
             description="subsystem the namespace belongs to (default: the one of attached-to, "
                         "or the only subsystem)"),
    Property("nsid", IntType("uint32", maximum=0xFFFFFFFE, aliases={"auto": 0}), default=0,
             description="namespace id; 0 or 'auto' picks the lowest free one",
             getter=lambda o: o._get_nsid(), setter=lambda o, v: o._values.__setitem__("nsid", v)),
    Property("uuid", UuidType(), default=_uuid4, hidden_default=True, description="namespace UUID (default: random)",
             live=_model_attr("uuid", str)),
    Property("eui64", HexIdType(8), default="", live=_model_attr("eui64", bytes.hex),
             description="IEEE EUI-64, 16 hex digits (default: derived from the uuid)"),
    Property("nguid", HexIdType(16), default="", live=_model_attr("nguid", bytes.hex),
             description="namespace GUID, 32 hex digits (default: derived from the uuid)"),
    Property("attached-to", ListType(AttachTargetType()), default=(), mutable=True,
             refers_to=("/machine/peripheral", ("all",)),
             description="controllers (ids, repeatable) the namespace is attached to, or 'all' "
                         "(includes controllers added later)"),
    Property("attached", ListType(StrType()), read_only=True, getter=lambda o: o._attached_ids(),
             description="controllers the namespace is attached to now"),
]

NVM_PROPS = [
    Property("size", SizeType(), description="capacity in bytes (suffixes K, M, G, T accepted)",
             live=_model_attr("size")),
    Property("file", StrType(), default="", description="backing file or block device (backend=file)",
             live=lambda o: str(getattr(o.model.backend, "path", "") or "")),  # type: ignore[attr-defined]
    Property("backend", EnumType(("memory", "file", "null")),
             description="memory (sparse), file, or null (reads zeroes, discards writes); "
                         "default: file if 'file' is given, else memory",
             live=lambda o: o.model.backend.kind),  # type: ignore[attr-defined]
    Property("direct", BoolType(), default=False,
             description="backend=file: open with O_DIRECT (bypass the host page cache)"),
    Property("lba-size", IntType("uint32", choices=(512, 4096)), default=512, description="LBA data size",
             live=_model_attr("lba_size")),
    Property("ms", IntType("uint16", choices=(0, 8, 16, 64)), default=0, live=_ns_format(lambda f: f.ms),
             description="metadata bytes per block (0, 8, 16, 64)"),
    Property("mset", IntType("uint8", choices=(0, 1)), default=0, live=_ns_format(lambda f: int(f.extended)),
             description="1: metadata interleaved with the data (extended LBA); 0: separate buffer (MPTR)"),
    Property("pi", IntType("uint8", choices=(0, 1, 2, 3)), default=0, live=_ns_format(lambda f: f.pi),
             description="protection information type (0 = none, 1, 2, 3)"),
    Property("pil", IntType("uint8", choices=(0, 1)), default=0, live=_ns_format(lambda f: int(f.first)),
             description="protection information location: 1 = first bytes of the metadata, 0 = last"),
    Property("pif", IntType("uint8", choices=(0, 2)), default=0, live=_ns_format(lambda f: f.pif),
             description="guard format: 0 = 16b guard (CRC-16 T10-DIF), 2 = 64b guard (CRC-64, 48-bit ref tag)"),
    Property("mssrl", SizeType(minimum=1), default=128 * 1024, live=_ns_block_bytes("mssrl"),
             description="Copy: maximum single source range length, bytes (whole blocks)"),
    Property("mcl", SizeType(minimum=1), default=128 * 1024, live=_ns_block_bytes("mcl"),
             description="Copy: maximum copy length, bytes (whole blocks)"),
    Property("msrc", IntType("uint32", minimum=1, maximum=256), default=128, live=_model_attr("msrc"),
             description="Copy: maximum number of source ranges"),
    Property("nlbas", IntType("uint64"), read_only=True, description="number of LBAs",
             getter=lambda o: int(getattr(o.model, "nlbas", 0) or 0)),
]

ZONED_PROPS = [
    Property("zone-size", SizeType(minimum=4096), default=128 << 20, description="zone size, bytes",
             live=_model_attr("zone_size_bytes")),
    Property("zone-capacity", SizeType(), default=0, description="zone capacity, bytes (0 = zone size)",
             live=_model_attr("zone_cap_bytes")),
    Property("zone-max-open", IntType("uint32"), default=0, description="maximum open zones (0 = no limit)",
             live=_model_attr("max_open")),
    Property("zone-max-active", IntType("uint32"), default=0, description="maximum active zones (0 = no limit)",
             live=_model_attr("max_active")),
    Property("zone-descriptor-extension-size", SizeType(multiple_of=64), default=0,
             description="zone descriptor extension size, bytes (multiple of 64)", live=_model_attr("zdes")),
    Property("zone-cross-read", BoolType(), default=False, description="allow reads across zone boundaries",
             live=_model_attr("cross_read")),
]

CTRL_PROPS = [
    Property("subsys", LinkType(TYPE_SUBSYSTEM),
             description="subsystem (default: a private one, /objects/<id>-subsys)"),
    Property("socket", StrType(), default="", description="vfio-user socket path (default: <run-dir>/<id>.sock)",
             getter=lambda o: o._socket() if (o.completed or o.socket_path) else o._values.get("socket", ""),
             setter=lambda o, v: o._values.__setitem__("socket", v)),
    Property("cntlid", IntType("uint16", maximum=0xFFEF), default=0,
             description="controller id, unique in the subsystem (0 = auto)",
             getter=lambda o: o.cntlid(), setter=lambda o, v: o._values.__setitem__("cntlid", v)),
    Property("serial", _str_limit(20), default="", live=_config("serial"),
             description="serial number (default: the device id)"),
    Property("model", _str_limit(40), default="nvshell NVMe Ctrl", live=_config("model"), description="model number"),
    Property("firmware", _str_limit(8), default="1.0", live=_config("firmware"), description="firmware revision"),
    Property("max-ioqpairs", IntType("uint32", minimum=1, maximum=65534), default=64, live=_config("max_ioqpairs"),
             description="maximum I/O queue pairs"),
    Property("max-intr-vectors", IntType("uint32", minimum=1, maximum=2048), default=65,
             live=_config("max_intr_vectors"), description="MSI-X vectors, including the admin queue's"),
    Property("mqes", IntType("uint16", minimum=1), default=0x7FF, live=_config("mqes"),
             description="maximum queue entries minus one"),
    Property("max-aer-retention", IntType("uint32", minimum=1, maximum=65535), default=100,
             live=_config("max_aer_retention"), description="queued AENs kept while none is outstanding"),
    Property("aerl", IntType("uint8"), default=3, live=_config("aerl"),
             description="async event request limit (0's based)"),
    Property("mdts", IntType("uint8", maximum=31), default=7, live=_config("mdts"),
             description="maximum data transfer size, power of two of 4 KiB pages (0 = none)"),
    Property("doorbells", EnumType(("trap", "mmap")), default="trap", live=_config("doorbells"),
             description="trap: doorbell writes are messages (rare with shadow doorbells), the device "
                         "sleeps between them; mmap: doorbell page shared with the client and polled"),
    Property("poll-max-ns", IntType("uint32", maximum=10_000_000), default=SPIN_MAX_NS, live=_config("poll_max_ns"),
             description="longest adaptive spin of the controller's IOThread after work, ns (0: never spin; "
                         "it sleeps until a doorbell message or timer)"),
    Property("ocp", BoolType(), default=False, live=_config("ocp"),
             description="OCP Datacenter NVMe SSD log pages (C0h SMART / Health Information Extended)"),
    Property("msix", BoolType(), default=True, live=_config("msix"),
             description="MSI-X capability (off: the host falls back to MSI or INTx, as without MSI-X support)"),
    Property("connected", BoolType(), read_only=True, getter=lambda o: o.connected(),
             description="a vfio-user client is connected"),
]


def register_types(reg: TypeRegistry = TYPES) -> None:
    """Register the x-nvme-* types (idempotent)."""
    if TYPE_SUBSYSTEM in reg:
        return
    reg.register(TypeInfo(TYPE_SUBSYSTEM, cls=SubsystemObject, properties=SUBSYSTEM_PROPS,
                          interfaces=(USER_CREATABLE,), description="NVM subsystem"))
    reg.register(TypeInfo(TYPE_NS, cls=NamespaceObject, abstract=True, properties=NS_PROPS,
                          interfaces=(USER_CREATABLE,), description="NVMe namespace"))
    reg.register(TypeInfo(TYPE_NS_NVM, parent=TYPE_NS, cls=NvmNamespaceObject, properties=NVM_PROPS,
                          description="NVM command set namespace"))
    reg.register(TypeInfo(TYPE_NS_ZONED, parent=TYPE_NS_NVM, cls=ZonedNamespaceObject, properties=ZONED_PROPS,
                          description="Zoned Namespace command set namespace"))
    reg.register(TypeInfo(TYPE_CTRL, parent=TYPE_DEVICE, cls=ControllerDevice, properties=CTRL_PROPS,
                          description="NVMe controller served over vfio-user"))


register_types()
