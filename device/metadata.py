"""Per-block metadata storage beside a namespace's data backend.

Metadata (``ms`` bytes per logical block, PI tuples included) lives in a second
backend of the same kind as the data: sparse memory for ``memory``, a companion
file ``<file>.meta`` for ``file`` (created or resized as needed, kept across
restarts like the data), nothing for ``null``.

Bytes are stored inverted (each byte XOR FFh). Unwritten or deallocated space in
every backend reads as zeroes, so metadata that was never written reads back as
all ones, which is the escape value that switches protection checking off:
a freshly created, formatted or deallocated block passes every check, as on
QEMU's device and real drives, and the host can read its partition table.
"""

from __future__ import annotations

import os
from typing import Any

from nvshell.device.backends import Backend, BackendError, FileBackend, MemoryBackend, NullBackend

_INVERT = bytes(b ^ 0xFF for b in range(256))

COMPANION_SUFFIX = ".meta"


def _open(data: Backend, size: int) -> Backend:
    kind = data.kind
    if kind == "memory":
        return MemoryBackend(size)
    if kind == "null":
        return NullBackend(size)
    if kind == "file":
        path = getattr(data, "path") + COMPANION_SUFFIX
        try:
            if os.path.exists(path) and os.path.getsize(path) != size:
                os.truncate(path, size)
        except OSError as exc:
            raise BackendError(f"cannot size metadata file '{path}': {exc.strerror}", exc.errno) from None
        return FileBackend(path, size)
    # Unknown kinds (test backends, later additions) keep metadata in memory.
    return MemoryBackend(size)


class MetadataStore:
    """``ms`` bytes for each of ``nlbas`` blocks; offsets are LBAs."""

    def __init__(self, data: Backend, nlbas: int, ms: int):
        self.data = data
        self.ms = ms
        self.nlbas = nlbas
        self.backend = _open(data, nlbas * ms)

    def read(self, lba: int, buf: Any) -> None:
        """Fill ``buf`` (a writable buffer of n*ms bytes) with the metadata of blocks from ``lba``."""
        view = buf if isinstance(buf, memoryview) else memoryview(buf)
        self.backend.readinto(lba * self.ms, view)
        view[:] = view.tobytes().translate(_INVERT)

    def write(self, lba: int, data: Any) -> None:
        self.backend.write(lba * self.ms, bytes(data).translate(_INVERT))

    def deallocate(self, lba: int, nlb: int) -> None:
        """Blocks whose metadata reads as all ones again (deallocated, Write Zeroes without PRACT)."""
        self.backend.discard(lba * self.ms, nlb * self.ms)

    def erase(self) -> None:
        self.backend.discard(0, self.backend.size)

    def flush(self) -> None:
        self.backend.flush()

    def close(self) -> None:
        self.backend.close()

    def describe(self) -> dict[str, Any]:
        out = self.backend.describe()
        out["ms"] = self.ms
        return out
