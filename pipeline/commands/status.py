"""`python -m pipeline status [INSTANCE_ID] [--json]`: the status page's data in a terminal.

The same data as the `job_status` function (pipeline/status.py): without an id, the newest job
instances with their state, counts and, for failed or stuck ones, the reason and the requeue
command; with an id, that instance's files. `--reindex` rebuilds the job index from the ledger
(after upgrading from a version without it, or after deleting ledger blobs by hand).
"""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `status` command."""
    parser = subparsers.add_parser(
        "status",
        help="what the pipeline did: recent job instances, or one instance's files",
        description="Show the job instances in the ledger, newest first (state, times, records in/out/rejected, "
        "where the outputs are, and for failed or stuck ones the reason and the requeue command), or one "
        "instance in detail. Storage comes from AzureWebJobsStorage (or AzureWebJobsStorage__accountName).",
    )
    parser.add_argument("instance_id", nargs="?", metavar="INSTANCE_ID", help="show this job instance in detail")
    parser.add_argument("--json", action="store_true", help="print the JSON the status page serves")
    parser.add_argument("--size", type=int, default=25, help="instances per page (default 25, at most 100)")
    parser.add_argument("--page", default=None, help="the next_page token of a previous --json listing")
    parser.add_argument("--reindex", action="store_true", help="rebuild the job index from every ledger record")
    parser.add_argument("--container", default=None, help="ledger container (default alma-pipeline)")
    parser.set_defaults(func=run)


def _n(value: Any) -> str:
    return "-" if value is None else f"{value:,}"


def _t(value: str | None) -> str:
    return (value or "-").replace("T", " ")[:19]


def _details(r: dict[str, Any], indent: str) -> None:
    """Where the outputs are, rejects by reason, and for a failed or stuck instance why and what to run."""
    if r["outputs"]:
        print(f"{indent}outputs: {r['outputs']['kind']} {r['outputs']['path']}")
    for reason in r["rejects_by_reason"]:
        print(f"{indent}rejected {reason['count']:,} x {reason['reason']}")
    if r["reason"]:
        print(f"{indent}{r['state'].upper()}: {r['reason']}")
        print(f"{indent}re-run:  {r['requeue']}")


def print_listing(data: dict[str, Any]) -> None:
    rows = data["instances"]
    if not rows:
        print("the ledger has no job instances")
        return
    print(f"{'INSTANCE':<18} {'STATE':<8} {'STARTED':<19} {'ENDED':<19} {'IN':>9} {'OUT':>9} {'REJ':>6} "
          f"{'DROP':>6}  JOB")
    for r in rows:
        print(f"{r['instance_id']:<18} {r['state']:<8} {_t(r['started_at']):<19} {_t(r['ended_at']):<19} "
              f"{_n(r['records_in']):>9} {_n(r['records_out']):>9} {_n(r['rejected']):>6} {_n(r['dropped']):>6}  "
              f"{r['job_name']}")
        _details(r, " " * 19)
    if data.get("next_page"):
        print(f"older: python -m pipeline status --page '{data['next_page']}'")


def print_instance(data: dict[str, Any]) -> None:
    print(f"job instance {data['instance_id']}: {data['state']}  {data['job_name']}")
    print(f"  {data['instance_name']}")
    t = data["timings"]
    print(f"  planned {_t(t['planned_at'])}  started {_t(t['started_at'])}  finished {_t(t['finished_at'])}")
    print(f"  records: {_n(data['records_in'])} in, {_n(data['records_out'])} out, {_n(data['rejected'])} rejected, "
          f"{_n(data['dropped'])} dropped; files {data['files_done']}/{data['files_total']} done")
    _details(data, "  ")
    print(f"\n  {'FILE':<40} {'STATE':<8} {'TRIES':>5} {'IN':>9} {'OUT':>9} {'REJ':>6} {'SECONDS':>8}")
    for f in data["files"]:
        print(f"  {f['name']:<40} {f['state']:<8} {f['attempts']:>5} {_n(f['records_in']):>9} "
              f"{_n(f['records_out']):>9} {_n(f['rejected']):>6} {_n(f['seconds']):>8}")
        if f["error"]:
            print(f"    error: {f['error']}")
        for o in f["outputs"]:
            print(f"    -> {o['path']} ({_n(o['size'])} bytes, sha256 {o['sha256'] or '-'})")
    m = data["manifest"]
    print(f"\n  manifest: {m['state']}" + (f" at {m['location']}" if m["location"] else ""))


def run(args: argparse.Namespace) -> int:
    from pipeline import status
    from pipeline.cli import CommandError, UsageError
    from pipeline.ledger import CONTAINER, Ledger, LedgerError

    if args.instance_id and (args.page or args.reindex):
        raise UsageError("python -m pipeline status: --page and --reindex list instances; give no INSTANCE_ID")
    ledger = Ledger.from_settings(args.container or CONTAINER)
    try:
        if args.reindex:
            written, removed = ledger.reindex()
            print(f"job index rebuilt: {written} entr{'y' if written == 1 else 'ies'} written, {removed} stale removed")
            return 0
        if args.instance_id:
            data = status.instance(ledger, args.instance_id)
            if data is None:
                raise CommandError(f"no ledger record for job instance {args.instance_id}")
            print(status.to_json(data), end="") if args.json else print_instance(data)
            return 0
        data = status.listing(ledger, token=args.page, size=args.size)
    except (LedgerError, ValueError) as exc:
        raise CommandError(str(exc)) from None
    if args.json:
        print(status.to_json(data), end="")
    else:
        print_listing(data)
    return 0

