"""What `process` and `replay` share: where the outputs go (a local folder or `dropbox:/path`), one
file per input or one per record (`--per-record`), and the summary printed at the end."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pipeline.cli import UsageError
from pipeline.settings import SettingError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, metavar="DEST",
                        help="output folder (created if missing) or dropbox:/path (DROPBOX_* settings)")
    parser.add_argument("--per-record", metavar="TEMPLATE",
                        help="one file per record instead of one per input, named by TEMPLATE, e.g. "
                        "records/{001}.xml ({001}, {035a}, {n}, {stem})")


def is_local(out: str) -> bool:
    return not out.startswith("dropbox:")


def open_output(command: str, out: str, per_record: str | None) -> tuple[Any, Any]:
    """The destination for `out` and the sink factory for `--per-record` (None: one file per input)."""
    from pipeline.destinations import open_destination

    if is_local(out):
        folder = Path(out[len("file://"):] if out.startswith("file://") else out)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"{command}: cannot create output folder {folder}: {exc.strerror}") from None
    try:
        destination = open_destination(out)
    except SettingError:
        raise  # a missing or bad setting: the CLI prints it and exits 1
    except ValueError as exc:
        raise UsageError(f"{command}: --out {out}: {exc}") from None
    sink_factory = None
    if per_record:
        from pipeline.destinations.per_record import PerRecordSink

        try:
            sink_factory = PerRecordSink.factory(per_record)
        except ValueError as exc:
            raise UsageError(f"{command}: --per-record: {exc}") from None
    return destination, sink_factory


def print_summary(report: Any, destination: Any) -> int:
    """One line per file, where the report is; exit status 0 when every file was processed."""
    for result in report.files:
        if result.error:
            print(f"error: {result.error}", file=sys.stderr)
        else:
            print(f"{result.name}: {result.records_in} records in, {result.records_out} out, "
                  f"{result.rejected} rejected, {result.dropped} dropped ({result.seconds:.1f} s)")
    print(f"report: {destination.location('report.json')}")
    return 0 if report.ok else 1
