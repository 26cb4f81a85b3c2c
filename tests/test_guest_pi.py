"""Guest test of metadata and end-to-end protection: the Linux block-integrity path, nvme-cli's
``--prinfo``, a guest Format NVM to a PI format, and the pi-corrupt fault action. One boot.

nvshell serves three namespaces: 512 + 8 bytes PI type 1 (16b guard), 4096 + 16 bytes PI type 1
(64b guard), and a plain one the guest formats to LBA format 1 with ``nvme format --pi=1``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.harness import NvshellProcess, read_trace, require_guest
from tests.test_guest_faults import run_interactive

pytestmark = pytest.mark.guest


def test_protection_information_end_to_end(tmp_path: Path) -> None:
    require_guest()
    args = ["-object", "x-nvme-subsystem,id=subsys0",
            "-device", "x-nvme-ctrl,id=ctrl0,subsys=subsys0",
            "-object", "x-nvme-ns-nvm,id=ns1,subsys=subsys0,size=64M,ms=8,pi=1,attached-to=all",
            "-object", "x-nvme-ns-nvm,id=ns2,subsys=subsys0,size=64M,lba-size=4096,ms=16,pi=1,pif=2,attached-to=all",
            "-object", "x-nvme-ns-nvm,id=ns3,subsys=subsys0,size=64M,attached-to=all"]
    trace = tmp_path / "mdsgl.msgpack"
    args += ["-trace", "nvme_metadata_sgl", "-trace", f"file={trace}"]
    with NvshellProcess(tmp_path / "run", *args) as nv:
        rc, out, qmp = run_interactive(nv, "pi.sh", timeout=300)
        props = {p: qmp.execute("qom-get", {"path": "/objects/ns3", "property": p}) for p in ("ms", "pi", "lba-size")}
    assert rc == 0, out
    # the kernel registered block integrity with the profile of each guard format
    assert "integrity n1: T10-DIF-TYPE1-CRC" in out, out
    assert "integrity n2: EXT-DIF-TYPE1-CRC64" in out, out
    assert "integrity n3: none" in out, out
    assert "fio n1 ok" in out and "fio n2 ok" in out, out
    # nvme-cli: PRACT write, fully checked read returns the inserted tuple (guard, apptag 0x42, reftag 100)
    assert "pract-write: write: Success\nrc=0" in out, out
    assert "checked-read: read: Success\nrc=0" in out and "data-same" in out, out
    assert re.search(r"pi-read: [0-9a-f]{4}004200000064$", out, re.M), out
    # a tuple whose reference tag is not the expected one: Reference Tag Check Error, on write and on read
    assert re.search(r"badref-write: NVMe status: End-to-end Reference Tag Check Error.*\(0x4284\)\nrc=1", out), out
    assert re.search(r"badref-read: NVMe status: End-to-end Reference Tag Check Error.*\(0x4284\)\nrc=1", out), out
    assert "stored-555: write: Success\nrc=0" in out, out
    # the driver sent the metadata of the passthrough commands with --metadata as a metadata SGL
    # (PSDT 10b): checked-read and badref-write map it (badref-read fails its check first)
    assert nv.proc is not None and nv.proc.returncode == 0, nv.log()
    mdsgl = [(r["nsid"], r["length"]) for r in read_trace(trace, "nvme_metadata_sgl")]
    assert mdsgl.count((1, 8)) >= 2, mdsgl
    # guest Format NVM: the driver sees the new format after the rescan, and so does the host side
    assert "format rc=0" in out, out
    assert re.search(r"after format n3: T10-DIF-TYPE1-CRC flbas : 0x1 dps : 0x1", out), out
    assert "qom-get /objects/ns3 pi\n@@HOST> 1\n" in out and "qom-get /objects/ns3 ms\n@@HOST> 8\n" in out, out
    assert props == {"ms": 8, "pi": 1, "lba-size": 512}, props
    assert re.search(r"^write 64\+8 ok", out, re.M) and re.search(r"^read 64\+8 ok", out, re.M), out
    # pi-corrupt: the read of the rule's range fails the kernel's integrity check, others do not
    reads = re.findall(r"^read 16000\+8 (ok|FAILED)(.*)$", out, re.M)
    assert [r[0] for r in reads] == ["ok", "FAILED", "ok", "FAILED", "ok"], out
    assert re.search(r"^read 16008\+8 ok", out, re.M), out
    assert re.search(r"^read 16000\+8 FAILED .*Invalid or incomplete multibyte", out, re.M), out   # EILSEQ
    assert re.search(r"dmesg: .*nvme0c0n\d: guard tag error at sector 16000", out), out
    assert re.search(r"dmesg: .*nvme0c0n\d: ref tag error at location 16000", out), out
    assert "final fio verify ok" in out, out
    assert "@@HOST> Error" not in out and "QMP error" not in out, out
