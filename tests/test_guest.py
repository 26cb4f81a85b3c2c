"""Guest tests: a real Linux VM (QEMU vfio-user-pci client, nvme driver, nvme-cli, fio)
against a real nvshell process. Slow (TCG boots, ~10 s each): marked ``guest``.

Run only these: ``pytest -m guest``; skip them: ``pytest -m 'not guest'``.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from tests.harness import NvshellProcess, require_guest, run_guest

pytestmark = pytest.mark.guest


@pytest.fixture(autouse=True)
def _guest_available():
    require_guest()


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    import os
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_pci_function_probed_by_linux(tmp_path):
    with NvshellProcess(tmp_path / "run") as nv:
        rc, out = run_guest([nv.run_dir / "ctrl0.sock"], "pci-probe.sh", timeout=180)
    assert rc == 0, out
    assert re.search(r"\[0108\]: \[?.*\[4e58:0001\]", out) or "[0108]" in out, out
    assert "class=0x010802" in out, out
    assert "bar0_size=16384" in out, out
    assert "MSI-X: Enable+" in out, out
    assert "driver=nvme" in out, out
    assert "nvme nvme0: pci function" in out, out


def test_nvme_cli_and_filesystem(tmp_path):
    with NvshellProcess(tmp_path / "run") as nv:
        rc, out = run_guest([nv.run_dir / "ctrl0.sock"], "nvme-basic.sh", timeout=240)
    assert rc == 0, out
    assert "/dev/nvme0n1" in out, out
    assert re.search(r"mn\s+:\s+nvshell", out), out
    assert re.search(r"nsze\s+:\s+0x200000", out), out             # 1 GiB / 512
    assert "critical_warning" in out, out
    assert re.search(r"Number of IO Completion Queues Allocated", out) or "Number of Queues" in out, out
    assert "mkfs-ok" in out, out
    assert "MISMATCH" not in out, out


def _fio_results(out: str) -> dict[str, tuple[float, float]]:
    results = {}
    for name, r, w in re.findall(r"result (\S+) read_iops=([\d.]+) write_iops=([\d.]+)", out):
        results[name] = (float(r), float(w))
    return results


@pytest.mark.parametrize("lba_size", [512, 4096])
@pytest.mark.parametrize("doorbells", ["mmap", "trap"])
def test_fio_verify(tmp_path, lba_size, doorbells):
    args = ["-object", "x-nvme-subsystem,id=subsys0",
            "-device", f"x-nvme-ctrl,id=ctrl0,subsys=subsys0,doorbells={doorbells}",
            "-object", f"x-nvme-ns-nvm,id=ns1,subsys=subsys0,size=512M,lba-size={lba_size},attached-to=all"]
    with NvshellProcess(tmp_path / "run", *args) as nv:
        rc, out = run_guest([nv.run_dir / "ctrl0.sock"], "fio-verify.sh",
                            env={"SIZE": "256M", "RUNTIME": "4"}, timeout=420)
    assert rc == 0, out
    results = _fio_results(out)
    assert set(results) == {"randread-qd1", "randread-qd32", "write-verify"}, out
    assert results["randread-qd1"][0] > 0 and results["randread-qd32"][0] > 0, out
    assert "### fio ok" in out


def test_idle_device_costs_little_cpu(tmp_path):
    with NvshellProcess(tmp_path / "run") as nv:
        assert nv.proc is not None
        script = "sleep 2; cat /proc/uptime; sleep 12; echo idle-done\n"
        import threading
        samples: list[tuple[float, float]] = []

        def sample():
            time.sleep(25)          # boot, then measure while the guest sleeps
            samples.append((time.monotonic(), _cpu_seconds(nv.proc.pid)))
            time.sleep(6)
            samples.append((time.monotonic(), _cpu_seconds(nv.proc.pid)))

        thread = threading.Thread(target=sample)
        thread.start()
        rc, out = run_guest([nv.run_dir / "ctrl0.sock"], script + "sleep 20\n", timeout=180)
        thread.join()
    assert rc == 0, out
    (t0, c0), (t1, c1) = samples
    usage = (c1 - c0) / (t1 - t0)
    print(f"idle nvshell CPU: {usage:.2%} of a core")
    assert usage < 0.02, f"idle nvshell used {usage:.1%} of a core"


def test_file_namespace_keeps_data_across_restart(tmp_path):
    image = tmp_path / "disk.img"
    args = ["-object", "x-nvme-subsystem,id=subsys0",
            "-device", "x-nvme-ctrl,id=ctrl0,subsys=subsys0",
            "-object", f"x-nvme-ns-nvm,id=ns1,subsys=subsys0,backend=file,file={image},size=64M,attached-to=all"]
    write = ("dd if=/dev/urandom of=/tmp/pat bs=1M count=8 2>/dev/null; "
             "dd if=/tmp/pat of=/dev/nvme0n1 bs=1M oflag=direct 2>/dev/null; sync; "
             "md5sum </tmp/pat | cut -d' ' -f1\n")
    with NvshellProcess(tmp_path / "run", *args) as nv:
        rc, out = run_guest([nv.run_dir / "ctrl0.sock"], write, timeout=180)
    assert rc == 0, out
    digest = re.search(r"^([0-9a-f]{32})$", out, re.M).group(1)
    read = "dd if=/dev/nvme0n1 bs=1M count=8 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1\n"
    with NvshellProcess(tmp_path / "run2", *args) as nv:
        rc, out = run_guest([nv.run_dir / "ctrl0.sock"], read, timeout=180)
    assert rc == 0, out
    assert digest in out, out
