"""nvshell: an NVMe controller emulator served to real VMs over vfio-user.

The installed distribution is this one package.  Its parts:

- ``nvshell.device``  -- the device model (vfio-user transport, PCI function, NVMe controller,
  namespaces, subsystems, backends, tracing, fault injection);
- ``nvshell.monitor`` -- the QMP server, the command registry and HMP;
- ``nvshell.main`` / ``nvshell.cmdline`` / ``nvshell.shell`` / ``nvshell.remote`` -- the program.

In the source tree the two subpackages live beside this directory (``device/``, ``monitor/``: the
repository's layout); the wheel maps them under ``nvshell/`` (``pyproject.toml``
``[tool.setuptools.package-dir]``).  So that a checkout runs without installing, a source checkout
adds the repository root to this package's search path -- only when the subpackages are not
already inside it, which is the installed case.
"""

from __future__ import annotations

from pathlib import Path as _Path

__version__ = "0.1.0"

_here = _Path(__file__).resolve().parent
if not (_here / "device").is_dir() and (_here.parent / "device" / "__init__.py").is_file():
    __path__.append(str(_here.parent))  # type: ignore[name-defined]  # noqa: F821
del _Path, _here
