"""`python -m pipeline demo`: drive the app locally the way the Functions host would.

For now: sign the sample JOB_END event with a demo secret, send it through the registered
`alma_webhook` function (a `func.HttpRequest` plus an output binding object with `.set()`), and
print the HTTP answer and the queue message. Later stages slot in after `send_event`.

This is a local driver, so unlike `pipeline/` proper it may import `function_app` and
`azure.functions` (through `pipeline.devhost`); it does so inside the functions, keeping `--help`
fast.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "samples" / "events"
DEMO_SECRET = "demo-secret-not-for-production"
LISTENER_URL = "http://localhost:7071/api/webhook"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `demo` command."""
    parser = subparsers.add_parser(
        "demo",
        help="send the signed sample Alma event through the webhook function and show the result",
        description="Sign samples/events/job_end.json (or .xml) with a demo secret, send it through the "
        "registered alma_webhook function as the Functions host would, print the answer and the queue message.",
    )
    parser.add_argument("--xml", action="store_true", help="send the XML twin of the sample event")
    parser.add_argument("--event", type=Path, help="send this event file instead of the sample")
    parser.set_defaults(func=run)


@dataclass(frozen=True)
class WebhookCall:
    """What one call of `alma_webhook` produced."""

    status: int
    headers: dict[str, str]
    body: str
    message: str | None


def sign(secret: str, body: bytes) -> str:
    """Alma's X-Exl-Signature: Base64(HMAC-SHA256(secret, body bytes as sent))."""
    return base64.b64encode(hmac.new(secret.encode("utf-8"), body, hashlib.sha256).digest()).decode("ascii")


def sample_path(xml: bool = False) -> Path:
    """The sample JOB_END event in the chosen format."""
    return SAMPLES / ("job_end.xml" if xml else "job_end.json")


def registered_function(name: str) -> Callable[..., Any]:
    """The user function the host would call for `name` (via devhost's one cached index of the app:
    a second `get_functions()` on the same app raises a duplicate-name error)."""
    from pipeline.devhost import registered_functions

    functions = registered_functions()
    if name not in functions:
        raise LookupError(f"function_app has no function named {name}")
    return functions[name].get_user_function()


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


def send_event(body: bytes, secret: str = DEMO_SECRET, content_type: str = "application/json") -> WebhookCall:
    """POST one signed event to the registered `alma_webhook` the way the host does."""
    import azure.functions as func

    from pipeline.devhost import Binding

    request = func.HttpRequest(
        method="POST",
        url=f"{LISTENER_URL}?code=demo",
        params={"code": "demo"},
        headers={"Content-Type": content_type, "X-Exl-Signature": sign(secret, body)},
        body=body,
    )
    output = Binding()
    with demo_settings(ALMA_WEBHOOK_SECRET=secret, ALMA_WEBHOOK_ALLOW_UNSIGNED="false"):
        response = registered_function("alma_webhook")(request, output)
    return WebhookCall(
        status=response.status_code,
        headers=dict(response.headers),
        body=response.get_body().decode("utf-8"),
        message=output.get(),
    )


def print_call(call: WebhookCall) -> None:
    """Show the HTTP answer and the queue message."""
    print(f"HTTP {call.status} {call.headers.get('Content-Type', '')}")
    print(call.body)
    if call.message is None:
        print("queue alma-export-jobs: (no message)")
    else:
        print(f"queue alma-export-jobs: {len(call.message.encode('utf-8'))} bytes")
        print(json.dumps(json.loads(call.message), indent=2, ensure_ascii=False))


def run(args: argparse.Namespace) -> int:
    """Send the sample event and print what the webhook did; exit 1 unless it was queued."""
    path = args.event or sample_path(args.xml)
    body = path.read_bytes()
    content_type = "application/xml" if body.lstrip().startswith(b"<") else "application/json"
    print(f"POST {LISTENER_URL}?code=... ({path.name}, {len(body)} bytes, signed with the demo secret)")
    call = send_event(body, content_type=content_type)
    print_call(call)
    return 0 if call.status == 202 else 1
