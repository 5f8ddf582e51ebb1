"""The queue functions' side of the job flow: messages in, the job service called, messages out.

`function_app.py` calls these functions from its triggers; the dev host, the demo and the tests call
the same registered functions. The flow itself (plan, run a file, settle, manifest, recovery) is
pipeline/jobs.py; here a retryable `JobError` becomes a `WorkerError` (the host retries the
message, then moves it to `<queue>-poison`), outgoing messages are lists of strings (the host
enqueues each element as written), and the poison handlers never raise: the host has no poison
queue for a poison queue, so a handler that raised would see its message again forever.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pipeline import settings
from pipeline.jobs import (
    MANIFEST_LEASE,
    JobError,
    JobService,
    alma_from_settings,
    destination_from_url,
    source_from_url,
)
from pipeline.ledger import Ledger
from pipeline.messages import FileMessage, MessageError, parse_job
from pipeline.queues import FILES_QUEUE

__all__ = ["Context", "WorkerError", "context", "export_failed", "plan_export",
           "process_export_file", "set_context", "sweep_jobs", "time_budget"]

log = logging.getLogger(__name__)


class WorkerError(Exception):
    """This delivery failed; raising it makes the host retry the message later (then poison)."""


@dataclass
class Context:
    """What the workers talk to; built from settings in Azure, injected by the demo and the tests."""

    ledger_factory: Callable[[], Ledger] = Ledger.from_settings
    alma_factory: Callable[[], Any] = alma_from_settings
    source_factory: Callable[[str | None], Any] = source_from_url
    destination_factory: Callable[[str], Any] = destination_from_url
    worker_id: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}")
    clock: Callable[[], float] = time.monotonic
    poison_retry_delays: tuple[float, ...] = (1.0, 5.0)  # a poison handler tries again in-process, then gives up

    def __post_init__(self) -> None:
        self._ledger: Ledger | None = None

    @property
    def ledger(self) -> Ledger:
        if self._ledger is None:
            self._ledger = self.ledger_factory()
        return self._ledger

    def service(self) -> JobService:
        # A manifest claim outlives a dead writer by about two time budgets (ten seconds at least).
        lease = min(MANIFEST_LEASE, max(10.0, 2 * time_budget()))
        return JobService(self.ledger, alma_factory=self.alma_factory, source_factory=self.source_factory,
                          destination_factory=self.destination_factory, worker_id=self.worker_id, clock=self.clock,
                          manifest_lease=lease)


_context: Context | None = None


def context() -> Context:
    """The process-wide Context the Azure functions use (built from settings on first use)."""
    global _context
    if _context is None:
        _context = Context()
    return _context


def set_context(ctx: Context | None) -> None:
    """Replace the process-wide Context: for local drivers (demo, tests) that inject fakes."""
    global _context
    _context = ctx


def time_budget() -> float:
    """Seconds one invocation may work on a file: WORKER_TIME_BUDGET, else 80% of the host's
    functionTimeout less a minute for the checkpoint, the ledger and the continuation message."""
    configured = settings.get("WORKER_TIME_BUDGET")
    if configured is not None:
        return float(configured)
    from pipeline.hostconfig import current

    return max(30.0, current().function_timeout * 0.8 - 60.0)


def _wire(messages: list[FileMessage]) -> list[str]:
    """A list output: the host enqueues each element as written (a lone `str` it would re-serialise)."""
    return [m.to_json() for m in messages]


def plan_export(body: str | bytes, *, dequeue_count: int = 1, max_dequeue: int = 5,
                ctx: Context | None = None) -> list[str]:
    """Plan one job message; returns the file messages for `alma-export-files`.

    Raises WorkerError (the host retries later) while Alma has not finished writing the files. A
    message that can never be planned (bad schema or ids) is logged and dropped.
    """
    ctx = ctx or context()
    try:
        message = parse_job(body)
    except MessageError as exc:
        log.error("%s; message dropped: %s", exc, _text(body)[:500])
        return []
    try:
        return _wire(ctx.service().plan(message, json.loads(body), last_attempt=dequeue_count >= max_dequeue))
    except JobError as exc:
        raise WorkerError(str(exc)) from None


def process_export_file(body: str | bytes, *, dequeue_count: int = 1, ctx: Context | None = None,
                        budget: float | None = None) -> list[str]:
    """Process one file message; returns a continuation message when the budget ran out."""
    ctx = ctx or context()
    try:
        msg = FileMessage.parse(body)
    except MessageError as exc:
        log.error("%s; message dropped: %s", exc, _text(body)[:500])
        return []
    try:
        return _wire(ctx.service().run_file(msg, time_budget() if budget is None else budget))
    except JobError as exc:
        raise WorkerError(str(exc)) from None


def export_failed(body: str | bytes, queue: str, *, dequeue_count: int = 0, ctx: Context | None = None) -> None:
    """A message reached `<queue>-poison`: record why in the ledger and in `_FAILED.json`. Never raises:
    the host has no poison queue for a poison queue, so a passing storage error is retried here, a
    lasting one is logged with the ids and the message let go."""
    text = _text(body)
    ctx = ctx or context()
    for delay in (*ctx.poison_retry_delays, None):
        try:
            service = ctx.service()
            if queue.startswith(FILES_QUEUE):
                service.file_poisoned(FileMessage.parse(text), dequeue_count)
            else:
                service.job_poisoned(parse_job(text), json.loads(text), dequeue_count)
            return
        except MessageError as exc:
            log.error("poison message on %s could not be read (%s): %s", queue, exc, text[:500])
            return
        except Exception as exc:  # storage down, unreadable ledger, a failing destination ...
            if delay is None:
                log.error("poison message on %s could not be recorded (%s: %s); given up: %s",
                          queue, type(exc).__name__, exc, text[:500])
                return
            log.warning("poison message on %s: %s: %s; trying again in %.0f s", queue, type(exc).__name__, exc,
                        delay)
            time.sleep(delay)


def sweep_jobs(*, ctx: Context | None = None, stale_after: float | None = None) -> list[str]:
    """The timer's sweep: file messages to send for work nobody is doing (see JobService.sweep)."""
    ctx = ctx or context()
    if stale_after is None:
        from pipeline.hostconfig import current

        config = current()
        stale_after = config.function_timeout + 2 * max(config.visibility_timeout, 60.0)
    messages = ctx.service().sweep(stale_after)
    if messages:
        log.info("sweep: %d file message(s) re-sent", len(messages))
    return _wire(messages)


def _text(body: str | bytes) -> str:
    return body.decode("utf-8", "replace") if isinstance(body, bytes) else body
