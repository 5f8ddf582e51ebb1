"""Shared by the end-to-end tests and bench/e2e.py: a signed JOB_END for a given job instance,
sent through the registered `alma_webhook` the way Alma and the Functions host would."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline import worker
from pipeline.commands.demo import sign
from pipeline.destinations.local import LocalDestination
from pipeline.dev.host import DevHost
from pipeline.hostconfig import HostConfig
from pipeline.marc.engine import Input, process
from pipeline.queues import FILES_QUEUE, JOBS_QUEUE
from tests.worker_proc import fake_dropbox_context

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "samples" / "rules" / "discovery-cleanup.yaml"
QUEUES = (JOBS_QUEUE, FILES_QUEUE, JOBS_QUEUE + "-poison", FILES_QUEUE + "-poison")


def job_end_event(instance_id: str, stem: str) -> dict[str, Any]:
    """The sample JOB_END event, for another job instance whose export files are named `stem`."""
    event = json.loads((ROOT / "samples" / "events" / "job_end.json").read_text())
    event["id"] = "evt-" + instance_id
    event["job_instance"]["id"] = instance_id
    for counter in event["job_instance"]["counter"]:
        if counter["type"]["value"] == "c.jobs.bibExport.link":
            counter["value"] = stem
    return event


def send_webhook(host: Any, instance_id: str, stem: str, secret: str) -> dict[str, Any]:
    """POST the event, pretty-printed as some senders do (the signature is over the raw bytes)."""
    event = job_end_event(instance_id, stem)
    body = json.dumps(event, indent=2).encode("utf-8")
    response = host.call_http("alma_webhook", "POST", "http://localhost/api/webhook?code=x",
                              headers={"x-exl-signature": sign(secret, body), "content-type": "application/json"},
                              body=body).response
    assert response.status_code == 202, response.get_body()
    return event


def clear_queues(host: DevHost) -> None:
    """Start from empty queues: Azurite is shared by the whole session."""
    for name in QUEUES:
        host.queue(name).clear_messages()


@contextmanager
def worker_host(connection_string: str, dropbox_url: str, max_dequeue_count: int) -> Iterator[DevHost]:
    """A dev host over emptied queues, with the worker's Dropbox client pointed at the fake Dropbox."""
    host = DevHost(connection_string, config=HostConfig(max_dequeue_count=max_dequeue_count, visibility_timeout=0),
                   lease_seconds=30)
    clear_queues(host)
    worker.set_context(fake_dropbox_context(dropbox_url))
    try:
        yield host
    finally:
        worker.set_context(None)


def expected_outputs(export_dir: Path, names: list[str], work: Path) -> dict[str, bytes]:
    """What `process` (the CLI's engine) makes of the same files with the same rules: the outputs a
    job through the queues must match byte for byte."""
    out = work / "expected"
    process([Input.from_path(export_dir / n) for n in names], LocalDestination(out), fmt="marcxml",
            rules_path=str(RULES))
    return {p.name: p.read_bytes() for p in out.iterdir() if p.name != "report.json"}
