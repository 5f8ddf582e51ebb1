"""`python -m pipeline requeue INSTANCE_ID`: run a failed job instance again.

After a poison message the job's failed files stay `failed` in the ledger until an operator has
fixed the cause. This command puts them back to `pending` and sends the job's original message
(kept in the ledger) to `alma-export-jobs` again, base64-encoded as the Functions host requires.
Planning is idempotent, so the planner finds the existing plan and only the files not done run
again. `--list` shows what the ledger knows, newest first.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from typing import Any

from pipeline.queues import JOBS_QUEUE


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `requeue` command."""
    parser = subparsers.add_parser(
        "requeue",
        help="put a failed job instance back on the queue (failed files are run again)",
        description="Reset the failed files of a job instance to pending in the ledger and send the job's "
        "original message to the alma-export-jobs queue again. Storage comes from AzureWebJobsStorage "
        "(or AzureWebJobsStorage__accountName with a managed identity / az login).",
    )
    parser.add_argument("instance_id", nargs="?", metavar="INSTANCE_ID", help="the Alma job instance id")
    parser.add_argument("--list", action="store_true", help="list the job instances in the ledger and exit")
    parser.add_argument("--force", action="store_true", help="send the message even if the instance is done")
    parser.add_argument("--queue", default=JOBS_QUEUE, help=f"queue to send to (default {JOBS_QUEUE})")
    parser.add_argument("--container", default=None, help="ledger container (default alma-pipeline)")
    parser.set_defaults(func=run)


@dataclass
class Requeued:
    instance_id: str
    reset: list[str]
    sent: bool
    message_id: str | None = None


def requeue(ledger: Any, queue: Any, instance_id: str, *, force: bool = False) -> Requeued:
    """Reset failed files and send the original message; the ledger is changed only once the
    message is known to be valid, and a failed send can simply be repeated."""
    from pipeline.cli import CommandError
    from pipeline.events import QueueMessageError, parse_queue_message

    record = ledger.get(instance_id)
    if record is None:
        raise CommandError(f"no ledger record for job instance {instance_id} (see: python -m pipeline requeue --list)")
    if not record.message:
        raise CommandError(f"the ledger record of job instance {instance_id} has no original queue message to send")
    text = json.dumps(record.message, ensure_ascii=False, separators=(",", ":"))
    try:
        parsed = parse_queue_message(text)
    except QueueMessageError as exc:
        raise CommandError(f"the stored message of job instance {instance_id} is unusable: {exc}") from None
    if parsed.instance_id != instance_id:
        raise CommandError(f"the stored message of job instance {instance_id} names instance {parsed.instance_id}")
    failed = [f.name for f in record.files if f.state == "failed"]
    if record.state == "done" and not failed and not force:
        return Requeued(instance_id, [], sent=False)
    reset = ledger.reset_failed(instance_id)
    sent = _send(queue, text)
    return Requeued(instance_id, reset, sent=True, message_id=sent)


def _send(queue: Any, text: str) -> str:
    from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError

    try:
        return queue.send_message(text).id
    except ResourceNotFoundError:  # only before the host ever ran (local runs): create the queue
        try:
            queue.create_queue()
        except ResourceExistsError:
            pass
        return queue.send_message(text).id


def run(args: argparse.Namespace) -> int:
    from azure.storage.queue import QueueClient, TextBase64DecodePolicy, TextBase64EncodePolicy

    from pipeline.cli import UsageError
    from pipeline.ledger import CONTAINER, Ledger, LedgerError

    if bool(args.list) == bool(args.instance_id):
        raise UsageError("python -m pipeline requeue: give INSTANCE_ID or --list (not both)")
    ledger = Ledger.from_settings(args.container or CONTAINER)
    try:
        if args.list:
            return _list(ledger)
        from pipeline.ledger_blob import storage_client

        queue = storage_client(QueueClient, "queue", args.queue,
                               message_encode_policy=TextBase64EncodePolicy(),
                               message_decode_policy=TextBase64DecodePolicy())
        done = requeue(ledger, queue, args.instance_id, force=args.force)
    except (LedgerError, ValueError) as exc:
        from pipeline.cli import CommandError

        raise CommandError(str(exc)) from None
    if not done.sent:
        print(f"job instance {done.instance_id} is done: nothing to re-run (--force sends it anyway)")
        return 0
    files = f"{len(done.reset)} failed file(s) reset to pending" + (f": {', '.join(done.reset)}" if done.reset else "")
    print(f"job instance {done.instance_id}: {files}; message {done.message_id} sent to queue {args.queue}")
    return 0


def _list(ledger: Any) -> int:
    records = ledger.list_instances()
    if not records:
        print("the ledger has no job instances")
        return 0
    print(f"{'INSTANCE':<20} {'STATE':<8} {'FILES':>9} {'FAILED':>6}  {'PLANNED':<24} JOB")
    for r in records:
        done = sum(1 for f in r.files if f.state == "done")
        failed = sum(1 for f in r.files if f.state == "failed")
        name = r.job.get("name") or (r.message or {}).get("job_name") or ""
        if isinstance(name, dict):
            name = name.get("desc") or name.get("value") or ""
        print(f"{r.instance_id:<20} {r.state:<8} {f'{done}/{len(r.files)}':>9} {failed:>6}  "
              f"{r.planned_at or '-':<24} {name}")
    return 0
