"""Each NVMe spec fact is declared once (device/nvme/spec.py) and everything uses that.

The checks are about the tree itself: a second ``BROADCAST_NSID = ...`` or a
command table entry named differently from its opcode is exactly the drift these
tests exist to catch.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from nvshell.device.faults import FaultRule
from nvshell.device.nvme import admin_aer, admin_features, admin_format, admin_identify  # noqa: F401
from nvshell.device.nvme import admin_log, admin_ns, admin_queues, nvm  # noqa: F401  (fill the tables)
from nvshell.device.nvme.commands import ADMIN, NVM, Command
from nvshell.device.nvme.spec import (ADMIN_OPCODE_NAMES, IO_OPCODE_NAMES, SQE, AdminOpcode, NvmOpcode, mdts_bytes,
                                      opcode_label)

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "device" / "nvme" / "spec.py"
FACTS = ("BROADCAST_NSID", "IDENTIFY_SIZE", "LBA_FORMATS", "NVME_VERSION", "BAR0_SIZE", "ID_NS", "SQE", "CQE",
         "PAGE_SIZE", "LBA_OPCODES", "HOST_READ_OPCODES", "HOST_WRITE_OPCODES", "mdts_bytes", "opcode_label",
         "DOORBELL_PAGE_OFFSET", "DOORBELL_PAGE_SIZE")


def _sources() -> list[Path]:
    return [p for d in ("device", "monitor", "nvshell", "scripts", "tests") for p in (ROOT / d).rglob("*.py")]


@pytest.mark.parametrize("name", FACTS)
def test_spec_fact_declared_once(name: str) -> None:
    pattern = re.compile(rf"^(?:{name}\s*(?::[^=]+)?=[^=]|def {name}\b)", re.M)   # module-level declarations
    where = [str(p.relative_to(ROOT)) for p in _sources() if pattern.search(p.read_text())]
    assert where == ["device/nvme/spec.py"], f"{name} declared in {where}: import it from nvshell.device.nvme.spec"


def test_no_literal_broadcast_nsid_outside_spec() -> None:
    """The broadcast NSID is compared by name, never as a 0xFFFFFFFF literal next to 'nsid'."""
    pattern = re.compile(r"nsid\W{1,6}0x[fF]{8}\b")
    hits = [str(p.relative_to(ROOT)) for p in _sources() if p != SPEC and "tests" not in p.parts
            and pattern.search(p.read_text())]
    assert hits == []


@pytest.mark.parametrize("table,names", [(ADMIN, ADMIN_OPCODE_NAMES), (NVM, IO_OPCODE_NAMES)])
def test_command_tables_use_the_opcode_vocabulary(table, names) -> None:
    """Every registered command is a declared opcode and carries that opcode's one name."""
    for info in table:
        assert names.get(info.opcode) == info.name, (
            f"{table.name} opcode {info.opcode:#04x} registered as {info.name!r}: declare it in spec.py's "
            "opcode enum and register it by the enum member")


def test_one_opcode_vocabulary_for_tables_traces_and_faults() -> None:
    info = ADMIN.get(AdminOpcode.NAMESPACE_MANAGEMENT)
    assert info is not None and info.name == "namespace-management"
    assert opcode_label(0, AdminOpcode.NAMESPACE_MANAGEMENT) == "namespace-management"   # what traces print
    rule = FaultRule.from_args({"id": "f", "opcode": "namespace-management", "action": "status",
                                "status": "invalid-field"})
    assert (rule.queue_kind, rule.opcode) == ("admin", AdminOpcode.NAMESPACE_MANAGEMENT)
    with pytest.raises(Exception, match="ns-management"):
        FaultRule.from_args({"id": "f", "opcode": "ns-management", "action": "status", "status": "invalid-field"})
    assert opcode_label(1, NvmOpcode.ZONE_APPEND) == "zone-append"
    assert opcode_label(1, 0x99) == "0x99"


def test_command_decodes_every_sqe_field() -> None:
    values = {name: i + 1 for i, name in enumerate(SQE.names)}
    raw = SQE.struct.unpack_from(SQE.pack(**values))
    cmd = Command.from_sqe(3, raw)
    assert cmd.sqid == 3
    for name in SQE.names:
        if name not in ("cdw2", "cdw3"):
            assert getattr(cmd, name) == values[name], name


def test_mdts_in_bytes() -> None:
    assert mdts_bytes(0) == 0 and mdts_bytes(5) == 4096 << 5
