"""A small local stand-in for the Azure Functions host: Azurite queues in, registered functions called.

Core Tools (`func start`) is the real local host; people who have it should use it. This driver
exists so `make demo`, the end-to-end tests and bench/e2e.py run the *registered* functions of
`function_app.py` the way the host does, without Core Tools: it builds `func.HttpRequest` and
`func.QueueMessage` objects (with `dequeue_count`), gives output bindings objects with `.set()`,
encodes their values with the real `azure.functions` converter and enqueues them as the host does
(base64; a `str` that looks like JSON re-serialised by Json.NET, a JSON-array `str` split into one
message per element, bytes and list elements as written), deletes a message after success, and
after a failure either makes it visible again after `visibilityTimeout` or, at `maxDequeueCount`,
moves it to `<queue>-poison`; a message on a `-poison` queue is never moved (the host has no poison
queue for a poison queue): it comes back when its hold lapses, forever if its handler keeps failing.
Timer functions run when `run_timer` is called.

It is development tooling (pipeline/dev/ is not deployed): the only code that loads `function_app`
for local runs, lazily; nothing that runs in Azure imports it.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from pipeline.hostconfig import HostConfig

ROOT = Path(__file__).resolve().parents[2]
log = logging.getLogger(__name__)


@functools.cache
def registered_functions() -> dict[str, Any]:
    """The app's functions by name, as the host indexes them (collected once: a second
    `get_functions()` call raises a duplicate-name error)."""
    import function_app

    return {fn.get_function_name(): fn for fn in function_app.app.get_functions()}


_ISO_DATE = re.compile(r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(\.\d{1,7})?(Z|[+-]\d{2}:\d{2})?$")


def _jsonnet_date(text: str, local: timezone = UTC) -> str:
    """A string Json.NET reads as a date, written back as it writes dates: trailing zeros of the
    fraction dropped, UTC as `Z`, an offset converted to the host's local time (UTC in Azure)."""
    match = _ISO_DATE.match(text)
    if not match:
        return text
    base, fraction, zone = match.groups()
    digits = (fraction or ".")[1:].ljust(7, "0")
    if zone and zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        offset = timezone(sign * timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6])))
        moment = datetime.fromisoformat(base).replace(tzinfo=offset) + timedelta(microseconds=int(digits) // 10)
        moment = moment.astimezone(local)
        base, digits = moment.strftime("%Y-%m-%dT%H:%M:%S"), f"{moment.microsecond:06d}0"
        zone = moment.strftime("%z")
        zone = f"{zone[:3]}:{zone[3:]}"  # a local time keeps an offset, even +00:00
    trimmed = digits.rstrip("0")
    return base + (f".{trimmed}" if trimmed else "") + (zone or "")


def _jsonnet_values(value: Any) -> Any:
    if isinstance(value, str):
        return _jsonnet_date(value)
    if isinstance(value, list):
        return [_jsonnet_values(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonnet_values(v) for k, v in value.items()}
    return value


def jsonnet_reserialise(text: str) -> str:
    """What the host's Json.NET makes of JSON text it parsed: indented by two spaces, dates rewritten."""
    return json.dumps(_jsonnet_values(json.loads(text)), indent=2, ensure_ascii=False)


def host_messages(value: Any) -> list[bytes]:
    """The queue messages the host writes for one output binding value, from the Datum the real
    `azure.functions` queue converter makes of it (a type it cannot encode raises, as in Azure)."""
    from azure.functions.queue import QueueMessageOutConverter

    datum = QueueMessageOutConverter.encode(value, expected_type=None)
    if datum.type == "bytes":
        return [bytes(datum.value)]
    if datum.type == "json":  # a list: one message per element, each string as written
        items = json.loads(datum.value)
        return [(item if isinstance(item, str) else item["body"]).encode("utf-8") for item in items]
    text = datum.value
    try:
        parsed = json.loads(text) if text.lstrip()[:1] in ("{", "[") else None
    except ValueError:
        parsed = None
    if isinstance(parsed, list):  # python-worker#1492: a JSON-array string becomes several messages
        return [(item if isinstance(item, str) else jsonnet_reserialise(json.dumps(item))).encode("utf-8")
                for item in parsed]
    if isinstance(parsed, dict):  # host#9581: re-parsed and re-serialised
        return [jsonnet_reserialise(text).encode("utf-8")]
    return [text.encode("utf-8")]


@dataclass
class Binding:
    """Stands in for the host's output binding: the function calls `.set()`, the driver reads it."""

    value: Any = None

    def set(self, value: Any) -> None:
        self.value = value

    def get(self) -> Any:
        return self.value


def user_function(name: str) -> Any:
    """The user function the host would call for `name`."""
    functions = registered_functions()
    if name not in functions:
        raise LookupError(f"function_app has no function named {name}")
    return functions[name].get_user_function()


def queue_outputs(name: str) -> list[str]:
    """The argument names of function `name`'s queue output bindings."""
    return output_names(registered_functions()[name])


def output_names(fn: Any) -> list[str]:
    """The argument names of a function's queue output bindings."""
    return [b.get_dict_repr()["name"] for b in fn.get_bindings() if b.get_dict_repr().get("type") == "queue"]


@dataclass
class HttpCall:
    """What one HTTP invocation produced: the HttpResponse and what each output binding was set to."""

    response: Any
    outputs: dict[str, Binding]


def invoke_http(function: str, method: str, url: str, *, params: dict[str, str] | None = None,
                headers: dict[str, str] | None = None, body: bytes = b"",
                route_params: dict[str, str] | None = None) -> HttpCall:
    """Call an HTTP-triggered function the way the host does (a `func.HttpRequest`, an object with
    `.set()` per output binding); delivers nothing, so it needs no storage."""
    import azure.functions as func

    req = func.HttpRequest(method=method, url=url, params=params or {}, headers=headers or {}, body=body,
                           route_params=route_params or {})
    outputs = {name: Binding() for name in queue_outputs(function)}
    return HttpCall(user_function(function)(req, **outputs), outputs)


def match_route(template: str, path: str) -> dict[str, str] | None:
    """Route parameters of `path` (below /api/) for a route template such as
    `status/{instance_id?}`, or None when it does not match; `{name?}` may be absent."""
    from urllib.parse import unquote

    want, got = template.strip("/").split("/"), [unquote(p) for p in path.strip("/").split("/") if p]
    params: dict[str, str] = {}
    for i, part in enumerate(want):
        optional = part.startswith("{") and part.endswith("?}")
        if i >= len(got):
            if optional:
                continue
            return None
        if part.startswith("{") and part.endswith("}"):
            params[part.strip("{}?")] = got[i]
        elif part != got[i]:
            return None
    return params if len(got) <= len(want) else None


def serve_http(port: int = 0) -> Any:
    """A local HTTP server (127.0.0.1, a thread) that routes `/api/<route>` requests to the app's
    HTTP-triggered functions as the host does, for browsers and tests; `.server_port`, `.shutdown()`."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from urllib.parse import parse_qsl, urlsplit

    routes = []
    for name, fn in registered_functions().items():
        for b in fn.get_bindings():
            spec = b.get_dict_repr()
            if spec.get("type") == "httpTrigger":
                methods = [str(getattr(m, "value", m)).upper() for m in spec.get("methods") or []]
                routes.append((name, spec.get("route") or name, methods))

    class Handler(BaseHTTPRequestHandler):
        def _call(self) -> None:
            url = urlsplit(self.path)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            for name, route, methods in routes:
                params = match_route(route, url.path.removeprefix("/api/")) if url.path.startswith("/api/") else None
                if params is None:
                    continue
                if methods and self.command not in methods:
                    self._answer(405, b"method not allowed", {"Content-Type": "text/plain"})
                    return
                call = invoke_http(name, self.command, f"http://{self.headers.get('Host', '127.0.0.1')}{self.path}",
                                   params=dict(parse_qsl(url.query)), headers=dict(self.headers.items()),
                                   body=body, route_params=params)
                response = call.response
                headers = dict(response.headers)
                if not any(k.lower() == "content-type" for k in headers):  # the host sends mimetype + charset
                    headers["Content-Type"] = f"{response.mimetype}; charset={response.charset}"
                self._answer(response.status_code, response.get_body(), headers)
                return
            self._answer(404, b"no function at this route", {"Content-Type": "text/plain"})

        def _answer(self, status: int, body: bytes, headers: dict[str, str]) -> None:
            self.send_response(status)
            for key, value in headers.items():
                if key.lower() != "content-length":
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _call

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("devhost http: " + format, *args)

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True, name="devhost-http").start()
    return server


@dataclass
class Invocation:
    function: str
    queue: str
    message_id: str
    dequeue_count: int
    outcome: str  # "ok", "retry", "poison", "stuck" (a failed poison-queue message: it will come back)
    error: str | None = None
    seconds: float = 0.0


class _Lease:
    """Keeps a received message invisible while its function runs, as the host does, renewing the
    invisibility at half its length; `stop()` returns the latest pop receipt."""

    def __init__(self, client: Any, message_id: str, receipt: str, seconds: float) -> None:
        self._client, self._id, self.receipt, self._seconds = client, message_id, receipt, max(1, int(seconds))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, daemon=True, name=f"lease-{message_id[:8]}")
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(self._seconds / 2):
            try:
                self.receipt = self._client.update_message(self._id, self.receipt,
                                                           visibility_timeout=self._seconds).pop_receipt
            except Exception as exc:  # the message may already be gone; the function's outcome decides
                log.warning("could not renew the lease of message %s: %s", self._id, exc)
                return

    def stop(self) -> str:
        self._stop.set()
        self._thread.join()
        return self.receipt


@dataclass
class DevHost:
    """Runs queue-triggered functions against Azurite (or any storage account) until idle."""

    connection_string: str
    config: HostConfig = field(default_factory=HostConfig.load)
    lease_seconds: float = 300.0
    history: list[Invocation] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._queues: dict[str, Any] = {}
        self.triggers: dict[str, tuple[str, Any]] = {}  # queue name -> (function name, Function)
        for name, fn in registered_functions().items():
            for b in fn.get_bindings():
                spec = b.get_dict_repr()
                if spec.get("type") == "queueTrigger":
                    self.triggers[spec["queueName"]] = (name, fn)

    # ---- queues --------------------------------------------------------------------------------

    def queue(self, name: str) -> Any:
        """A base64-encoding queue client (the Functions host expects base64 messages)."""
        if name not in self._queues:
            from azure.core.exceptions import ResourceExistsError
            from azure.storage.queue import BinaryBase64DecodePolicy, QueueClient, TextBase64EncodePolicy

            client = QueueClient.from_connection_string(
                self.connection_string, name,
                message_encode_policy=TextBase64EncodePolicy(),
                message_decode_policy=BinaryBase64DecodePolicy(),
            )
            try:
                client.create_queue()
            except ResourceExistsError:
                pass
            self._queues[name] = client
        return self._queues[name]

    def send(self, queue: str, message: str) -> None:
        self.queue(queue).send_message(message)

    def _send_outputs(self, fn: Any, bindings: dict[str, Binding]) -> None:
        for b in fn.get_bindings():
            spec = b.get_dict_repr()
            if spec.get("type") != "queue" or spec["name"] not in bindings:
                continue
            value = bindings[spec["name"]].value
            if value is None:
                continue
            for item in host_messages(value):
                self.send(spec["queueName"], item.decode("utf-8"))

    # ---- HTTP ----------------------------------------------------------------------------------

    def call_http(self, function: str, method: str, url: str, *, params: dict[str, str] | None = None,
                  headers: dict[str, str] | None = None, body: bytes = b"") -> HttpCall:
        """`invoke_http`, then deliver its queue outputs as the host does."""
        call = invoke_http(function, method, url, params=params, headers=headers, body=body)
        self._send_outputs(registered_functions()[function], call.outputs)
        return call

    # ---- queue triggers ------------------------------------------------------------------------

    def run_once(self, queue: str) -> Invocation | None:
        """Take one message from `queue` and run its function; None when the queue is empty."""
        import azure.functions.queue as fq

        name, fn = self.triggers[queue]
        client = self.queue(queue)
        got = list(client.receive_messages(max_messages=1, visibility_timeout=int(self.lease_seconds)))
        if not got:
            return None
        m = got[0]
        body = m.content if isinstance(m.content, bytes) else str(m.content).encode("utf-8")
        msg = fq.QueueMessage(id=m.id, body=body, dequeue_count=m.dequeue_count, pop_receipt=m.pop_receipt,
                              insertion_time=m.inserted_on, expiration_time=m.expires_on)
        outputs = {n: Binding() for n in output_names(fn)}
        started = time.monotonic()
        lease = _Lease(client, m.id, m.pop_receipt, self.lease_seconds)
        try:
            fn.get_user_function()(msg, **outputs)
        except Exception as exc:  # the host catches everything a function raises
            receipt = lease.stop()
            inv = Invocation(name, queue, m.id, m.dequeue_count, "retry", f"{type(exc).__name__}: {exc}",
                             time.monotonic() - started)
            if queue.endswith("-poison"):  # no poison queue for a poison queue: back when the hold lapses
                client.update_message(m.id, receipt, visibility_timeout=int(self.lease_seconds))
                inv.outcome = "stuck"
            elif m.dequeue_count >= self.config.max_dequeue_count:
                self.queue(f"{queue}-poison").send_message(body.decode("utf-8"))
                client.delete_message(m.id, receipt)
                inv.outcome = "poison"
            else:
                client.update_message(m.id, receipt, visibility_timeout=int(self.config.visibility_timeout))
            log.info("%s failed on message %s (dequeue %d): %s -> %s", name, m.id, m.dequeue_count, inv.error,
                     inv.outcome)
            self.history.append(inv)
            return inv
        receipt = lease.stop()
        self._send_outputs(fn, outputs)
        client.delete_message(m.id, receipt)
        inv = Invocation(name, queue, m.id, m.dequeue_count, "ok", None, time.monotonic() - started)
        self.history.append(inv)
        return inv

    def run_timer(self, function: str) -> Invocation:
        """Run a timer-triggered function once (as its schedule would) and deliver its outputs."""
        from azure.functions.timer import TimerRequest

        fn = registered_functions()[function]
        outputs = {n: Binding() for n in queue_outputs(function)}
        started = time.monotonic()
        try:
            fn.get_user_function()(TimerRequest(past_due=False), **outputs)
        except Exception as exc:
            inv = Invocation(function, "", "timer", 1, "retry", f"{type(exc).__name__}: {exc}",
                             time.monotonic() - started)
        else:
            self._send_outputs(fn, outputs)
            inv = Invocation(function, "", "timer", 1, "ok", None, time.monotonic() - started)
        self.history.append(inv)
        return inv

    def drain(self, timeout: float = 120.0, idle_rounds: int = 2) -> list[Invocation]:
        """Run every queue-triggered function until all their queues stay empty, or `timeout`."""
        deadline = time.monotonic() + timeout
        done: list[Invocation] = []
        idle = 0
        while idle < idle_rounds:
            if time.monotonic() > deadline:
                raise TimeoutError(f"queues still busy after {timeout:.0f} s")
            worked = False
            for queue in self.triggers:
                inv = self.run_once(queue)
                if inv is not None:
                    done.append(inv)
                    worked = True
            idle = 0 if worked else idle + 1
            if not worked and idle < idle_rounds:
                time.sleep(0.05)
        return done
