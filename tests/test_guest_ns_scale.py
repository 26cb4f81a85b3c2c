"""Guest test of namespace management at scale: nvme-cli creates, attaches, detaches and
deletes a namespace CYCLES times (tests/guest_scripts/ns-scale.sh); every attach and detach
reaches the Linux driver as one Namespace Attribute Changed notice, /dev/nvme0nX comes and
goes, and with the notice switched off nvme-cli reads the Changed Namespace List the device
collected. The full measurement (256 cycles, QEMU's device beside it) is
scripts/bench_ns_scale.py."""

from __future__ import annotations

import re

import pytest

from tests.harness import NvshellProcess, run_guest

pytestmark = pytest.mark.guest

CYCLES = 24


def test_ns_management_cycles_with_nvme_cli(tmp_path):
    with NvshellProcess(tmp_path / "run") as nv:
        rc, out = run_guest([nv.socket("ctrl0")], "ns-scale.sh", timeout=600,
                            env={"CYCLES": str(CYCLES), "MODE": "cycle", "LIST_CHECK": "1"})
        log = nv.log()
    print(out)
    assert rc == 0, out + log
    assert "TIMEOUT" not in out and "failed" not in out, out
    assert "TRACE-OVERFLOW" not in out, out
    steps = {m.group(1): m.group(2) for m in re.finditer(r"^STEP (\S+) (.*)$", out, re.M)}
    assert set(steps) == {"create", "attach", "detach", "delete"}, out
    for name, fields in steps.items():
        assert f"n={CYCLES} " in fields, (name, fields)
    # One notice per attach and per detach, none for create or delete of a detached namespace.
    aens = {name: int(re.search(r"aens=(\d+)", fields).group(1)) for name, fields in steps.items()}
    assert aens == {"create": 0, "attach": CYCLES, "detach": CYCLES, "delete": 0}, out
    assert re.search(rf"^AENS {2 * CYCLES}$", out, re.M), out
    # Nothing left behind: only the configured namespace 1.
    assert re.search(r"^active-after: NVME Namespace List: \[\s*0\]:0x1 $", out, re.M), out
    assert re.search(r"^allocated-after: NVME Namespace List: \[\s*0\]:0x1 $", out, re.M), out
    # Notices off: attach 4, 2, 3 and detach 2 -> the list holds 2, 3, 4 once each, ascending.
    made = re.search(r"^made: (\d+) (\d+) (\d+)$", out, re.M)
    assert made and [int(x) for x in made.groups()] == [2, 3, 4], out
    changed = re.search(r"^changed:\n(.*?)^### end-notices-off", out, re.S | re.M)
    assert changed, out
    assert [int(x, 16) for x in re.findall(r"\[\s*\d+\]:(0x[0-9a-f]+)", changed.group(1))] == [2, 3, 4], out
