"""Guest test of introspection: what the Linux driver and nvme-cli read equals what QOM says.

One boot of the default topology.  Before the guest runs, the test reads ctrl0 and ns1 over
QMP; the guest (``introspect.sh``) prints Identify as nvme-cli's JSON, formats nvme0n1 to
4 KiB blocks and creates + attaches a namespace; afterwards the test reads QMP again.  Each
side must match: the serial the driver shows is ``serial`` (the device id by default), the
EUI-64/NGUID it shows are ``eui64``/``nguid`` (derived, never ""), the format after ``nvme
format`` is ``lba-size``/``nlbas``, and the guest's namespace is an object with its real
geometry and identifiers.  The fast, exhaustive version is tests/test_introspection.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from nvshell.testing import QmpConnection
from tests.harness import NvshellProcess, require_guest, run_guest

pytestmark = pytest.mark.guest

CTRL = "/machine/peripheral/ctrl0"
NS1 = "/objects/ns1"


def _hex(text: str) -> str:
    return re.sub(r"[^0-9a-f]", "", str(text).lower())


def _json_line(out: str, name: str) -> dict[str, Any]:
    m = re.search(rf"^{name} (\{{.*\}})\s*$", out, re.M)
    assert m, f"no {name} line in the guest output:\n{out}"
    return json.loads(m.group(1))


def _qom(qmp: QmpConnection, path: str) -> dict[str, Any]:
    return {p["name"]: qmp.execute("qom-get", {"path": path, "property": p["name"]})
            for p in qmp.execute("qom-list", {"path": path}) if not p["type"].startswith("child<")}


def _descriptor(descs: dict[str, Any], key: str) -> str:
    """One identifier from ``nvme ns-descs -o json`` (``{"ns-descs": [{"Type": key, key: value}]}``)."""
    found = [d[key] for d in descs.get("ns-descs", []) if d.get("Type") == key]
    assert found, f"no {key} descriptor in {descs}"
    return _hex(found[0])


def _check_ns(qom: dict[str, Any], id_ns: dict[str, Any], descs: dict[str, Any], what: str) -> None:
    fmt = id_ns["flbas"] & 0xF
    lbaf = id_ns["lbafs"][fmt]
    assert qom["lba-size"] == 1 << lbaf["ds"], (what, qom, id_ns)
    assert qom["ms"] == lbaf["ms"], (what, qom, id_ns)
    assert qom["nlbas"] == id_ns["nsze"] and qom["size"] == id_ns["nsze"] << lbaf["ds"], (what, qom, id_ns)
    assert qom["eui64"] == _hex(id_ns["eui64"]) == _descriptor(descs, "eui64") != "0" * 16, (what, qom, id_ns)
    assert qom["nguid"] == _hex(id_ns["nguid"]) == _descriptor(descs, "nguid"), (what, qom, id_ns)
    assert _hex(qom["uuid"]) == _descriptor(descs, "uuid"), (what, qom, descs)


def test_linux_sees_what_qom_reports(tmp_path: Path) -> None:
    require_guest()
    with NvshellProcess(tmp_path / "run") as nv:
        qmp = QmpConnection(nv.run_dir / "qmp.sock")
        try:
            ctrl, ns1_before = _qom(qmp, CTRL), _qom(qmp, NS1)
            rc, out = run_guest([nv.run_dir / "ctrl0.sock"], "introspect.sh", timeout=240)
            assert rc == 0, out + nv.log()
            ns1_after = _qom(qmp, NS1)
            created = [o["name"] for o in qmp.execute("qom-list", {"path": "/objects"})
                       if o["type"] == "child<x-nvme-ns-nvm>" and o["name"] != "ns1"]
            assert len(created) == 1, (created, out)
            ns2 = _qom(qmp, f"/objects/{created[0]}")
            subnqn = qmp.execute("qom-get", {"path": ctrl["subsys"], "property": "subnqn"})
        finally:
            qmp.close()

    id_ctrl = _json_line(out, "ID-CTRL")
    assert ctrl["serial"] == "ctrl0" == id_ctrl["sn"].strip(), (ctrl, id_ctrl)
    assert ctrl["model"] == id_ctrl["mn"].strip() and ctrl["firmware"] == id_ctrl["fr"].strip(), id_ctrl
    assert ctrl["cntlid"] == id_ctrl["cntlid"] and ctrl["mdts"] == id_ctrl["mdts"], id_ctrl
    assert ctrl["aerl"] == id_ctrl["aerl"] and subnqn == id_ctrl["subnqn"].strip("\0 "), id_ctrl
    assert ns1_before["backend"] == "memory" and ns1_before["lba-size"] == 512, ns1_before

    _check_ns(ns1_before, _json_line(out, "ID-NS"), _json_line(out, "DESCS"), "ns1 before the format")
    assert re.search(r"^LBS-AFTER 4096$", out, re.M), out
    _check_ns(ns1_after, _json_line(out, "ID-NS-AFTER"), _json_line(out, "DESCS"), "ns1 after the format")
    assert ns1_after["lba-size"] == 4096 and ns1_after["nlbas"] == ns1_before["nlbas"] // 8, ns1_after
    assert re.search(r"^LBS2 4096$", out, re.M), out
    _check_ns(ns2, _json_line(out, "ID-NS2"), _json_line(out, "DESCS2"), "the guest's namespace")
    assert ns2["size"] == 2048 * 4096 and ns2["attached"] == ["ctrl0"] and ns2["backend"] == "memory", ns2
