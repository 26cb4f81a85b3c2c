"""Guest test of the admin command set: one boot, nvme-cli drives every admin command and log
page the controller offers (self-test, Write Uncorrectable and Get LBA Status, firmware
download/commit/activation at reset, telemetry, persistent event log, OCP C0h, sanitize),
then turns the volatile write cache off and writes; nvshell is killed with SIGKILL as soon
as the guest's write has completed, and the backing file must hold the data."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading

import pytest

from tests.harness import GUEST_DIR, GUEST_SCRIPTS, NvshellProcess, require_guest

pytestmark = pytest.mark.guest

PATTERN = b"NVSHELL-DURABLE-WRITE\n"
DURABLE_OFFSET = 8 << 20


@pytest.fixture(autouse=True)
def _guest_available() -> None:
    require_guest()


def section(out: str, name: str) -> str:
    m = re.search(rf"^### {re.escape(name)}\n(.*?)(?=^### |\Z)", out, re.S | re.M)
    assert m, f"no section {name!r} in:\n{out}"
    return m.group(1)


def field(text: str, name: str) -> int:
    m = re.search(rf"^{name}\s*:\s*(0x[0-9a-f]+|\d+)", text, re.M)
    assert m, f"no {name} in:\n{text}"
    return int(m.group(1), 0)


def test_admin_commands_with_nvme_cli(tmp_path):
    image = tmp_path / "disk.img"
    args = ["-object", "x-nvme-subsystem,id=subsys0",
            "-device", "x-nvme-ctrl,id=ctrl0,subsys=subsys0,ocp=on",
            "-object", f"x-nvme-ns-nvm,id=ns1,subsys=subsys0,backend=file,file={image},size=64M,attached-to=all"]
    killed: list[str] = []
    with NvshellProcess(tmp_path / "run", *args) as nv:
        assert nv.proc is not None
        cmd = ["bash", str(GUEST_DIR / "run.sh"), "--script", str(GUEST_SCRIPTS / "admin-commands.sh"),
               "--timeout", "360", "--socket", str(nv.run_dir / "ctrl0.sock")]
        guest = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        timer = threading.Timer(420, guest.kill)
        timer.start()
        lines = []
        try:
            assert guest.stdout is not None
            for line in guest.stdout:
                lines.append(line.rstrip("\n"))
                if line.startswith("DURABLE-WRITTEN") and not killed:
                    # The guest's write completed: kill nvshell at once, as a crash would.
                    os.kill(nv.proc.pid, signal.SIGKILL)
                    killed.append(line)
            rc = guest.wait()
        finally:
            timer.cancel()
        out = "\n".join(lines)
    assert rc == 0, out

    idctrl = section(out, "id-ctrl")
    oacs = field(idctrl, "oacs")
    for bit in (1, 2, 3, 4, 9):                        # format, firmware, ns management, self-test, LBA status
        assert oacs & (1 << bit), (hex(oacs), bit)
    assert field(idctrl, "kas") == 1
    assert field(idctrl, "sanicap") & 0b110 == 0b110
    assert re.search(r"^ieee\s*:\s*(0x)?506b8d\b", idctrl, re.M | re.I), idctrl
    assert field(idctrl, "ver") == 0x20000

    logs = section(out, "supported-log-pages")
    lids = {int(x, 0) for x in re.findall(r"LID (0x[0-9a-f]+|\d+)", logs)}
    assert {0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x0D, 0x0E, 0x81, 0xC0} <= lids, logs

    st = section(out, "self-test")
    assert "self-test-started" in st, st
    assert re.search(r"Current operation\s*:\s*(0x)?0+$", st, re.M), st
    assert re.search(r"Operation Result\s*:\s*(0x)?0+$", st, re.M), st       # the newest entry passed
    assert re.search(r"Self Test Code\s*:\s*(0x)?1$", st, re.M), st

    unc = section(out, "write-uncor")
    assert "write-uncor-ok" in unc and "read-after-uncor-failed" in unc, unc
    lba = section(out, "get-lba-status")
    assert re.search(r"DSLBA: 0x0*50, NLB: 0x0*8\b", lba), lba              # LBAs 80..87
    assert "read-after-write-ok" in section(out, "lba-status-log"), out
    after = section(out, "get-lba-status-after")
    assert "(NLSD): 0" in after and "DSLBA" not in after, after

    fw = section(out, "fw")
    assert "fw-download-ok" in fw and "fw-commit rc=0" in fw, fw
    assert re.search(r"^fr\s*:\s*2\.0", fw, re.M), fw

    tel = section(out, "telemetry")
    assert "telemetry-ok" in tel and '"reason":"host-initiated"' in tel, tel

    pel = section(out, "persistent-event-log")
    assert re.search(r"Firmware Commit|firmware commit", pel, re.I), pel
    assert re.search(r"Power.?on|reset", pel, re.I), pel

    ocp = section(out, "ocp")
    assert "Log page GUID" in ocp or "GUID" in ocp, ocp
    assert "ERROR" not in ocp, ocp

    san = section(out, "sanitize")
    assert "sanitize-started" in san and "sanitized-reads-zero" in san, san
    # Completed (1) with Global Data Erased (bit 8); the guest's next write clears the bit.
    assert re.search(r"\(SSTAT\)\s*:\s*0x101\b", san) and re.search(r"\(SPROG\)\s*:\s*65535", san), san
    assert re.search(r"^after-write: .*\(SSTAT\)\s*:\s*0x1\b", san, re.M), san

    durable = section(out, "durable")
    assert re.search(r"Current value:\s*(0x)?0+\b", durable), durable
    assert "DURABLE-WRITTEN" in durable, durable
    assert killed, "the guest's write never completed"
    with open(image, "rb") as f:
        f.seek(DURABLE_OFFSET)
        assert f.read(1 << 20) == (PATTERN * (1 << 20))[: 1 << 20]
