"""A small local stand-in for the Azure Functions host: Azurite queues in, registered functions called.

Core Tools (`func start`) is the real local host; people who have it should use it. This driver
exists so `make demo`, the end-to-end tests and bench/e2e.py run the *registered* functions of
`function_app.py` the way the host does, without Core Tools: it builds `func.HttpRequest` and
`func.QueueMessage` objects (with `dequeue_count`), gives output bindings objects with `.set()`,
sends their values base64-encoded (as the host does), deletes a message after success, and after a
failure either makes it visible again after `visibilityTimeout` or, at `maxDequeueCount`, moves it
to `<queue>-poison`, all read from host.json.

It is development tooling: the only module under pipeline/ that loads `function_app` and
`azure.functions`, and it does so lazily; nothing that runs in Azure imports it.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.hostconfig import HostConfig

ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger(__name__)


@functools.cache
def registered_functions() -> dict[str, Any]:
    """The app's functions by name, as the host indexes them (collected once: a second
    `get_functions()` call raises a duplicate-name error)."""
    import function_app

    return {fn.get_function_name(): fn for fn in function_app.app.get_functions()}


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
    return [b.get_dict_repr()["name"] for b in registered_functions()[name].get_bindings()
            if b.get_dict_repr().get("type") == "queue"]


@dataclass
class HttpCall:
    """What one HTTP invocation produced: the HttpResponse and what each output binding was set to."""

    response: Any
    outputs: dict[str, Binding]


def invoke_http(function: str, method: str, url: str, *, params: dict[str, str] | None = None,
                headers: dict[str, str] | None = None, body: bytes = b"") -> HttpCall:
    """Call an HTTP-triggered function the way the host does (a `func.HttpRequest`, an object with
    `.set()` per output binding); delivers nothing, so it needs no storage."""
    import azure.functions as func

    req = func.HttpRequest(method=method, url=url, params=params or {}, headers=headers or {}, body=body)
    outputs = {name: Binding() for name in queue_outputs(function)}
    return HttpCall(user_function(function)(req, **outputs), outputs)


@dataclass
class Invocation:
    function: str
    queue: str
    message_id: str
    dequeue_count: int
    outcome: str  # "ok", "retry", "poison"
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
            for item in value if isinstance(value, list) else [value]:
                self.send(spec["queueName"], item if isinstance(item, str) else item.decode("utf-8"))

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
        outputs = {n: Binding() for n in queue_outputs(name)}
        started = time.monotonic()
        lease = _Lease(client, m.id, m.pop_receipt, self.lease_seconds)
        try:
            fn.get_user_function()(msg, **outputs)
        except Exception as exc:  # the host catches everything a function raises
            receipt = lease.stop()
            inv = Invocation(name, queue, m.id, m.dequeue_count, "retry", f"{type(exc).__name__}: {exc}",
                             time.monotonic() - started)
            if m.dequeue_count >= self.config.max_dequeue_count:
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
