"""``info dataplane`` / ``x-nvme-query-dataplane``: the data plane's cumulative counters, read
through the real monitor of a real nvshell process while a vfio-user host does I/O."""

from __future__ import annotations

import re

from nvshell.testing import NvmeTestHost, NvshellProcess, QmpConnection


def _ctrl0(qmp: QmpConnection) -> dict:
    rows = qmp.execute("x-nvme-query-dataplane")
    assert [r["device"] for r in rows] == ["ctrl0"]
    return rows[0]


def test_counters_follow_trapped_io(nvshell: NvshellProcess, qmp: QmpConnection) -> None:
    """QD1 reads with trapped doorbells and no shadow buffers: every command rings its SQ tail
    doorbell and gets its own interrupt; the IOThread slept and used CPU for them."""
    before = _ctrl0(qmp)
    assert before["doorbells"] == "trap" and not before["shadow-doorbells"] and before["io-commands"] == 0
    host = NvmeTestHost(nvshell.socket()).start(io_queues=1)
    try:
        host.io(0x02, 100, qid=1, depth=1)
        after = _ctrl0(qmp)
        text = qmp.hmp("info dataplane ctrl0").replace("\r\n", "\n")
    finally:
        host.close()
    assert after["io-commands"] == 100
    assert after["doorbell-writes"] - before["doorbell-writes"] >= 100      # + CQ heads and admin
    assert after["interrupts"] - before["interrupts"] >= 100
    assert after["rounds"] - before["rounds"] >= 100
    assert after["doorbell-page-updates"] == after["shadow-updates"] == 0
    assert after["sleeps"] > before["sleeps"] and after["iothread-cpu-ms"] > before["iothread-cpu-ms"] > 0
    assert text.startswith("ctrl0: doorbells=trap, shadow doorbells off, 100 I/O commands"), text
    per = re.search(r"^\s+real doorbell writes\s+(\d+)\s+(\d+\.\d+)$", text, re.M)
    assert per and int(per[1]) >= 100 and float(per[2]) >= 1.0, text
    assert re.search(r"^\s+IOThread CPU \(ms\)\s+\d+\.\d\s+\d+\.\d us$", text, re.M), text
    assert "Device 'nope' not found" in qmp.hmp("info dataplane nope")


def _mmap_qd1(nvshell_factory, *ctrl_props: str) -> dict:
    """20 QD1 reads through mmapped doorbells; the controller's counters after them."""
    props = ",".join(("x-nvme-ctrl,id=ctrl0,subsys=s0,doorbells=mmap", *ctrl_props))
    nv = nvshell_factory("-object", "x-nvme-subsystem,id=s0", "-device", props,
                         "-object", "x-nvme-ns-nvm,id=ns1,subsys=s0,size=1M,attached-to=all")
    qmp = QmpConnection(nv.qmp_path)
    host = NvmeTestHost(nv.socket()).start(io_queues=1)
    try:
        assert host.doorbell_mmap
        host.io(0x02, 20, qid=1, depth=1)
        return _ctrl0(qmp)
    finally:
        host.close()
        qmp.close()


def test_mmap_doorbells_are_counted_as_page_updates(nvshell_factory) -> None:
    row = _mmap_qd1(nvshell_factory)
    assert row["doorbells"] == "mmap" and row["io-commands"] == 20
    assert row["doorbell-page-updates"] >= 20 and row["doorbell-writes"] == 0
    assert row["spins-found"] + row["spins-expired"] > 0     # the poller's work is followed by a spin


def test_poll_max_ns_zero_never_spins(nvshell_factory) -> None:
    row = _mmap_qd1(nvshell_factory, "poll-max-ns=0")
    assert row["io-commands"] == 20 and row["doorbell-page-updates"] >= 20
    assert row["spin-window-us"] == 0 and row["spins-found"] == row["spins-expired"] == 0
