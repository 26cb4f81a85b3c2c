"""Fault rules: parsing, matching, counting, seeded probability, lifecycle, bad input."""

import pytest

from nvshell.device.errors import PropertyError
from nvshell.device.faults import FaultRule, FaultSet, parse_status
from nvshell.device.nvme.status import Status

READ, WRITE = 0x02, 0x01


def rule(**kw):
    kw.setdefault("id", "f1")
    return FaultRule.from_args(kw)


def io(ctrl="ctrl0", qid=1, opcode=READ, nsid=1, slba=0, nlb=8):
    return dict(ctrl=ctrl, qid=qid, opcode=opcode, nsid=nsid, cdw10=slba & 0xFFFFFFFF,
                cdw11=slba >> 32, cdw12=nlb - 1)


def test_issue_example_parses():
    r = rule(ctrl="ctrl0", opcode="read", nsid="1", slba="0", nlb="8", action="status",
             status="unrecovered-read-error", count="1")
    assert (r.ctrl, r.opcode, r.queue_kind, r.nsid, r.slba, r.nlb, r.count) == ("ctrl0", READ, "io", 1, 0, 8, 1)
    assert r.status == Status.UNRECOVERED_READ_ERROR


@pytest.mark.parametrize("value, expected", [
    ("unrecovered-read-error", 0x281), ("UNRECOVERED_READ_ERROR", 0x281), (0x281, 0x281),
    ("0x281", 0x281), ("2/0x81", 0x281), ("lba-out-of-range", 0x80)])
def test_status_forms(value, expected):
    assert parse_status(value) == expected


@pytest.mark.parametrize("args, message", [
    ({"action": "explode"}, "Parameter 'action' expects one of"),
    ({"opcode": "reed"}, "Parameter 'opcode' expects an opcode name"),
    ({"status": "no-such"}, "Parameter 'status' expects a status name"),
    ({"status": 0x1000}, "must fit in SCT"),
    ({"probability": "2"}, "between 0 and 1"),
    ({"count": "zero"}, "Parameter 'count' expects an integer"),
    ({"colour": "red"}, "Parameter 'colour' is unexpected"),
    ({"action": "delay"}, "Parameter 'delay' is missing"),
    ({"action": "corrupt", "opcode": "write"}, "action=corrupt applies to reads"),
    ({"dnr": "maybe"}, "Parameter 'dnr' expects 'on' or 'off'"),
])
def test_bad_rules_say_what_is_wrong(args, message):
    with pytest.raises(PropertyError, match=message):
        rule(**args)


def test_missing_id():
    with pytest.raises(PropertyError, match="Parameter 'id' is missing"):
        FaultRule.from_args({"action": "drop"})


def test_match_fields_and_lba_overlap():
    r = rule(ctrl="ctrl0", opcode="read", nsid=1, slba=100, nlb=10)
    assert r.matches(**io(slba=95, nlb=8))          # 95..102 overlaps 100..109
    assert r.matches(**io(slba=109, nlb=1))
    assert not r.matches(**io(slba=110, nlb=4))     # just after
    assert not r.matches(**io(slba=92, nlb=8))      # 92..99 just before
    assert not r.matches(**io(ctrl="ctrl1", slba=100))
    assert not r.matches(**io(opcode=WRITE, slba=100))
    assert not r.matches(**io(nsid=2, slba=100))
    assert not r.matches(**io(qid=0, slba=100))     # admin queue: not an I/O read


def test_admin_and_io_opcodes_do_not_collide():
    admin = rule(opcode="identify")                  # 0x06 admin
    assert admin.queue_kind == "admin"
    assert admin.matches(ctrl="c", qid=0, opcode=0x06, nsid=0, cdw10=1, cdw11=0, cdw12=0)
    assert not admin.matches(ctrl="c", qid=1, opcode=0x06, nsid=1, cdw10=0, cdw11=0, cdw12=0)
    numeric = rule(opcode="0x02", queue="io")
    assert numeric.opcode == READ and numeric.queue_kind == "io"


def test_count_and_skip():
    faults = FaultSet()
    faults.add(rule(opcode="read", skip=2, count=3))
    hits = [faults.check(**io()) is not None for _ in range(8)]
    assert hits == [False, False, True, True, True, False, False, False]
    (r,) = faults.rules
    assert (r.matched, r.hits, r.exhausted) == (8, 3, True)


def test_probability_is_reproducible_with_a_seed():
    def run(seed):
        faults = FaultSet()
        faults.add(rule(opcode="read", probability=0.3, seed=seed))
        return [faults.check(**io()) is not None for _ in range(200)]
    first, again, other = run(7), run(7), run(8)
    assert first == again
    assert first != other
    assert 30 < sum(first) < 90                       # about 60 of 200


def test_lifecycle_and_listeners():
    faults = FaultSet()
    seen = []
    faults.listeners.append(lambda r, action, detail: seen.append((r.id, action, detail["cid"])))
    faults.listeners.append(lambda *a: 1 / 0)          # a broken listener is ignored
    assert not faults
    faults.add(rule(id="a", action="drop", opcode="write"))
    faults.add(rule(id="b", action="delay", delay=5))
    with pytest.raises(PropertyError, match="already exists"):
        faults.add(rule(id="a", action="drop"))
    assert faults.check(**io(opcode=WRITE), cid=7).id == "a"
    assert faults.check(**io(opcode=READ), cid=8).id == "b"
    assert seen == [("a", "drop", 7), ("b", "delay", 8)]
    assert faults.remove("a").id == "a"
    with pytest.raises(PropertyError, match="not found"):
        faults.remove("a")
    assert [r.id for r in faults] == ["b"]
    assert faults.rules[0].describe()["delay"] == 5


def test_count_holds_across_threads() -> None:
    """One rule matching on several IOThreads at once fires exactly ``count`` times."""
    import sys
    import threading
    r = FaultRule.from_args({"id": "once", "action": "drop", "count": 3})
    hits: list[int] = []
    start = threading.Barrier(4)

    def hammer() -> None:
        start.wait()
        for _ in range(20000):
            n = r.fire()
            if n:
                hits.append(n)

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)          # switch threads as often as possible
    try:
        threads = [threading.Thread(target=hammer) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    assert sorted(hits) == [1, 2, 3] and r.hits == 3 and r.matched == 80000
