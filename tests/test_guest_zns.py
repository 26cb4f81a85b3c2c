"""Guest tests of zoned namespaces against the Linux zoned block layer (two boots).

First boot: an NVM and a file-backed zoned namespace side by side; sysfs shows a
host-managed disk with the configured geometry and limits; ``blkzone report`` agrees
with the shell's ``info zones`` after every change; ``blkzone open/close/finish/reset``
move zones; nvme-cli's zns plugin reports zones and appends (the CQE's LBA); fio
``--zonemode=zbd`` randwrite verifies; the zone fault rules give the driver Zone Is
Offline / Zone Is Read Only / a failed Zone Append. Second boot, nvshell restarted on
the same file: the zones and the data are as the first boot left them (open zones
closed, as after a power cycle), and Namespace Management creates a zoned namespace
(CSI 2) the driver sees as host-managed, on which zonefs works.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.harness import NvshellProcess, require_guest
from tests.test_guest_faults import run_interactive

pytestmark = pytest.mark.guest

ZS = 32768          # zone size in sectors (16 MiB)
CAP = 24576         # zone capacity in sectors (12 MiB)
#: blkzone's zone conditions -> the states 'info zones' prints.
COND = {"em": "empty", "oi": "implicitly-opened", "oe": "explicitly-opened", "cl": "closed",
        "fu": "full", "ro": "read-only", "of": "offline"}


@pytest.fixture(autouse=True)
def _guest_available() -> None:
    require_guest()


def nvshell_args(image: Path) -> list[str]:
    return ["-object", "x-nvme-subsystem,id=subsys0",
            "-device", "x-nvme-ctrl,id=ctrl0,subsys=subsys0",
            "-object", "x-nvme-ns-nvm,id=ns1,subsys=subsys0,size=64M,attached-to=all",
            "-object", f"x-nvme-ns-zoned,id=nsz,subsys=subsys0,nsid=2,backend=file,file={image},size=256M,"
                       "zone-size=16M,zone-capacity=12M,zone-max-open=4,zone-max-active=6,attached-to=all"]


def blkzone(lines: list[str]) -> list[dict]:
    """``blkzone report`` lines: start, len, cap, wptr (relative), condition."""
    out = []
    for line in lines:
        m = re.search(r"start: (0x[0-9a-f]+), len (0x[0-9a-f]+), cap (0x[0-9a-f]+), wptr (0x[0-9a-f]+|N/A)"
                      r".*zcond:\s*\d+\((\w+)\)", line)
        assert m, line
        # no write pointer for full, read-only and offline zones
        wptr = None if m[4] == "N/A" else int(m[4], 16)
        out.append(dict(start=int(m[1], 16), len=int(m[2], 16), cap=int(m[3], 16), wptr=wptr, state=COND[m[5]]))
    return out


def info_zones(lines: list[str]) -> list[dict]:
    """The zone rows of 'info zones' (after its two header lines and the column titles)."""
    rows = []
    for line in lines:
        cols = line.split()
        if len(cols) == 6 and cols[0].isdigit():
            rows.append(dict(zone=int(cols[0]), zslba=int(cols[1], 16), state=cols[2], wp=int(cols[3], 16),
                             zcap=int(cols[4], 16)))
    return rows


def sections(out: str, prefix: str) -> dict[str, tuple[list[str], list[str]]]:
    """Per '### blkzone NAME': its BZ lines and the '@@HOST>' lines of the info zones after it."""
    found: dict[str, tuple[list[str], list[str]]] = {}
    for m in re.finditer(rf"^### blkzone (\S+)\n(.*?)(?=^### |\Z)", out, re.M | re.S):
        body = m[2].splitlines()
        found[m[1]] = ([ln[len(prefix):] for ln in body if ln.startswith(prefix)],
                       [ln[len("@@HOST> "):] for ln in body if ln.startswith("@@HOST> ")])
    return found


def agree(bz: list[dict], iz: list[dict]) -> None:
    """blkzone and info zones describe the same zones (wptr is relative; full zones: len)."""
    assert len(bz) == len(iz) == 16, (bz, iz)
    for b, z in zip(bz, iz):
        assert (b["start"], b["cap"], b["len"], b["state"]) == (z["zslba"], z["zcap"], ZS, z["state"]), (b, z)
        if b["wptr"] is not None:
            assert b["wptr"] == z["wp"] - z["zslba"], (b, z)


def test_zoned_namespace_in_the_linux_guest(tmp_path: Path) -> None:
    image = tmp_path / "zoned.img"
    with NvshellProcess(tmp_path / "run", *nvshell_args(image)) as nv:
        rc, out, qmp = run_interactive(nv, "zns-guest.sh", timeout=420, env={"HOST_WAIT": "1"})
        (tmp_path / "boot1.txt").write_text(out)
        final = qmp.execute("x-nvme-query-zones", {"namespace": "nsz"})
        qmp.close()
    assert rc == 0, out
    # the disk the zoned block layer sees
    for key, want in (("zoned", "host-managed"), ("chunk_sectors", str(ZS)), ("nr_zones", "16"),
                      ("max_open_zones", "4"), ("max_active_zones", "6"), ("nvm-zoned", "none")):
        assert re.search(rf"^sysfs {key}: {want}$", out, re.M), (key, out)
    assert int(re.search(r"^sysfs zone_append_max_bytes: (\d+)", out, re.M)[1]) >= 4096, out
    assert re.search(r"^size-sectors: 524288$", out, re.M), out
    assert re.search(r"^ZID mar\s*:\s*(0x)?5\b", out, re.M) and re.search(r"^ZID mor\s*:\s*(0x)?3\b", out, re.M), out
    assert re.search(r"^ZID lbafe\s*0: zsze:0x8000 zdes:0", out, re.M), out
    # blkzone report == info zones, before and after the zone moves
    found = sections(out, "BZ ")
    assert set(found) >= {"initial", "moved", "after-reset"}, out
    for name, (bz, host) in found.items():
        agree(blkzone(bz), info_zones(host))
    states = lambda name: [z["state"] for z in blkzone(found[name][0])]  # noqa: E731
    assert states("initial") == ["empty"] * 16
    assert states("moved")[:5] == ["empty", "closed", "explicitly-opened", "full", "implicitly-opened"], out
    assert states("after-reset")[:5] == ["empty", "closed", "closed", "full", "empty"], out
    assert blkzone(found["moved"][0])[1]["wptr"] == 2048 and blkzone(found["moved"][0])[4]["wptr"] == 16
    for step in ("open 2", "close 1", "finish 3", "write 4", "reset 4", "close 2"):
        assert f"{step} ok" in out, (step, out)
    assert re.search(r"^write below wp: FAILED .*Input/output error", out, re.M), out
    m = re.search(r"^md5 zone1: (\w+) expect (\w+)", out, re.M)
    assert m and m[1] == m[2], out
    # nvme-cli zns plugin: reports and appends (the LBA comes from the CQE)
    nz = [ln for ln in out.splitlines() if ln.startswith("NZ SLBA")]
    assert len(nz) == 6 and re.search(r"SLBA:\s*0x8000\s+WP:\s*0x8800", nz[1]), out
    appended = [int(x, 16) for x in re.findall(r"^APPEND Success appended data to LBA (?:0x)?([0-9a-f]+)", out, re.M)]
    assert appended == [5 * ZS, 5 * ZS + 8], out
    assert "hello zoned world <- read back" in out, out
    assert "fio zbd verify ok" in out, out
    # zone fault rules, as the driver sees them
    assert re.search(r"^write zone 6: FAILED .*Input/output error", out, re.M), out
    assert re.search(r"^read zone 6: FAILED", out, re.M), out
    assert re.search(r"^write zone 7: FAILED .*Input/output error", out, re.M), out
    assert "read zone 7 ok" in out, out
    bzf = blkzone([ln[4:] for ln in out.splitlines() if ln.startswith("BZF ")])
    assert [z["state"] for z in bzf] == ["offline", "read-only"], out
    assert re.search(r"^reset zone 7: FAILED", out, re.M), out
    fappend = [ln for ln in out.splitlines() if ln.startswith("FAPPEND")]
    assert re.search(r"ZONE_IS_FULL|Zone Is Full", fappend[0], re.I), out
    assert re.search(r"Success appended data to LBA (0x)?" + format(5 * ZS + 16, "x") + r"\b", fappend[1]) or \
        re.search(rf"Success appended data to LBA {5 * ZS + 16}\b", fappend[1]), out
    assert re.search(r"dmesg: .*@ LBA 196608, \d+ blocks, (Zone Is Offline|.*sc 0xbb)", out), out
    assert re.search(r"dmesg: .*@ LBA 229376, \d+ blocks, (Zone Is Read Only|.*sc 0xba)", out), out
    assert "@@HOST> Error" not in out and "QMP error" not in out, out
    # the QMP query at the end agrees with the guest's last report
    last = blkzone([ln[4:] for ln in out.splitlines() if ln.startswith("BZE ")])
    agree(last, [dict(z, zslba=z["zslba"]) for z in final["zones"]])
    assert final["counts"]["offline"] == 1 and final["counts"]["read-only"] == 1

    # nvshell restarted on the same file: zones and data are back
    with NvshellProcess(tmp_path / "run2", *nvshell_args(image)) as nv:
        rc, out2, qmp = run_interactive(nv, "zns-restart.sh", timeout=300, env={"HOST_WAIT": "1"})
        (tmp_path / "boot2.txt").write_text(out2)
        qmp.close()
    assert rc == 0, out2
    bz, host = sections(out2, "BZ ")["restarted"]
    again = blkzone(bz)
    agree(again, info_zones(host))
    for before, after in zip(last, again):
        want = before["state"]
        if want in ("implicitly-opened", "explicitly-opened"):   # a power cycle closes open zones
            want = "closed" if before["wptr"] else "empty"
        assert (after["state"], after["wptr"]) == (want, before["wptr"]), (before, after)
    assert re.search(rf"^md5 zone1: {m[2]}$", out2, re.M), out2
    assert "hello zoned world <- append read back" in out2, out2
    assert "write at restored wp ok" in out2, out2
    # Namespace Management create with CSI 2
    assert re.search(r"^CREATE create-ns: success", out2, re.M | re.I) and re.search(r"^CREATE nsid: 3$", out2, re.M), out2
    assert re.search(r"^created nsid 3 dev nvme0n\d+ zoned: host-managed nr_zones: 8$", out2, re.M), out2
    assert re.search(r"^NEWZID lbafe\s*0: zsze:0x20000", out2, re.M), out2
    # zonefs formats, mounts and writes a sequential file on it
    assert "mkzonefs ok" in out2 and "mount ok" in out2, out2
    m2 = re.search(r"^zonefs file: 2097152 bytes, md5 (\w+) expect (\w+)$", out2, re.M)
    assert m2 and m2[1] == m2[2], out2
    assert "@@HOST> Error" not in out2 and "QMP error" not in out2, out2
