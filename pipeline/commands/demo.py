"""`python -m pipeline demo`: the whole flow locally, on embedded defaults, nothing to configure.

The sample JOB_END event, signed -> the registered `alma_webhook` -> an Azurite queue ->
`plan_export` (Alma answered by the bundled sample job instance, or by the real API when
ALMA_API_KEY is set) -> `process_export_file` over samples/exports/ -> outputs and manifest.json
in ./out/. The functions are driven the way the Functions host drives them (pipeline/dev/host.py);
people with Core Tools can run the same app with `func start`.

This is a local driver, so unlike `pipeline/` proper it loads `function_app` and
`azure.functions`; it does so inside the functions, keeping `--help` fast.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "samples" / "events"
SAMPLE_INSTANCE = ROOT / "samples" / "alma" / "job_instance.json"
SAMPLE_EXPORTS = ROOT / "samples" / "exports"
SAMPLE_RULES = ROOT / "samples" / "rules" / "discovery-cleanup.yaml"
DEMO_SECRET = "demo-secret-not-for-production"
LISTENER_URL = "http://localhost:7071/api/webhook"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `demo` command."""
    parser = subparsers.add_parser(
        "demo",
        help="run the whole pipeline locally on the samples: webhook -> queues -> workers -> ./out/",
        description="Start Azurite, send the signed sample JOB_END event through alma_webhook, then run "
        "plan_export and process_export_file as the Functions host would, over samples/exports/, writing the "
        "transformed files and manifest.json to ./out/. Needs no Azure, Alma or Dropbox account.",
    )
    parser.add_argument("--xml", action="store_true", help="send the XML twin of the sample event")
    parser.add_argument("--event", type=Path, help="send this event file instead of the sample")
    parser.add_argument("--out", default="out", help="local folder for the results (default: ./out)")
    parser.add_argument("--webhook-only", action="store_true", help="stop after the webhook: print its answer")
    parser.set_defaults(func=run)


@dataclass(frozen=True)
class WebhookCall:
    """What one call of `alma_webhook` produced."""

    status: int
    headers: dict[str, str]
    body: str
    message: bytes | None


def sign(secret: str, body: bytes) -> str:
    """Alma's X-Exl-Signature: Base64(HMAC-SHA256(secret, body bytes as sent))."""
    return base64.b64encode(hmac.new(secret.encode("utf-8"), body, hashlib.sha256).digest()).decode("ascii")


def sample_path(xml: bool = False) -> Path:
    """The sample JOB_END event in the chosen format."""
    return SAMPLES / ("job_end.xml" if xml else "job_end.json")


@contextmanager
def demo_settings(**values: str) -> Iterator[None]:
    """Set app settings for the duration of the demo and restore them afterwards."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def webhook_call(call: Any) -> WebhookCall:
    """The answer and the queue message of one `alma_webhook` invocation (a pipeline.dev.host.HttpCall)."""
    response = call.response
    return WebhookCall(status=response.status_code, headers=dict(response.headers),
                       body=response.get_body().decode("utf-8"), message=call.outputs["msg"].get())


def signed_request(body: bytes, content_type: str, secret: str = DEMO_SECRET) -> dict[str, Any]:
    """Arguments for invoking `alma_webhook` with `body` signed as Alma signs it."""
    return {"params": {"code": "demo"}, "body": body,
            "headers": {"Content-Type": content_type, "X-Exl-Signature": sign(secret, body)}}


def send_event(body: bytes, secret: str = DEMO_SECRET, content_type: str = "application/json") -> WebhookCall:
    """POST one signed event to the registered `alma_webhook` the way the host does (no delivery)."""
    from pipeline.dev.host import invoke_http

    with demo_settings(ALMA_WEBHOOK_SECRET=secret, ALMA_WEBHOOK_ALLOW_UNSIGNED="false"):
        call = invoke_http("alma_webhook", "POST", f"{LISTENER_URL}?code=demo",
                           **signed_request(body, content_type, secret))
    return webhook_call(call)


def print_call(call: WebhookCall) -> None:
    """Show the HTTP answer and the queue message."""
    print(f"HTTP {call.status} {call.headers.get('Content-Type', '')}")
    print(call.body)
    if call.message is None:
        print("queue alma-export-jobs: (no message)")
    else:
        print(f"queue alma-export-jobs: {len(call.message)} bytes")
        print(json.dumps(json.loads(call.message), indent=2, ensure_ascii=False))


class SampleAlma:
    """Answers `get_job_instance` from samples/alma/job_instance.json, so the demo needs no API key."""

    def __init__(self, path: Path = SAMPLE_INSTANCE) -> None:
        self.data = json.loads(path.read_text())

    def __enter__(self) -> SampleAlma:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def get_job_instance(self, job_id: str, instance_id: str) -> dict[str, Any]:
        from pipeline.alma import AlmaError

        if instance_id != self.data["id"]:
            raise AlmaError("402218", f"the bundled sample has job instance {self.data['id']}, not {instance_id}; "
                            "set ALMA_API_KEY to ask the real Alma API")
        return self.data


def pipeline_settings(out: str, storage: str) -> dict[str, str]:
    """The demo's embedded defaults; anything the user already set wins, except storage and secret."""
    defaults = {
        "EXPORT_SOURCE": SAMPLE_EXPORTS.as_uri(),
        "DESTINATION": str(Path(out).resolve() / "{job_name}" / "{date}" / "{instance_id}"),
        "TRANSFORM_RULES": str(SAMPLE_RULES),
        "OUTPUT_FORMAT": "marcxml",
    }
    values = {k: v for k, v in defaults.items() if not os.environ.get(k)}
    values.update(AzureWebJobsStorage=storage, ALMA_WEBHOOK_SECRET=DEMO_SECRET, ALMA_WEBHOOK_ALLOW_UNSIGNED="false")
    return values


def print_submitter_message(record: Any) -> None:
    """What the person who ran the job is (or would be) sent with NOTIFY_SUBMITTER on; nothing is sent here."""
    from textwrap import indent

    from pipeline import submitter

    told = record.info.get(submitter.LEDGER_KEY)
    uid = submitter.submitter_id(record)
    if told:
        head = f"submitter {told['user']}: {told['outcome']}. The message:"
    elif uid:
        head = f"submitted by staff user {uid}; with NOTIFY_SUBMITTER=email,sms they would receive:"
    else:
        head = (f"submitted by {record.job.get('submitted_by') or 'nobody known'}, not a staff user, so nobody is "
                "told; had a staff user run it, with NOTIFY_SUBMITTER=email,sms they would receive:")
    print(f"  {head}")
    print(indent(submitter.preview(record, record.job.get("destination")), "    | ", lambda _: True).rstrip())


def run_pipeline(host: Any, out: str) -> int:
    """Drain the queues through plan_export and process_export_file; print what happened."""
    from pipeline import worker
    from pipeline.ledger import Ledger

    use_api = bool(os.environ.get("ALMA_API_KEY"))
    worker.set_context(worker.Context() if use_api else worker.Context(alma_factory=SampleAlma))
    print(f"\nAlma API: {'the real API (ALMA_API_KEY is set)' if use_api else 'the bundled sample job instance'}")
    print(f"export files from {os.environ['EXPORT_SOURCE']}")
    try:
        invocations = host.drain(timeout=600)
    finally:
        worker.set_context(None)
    for inv in invocations:
        status = inv.outcome if inv.error is None else f"{inv.outcome}: {inv.error}"
        print(f"  {inv.function:<20} message {inv.message_id[:8]} (delivery {inv.dequeue_count}) "
              f"{inv.seconds * 1000:7.0f} ms  {status}")
    records = Ledger.from_settings().list_instances()
    if not records:
        print("nothing was planned")
        return 1
    ok = True
    for record in records:
        print(f"\njob instance {record.instance_id}: {record.state}")
        for f in record.files:
            r = f.result or {}
            print(f"  {f.name}: {f.state}, {r.get('records_in', 0)} records in, {r.get('records_out', 0)} out, "
                  f"{r.get('rejected', 0)} rejected, {r.get('dropped', 0)} dropped by rules"
                  + (f" ({f.error})" if f.error else ""))
            for o in r.get("outputs", []):
                print(f"      -> {o['path']} ({o['size']} bytes)")
        print(f"  manifest: {record.manifest.location}")
        print_submitter_message(record)
        ok = ok and record.state == "done"
    print(f"\nresults are in {Path(out).resolve()}")
    from pipeline import status

    pages = status.write_static(Ledger.from_settings(), out, [r.instance_id for r in records])
    print(f"status page: {pages[0].resolve()} (open it in a browser; each instance's page is beside it)")
    return 0 if ok else 1


def run(args: argparse.Namespace) -> int:
    """Send the sample event; unless --webhook-only, run the whole pipeline. Exit 1 unless all went well."""
    path = args.event or sample_path(args.xml)
    body = path.read_bytes()
    content_type = "application/xml" if body.lstrip().startswith(b"<") else "application/json"
    if args.webhook_only:
        print(f"POST {LISTENER_URL}?code=... ({path.name}, {len(body)} bytes, signed with the demo secret)")
        call = send_event(body, content_type=content_type)
        print_call(call)
        return 0 if call.status == 202 else 1

    import logging

    from pipeline import hostconfig
    from pipeline.dev import azurite
    from pipeline.dev.host import DevHost
    from pipeline.hostconfig import HostConfig

    logging.getLogger("azure").setLevel(logging.WARNING)
    print("starting Azurite (the local Azure Storage emulator) ...")
    server = azurite.start()
    try:
        with demo_settings(**pipeline_settings(args.out, server.connection_string)):
            host = DevHost(server.connection_string, config=HostConfig(
                max_dequeue_count=hostconfig.current().max_dequeue_count, visibility_timeout=0))
            print(f"POST {LISTENER_URL}?code=... ({path.name}, {len(body)} bytes, signed with the demo secret)")
            call = webhook_call(host.call_http("alma_webhook", "POST", f"{LISTENER_URL}?code=demo",
                                               **signed_request(body, content_type)))
            print_call(call)
            if call.status != 202:
                return 1
            return run_pipeline(host, args.out)
    finally:
        server.stop()
