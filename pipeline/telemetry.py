"""Traces, metrics and log ids with OpenTelemetry: one job is one trace, webhook to upload.

With APPLICATIONINSIGHTS_CONNECTION_STRING set, `setup()` configures azure-monitor-opentelemetry
(the distro Azure recommends for Python Functions) once per process. Without it nothing is
configured: the OpenTelemetry API then hands out no-op tracers and meters, so nothing is exported
and the cost is a few function calls per file. Tests and local drivers can send everything to
providers of their own with `use()`.

The path of a job crosses two queues, so the W3C `traceparent` of the span that sent a message
travels in the message as one optional JSON field (readers ignore fields they do not know):
`alma_webhook` (server span, a new trace) -> `plan_export` -> each `process_export_file`
(continuations are children of the invocation that handed over) -> an `upload` span per output.
"""

from __future__ import annotations

import contextvars
import json
import logging
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from pipeline import settings

log = logging.getLogger(__name__)

NAME = "alma-export-pipeline"
FIELD = "traceparent"  # the optional field of queue messages that carries the trace
_propagator = TraceContextTextMapPropagator()
_ids: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar("pipeline_ids", default=None)
_state: dict[str, Any] = {"configured": False, "enabled": False, "tracer_provider": None, "meter_provider": None,
                          "instruments": None}


def setup() -> None:
    """Configure exporting once per process, only when APPLICATIONINSIGHTS_CONNECTION_STRING is set."""
    if _state["configured"]:
        return
    _state["configured"] = True
    _install_log_ids()
    connection = settings.get("APPLICATIONINSIGHTS_CONNECTION_STRING")
    if not connection:
        return
    from azure.monitor.opentelemetry import configure_azure_monitor  # slow to import: only when used

    _state["enabled"] = True
    off = {"enabled": False}
    configure_azure_monitor(
        connection_string=connection,
        logger_name="pipeline",  # our log lines, with trace and job ids; the host keeps its own
        instrumentation_options={"django": off, "fastapi": off, "flask": off, "psycopg2": off},
    )
    log.info("telemetry: exporting traces, metrics and logs to Application Insights")


def use(tracer_provider: Any = None, meter_provider: Any = None) -> None:
    """Send spans and metrics to these providers instead of the global ones (None: back to global)."""
    _state["tracer_provider"], _state["meter_provider"], _state["instruments"] = tracer_provider, meter_provider, None
    _state["enabled"] = tracer_provider is not None
    _install_log_ids()


def tracer() -> trace.Tracer:
    provider = _state["tracer_provider"] or trace.get_tracer_provider()
    return provider.get_tracer(NAME)


def _instruments() -> dict[str, Any]:
    if _state["instruments"] is None:
        meter = (_state["meter_provider"] or metrics.get_meter_provider()).get_meter(NAME)
        _state["instruments"] = {
            "records_in": meter.create_counter("alma_export.records.in", "{record}", "records read"),
            "records_out": meter.create_counter("alma_export.records.out", "{record}", "records written"),
            "rejected": meter.create_counter("alma_export.records.rejected", "{record}", "records rejected"),
            "dropped": meter.create_counter("alma_export.records.dropped", "{record}", "records dropped by rules"),
            "bytes_in": meter.create_counter("alma_export.bytes.in", "By", "bytes read from the export source"),
            "duration": meter.create_histogram("alma_export.file.duration", "s",
                                               "seconds one invocation worked on one export file"),
        }
    return _state["instruments"]


# ---- ids on log records -------------------------------------------------------------------------


def _install_log_ids() -> None:
    """Every log record gets the job's ids and the trace/span id while a job is being worked on,
    so Application Insights can join log lines to traces and filter them by instance."""
    if getattr(logging.getLogRecordFactory(), "_pipeline_ids", False):
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        ids = (_ids.get() or {})
        if ids:
            for key, value in ids.items():
                if not hasattr(record, key):
                    setattr(record, key, value)
            span = trace.get_current_span().get_span_context()
            if span.is_valid:
                record.trace_id = format(span.trace_id, "032x")
                record.span_id = format(span.span_id, "016x")
        return record

    factory._pipeline_ids = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


# ---- spans --------------------------------------------------------------------------------------


def _fields(body: str | bytes | None) -> dict[str, Any]:
    try:
        data = json.loads(body) if body else {}
    except (ValueError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _attributes(data: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for key, attr in (("job_id", "alma.job_id"), ("instance_id", "alma.instance_id"), ("file", "alma.file"),
                      ("part", "alma.part"), ("job_name", "alma.job_name")):
        value = data.get(key)
        if isinstance(value, str | int) and not isinstance(value, bool) and value != "":
            out[attr] = value
    return out


@contextmanager
def _ids_of(attributes: Mapping[str, Any]) -> Iterator[None]:
    ids = {k.removeprefix("alma."): str(v) for k, v in attributes.items() if k != "alma.part"}
    token = _ids.set({**(_ids.get() or {}), **ids})
    try:
        yield
    finally:
        _ids.reset(token)


@contextmanager
def request(name: str) -> Iterator[trace.Span]:
    """A server span for an HTTP function: the root of a new trace (the webhook's)."""
    setup()
    with tracer().start_as_current_span(name, kind=SpanKind.SERVER) as span:
        yield span


@contextmanager
def consuming(name: str, body: str | bytes | None) -> Iterator[trace.Span]:
    """A consumer span for a queue message: a child of the span whose `traceparent` it carries,
    with the job's ids as attributes and on every log record made inside it."""
    setup()
    data = _fields(body)
    carrier = {FIELD: data[FIELD]} if isinstance(data.get(FIELD), str) else {}
    parent = _propagator.extract(carrier)
    attributes = _attributes(data)
    with tracer().start_as_current_span(name, context=parent, kind=SpanKind.CONSUMER,
                                        attributes=attributes) as span, _ids_of(attributes):
        yield span


def annotate(**attributes: Any) -> None:
    """Add attributes to the current span (and its ids to log records made later in it)."""
    span = trace.get_current_span()
    attrs = {k if k.startswith("alma.") or "." in k else f"alma.{k}": v for k, v in attributes.items()
             if v is not None}
    span.set_attributes(attrs)
    ids = {k.removeprefix("alma."): str(v) for k, v in attrs.items()
           if k in ("alma.job_id", "alma.instance_id", "alma.file")}
    if ids:
        _ids.set({**(_ids.get() or {}), **ids})


def stamp(messages: str | list[str]) -> Any:
    """The messages with the current span's `traceparent` added (unchanged when nothing is traced).
    A single message's ids (job, instance) also become attributes of the current span."""
    if isinstance(messages, str):
        annotate(**_attributes(_fields(messages)))
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    if FIELD not in carrier:
        return messages

    def one(text: str) -> str:
        data = _fields(text)
        if not data:
            return text
        data[FIELD] = carrier[FIELD]
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False)

    return one(messages) if isinstance(messages, str) else [one(m) for m in messages]


def file_processed(result: Mapping[str, Any], seconds: float, job_id: str = "", bytes_before: int = 0) -> None:
    """One invocation's work on one file: span attributes and the metrics (counted per invocation,
    so a file continued over several invocations adds up to its manifest counts). `bytes_before`:
    how far earlier invocations of the file had read (a continuation's byte count is cumulative)."""
    counts = {k: int(result.get(k) or 0) for k in ("records_in", "records_out", "rejected", "dropped", "bytes_in")}
    counts["bytes_in"] = max(0, counts["bytes_in"] - bytes_before)
    annotate(**counts, complete=bool(result.get("complete", True)))
    attributes = {"alma.job_id": job_id} if job_id else {}
    instruments = _instruments()
    for key, value in counts.items():
        instruments[key].add(value, attributes)
    instruments["duration"].record(seconds, attributes)


def failed(exc: BaseException) -> None:
    """Mark the current span as failed with the exception."""
    span = trace.get_current_span()
    span.record_exception(exc)
    span.set_status(Status(StatusCode.ERROR, str(exc)[:500]))


# ---- uploads ------------------------------------------------------------------------------------


class _TracedOutput:
    """An output whose lifetime, open to commit, is one `upload` span."""

    def __init__(self, output: Any, relpath: str) -> None:
        self._output = output
        self._span = tracer().start_span("upload", kind=SpanKind.CLIENT, attributes={"alma.output": relpath})
        self._started = time.monotonic()

    def write(self, data: bytes) -> Any:
        return self._output.write(data)

    def commit(self) -> Any:
        try:
            result = self._output.commit()
        except BaseException as exc:
            _end(self._span, exc)
            raise
        self._span.set_attributes({"alma.output": result.path, "alma.bytes": result.size})
        _end(self._span)
        return result

    def abort(self) -> Any:
        self._span.set_attribute("alma.aborted", True)
        _end(self._span)
        return self._output.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._output, name)


def _end(span: Any, exc: BaseException | None = None) -> None:
    if exc is not None:
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, str(exc)[:500]))
    span.end()


class TracedDestination:
    """A destination whose outputs and small files are each an `upload` span; everything else is
    the wrapped destination's (attributes it lacks stay missing, so feature checks still work)."""

    def __init__(self, destination: Any) -> None:
        self._destination = destination

    def open(self, relpath: str) -> Any:
        return _TracedOutput(self._destination.open(relpath), relpath)

    def resume(self, state: Any) -> Any:
        return _TracedOutput(self._destination.resume(state), "(resumed)")

    def write_bytes(self, relpath: str, data: bytes, **kwargs: Any) -> Any:
        with tracer().start_as_current_span("upload", kind=SpanKind.CLIENT,
                                            attributes={"alma.output": relpath}) as span:
            result = self._destination.write_bytes(relpath, data, **kwargs)
            span.set_attributes({"alma.output": result.path, "alma.bytes": result.size})
            return result

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._destination, name)
        if name != "commit_batch":
            return attr

        def commit_batch(items: list[Any], **kwargs: Any) -> Any:
            with tracer().start_as_current_span("upload", kind=SpanKind.CLIENT,
                                                attributes={"alma.outputs": len(items)}):
                return attr(items, **kwargs)

        return commit_batch


def traced(destination: Any) -> Any:
    """The destination with upload spans, or itself when nothing is traced (no cost at all)."""
    return TracedDestination(destination) if _state["enabled"] else destination
