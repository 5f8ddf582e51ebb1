"""`python -m pipeline replay EVENT.json --out DIR [--rules FILE] [--format F] [--source URL]`.

Runs the whole job flow for a saved webhook body, synchronously and without queues: parse the event
(JSON or XML), fetch the authoritative job instance from the Alma API, plan its files, stream each
one from the source through the engine, and write the outputs and report.json to DIR. For support
cases ("what would last night's export have produced?") and for trying settings before deploying.
Exit status: 0 all files processed, 1 a failure (printed), 2 usage errors.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from pipeline.commands import _output

if TYPE_CHECKING:
    from pipeline.sources import Source


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
    from pipeline.alma import AlmaClient, AlmaError
    from pipeline.cli import CommandError, UsageError
    from pipeline.destinations.base import DestinationError
    from pipeline.events import EventError, parse_event
    from pipeline.marc.encoders import FormatError, get_encoder
    from pipeline.marc.engine import Input, process
    from pipeline.plan import JobInstance, NotThereYet, PlanError, plan_export
    from pipeline.sources import SourceError, open_source

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
    job_id, instance_id = event.job_instance.job_id, event.job_instance.id

    try:
        with AlmaClient.from_settings() as client:
            data = client.get_job_instance(job_id, instance_id)
    except AlmaError as exc:
        raise CommandError(str(exc)) from None
    instance = JobInstance.from_api(data, job_id=job_id)
    with open_source(args.source) as source:
        try:
            plan = plan_export(instance, source, last_attempt=True)
        except NotThereYet as exc:
            raise CommandError(f"not ready: {exc}; try again later") from None
        except (PlanError, SourceError) as exc:
            raise CommandError(str(exc)) from None
        print(f"job instance {instance.instance_id} of job {instance.job_id}: {instance.status}; "
              f"{len(plan.files)} file(s) in {plan.source}")
        inputs = [Input(entry.name, _opener(source, entry.name), entry.size) for entry in plan.files]
        destination, sink_factory = _output.open_output("replay", args.out, args.per_record)
        try:
            report = process(inputs, destination, fmt=fmt, rules_path=rules, workers=args.workers,
                             sink_factory=sink_factory)
        except (OSError, DestinationError) as exc:
            raise CommandError(f"writing to {args.out}: {exc}") from None
    return _output.print_summary(report, destination)


def _opener(source: Source, name: str) -> Callable[[], BinaryIO]:
    """Bind `name` now (a lambda in the loop would see only the last name)."""
    return lambda: source.open(name)
