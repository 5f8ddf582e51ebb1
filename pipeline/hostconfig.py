"""The host settings the pipeline must agree with: the retry count (planning knows its last
attempt), the retry delay, and the function timeout (the worker's time budget and the sweeper's
idea of stale work), read from host.json and from the `AzureFunctionsJobHost__...` app settings that
override it, as the Functions host reads them."""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

HOST_JSON = Path(__file__).resolve().parent.parent / "host.json"
OVERRIDE = "AzureFunctionsJobHost__"


def _timespan_seconds(value: str, default: float) -> float:
    match = re.fullmatch(r"(?:(\d+)\.)?(\d+):(\d+):(\d+(?:\.\d+)?)", (value or "").strip())
    if not match:
        return default
    days, hours, minutes, seconds = match.groups()
    return int(days or 0) * 86400 + int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def _override(environ: Mapping[str, str], *path: str) -> str | None:
    """An app setting overriding host.json (`AzureFunctionsJobHost__a__b`; `:` works too on Windows);
    the host matches these names without regard to case."""
    wanted = {(OVERRIDE + "__".join(path)).lower(), ("AzureFunctionsJobHost:" + ":".join(path)).lower()}
    for key, value in environ.items():
        if key.lower() in wanted and value.strip():
            return value
    return None


@dataclass
class HostConfig:
    """The host settings the pipeline and the dev host need (host defaults when absent)."""

    max_dequeue_count: int = 5
    visibility_timeout: float = 0.0
    function_timeout: float = 1800.0

    @classmethod
    def load(cls, path: Path = HOST_JSON, environ: Mapping[str, str] | None = None) -> HostConfig:
        env = os.environ if environ is None else environ
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:  # defaults are the host's own
            data = {}
        queues = data.get("extensions", {}).get("queues", {})
        dequeue = _override(env, "extensions", "queues", "maxDequeueCount") or queues.get("maxDequeueCount", 5)
        visibility = _override(env, "extensions", "queues", "visibilityTimeout") or queues.get("visibilityTimeout", "")
        timeout = _override(env, "functionTimeout") or data.get("functionTimeout", "")
        try:
            dequeue_count = int(dequeue)
        except (TypeError, ValueError):
            dequeue_count = 5
        return cls(max_dequeue_count=dequeue_count, visibility_timeout=_timespan_seconds(visibility, 0.0),
                   function_timeout=_timespan_seconds(timeout, 1800.0))


@functools.cache
def current() -> HostConfig:
    """The app's own host settings, read once per process (the host reads them once at start too)."""
    return HostConfig.load()
