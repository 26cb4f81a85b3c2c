"""``info zones`` and ``x-nvme-query-zones`` against a real Machine: the table, start/count,
lookup by id or NSID, and one-line errors for everything a user can get wrong."""

from __future__ import annotations

import asyncio
from typing import Any, Iterator

import pytest

from nvshell.device.machine import Machine
from nvshell.device.nvme.zoned import ZoneState
from nvshell.monitor.context import MonitorContext
from tests.test_hmp import err, out
from tests.qmp_helpers import trace_registry

SETUP = ("object_add x-nvme-subsystem,id=subsys0",
         "object_add x-nvme-ns-nvm,id=ns1,subsys=subsys0,size=1M",
         "object_add x-nvme-ns-zoned,id=nsz,subsys=subsys0,size=8M,zone-size=1M,zone-capacity=768K,"
         "zone-max-open=2")


@pytest.fixture
def ctx(tmp_path: Any) -> Iterator[MonitorContext]:
    machine = Machine(str(tmp_path))
    c = MonitorContext(machine=machine, trace=trace_registry())
    yield c
    machine.shutdown()


def test_info_zones_table_and_query(ctx: MonitorContext) -> None:
    out(ctx, *SETUP)
    zones = ctx.machine.find_object("nsz").model.zones
    with zones.lock:
        zones.end_write(zones.begin_write(2048, 8), 8)        # zone 1 implicitly opened, wp +8
        zones.finish_zone(zones.zones[2])
    zones.force_state(zones.zones[3], ZoneState.OFFLINE)
    assert out(ctx, "info zones nsz 1 3") == (
        "nsz (nsid 2): 8 zones of 2048 blocks, capacity 1536 blocks, lba-size 512; open 1 (max 2), "
        "active 1 (max no limit)\n"
        "empty 5, implicitly-opened 1, full 1, offline 1\n"
        "zone  zslba   state              wp      zcap   attrs\n"
        "1     0x800   implicitly-opened  0x808   0x600  -\n"
        "2     0x1000  full               0x1600  0x600  -\n"
        "3     0x1800  offline            0x1800  0x600  -\n")
    assert out(ctx, "info zones 2 7").splitlines()[-1].startswith("7     0x3800  empty")   # by NSID
    assert len(out(ctx, "info zones nsz").splitlines()) == 3 + 8

    async def query(args: dict) -> Any:
        return await ctx.registry.execute("x-nvme-query-zones", args, ctx)
    r = asyncio.run(query({"namespace": "nsz", "start": 2, "count": 1}))
    assert r["id"] == "nsz" and r["nr-zones"] == 8 and r["open"] == 1 and r["counts"]["full"] == 1
    assert r["zones"] == [{"zone": 2, "zslba": 4096, "state": "full", "wp": 4096 + 1536, "zcap": 1536, "attrs": 0}]


def test_info_zones_errors(ctx: MonitorContext) -> None:
    out(ctx, *SETUP)
    assert err(ctx, "info zones nope") == "Error: Namespace 'nope' not found"
    assert err(ctx, "info zones ns1") == "Error: Namespace 'ns1' is not a zoned namespace"
    assert err(ctx, "info zones nsz 8") == "Error: zone 8 does not exist (the namespace has 8 zones)"
    assert err(ctx, "info zones nsz x") == "Error: Parameter 'start' expects an integer, got 'x'"
    assert err(ctx, "info zones nsz 0 -1") == "Error: Parameter 'count' expects a non-negative integer, got '-1'"
    assert err(ctx, "info zones").startswith("Error: ")
    # the same NSID in two subsystems: name it by id
    out(ctx, "object_add x-nvme-subsystem,id=sub2",
        "object_add x-nvme-ns-zoned,id=nsy,subsys=sub2,nsid=2,size=2M,zone-size=1M")
    assert "name the namespace by id (nsz, nsy)" in err(ctx, "info zones 2")
    assert out(ctx, "info zones nsy").startswith("nsy (nsid 2): 2 zones")
