"""Turn device-model return values into plain JSON values.

Why: the Machine returns namedtuples, dataclasses, enums and bytes; QMP needs JSON,
with QEMU's hyphenated member names (``default-value``, not ``default_value``).
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any


def jsonable(value: Any) -> Any:
    """Convert ``value`` recursively; unknown objects become their ``str()``."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, enum.Enum):
        return jsonable(value.value)
    if isinstance(value, dict):
        return {str(k).replace("_", "-") if not isinstance(k, str) else k: jsonable(v) for k, v in value.items()}
    if isinstance(value, tuple) and hasattr(value, "_asdict"):
        return record(value._asdict())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return record({f.name: getattr(value, f.name) for f in dataclasses.fields(value)})
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    return str(value)


def record(fields: dict[str, Any]) -> dict[str, Any]:
    """A struct from Python attribute names: hyphenate them, drop members that are None."""
    return {name.replace("_", "-"): jsonable(v) for name, v in fields.items() if v is not None}
