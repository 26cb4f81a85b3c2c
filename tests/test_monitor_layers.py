"""The monitor is layered one way, and one loader registers its command groups.

Static checks over the source (imports are read with ``ast``), plus the loaded tables.
"""

from __future__ import annotations

import ast
from pathlib import Path

from nvshell.monitor import loader
from nvshell.monitor.hmp import COMMANDS, INFO

MONITOR = Path(__file__).resolve().parent.parent / "monitor"


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports (``from nvshell.monitor import hmp_x`` counts as hmp_x)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module":
            out.update(a.value for a in node.args if isinstance(a, ast.Constant))
    return out


def short(names: set[str]) -> set[str]:
    return {n.rsplit(".", 1)[-1] for n in names if n.startswith("nvshell.monitor.")}


def test_every_group_is_loaded_by_the_loader() -> None:
    on_disk = {p.stem for p in MONITOR.glob("*.py") if p.stem.startswith(("commands_", "hmp_"))}
    assert on_disk == set(loader.QMP_GROUPS + loader.HMP_GROUPS), "add the module to monitor/loader.py"
    assert all(g.startswith("commands_") for g in loader.QMP_GROUPS)
    assert all(g.startswith("hmp_") for g in loader.HMP_GROUPS)


def test_qmp_command_modules_import_no_hmp_module() -> None:
    for group in loader.QMP_GROUPS:
        bad = {m for m in short(imports(MONITOR / f"{group}.py")) if m.startswith("hmp")}
        assert not bad, f"{group} imports {bad}"


def test_qmp_protocol_layer_imports_no_command_module() -> None:
    for path in (MONITOR / "qmp").glob("*.py"):
        bad = {m for m in short(imports(path)) if m.startswith(("commands_", "hmp")) or m == "loader"}
        assert not bad, f"{path.name} imports {bad}"


def test_core_modules_import_no_command_group() -> None:
    """Registry, HMP machinery, context and formatting sit below every group."""
    groups = set(loader.QMP_GROUPS + loader.HMP_GROUPS)
    for name in ("registry", "hmp", "context", "errors", "events", "format", "jsonify"):
        used = short(imports(MONITOR / f"{name}.py")) & groups
        assert not used, f"{name}.py imports command group(s) {used}"


def test_no_table_entry_is_replaced_at_import_time() -> None:
    for path in MONITOR.rglob("*.py"):
        if path.name in ("hmp.py", "registry.py"):
            continue
        text = path.read_text()
        for call in ("COMMANDS.add(", "INFO.add(", "REGISTRY.unregister(", "_commands["):
            assert call not in text, f"{path.relative_to(MONITOR)} edits a shared table ({call})"


def test_loaded_tables() -> None:
    registry = loader.load()
    assert loader.load() is registry
    modules = {registry.get(n).module.rsplit(".", 1)[-1] for n in registry.names()}
    assert modules <= set(loader.QMP_GROUPS) | {"hmp"}
    assert {"trace-event", "fault_add", "fault_del", "object_add", "device_add"} <= {c.name for c in COMMANDS}
    assert "faults" in {c.name for c in INFO}
