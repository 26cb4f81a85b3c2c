"""Guest test of the data path: the Linux driver turns on shadow doorbells (OACS bit 8) and
rings almost no real doorbell under QD32; resets (which delete and recreate the I/O queues)
with shadow doorbells in use keep data intact; fio verify at QD32 on a file namespace whose
I/O runs off the IOThread. One boot per doorbell mode.

The real doorbell writes are counted from an ``nvme_doorbell`` trace file, bracketed by the
admin Get Features 07h/08h markers the guest script sends around its QD32 run (every record
is emitted on the controller's one IOThread, so file order is processing order).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from nvshell.device.trace_decode import iter_records
from tests.harness import NvshellProcess, require_guest, run_guest

pytestmark = pytest.mark.guest


def _marker(r: dict, fid: int) -> bool:
    return (r["name"] == "nvme_cmd_submit" and r["qid"] == 0 and r["opcode"] == "get-features"
            and r["cdw10"] & 0xFF == fid)


@pytest.mark.parametrize("doorbells", ["trap", "mmap"])
def test_shadow_doorbells_reset_and_file_namespace(tmp_path: Path, doorbells: str) -> None:
    require_guest()
    trace = tmp_path / "db.msgpack"
    image = tmp_path / "ns2.img"
    args = ["-trace", "nvme_doorbell", "-trace", "nvme_cmd_submit", "-trace", f"file={trace}",
            "-object", "x-nvme-subsystem,id=subsys0",
            "-device", f"x-nvme-ctrl,id=ctrl0,subsys=subsys0,doorbells={doorbells}",
            "-object", "x-nvme-ns-nvm,id=ns1,subsys=subsys0,size=256M,attached-to=all",
            "-object", f"x-nvme-ns-nvm,id=ns2,subsys=subsys0,backend=file,file={image},size=64M,attached-to=all"]
    with NvshellProcess(tmp_path / "run", *args) as nv:
        rc, out = run_guest([nv.run_dir / "ctrl0.sock"], "datapath.sh", timeout=600)
    assert rc == 0, out
    assert "### datapath ok" in out, out
    values = dict(re.findall(r"^dp (\S+) (.*)$", out, re.M))
    assert int(values["oacs"], 16) & (1 << 8), out                 # Doorbell Buffer Config offered
    ios = int(values["qd32"].split("=")[1])
    assert ios >= 6000, out
    records = list(iter_records(str(trace)))
    start = next(i for i, r in enumerate(records) if _marker(r, 0x07))
    end = next(i for i, r in enumerate(records) if i > start and _marker(r, 0x08))
    io_doorbells = [r for r in records[start:end] if r["name"] == "nvme_doorbell" and r["qid"] != 0]
    shadowed = sum(1 for r in records if r["name"] == "nvme_cmd_submit" and r["opcode"] == "doorbell-buffer-config")
    print(f"{doorbells}: {len(io_doorbells)} real I/O doorbell writes for {ios} QD32 I/Os;"
          f" Doorbell Buffer Config sent {shadowed} times")
    assert shadowed >= 3                                            # at probe and after each reset
    # Without shadow doorbells every I/O costs a tail and a head write (2 x ios).
    assert len(io_doorbells) < ios // 4, (len(io_doorbells), ios)
