"""Shared by the end-to-end tests and bench/e2e.py: a signed JOB_END for a given job instance,
sent through the registered `alma_webhook` the way Alma and the Functions host would."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.commands.demo import sign

ROOT = Path(__file__).resolve().parent.parent


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
