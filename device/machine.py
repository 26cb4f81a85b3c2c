"""The run-time API: what QMP, HMP, the shell and the command line call.

``Machine(run_dir)`` is the root of the object tree (``device.qom.ObjectTree``) with
the NVMe types registered (``device.objects``), plus:

* events: ``subscribe(callback)``; callbacks get ``(event_name, data)`` from any
  thread (the monitor marshals them to its loop).  ``DEVICE_DELETED`` after a
  ``device_del`` completes; ``X_NVME_CLIENT_CONNECTED`` / ``X_NVME_CLIENT_DISCONNECTED``
  ``{"device", "socket"}`` when a vfio-user client comes or goes.
* ``device_del`` never blocks the control plane: a controller no host uses goes at
  once (``DEVICE_DELETED`` before the call returns); one a host uses has its
  namespaces detached with an AEN, and a removal thread gives the host up to
  ``REMOVAL_GRACE`` seconds to read the Changed Namespace List before the device
  goes and ``DEVICE_DELETED`` follows, as QEMU's asynchronous unplug does.
* guest-made changes (Namespace Management/Attachment) reach the subsystem
  listeners on an IOThread.  A listener must never block (the control plane may be
  waiting on that IOThread while holding the machine lock), and the object tree
  belongs to the control plane, so they are queued with ``defer`` and applied under
  the lock on the control plane: on its loop when one is set
  (``set_control_plane(loop.call_soon_threadsafe)``, as ``nvshell.main`` does), and
  in any case before any API call reads the tree.  An IOThread never changes it.
* convenience: ``attach(ns_id, ctrl_id)`` / ``detach(ns_id, ctrl_id)``,
  ``shutdown()``, and ``default_topology(machine)``.
* typed queries for the monitor: ``query_controllers()`` and ``query_queues()``
  return a ``concurrent.futures.Future`` of dataclasses; the tree is read under the
  machine lock, and whatever belongs to a controller (its counters, its queues) is
  computed on that controller's IOThread through ``iothread.submit``, never read
  across threads. The monitor awaits the future without blocking its loop.

Every method raises ``device.errors.NvshellError`` subclasses with QEMU-like messages;
``error_class`` gives the QMP class.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from nvshell.device import objects as nvme_objects
from nvshell.device.faults import FaultSet
from nvshell.device.errors import NvshellError, ObjectError, ObjectNotFound, PropertyError
from nvshell.device.qom import TYPES, Object, ObjectTree, TypeRegistry

log = logging.getLogger(__name__)

EventCallback = Callable[[str, dict[str, Any]], None]

#: How long an asynchronous device_del waits for the host to read the Changed
#: Namespace List (seconds), and how long it then leaves for the host's rescan.
REMOVAL_GRACE = 2.0
RESCAN_GRACE = 0.5


@dataclass(frozen=True)
class ControllerStatus:
    """One controller for ``x-nvme-query-controllers`` (the shell's toolbar polls it)."""

    id: str
    subsystem: str
    cntlid: int
    socket: str
    connected: bool
    #: Host read + write commands completed (SMART counters, read on the IOThread).
    io_commands: int


@dataclass(frozen=True)
class QueueStatus:
    """One controller's queues for ``x-nvme-query-queues`` (``Controller.queue_info``)."""

    device: str
    state: str
    queues: tuple[dict[str, Any], ...]


def _gather(futures: Sequence["concurrent.futures.Future[Any]"],
            build: Callable[[list[Any]], Any]) -> "concurrent.futures.Future[Any]":
    """A future of ``build(results)`` once every one of ``futures`` is done (first error wins)."""
    out: concurrent.futures.Future[Any] = concurrent.futures.Future()
    remaining = [len(futures)]
    lock = threading.Lock()

    def one_done(_: Any) -> None:
        with lock:
            remaining[0] -= 1
            if remaining[0]:
                return
        try:
            out.set_result(build([f.result() for f in futures]))
        except BaseException as exc:
            out.set_exception(exc)

    if not futures:
        out.set_result(build([]))
    for f in futures:
        f.add_done_callback(one_done)
    return out


def _on_iothread(dev: Any, fn: Callable[[Any], Any], idle: Any) -> "concurrent.futures.Future[Any]":
    """``fn(controller)`` on the device's IOThread; ``idle`` while it has none (realizing, removed)."""
    model, iothread = dev.model, dev.iothread
    if model is None or iothread is None:
        done: concurrent.futures.Future[Any] = concurrent.futures.Future()
        done.set_result(idle)
        return done
    return iothread.submit(fn, model)


def _io_commands(ctrl: Any) -> int:
    return int(ctrl.stats.host_read_commands + ctrl.stats.host_write_commands)


class Machine(ObjectTree):
    """Root of everything the emulator runs (see module docstring)."""

    def __init__(self, run_dir: str = ".", registry: TypeRegistry | None = None):
        reg = registry or TYPES
        nvme_objects.register_types(reg)
        super().__init__(reg)
        self.run_dir = run_dir
        self._subscribers: list[EventCallback] = []
        self._sub_lock = threading.Lock()
        self._deferred: collections.deque[Callable[[], None]] = collections.deque()
        self._draining = False
        self._closed = False
        #: Fault injection rules, applied by an injector on every controller (device/faults.py).
        self.faults = FaultSet(publish=self.publish)
        #: Devices whose asynchronous removal is under way -> the thread finishing it.
        self._unplugging: dict[Object, threading.Thread] = {}
        #: Schedules a callable on the control plane's loop (None: at the next API call).
        self._control_plane: Callable[[Callable[[], None]], Any] | None = None
        #: Set by shutdown: pending removals stop waiting for the host.
        self._hurry = threading.Event()

    # ---------------------------------------------------------------- events
    def subscribe(self, callback: EventCallback) -> Callable[[], None]:
        """Register ``callback(event_name, data)``; returns a function that unsubscribes."""
        with self._sub_lock:
            self._subscribers.append(callback)

        def unsubscribe() -> None:
            with self._sub_lock:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)
        return unsubscribe

    def publish(self, event: str, data: dict[str, Any]) -> None:
        """Deliver an event to every subscriber; a failing subscriber is logged, not fatal."""
        with self._sub_lock:
            subs = list(self._subscribers)
        for cb in subs:
            try:
                cb(event, dict(data))
            except Exception:
                log.exception("event subscriber %r failed on %s", cb, event)

    # ------------------------------------------------------- deferred changes
    def set_control_plane(self, call_soon: Callable[[Callable[[], None]], Any] | None) -> None:
        """Where deferred tree changes run: e.g. ``loop.call_soon_threadsafe`` of the monitor's loop."""
        self._control_plane = call_soon

    def defer(self, fn: Callable[[], None]) -> None:
        """Queue a tree change from a thread that must not block (see module docstring)."""
        self._deferred.append(fn)
        call_soon = self._control_plane
        if call_soon is not None:
            try:
                call_soon(self.sync)
            except RuntimeError:          # the loop is closed: the next API call applies it
                pass

    def _run_deferred(self) -> None:
        """Apply the queued changes in order (machine lock held). Not re-entrant: a change
        that reads the tree through the API must not apply the changes queued after it
        first (a namespace's attach before its creation)."""
        if self._draining:
            return
        self._draining = True
        try:
            while self._deferred:
                try:
                    fn = self._deferred.popleft()
                except IndexError:
                    return
                try:
                    fn()
                except Exception:
                    log.exception("applying a guest-made change to the object tree failed")
        finally:
            self._draining = False

    def sync(self) -> None:
        """Apply queued guest-made changes now (tests call it; every API call does too)."""
        with self.lock:
            self._run_deferred()

    # ------------------------------------------------------- API (synced)
    def resolve(self, path: str) -> Object:
        with self.lock:
            self._run_deferred()
            return super().resolve(path)

    def objects(self) -> list[Object]:
        with self.lock:
            self._run_deferred()
            return super().objects()

    def devices(self) -> list[Object]:
        with self.lock:
            self._run_deferred()
            return super().devices()

    def object_add(self, qom_type: str, id: str, props: dict[str, Any] | None = None) -> Object:
        """``object-add``/``-object``: e.g. ``object_add("x-nvme-ns-nvm", "ns2", {"size": "1G"})``."""
        with self.lock:
            self._check_open()
            self._run_deferred()
            return super().object_add(qom_type, id, props)

    def object_del(self, id: str) -> None:
        """``object-del``: a namespace is detached from every controller (AEN) and freed;
        a subsystem with members is refused."""
        with self.lock:
            self._run_deferred()
            super().object_del(id)

    def device_add(self, driver: str, id: str | None, props: dict[str, Any] | None = None) -> Object:
        """``device_add``: realize a controller and start serving its socket."""
        with self.lock:
            self._check_open()
            self._run_deferred()
            return super().device_add(driver, id, props)

    def device_del(self, id: str) -> Object:
        """``device_del``: start removing a device; ``DEVICE_DELETED`` says when it is gone
        (at once for a device no host uses, see the module docstring)."""
        with self.lock:
            self._run_deferred()
            obj = self.lookup_device(id)
            if obj in self._unplugging:
                raise ObjectError(f"Device {obj.id or obj.path()} is already in the process of unplug")
            obj.check_delete(self)
            path = obj.path()
            if not (isinstance(obj, nvme_objects.ControllerDevice) and obj.detach_for_removal()):
                self._delete(obj)
                self._device_deleted(obj, path)
                return obj
            thread = threading.Thread(target=self._finish_unplug, args=(obj, path), daemon=True,
                                      name=f"device-del-{obj.id or obj.name}")
            self._unplugging[obj] = thread
        thread.start()
        return obj

    def _finish_unplug(self, obj: nvme_objects.ControllerDevice, path: str) -> None:
        """The removal thread: wait for the host (never on the control plane), then delete."""
        deadline = time.monotonic() + REMOVAL_GRACE
        took = obj.host_took_changes()
        while not took and not self._hurry.is_set() and time.monotonic() < deadline:
            self._hurry.wait(0.02)
            took = obj.host_took_changes()
        if took:
            self._hurry.wait(min(RESCAN_GRACE, max(0.0, deadline - time.monotonic())))
        try:
            with self.lock:
                if obj.parent is not None:      # shutdown may have taken it already
                    self._delete(obj)
        except Exception:
            log.exception("device_del of %s failed", path)
        finally:
            with self.lock:
                self._unplugging.pop(obj, None)
        self._device_deleted(obj, path)

    def _device_deleted(self, obj: Object, path: str) -> None:
        data: dict[str, Any] = {"device": obj.id, "path": path} if obj.id else {"path": path}
        self.publish("DEVICE_DELETED", data)

    def pending_unplug(self) -> list[str]:
        """Ids (or paths) of the devices whose removal is still under way."""
        with self.lock:
            return [o.id or o.path() for o in self._unplugging]

    # ------------------------------------------------------- typed queries
    def _controllers(self, device: str | None = None) -> list[nvme_objects.ControllerDevice]:
        """Every controller, or the one named ``device`` (ObjectNotFound / ObjectError); lock held."""
        self._run_deferred()
        if device is None:
            return [d for d in super().devices() if isinstance(d, nvme_objects.ControllerDevice)]
        dev = self.lookup_device(device)
        if not isinstance(dev, nvme_objects.ControllerDevice):
            raise ObjectError(f"Device '{device}' is not an NVMe controller")
        return [dev]

    def query_controllers(self) -> "concurrent.futures.Future[list[ControllerStatus]]":
        """Every controller's identity and connection state, and its I/O counter."""
        with self.lock:
            rows = []
            for dev in self._controllers():
                sub = dev.subsys_obj()
                rows.append((dev, dict(id=dev.id or dev.path(), subsystem=(sub.id or sub.path()) if sub else "",
                                       cntlid=int(dev.get_json("cntlid") or 0), socket=dev.socket_path or "",
                                       connected=dev.connected())))
            counters = [_on_iothread(dev, _io_commands, 0) for dev, _ in rows]
        return _gather(counters, lambda counts: [ControllerStatus(**fields, io_commands=n)
                                                 for (_, fields), n in zip(rows, counts)])

    def query_queues(self, device: str | None = None) -> "concurrent.futures.Future[list[QueueStatus]]":
        """Each controller's (or ``device``'s) queues, computed on its IOThread."""
        with self.lock:
            devs = self._controllers(device)
            heads = [(dev.id or dev.path(), "connected" if dev.connected() else "waiting") for dev in devs]
            queues = [_on_iothread(dev, lambda c: tuple(c.queue_info()), ()) for dev in devs]
        return _gather(queues, lambda qs: [QueueStatus(name, state, q) for (name, state), q in zip(heads, qs)])

    def query_dataplane(self, device: str | None = None) -> "concurrent.futures.Future[list[dict[str, Any]]]":
        """Each controller's (or ``device``'s) ``Controller.dataplane_info()``, read on its IOThread."""
        with self.lock:
            devs = self._controllers(device)
            names = [dev.id or dev.path() for dev in devs]
            infos = [_on_iothread(dev, lambda c: c.dataplane_info(), {}) for dev in devs]
        return _gather(infos, lambda got: [{"device": name, **info} for name, info in zip(names, got)])

    def qom_list(self, path: str) -> list[dict[str, str]]:
        with self.lock:
            self._run_deferred()
            return super().qom_list(path)

    def qom_get(self, path: str, prop: str) -> Any:
        with self.lock:
            self._run_deferred()
            return super().qom_get(path, prop)

    def qom_set(self, path: str, prop: str, value: Any) -> None:
        with self.lock:
            self._run_deferred()
            super().qom_set(path, prop, value)

    # ---------------------------------------------------------- NVMe helpers
    def _namespace(self, ns_id: str) -> nvme_objects.NamespaceObject:
        obj = self.find_object(ns_id) if isinstance(ns_id, str) else None
        if obj is None and isinstance(ns_id, str) and ns_id.startswith("/"):
            try:
                obj = super().resolve(ns_id)
            except NvshellError:
                obj = None
        if not isinstance(obj, nvme_objects.NamespaceObject):
            raise ObjectNotFound(f"object '{ns_id}' not found")
        return obj

    def _namespace_and_controller(self, ns_id: str, ctrl_id: str) -> tuple[Any, Any]:
        """Both ends of an attach/detach request, or a clear error (machine lock held)."""
        self._run_deferred()
        ns = self._namespace(ns_id)
        dev = self.lookup_device(ctrl_id)
        if not isinstance(dev, nvme_objects.ControllerDevice):
            raise ObjectError(f"'{ctrl_id}' is not an x-nvme-ctrl")
        return ns, dev

    def attach(self, ns_id: str, ctrl_id: str) -> None:
        """Attach namespace ``ns_id`` to controller ``ctrl_id`` (adds it to ``attached-to``)."""
        with self.lock:
            ns, dev = self._namespace_and_controller(ns_id, ctrl_id)
            targets = list(ns.get("attached-to"))
            if dev.id in targets or "all" in targets:
                raise ObjectError(f"namespace '{ns_id}' is already attached to '{ctrl_id}'")
            ns.set("attached-to", targets + [dev.id], self)

    def detach(self, ns_id: str, ctrl_id: str) -> None:
        """Detach namespace ``ns_id`` from controller ``ctrl_id``.

        If the namespace was attached to ``all``, it stays attached to every other
        current controller (the 'all' policy is replaced by the explicit list).
        """
        with self.lock:
            ns, dev = self._namespace_and_controller(ns_id, ctrl_id)
            targets = list(ns.get("attached-to"))
            if "all" in targets:
                targets = [d.id for d in ns.subsystem().controller_objects() if d.id and d is not dev]
            elif dev.id in targets:
                targets.remove(dev.id)
            else:
                raise ObjectError(f"namespace '{ns_id}' is not attached to '{ctrl_id}'")
            ns.set("attached-to", targets, self)

    def create_private_subsystem(self, ctrl: Object) -> nvme_objects.SubsystemObject:
        """The subsystem of a controller created without ``subsys`` (``/objects/<id>-subsys``)."""
        base = f"{ctrl.id or 'ctrl'}-subsys"
        name, i = base, 1
        while self.find_object(name) is not None:
            name, i = f"{base}{i}", i + 1
        obj = ObjectTree.object_add(self, nvme_objects.TYPE_SUBSYSTEM, name, {})
        assert isinstance(obj, nvme_objects.SubsystemObject)
        obj.implicit_for = ctrl.id or ctrl.name
        return obj

    def describe_sockets(self) -> list[str]:
        """One line per controller, telling the user where to point QEMU (``main`` prints them)."""
        lines = []
        for dev in self.devices():
            if isinstance(dev, nvme_objects.ControllerDevice):
                sub = dev.subsys_obj()
                nss = [n.id for n in sub.namespace_objects()] if sub else []
                lines.append(f"{dev.id or dev.path()}: vfio-user socket {dev.socket_path} "
                             f"(subsystem {sub.id if sub else '?'}, namespaces: {', '.join(nss) or 'none'}); "
                             f"QEMU: -device '{{\"driver\":\"vfio-user-pci\",\"socket\":"
                             f"{{\"type\":\"unix\",\"path\":\"{dev.socket_path}\"}}}}'")
        return lines

    def _check_open(self) -> None:
        if self._closed:
            raise ObjectError("the machine is shutting down")

    def shutdown(self) -> None:
        """Stop every controller (sockets unlinked), free namespaces (backends closed). Idempotent."""
        self._hurry.set()
        with self.lock:
            pending = list(self._unplugging.values())
        for thread in pending:             # they finish at once now (and need the lock)
            thread.join(5.0)
        with self.lock:
            self._closed = True
            self._run_deferred()
            for dev in reversed(super().devices()):
                try:
                    dev.finalize(self)
                except Exception:
                    log.exception("stopping %s", dev)
                dev.completed = False
                if dev.parent is not None and dev.name is not None:
                    dev.parent.remove_child(dev.name)
            objs = list(self.objects_node.children().values())
            # namespaces first, subsystems last
            objs.sort(key=lambda o: isinstance(o, nvme_objects.SubsystemObject))
            for obj in objs:
                try:
                    obj.finalize(self)
                except Exception:
                    log.exception("finalizing %s", obj)
                obj.completed = False
                if obj.parent is not None and obj.name is not None:
                    obj.parent.remove_child(obj.name)


def default_topology(machine: Machine) -> None:
    """What nvshell runs with no -object/-device: subsys0, ctrl0 (run_dir/ctrl0.sock), 1 GiB ns1 on all."""
    machine.object_add(nvme_objects.TYPE_SUBSYSTEM, "subsys0", {})
    machine.device_add(nvme_objects.TYPE_CTRL, "ctrl0", {"subsys": "subsys0",
                                                         "socket": os.path.join(machine.run_dir, "ctrl0.sock")})
    machine.object_add(nvme_objects.TYPE_NS_NVM, "ns1", {"subsys": "subsys0", "size": 1 << 30,
                                                         "attached-to": ["all"]})


__all__ = ["Machine", "ControllerStatus", "QueueStatus", "default_topology", "NvshellError", "ObjectError", "ObjectNotFound", "PropertyError"]
