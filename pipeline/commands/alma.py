"""`python -m pipeline alma instance JOB_ID INSTANCE_ID [--source URL] [--json]`: look at a job instance.

For operators: what Alma says about an instance (status, counters) and which files the pipeline
would process for it, without processing anything. Exit status 0 when the instance is done and its
files are found, 1 otherwise (the reason is printed), 2 for usage errors.
"""

from __future__ import annotations

import argparse
import json
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `alma` command with its `instance` action."""
    parser = subparsers.add_parser(
        "alma", help="ask the Alma API about a job instance and list the files it wrote",
        description="Talk to the Alma API (ALMA_API_KEY, ALMA_REGION or ALMA_API_BASE_URL).")
    actions = parser.add_subparsers(dest="alma_action", metavar="ACTION")
    inst = actions.add_parser(
        "instance", help="status, counters and planned files of one job instance",
        description="Fetch a job instance, check it is done, and list the export files it wrote in "
        "EXPORT_SOURCE (or --source).")
    inst.add_argument("job_id", metavar="JOB_ID", help="the job id (job_info.id, e.g. S5139276810004146)")
    inst.add_argument("instance_id", metavar="INSTANCE_ID", help="the job instance id")
    inst.add_argument("--source", metavar="URL", help="where the export files are (default EXPORT_SOURCE)")
    inst.add_argument("--json", action="store_true", help="print the plan as JSON")
    inst.set_defaults(func=run_instance)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)


def run_instance(args: argparse.Namespace) -> int:
    from pipeline import settings
    from pipeline.alma import AlmaClient, AlmaError
    from pipeline.cli import CommandError
    from pipeline.plan import JobInstance, NotThereYet, PlanError, plan_export
    from pipeline.sources import SourceError, open_source

    try:
        with AlmaClient.from_settings() as client:
            data = client.get_job_instance(args.job_id, args.instance_id)
    except AlmaError as exc:
        raise CommandError(str(exc)) from None
    instance = JobInstance.from_api(data, job_id=args.job_id)
    out = sys.stdout
    if not args.json:
        print(f"job instance {instance.instance_id} of job {instance.job_id} ({instance.job_name or '?'})", file=out)
        print(f"  name:     {instance.name}", file=out)
        desc = f" ({instance.status_desc})" if instance.status_desc else ""
        print(f"  status:   {instance.status or '?'}{desc}", file=out)
        print(f"  ended:    {instance.end_time or '-'}", file=out)
        if instance.progress is not None:
            print(f"  progress: {instance.progress:g}", file=out)
        if instance.counters:
            print("  counters:", file=out)
            for key, value in instance.counters.items():
                label = instance.counter_labels.get(key)
                print(f"    {key}{f' ({label})' if label else ''}: {value}", file=out)
    url = args.source or settings.get("EXPORT_SOURCE")
    if not url:
        print("  files:    EXPORT_SOURCE is not set; pass --source URL to list them", file=out)
        return 1
    problem = None
    plan = None
    try:
        with open_source(url) as source:
            plan = plan_export(instance, source, last_attempt=True)
    except (NotThereYet, PlanError, SourceError) as exc:
        problem = str(exc)
    if args.json:
        body = plan.to_dict() if plan else {"job_id": instance.job_id, "instance_id": instance.instance_id,
                                             "status": instance.status, "error": problem}
        print(json.dumps(body, indent=2, ensure_ascii=False), file=out)
        return 0 if plan else 1
    if plan is None:
        print(f"  files:    {problem}", file=out)
        return 1
    print(f"  files in {plan.source} ({' or '.join(plan.patterns)}):", file=out)
    for entry in plan.files:
        size = "?" if entry.size is None else f"{entry.size:,}"
        print(f"    {entry.name}  {size} bytes", file=out)
    return 0
