"""``nvtrace``: decode nvshell trace files, or export them for the Perfetto UI.

Two forms, one console script (``[project.scripts]`` in pyproject.toml):

- ``nvtrace FILE [--json] [--summary] [--follow] [--name GLOB]`` prints the records as the shell
  does, as JSON lines, or a summary (``nvshell.device.trace_decode``);
- ``nvtrace export --perfetto OUT FILE [--follow] [--name GLOB]`` writes a Perfetto trace
  (``nvshell.device.trace_perfetto``): tracks per controller queue, one slice per command.

Why the plain form keeps FILE first (no ``decode`` word): scripts written before ``export``
existed go on working.
"""

from __future__ import annotations

import argparse
import signal
import sys
from typing import IO

from nvshell.device.trace import format_record
from nvshell.device.trace_decode import Summary, TraceDecodeError, filter_names, iter_records, to_json

DECODE_EPILOG = """\
export to Perfetto:
  nvtrace export --perfetto OUT.pftrace FILE [--follow] [--name GLOB]
  (see nvtrace export --help)

examples:
  nvtrace t.msgpack --name 'nvme_cmd_*'
  nvtrace t.msgpack --summary
  nvtrace t.msgpack --follow --json | jq .
  nvtrace export --perfetto t.pftrace t.msgpack      then open t.pftrace in ui.perfetto.dev

exit status: 0 success, 1 corrupt or truncated file (records before the damage are printed),
2 the file cannot be read
"""

EXPORT_EPILOG = """\
what the trace holds (record the trace points you want to see, e.g. -trace 'nvme_*'):
  CTRL qN            one slice per command, fetch (nvme_cmd_submit) to CQE (nvme_cmd_complete);
                     arguments opcode, cid, nsid, slba, nlb, status, lat_us, result.  Overlapping
                     commands of a queue sit on lanes merged into the one queue track.  With only
                     nvme_cmd_complete recorded a slice starts lat_us before its CQE.
  CTRL qN depth      counter: commands fetched and not completed
  CTRL qN doorbells  instants: SQ tail / CQ head doorbells, fault hits, queue create/delete
  CTRL events        instants: interrupts, AENs, controller enable/disable/reset/fatal,
                     namespace attach/detach, vfio-user client connect/disconnect

clock: timestamps are the host's CLOCK_REALTIME as recorded; a clock snapshot in the file maps
them to the host's CLOCK_BOOTTIME (Perfetto's trace clock), so they line up with other traces
of this host and, by wall-clock time, with a guest trace whose clock follows the host's.

examples:
  nvtrace export --perfetto fio.pftrace fio.msgpack
  nvtrace export --perfetto live.pftrace --follow t.msgpack    (Ctrl-C or SIGTERM ends it)
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nvtrace",
        description="Decode an nvshell trace file (recorded with -trace file=PATH or trace-file on, msgpack "
                    "records) into text lines (as the shell prints them), JSON lines, or a summary; "
                    "'nvtrace export' writes it as a Perfetto trace.",
        epilog=DECODE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("file", help="trace file written by nvshell")
    p.add_argument("--json", action="store_true", help="print one JSON object per record instead of text")
    p.add_argument("--summary", action="store_true",
                   help="print counts per trace point and latency percentiles (p50/p90/p99/max, us) "
                        "per opcode and per queue from nvme_cmd_complete records, instead of the records")
    p.add_argument("--follow", "-f", action="store_true",
                   help="keep reading as the file grows (like tail -f); Ctrl-C ends "
                        "(and prints the summary with --summary)")
    p.add_argument("--name", metavar="GLOB", help="only records whose trace point name matches GLOB")
    return p


def build_export_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nvtrace export",
        description="Write an nvshell trace file as a Perfetto trace (protobuf TracePacket stream) that opens in "
                    "the Perfetto UI and trace_processor.",
        epilog=EXPORT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("file", help="trace file written by nvshell (may still be being written with --follow)")
    p.add_argument("--perfetto", metavar="OUT", required=True, help="write the Perfetto trace to OUT")
    p.add_argument("--follow", "-f", action="store_true",
                   help="keep converting as the recording grows; OUT is valid after every record; "
                        "Ctrl-C or SIGTERM ends")
    p.add_argument("--name", metavar="GLOB", help="only records whose trace point name matches GLOB")
    return p


def _stop_on_sigterm() -> None:
    """--follow ends on SIGTERM like on Ctrl-C: both finish the output file cleanly."""
    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, handler)


def export_main(argv: list[str], err: IO[str]) -> int:
    from nvshell.device.trace_perfetto import PerfettoExporter  # the perfetto protos load only for export

    args = build_export_parser().parse_args(argv)
    if args.follow:
        _stop_on_sigterm()
    try:
        out = open(args.perfetto, "wb")
    except OSError as e:
        print(f"nvtrace: {args.perfetto}: {e.strerror or e}", file=err)
        return 2
    rc = 0
    with out:
        exporter = PerfettoExporter(out)
        try:
            for record in filter_names(iter_records(args.file, follow=args.follow), args.name):
                exporter.feed(record)
                if args.follow:
                    exporter.flush()
        except OSError as e:
            print(f"nvtrace: {args.file}: {e.strerror or e}", file=err)
            rc = 2
        except TraceDecodeError as e:
            print(f"nvtrace: {args.file}: {e}", file=err)
            rc = 1
        except KeyboardInterrupt:
            pass
        exporter.flush()
    print(f"nvtrace: wrote {args.perfetto}: {exporter.slices} command slices ({exporter.completed} completed), "
          f"{exporter.instants} instants, {exporter.counters} queue-depth values", file=err)
    return rc


def main(argv: list[str] | None = None, out: IO[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["export"]:
        return export_main(argv[1:], sys.stderr)
    args = build_parser().parse_args(argv)
    out = out or sys.stdout
    summary = Summary() if args.summary else None
    rc = 0
    try:
        for r in filter_names(iter_records(args.file, follow=args.follow), args.name):
            if summary is not None:
                summary.feed(r)
            else:
                out.write((to_json(r) if args.json else format_record(r)) + "\n")
                if args.follow:
                    out.flush()
    except OSError as e:
        print(f"nvtrace: {args.file}: {e.strerror or e}", file=sys.stderr)
        return 2
    except TraceDecodeError as e:
        print(f"nvtrace: {args.file}: {e}", file=sys.stderr)
        rc = 1
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:
        return 0
    if summary is not None:
        out.write(summary.render() + "\n")
    return rc


def console_main() -> None:
    """The ``nvtrace`` console script."""
    sys.exit(main())


if __name__ == "__main__":
    console_main()
