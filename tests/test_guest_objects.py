"""Guest tests of the object model and the QMP run-time API against a real Linux VM.

What they prove (issues "Object model" and "QMP monitor", guest parts):

* two controllers of one subsystem (``nvshell -object ... -device ... -device ...``,
  ``run.sh --socket a --socket b``) give the guest one ``nvme-subsys`` with two
  controllers and one multipath head per shared namespace; fio verify passes on it;
* while fio verify runs on ns1, a real ``qemu.qmp.QMPClient`` adds ns2
  (``object-add``), moves its attachment (``qom-set attached-to``) and deletes it
  (``object-del``); the guest sees each change through the Namespace Attribute
  Changed AEN without a reboot and fio on ns1 is unaffected;
* ``nvme create-ns`` / ``attach-ns`` / ``detach-ns`` / ``delete-ns`` from the guest
  work, and the object tree mirrors them;
* removing a controller (``device_del``) leaves the namespace and the other
  controller working.

Why the tests read the guest's output while it runs: the host must act after
the guest is ready and the guest must see the change live, so ``run.sh`` is
started as a child and its stdout (the guest script's output, streamed) drives
the QMP actions: each "STEP x" line triggers one, the guest prints "SEEN x" or
"TIMEOUT x".
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any, Awaitable, Callable

import pytest

from tests.harness import GUEST_DIR, GUEST_SCRIPTS, NvshellProcess, require_guest, run_guest

pytestmark = pytest.mark.guest

TWO_CTRLS = ["-object", "x-nvme-subsystem,id=subsys0",
             "-device", "x-nvme-ctrl,id=ctrla,subsys=subsys0",
             "-device", "x-nvme-ctrl,id=ctrlb,subsys=subsys0",
             "-object", "x-nvme-ns-nvm,id=ns1,subsys=subsys0,size=256M,attached-to=all"]
SOCKETS = ["ctrla.sock", "ctrlb.sock", "qmp.sock"]


@pytest.fixture(autouse=True)
def _guest_available() -> None:
    require_guest()


StepHandler = Callable[[Any], Awaitable[None]]


async def drive_guest(nv: NvshellProcess, script: str, steps: dict[str, StepHandler], *,
                      env: dict[str, str] | None = None, timeout: float = 240,
                      sockets: list[str] = ("ctrla.sock", "ctrlb.sock")) -> tuple[int, str, Any]:
    """Boot the guest on ``sockets``, and on each "STEP name" line it prints, await
    ``steps[name](qmp)`` with a connected ``qemu.qmp.QMPClient``. Returns
    (exit status, output, the client's recorded events)."""
    from qemu.qmp import QMPClient

    qmp = QMPClient("test-guest-objects")
    await qmp.connect(str(nv.run_dir / "qmp.sock"))
    events: list[dict[str, Any]] = []

    async def collect() -> None:
        async for event in qmp.events:
            events.append(dict(event))
    collector = asyncio.create_task(collect())
    cmd = ["bash", str(GUEST_DIR / "run.sh"), "--script", str(GUEST_SCRIPTS / script), "--timeout", str(int(timeout))]
    for s in sockets:
        cmd += ["--socket", str(nv.run_dir / s)]
    for k, v in (env or {}).items():
        cmd += ["--env", f"{k}={v}"]
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    out: list[str] = []
    try:
        assert proc.stdout is not None
        while True:
            raw = await asyncio.wait_for(proc.stdout.readline(), timeout + 30)
            if not raw:
                break
            line = raw.decode(errors="replace")
            out.append(line)
            m = re.match(r"STEP (\S+)", line)
            if m and m.group(1) in steps:
                try:
                    await steps[m.group(1)](qmp)
                except Exception as exc:   # keep reading: the guest output explains the rest
                    out.append(f"HOST-ERROR in step {m.group(1)}: {exc!r}\n")
        rc = await asyncio.wait_for(proc.wait(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        collector.cancel()
        await qmp.disconnect()
    return rc, "".join(out), events


def seen(out: str, step: str) -> str:
    """The guest's "SEEN step ..." line (fails the test with the whole output if missing)."""
    m = re.search(rf"^SEEN {re.escape(step)}\b(.*)$", out, re.M)
    assert m, f"guest never saw '{step}':\n{out}"
    return m.group(1)


# ------------------------------------------------------------------ multipath
def test_two_controllers_one_subsystem_multipath(tmp_path: Path) -> None:
    """Two sockets, one subsystem: one nvme-subsys, two controllers, one head; fio verify."""
    with NvshellProcess(tmp_path / "run", *TWO_CTRLS).start(wait_for=SOCKETS) as nv:
        rc, out = run_guest([nv.run_dir / "ctrla.sock", nv.run_dir / "ctrlb.sock"], "obj-multipath.sh",
                            env={"SIZE": "64M"}, timeout=200)
    assert rc == 0, out
    first, _, after = out.partition("### rebind in order")
    # Linux numbers the subsystem after the controller that finished Identify first:
    # before the ordered rebind it may be nvme-subsys0 or nvme-subsys1, but there is one.
    assert re.search(r"^### subsystems: nvme-subsys\d+ $", first, re.M), out
    assert len(re.findall(r"^  ctrl nvme\d+ cntlid=\d+ state=live", first, re.M)) == 2, out
    assert len(re.findall(r"^  head nvme\d+n1$", first, re.M)) == 1, out
    nqns = set(re.findall(r"\bnqn=(\S+)", first))
    assert len(nqns) == 1, out
    assert "cmic : 0x2" in out, out            # multi-controller subsystem
    assert "nmic : 0x1" in out, out            # shared namespace
    oacs = int(re.search(r"oacs : (0x[0-9a-f]+)", out).group(1), 16)
    assert oacs & 0x8, out                     # Namespace Management + Attachment
    # After the ordered rebind: exactly nvme-subsys0 with nvme0, nvme1 and one head nvme0n1.
    assert "### subsystems: nvme-subsys0 \n" in after, out
    assert re.search(r"^  ctrl nvme0 cntlid=1 state=live", after, re.M), out
    assert re.search(r"^  ctrl nvme1 cntlid=2 state=live", after, re.M), out
    assert re.search(r"^  head nvme0n1$", after, re.M), out
    assert "### block: nvme0c0n1 nvme0c1n1 nvme0n1 " in after, out
    assert "fio-verify-ok" in out, out
    # round-robin: both controllers (both IOThreads) carried I/O of the shared namespace
    per_path = dict(re.findall(r"^(nvme0c\dn1) (\d+) \d+$", out, re.M))
    assert set(per_path) == {"nvme0c0n1", "nvme0c1n1"}, out
    assert all(int(v) > 0 for v in per_path.values()), out


# ------------------------------------------------------- QMP run-time changes
def test_qmp_namespace_changes_while_fio_verify_runs(tmp_path: Path) -> None:
    """object-add ns2, qom-set attached-to, object-del ns2 while fio verify runs on ns1."""
    results: dict[str, Any] = {}

    async def add(qmp: Any) -> None:
        await qmp.execute("object-add", {"qom-type": "x-nvme-ns-nvm", "id": "ns2", "subsys": "subsys0",
                                         "size": 64 << 20, "attached-to": ["all"]})
        results["attached-after-add"] = await qmp.execute("qom-get", {"path": "/objects/ns2",
                                                                      "property": "attached"})

    async def detach_b(qmp: Any) -> None:
        await qmp.execute("qom-set", {"path": "/objects/ns2", "property": "attached-to", "value": ["ctrla"]})
        results["attached-after-detach"] = await qmp.execute("qom-get", {"path": "/objects/ns2",
                                                                         "property": "attached"})

    async def attach_b(qmp: Any) -> None:
        await qmp.execute("qom-set", {"path": "/objects/ns2", "property": "attached-to",
                                      "value": ["ctrla", "ctrlb"]})

    async def delete(qmp: Any) -> None:
        from qemu.qmp import ExecuteError
        try:
            await qmp.execute("object-del", {"id": "subsys0"})
        except ExecuteError as exc:
            results["subsys-del-error"] = (exc.error_class, exc.error.error.desc)
        await qmp.execute("object-del", {"id": "ns2"})
        results["objects-after-del"] = [p["name"] for p in await qmp.execute("qom-list", {"path": "/objects"})]

    with NvshellProcess(tmp_path / "run", *TWO_CTRLS).start(wait_for=SOCKETS) as nv:
        rc, out, _ = asyncio.run(drive_guest(nv, "obj-runtime.sh", {
            "add": add, "detach-b": detach_b, "attach-b": attach_b, "del": delete}, env={"SIZE": "32M"}))
        log = nv.log()
    assert rc == 0, out + log
    assert "HOST-ERROR" not in out, out
    assert "TIMEOUT" not in out, out
    assert re.search(r"paths=2 sectors=131072$", seen(out, "add")), out   # 64 MiB / 512
    assert "ok" in seen(out, "add-io"), out
    assert sorted(results["attached-after-add"]) == ["ctrla", "ctrlb"], results
    assert "paths=1" in seen(out, "detach-b"), out
    assert results["attached-after-detach"] == ["ctrla"], results
    assert "paths=2" in seen(out, "attach-b"), out
    seen(out, "del")
    assert results["subsys-del-error"][0] == "GenericError", results
    assert "still has members" in results["subsys-del-error"][1], results
    assert "ns2" not in results["objects-after-del"], results
    m = re.search(r"### fio: (\d+) passes, (\d+) failures", out)
    assert m and int(m.group(1)) >= 1 and m.group(2) == "0", out


# ------------------------------------------- guest Namespace Management/Attachment
def test_guest_namespace_management_and_attachment(tmp_path: Path) -> None:
    """nvme create-ns / attach-ns / detach-ns / delete-ns from the guest; the tree mirrors them."""
    tree: dict[str, Any] = {}

    def snapshot(name: str) -> StepHandler:
        async def step(qmp: Any) -> None:
            await asyncio.sleep(0.2)       # the mirror is applied when the machine lock is free
            nss = await qmp.execute("x-nvme-query-namespaces")
            objs = [p["name"] for p in await qmp.execute("qom-list", {"path": "/objects"})]
            attached = None
            if "ns-auto-2" in objs:
                attached = await qmp.execute("qom-get", {"path": "/objects/ns-auto-2", "property": "attached"})
            tree[name] = {"objects": objs, "namespaces": nss, "attached": attached}
        return step

    steps = {n: snapshot(n) for n in ("created", "attached", "detached", "deleted")}
    with NvshellProcess(tmp_path / "run", *TWO_CTRLS).start(wait_for=SOCKETS) as nv:
        rc, out, _ = asyncio.run(drive_guest(nv, "obj-nsmgmt.sh", steps))
        log = nv.log()
    assert rc == 0, out + log
    assert "HOST-ERROR" not in out and "TIMEOUT" not in out, out
    assert re.search(r"^create-ns: success\nnsid: 2$", out, re.M), out
    seen(out, "create-inactive")
    assert re.search(r"paths=2 lbs=4096 sectors=65536$", seen(out, "attach")), out   # 32 MiB
    assert "ok" in seen(out, "attach-io"), out
    assert "paths=1" in seen(out, "detach"), out
    assert "nvme" not in seen(out, "delete").replace("nvme0n1", "").replace("nvme1n1", ""), out
    for err in ("attach-bad-ctrl", "detach-not-attached", "delete-missing", "create-zero"):
        line = re.search(rf"^{err}: (.*)$", out, re.M)
        assert line and "success" not in line.group(1).lower(), out
    assert set(tree) == set(steps), (tree, out)
    assert "ns-auto-2" in tree["created"]["objects"], tree
    assert tree["created"]["attached"] == [], tree
    assert sorted(tree["attached"]["attached"]) == ["ctrla", "ctrlb"], tree
    assert len(tree["detached"]["attached"]) == 1, tree
    assert "ns-auto-2" not in tree["deleted"]["objects"], tree


# ------------------------------------------------------------ controller removal
def test_device_del_one_controller_keeps_namespace_and_other_path(tmp_path: Path) -> None:
    """device_del of one of two controllers while fio verify runs on the shared namespace:
    the guest drops that path (AEN) and sees the controller die (reset finds no device),
    fio fails over without an error, and the namespace object survives."""
    results: dict[str, Any] = {}

    async def remove(qmp: Any) -> None:
        with qmp.listener("DEVICE_DELETED") as deleted:      # device_del is asynchronous, like QEMU's
            await qmp.execute("device_del", {"id": "ctrlb"})
            await asyncio.wait_for(deleted.get(), 10)
        results["attached"] = await qmp.execute("qom-get", {"path": "/objects/ns1", "property": "attached"})
        results["controllers"] = await qmp.execute("qom-get", {"path": "/objects/subsys0",
                                                               "property": "controllers"})

    with NvshellProcess(tmp_path / "run", *TWO_CTRLS).start(wait_for=SOCKETS) as nv:
        rc, out, events = asyncio.run(drive_guest(nv, "obj-ctrl-remove.sh", {"remove-b": remove},
                                                  env={"SIZE": "16M"}))
        log = nv.log()
    assert rc == 0, out + log
    assert "HOST-ERROR" not in out and "TIMEOUT" not in out, out
    line = seen(out, "remove-b")
    t0, t1 = map(float, re.search(r"after ([\d.]+)\.\.([\d.]+)", line).groups())
    assert t1 - t0 < 5, out                          # no I/O timeout (30 s) involved
    assert "paths=1" in line, out
    assert re.search(r"states=(dead live|live dead)", out), out
    assert "resetting controller due to persistent internal error" in out, out
    assert re.search(r"### fio during removal: \d+ passes, 0 failures", out), out
    assert "ok" in seen(out, "fio-after"), out
    assert results["attached"] == ["ctrla"] and results["controllers"] == ["ctrla"], results
    assert any(e["event"] == "DEVICE_DELETED" and e["data"].get("device") == "ctrlb" for e in events), events
