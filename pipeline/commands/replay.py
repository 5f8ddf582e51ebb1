"""`python -m pipeline replay EVENT.json --out DIR [--rules FILE] [--format F] [--source URL]`.

Runs the job flow for a saved webhook body, synchronously and without queues or Azure storage: the
same job service the queue functions use (pipeline/jobs.py), over an in-memory ledger. It parses
the event (JSON or XML), fetches the authoritative job instance from the Alma API, plans its files
(output names reserved as in Azure), streams each one from the source through the engine, and
writes the outputs and manifest.json to DIR. For support cases ("what would last night's export
have produced?") and for trying settings before deploying.
Exit status: 0 all files processed, 1 a failure (printed), 2 usage errors.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pipeline.commands import _output


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `replay` command."""
    parser = subparsers.add_parser(
        "replay", help="run the job flow for a saved Alma webhook body (fetch instance, plan, process)",
        description="Parse a saved JOB_END webhook body, fetch the job instance from the Alma API, find "
        "the files it wrote in the export source, and process them into DIR with report.json.")
    parser.add_argument("event", metavar="EVENT", help="saved webhook body (.json or .xml)")
    _output.add_arguments(parser)
    parser.add_argument("--rules", metavar="FILE", help="rules file (default TRANSFORM_RULES)")
    parser.add_argument("--format", metavar="FORMAT", help="output format (default OUTPUT_FORMAT)")
    parser.add_argument("--source", metavar="URL", help="where the export files are (default EXPORT_SOURCE)")
    parser.add_argument("--workers", type=int, metavar="N", help="worker processes (default: automatic)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pipeline import settings
    from pipeline.alma import AlmaError
    from pipeline.cli import CommandError, UsageError
    from pipeline.destinations.base import DestinationError
    from pipeline.events import EventError, parse_event
    from pipeline.marc.encoders import FormatError, get_encoder
    from pipeline.plan import NotThereYet, PlanError
    from pipeline.sources import SourceError

    fmt = args.format or settings.get("OUTPUT_FORMAT")
    rules = args.rules or settings.get("TRANSFORM_RULES")
    if args.workers is not None and args.workers < 1:
        raise UsageError("replay: --workers must be at least 1")
    try:
        get_encoder(fmt)
    except FormatError as exc:
        raise UsageError(f"replay: {exc}") from None
    if rules:
        from pipeline.rules import RulesError, load_rules

        try:
            load_rules(rules)
        except RulesError as exc:
            raise UsageError(f"replay: {exc}") from None
        except OSError as exc:
            raise UsageError(f"replay: rules file {rules}: {exc.strerror}") from None
    try:
        body = Path(args.event).read_bytes()
    except OSError as exc:
        raise UsageError(f"replay: cannot read {args.event}: {exc.strerror}") from None
    try:
        event = parse_event(body)
    except EventError as exc:
        raise CommandError(f"{args.event} is not a usable Alma event: {exc}") from None
    if event.action_key != "JOB_END" or event.job_instance is None:
        raise CommandError(f"{args.event} is a {event.action or 'unknown'} event, not JOB_END with a job instance")
    from pipeline import events
    from pipeline.jobs import JobError, JobService, JobSpec
    from pipeline.ledger import Ledger

    message = events.job_message(event, event.time or "")
    raw = json.loads(events.serialize_message(message))
    _output.open_output("replay", args.out, args.per_record)  # checks --out and --per-record, creates the folder
    spec = JobSpec(source=args.source or settings.require("EXPORT_SOURCE"), destination=args.out, format=fmt,
                   rules=rules, per_record=args.per_record)
    service = JobService(Ledger.in_memory(), workers=args.workers or 1)
    try:
        messages = service.plan(message, raw, last_attempt=True, spec=spec, strict=True)
    except AlmaError as exc:
        raise CommandError(str(exc)) from None
    except NotThereYet as exc:
        raise CommandError(f"not ready: {exc}; try again later") from None
    except (PlanError, SourceError, ValueError) as exc:  # ValueError: an id or setting the flow cannot use
        raise CommandError(str(exc)) from None
    record = service.ledger.get(message.instance_id)
    assert record is not None
    print(f"job instance {record.instance_id} of job {record.job['job_id']}: {record.job['status']}; "
          f"{len(record.files)} file(s) in {spec.source}")
    for msg in messages:
        try:
            service.run_file(msg, 7 * 86400.0)  # a week: the whole file in one go
        except JobError:
            service.file_poisoned(msg, 1)  # no retries here: the file fails, the others go on
        except (OSError, DestinationError) as exc:
            raise CommandError(f"writing to {args.out}: {exc}") from None
    return _print_summary(service.ledger.get(message.instance_id))


def _print_summary(record: Any) -> int:
    """One line per file, where the manifest is; exit status 0 when every file was processed."""
    for f in record.files:
        r = f.result or {}
        if f.state != "done":
            print(f"error: {f.error}", file=sys.stderr)
        else:
            print(f"{f.name}: {r.get('records_in', 0)} records in, {r.get('records_out', 0)} out, "
                  f"{r.get('rejected', 0)} rejected, {r.get('dropped', 0)} dropped ({r.get('seconds', 0):.1f} s)")
    print(f"manifest: {record.manifest.location}")
    return 0 if record.state == "done" else 1
