"""Turn nvshell trace records into a Perfetto trace (``nvtrace export --perfetto OUT``).

Why Perfetto's own protobuf classes (the ``perfetto`` package): the file must open in the
Perfetto UI and in ``trace_processor`` unchanged, and the same classes parse it back in the
tests, so the format is never re-implemented here.

Layout of the written trace (TrackEvent packets, one trusted sequence):

- one parent track per controller (``ctrl0``) with, under it,
- per queue ``ctrl0 q1`` (q0 is the admin queue): every command is a slice from its fetch
  (``nvme_cmd_submit``) to its CQE (``nvme_cmd_complete``), with the arguments opcode, cid,
  nsid, slba, nlb (at the start) and status, lat_us, result (at the end).  Commands of one
  queue overlap (QD32), and slices on one Perfetto track must nest, so a queue is a set of
  *lane* tracks that all carry the queue's name and merge key: the UI shows them as one track
  with the overlapping commands stacked.  A command recorded only by its completion
  (``-trace nvme_cmd_complete``) starts ``lat_us`` before its CQE.
- ``ctrl0 q1 depth``: a counter track, commands fetched and not yet completed;
- ``ctrl0 q1 doorbells``: instants for SQ tail / CQ head doorbell writes, fault hits and
  queue creation/deletion of that queue;
- ``ctrl0 events``: instants for interrupts, AENs, controller state changes (enable, disable,
  reset, fatal), namespace attach/detach and vfio-user client connect/disconnect.

Clocks: the recorder stamps each record with the host's CLOCK_REALTIME (``time.time_ns()``).
Packets carry those stamps with ``timestamp_clock_id = REALTIME``, and the first packet is a
ClockSnapshot relating the host's REALTIME, MONOTONIC and BOOTTIME, so trace_processor puts
the events on the host's BOOTTIME axis (Perfetto's default trace clock) and keeps their
absolute wall-clock time.  See ``clock_snapshot`` for how that lines up with a guest.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass, field
from typing import IO, Any, Iterable

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb
from perfetto.trace_builder.proto_builder import StreamingTraceProtoBuilder

from nvshell.device.trace import Record

#: The one trusted packet sequence every packet of an export belongs to.
SEQUENCE_ID = 1
#: Perfetto's built-in clock ids (BuiltinClock in the protos).
REALTIME = pb.BUILTIN_CLOCK_REALTIME
MONOTONIC = pb.BUILTIN_CLOCK_MONOTONIC
BOOTTIME = pb.BUILTIN_CLOCK_BOOTTIME

#: Instant events on the controller's ``events`` track: trace point name -> fields shown as arguments.
CONTROLLER_INSTANTS: dict[str, tuple[str, ...]] = {
    "nvme_irq": ("vector",),
    "nvme_aen_queued": ("aen_type", "info", "log_page"),
    "nvme_aen_complete": ("cid", "aen_type", "info", "log_page"),
    "nvme_ctrl_enable": ("cc",),
    "nvme_ctrl_disable": ("reason",),
    "nvme_ctrl_reset": ("kind",),
    "nvme_ctrl_fatal": ("reason",),
    "nvme_ns_attach": ("nsid",),
    "nvme_ns_detach": ("nsid",),
    "vfu_client_connect": (),
    "vfu_client_disconnect": ("reason",),
}
#: Instant events on a queue's ``doorbells`` track (the record's ``qid`` names the queue).
QUEUE_INSTANTS: dict[str, tuple[str, ...]] = {
    "nvme_doorbell": ("kind", "value"),
    "nvme_fault_hit": ("rule", "action", "cid", "opcode"),
    "nvme_create_sq": ("cqid", "size", "prio"),
    "nvme_create_cq": ("size", "vector", "ien"),
    "nvme_delete_sq": (),
    "nvme_delete_cq": (),
}
#: Slice arguments taken from the submit record and from the completion record.
SUBMIT_ARGS = ("opcode", "cid", "nsid", "slba", "nlb")
COMPLETE_ARGS = ("status", "lat_us", "result")


def track_uuid(*parts: object) -> int:
    """A stable 63-bit track id from the track's path (same names -> same uuid in every export)."""
    key = "\0".join(str(p) for p in parts).encode()
    return ((zlib.crc32(key) << 31) ^ zlib.crc32(key[::-1]) ^ len(key)) & 0x7FFF_FFFF_FFFF_FFFF or 1


def queue_track_name(ctrl: str, qid: int) -> str:
    return f"{ctrl} q{qid}"


def clock_snapshot() -> pb.TracePacket:
    """The host's REALTIME, MONOTONIC and BOOTTIME read together, BOOTTIME as the trace clock.

    Why this lines up with a guest: a QEMU/KVM guest's CLOCK_REALTIME is the host's wall clock
    at boot (kvmclock), kept in step by NTP or ``ptp_kvm`` in the guest; a guest Perfetto trace
    carries its own snapshot with REALTIME, so both files land on the same absolute time.
    Exports made while nvshell runs (or any later time on the same host boot) map REALTIME to
    the host's BOOTTIME exactly; after a reboot only the wall-clock relation holds.
    """
    packet = pb.TracePacket()
    # The three reads are a few hundred ns apart: good enough for microsecond commands.
    for clock_id, value in ((REALTIME, time.time_ns()),
                            (MONOTONIC, time.clock_gettime_ns(time.CLOCK_MONOTONIC)),
                            (BOOTTIME, time.clock_gettime_ns(time.CLOCK_BOOTTIME))):
        c = packet.clock_snapshot.clocks.add()
        c.clock_id = clock_id
        c.timestamp = value
    packet.clock_snapshot.primary_trace_clock = BOOTTIME
    packet.trusted_packet_sequence_id = SEQUENCE_ID
    return packet


def _annotate(event: pb.TrackEvent, name: str, value: Any) -> None:
    a = event.debug_annotations.add()
    a.name = name
    if isinstance(value, bool):
        a.bool_value = value
    elif isinstance(value, int):
        a.int_value = value
    elif isinstance(value, float):
        a.double_value = value
    else:
        a.string_value = str(value)


@dataclass
class _Queue:
    """Export state of one (controller, queue): lanes and the commands open on them."""

    ctrl: str
    qid: int
    #: lane index -> end time of its last slice (ns); a lane is free when not in ``open``'s values.
    lane_end: list[int] = field(default_factory=list)
    #: cid -> (lane, start ts) of the commands fetched and not completed yet.
    open: dict[int, tuple[int, int]] = field(default_factory=dict)

    def free_lane(self, start: int) -> int:
        busy = {lane for lane, _ in self.open.values()}
        for lane, end in enumerate(self.lane_end):
            if lane not in busy and end <= start:
                return lane
        self.lane_end.append(0)
        return len(self.lane_end) - 1


class PerfettoExporter:
    """Feed records in file order (``feed``), packets stream out to ``out`` as they are made.

    Streaming (not an in-memory Trace) so that ``nvtrace export --follow`` writes a file that is
    valid after every packet, and a recording of millions of commands needs no memory for them.
    """

    def __init__(self, out: IO[bytes]) -> None:
        self._builder = StreamingTraceProtoBuilder(out)
        self._out = out
        self._tracks: set[int] = set()
        self._queues: dict[tuple[str, int], _Queue] = {}
        #: Counts of what was written: slices begun/ended, instants, counter values.
        self.slices = 0
        self.completed = 0
        self.instants = 0
        self.counters = 0
        self._builder.write_packet(clock_snapshot())

    # -- tracks --------------------------------------------------------------------------
    def _descriptor(self, uuid: int, name: str, parent: int | None = None, *, counter: bool = False,
                    merge_key: str | None = None) -> int:
        if uuid in self._tracks:
            return uuid
        self._tracks.add(uuid)
        packet = pb.TracePacket()
        packet.trusted_packet_sequence_id = SEQUENCE_ID
        d = packet.track_descriptor
        d.uuid = uuid
        d.name = name
        if parent is not None:
            d.parent_uuid = parent
        if counter:
            d.counter.unit_name = "commands"
        if merge_key is not None:
            d.sibling_merge_behavior = pb.TrackDescriptor.SIBLING_MERGE_BEHAVIOR_BY_SIBLING_MERGE_KEY
            d.sibling_merge_key = merge_key
        self._builder.write_packet(packet)
        return uuid

    def _ctrl_track(self, ctrl: str) -> int:
        return self._descriptor(track_uuid(ctrl), ctrl)

    def _events_track(self, ctrl: str) -> int:
        return self._descriptor(track_uuid(ctrl, "events"), f"{ctrl} events", self._ctrl_track(ctrl))

    def _lane_track(self, q: _Queue, lane: int) -> int:
        name = queue_track_name(q.ctrl, q.qid)
        return self._descriptor(track_uuid(q.ctrl, q.qid, "lane", lane), name, self._ctrl_track(q.ctrl),
                                merge_key=name)

    def _depth_track(self, ctrl: str, qid: int) -> int:
        return self._descriptor(track_uuid(ctrl, qid, "depth"), f"{queue_track_name(ctrl, qid)} depth",
                                self._ctrl_track(ctrl), counter=True)

    def _doorbell_track(self, ctrl: str, qid: int) -> int:
        return self._descriptor(track_uuid(ctrl, qid, "doorbells"), f"{queue_track_name(ctrl, qid)} doorbells",
                                self._ctrl_track(ctrl))

    def _queue(self, ctrl: str, qid: int) -> _Queue:
        q = self._queues.get((ctrl, qid))
        if q is None:
            q = self._queues[(ctrl, qid)] = _Queue(ctrl, qid)
        return q

    # -- events --------------------------------------------------------------------------
    def _event(self, ts: int, track: int, kind: int, name: str | None = None,
               args: Iterable[tuple[str, Any]] = ()) -> pb.TrackEvent:
        packet = pb.TracePacket()
        packet.timestamp = ts
        packet.timestamp_clock_id = REALTIME
        packet.trusted_packet_sequence_id = SEQUENCE_ID
        ev = packet.track_event
        ev.type = kind  # type: ignore[assignment]
        ev.track_uuid = track
        if name is not None:
            ev.name = name
        for key, value in args:
            _annotate(ev, key, value)
        self._builder.write_packet(packet)
        return ev

    def _depth(self, ts: int, q: _Queue) -> None:
        packet = pb.TracePacket()
        packet.timestamp = ts
        packet.timestamp_clock_id = REALTIME
        packet.trusted_packet_sequence_id = SEQUENCE_ID
        ev = packet.track_event
        ev.type = pb.TrackEvent.TYPE_COUNTER
        ev.track_uuid = self._depth_track(q.ctrl, q.qid)
        ev.counter_value = len(q.open)
        self._builder.write_packet(packet)
        self.counters += 1

    def _begin(self, q: _Queue, cid: int, ts: int, record: Record) -> None:
        stale = q.open.pop(cid, None)
        if stale is not None:  # a cid reused without a recorded completion (trace started late, reset)
            self._event(ts, self._lane_track(q, stale[0]), pb.TrackEvent.TYPE_SLICE_END,
                        args=[("status", "unknown (no completion recorded)")])
            q.lane_end[stale[0]] = ts
        lane = q.free_lane(ts)
        q.open[cid] = (lane, ts)
        name = str(record.get("opcode", "?"))
        self._event(ts, self._lane_track(q, lane), pb.TrackEvent.TYPE_SLICE_BEGIN, name,
                    [(k, record[k]) for k in SUBMIT_ARGS if k in record])
        self.slices += 1

    def _end(self, q: _Queue, cid: int, ts: int, record: Record) -> None:
        lane, _start = q.open.pop(cid)
        q.lane_end[lane] = ts
        self._event(ts, self._lane_track(q, lane), pb.TrackEvent.TYPE_SLICE_END,
                    args=[(k, record[k]) for k in COMPLETE_ARGS if k in record])
        self.completed += 1

    def feed(self, record: Record) -> None:
        """Translate one record (unknown trace points are skipped: they have no place here)."""
        name = str(record.get("name", ""))
        ts = record.get("ts")
        ctrl = record.get("ctrl")
        if not isinstance(ts, int) or not isinstance(ctrl, str):
            return
        if name == "nvme_cmd_submit":
            q = self._queue(ctrl, int(record["qid"]))
            self._begin(q, int(record["cid"]), ts, record)
            self._depth(ts, q)
        elif name == "nvme_cmd_complete":
            q = self._queue(ctrl, int(record["qid"]))
            cid = int(record["cid"])
            if cid not in q.open:  # completion only: the slice starts lat_us before the CQE
                start = ts - int(float(record.get("lat_us", 0.0)) * 1000)
                self._begin(q, cid, start, record)
            self._end(q, cid, ts, record)
            self._depth(ts, q)
        elif name in QUEUE_INSTANTS:
            qid = int(record.get("qid", 0))
            self._event(ts, self._doorbell_track(ctrl, qid), pb.TrackEvent.TYPE_INSTANT,
                        name if name != "nvme_doorbell" else f"{record.get('kind', '?')} doorbell",
                        [(k, record[k]) for k in QUEUE_INSTANTS[name] if k in record])
            self.instants += 1
        elif name in CONTROLLER_INSTANTS:
            self._event(ts, self._events_track(ctrl), pb.TrackEvent.TYPE_INSTANT, name,
                        [(k, record[k]) for k in CONTROLLER_INSTANTS[name] if k in record])
            self.instants += 1

    def flush(self) -> None:
        self._out.flush()


def export(records: Iterable[Record], out: IO[bytes], *, flush_each: bool = False) -> PerfettoExporter:
    """Write every record of ``records`` to ``out`` as a Perfetto trace; return the exporter
    (its counters say what was written).  ``flush_each``: flush after every record (--follow)."""
    exporter = PerfettoExporter(out)
    for record in records:
        exporter.feed(record)
        if flush_each:
            exporter.flush()
    exporter.flush()
    return exporter


# -- reading back (tests, and anyone checking an export without trace_processor) ------------

@dataclass
class Slice:
    """One command slice read back from an exported trace."""

    track: str
    name: str
    start: int
    end: int | None
    args: dict[str, Any]
    #: The lane track's uuid (a queue's slices are spread over lanes that share its name).
    uuid: int = 0


@dataclass
class ParsedTrace:
    """What ``parse`` found: track names by uuid, slices, instants and counter values."""

    tracks: dict[int, str] = field(default_factory=dict)
    parents: dict[int, int] = field(default_factory=dict)
    counter_tracks: set[int] = field(default_factory=set)
    slices: list[Slice] = field(default_factory=list)
    instants: list[tuple[str, str, int, dict[str, Any]]] = field(default_factory=list)
    counters: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    clock_snapshots: list[dict[int, int]] = field(default_factory=list)
    #: ``timestamp_clock_id`` of every timed packet (REALTIME for all of an export's events).
    clock_ids: set[int] = field(default_factory=set)

    def slices_on(self, track_name: str) -> list[Slice]:
        return [s for s in self.slices if s.track == track_name]


def _value(a: pb.DebugAnnotation) -> Any:
    which = a.WhichOneof("value")
    return getattr(a, which) if which else None


def parse(data: bytes) -> ParsedTrace:
    """Parse an exported file with Perfetto's ``Trace`` message and rebuild slices from
    begin/end pairs (a lane track never has two open slices, so pairing is per track)."""
    trace = pb.Trace()
    trace.ParseFromString(data)
    out = ParsedTrace()
    open_slices: dict[int, Slice] = {}
    for packet in trace.packet:
        if packet.HasField("clock_snapshot"):
            out.clock_snapshots.append({c.clock_id: c.timestamp for c in packet.clock_snapshot.clocks})
        if packet.HasField("track_descriptor"):
            d = packet.track_descriptor
            out.tracks[d.uuid] = d.name
            if d.HasField("parent_uuid"):
                out.parents[d.uuid] = d.parent_uuid
            if d.HasField("counter"):
                out.counter_tracks.add(d.uuid)
        if not packet.HasField("track_event"):
            continue
        ev = packet.track_event
        out.clock_ids.add(packet.timestamp_clock_id)
        args = {a.name: _value(a) for a in ev.debug_annotations}
        track = out.tracks.get(ev.track_uuid, f"#{ev.track_uuid}")
        if ev.type == pb.TrackEvent.TYPE_SLICE_BEGIN:
            s = Slice(track, ev.name, packet.timestamp, None, args, ev.track_uuid)
            open_slices[ev.track_uuid] = s
            out.slices.append(s)
        elif ev.type == pb.TrackEvent.TYPE_SLICE_END:
            s = open_slices.pop(ev.track_uuid)
            s.end = packet.timestamp
            s.args.update(args)
        elif ev.type == pb.TrackEvent.TYPE_INSTANT:
            out.instants.append((track, ev.name, packet.timestamp, args))
        elif ev.type == pb.TrackEvent.TYPE_COUNTER:
            out.counters.setdefault(track, []).append((packet.timestamp, ev.counter_value))
    return out
