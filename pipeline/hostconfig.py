"""host.json, read by the code that must agree with the Functions host: the retry count (planning
knows its last attempt), the retry delay, and the function timeout (the worker's time budget)."""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path

HOST_JSON = Path(__file__).resolve().parent.parent / "host.json"


def _timespan_seconds(value: str, default: float) -> float:
    match = re.fullmatch(r"(?:(\d+)\.)?(\d+):(\d+):(\d+(?:\.\d+)?)", value or "")
    if not match:
        return default
    days, hours, minutes, seconds = match.groups()
    return int(days or 0) * 86400 + int(hours) * 3600 + int(minutes) * 60 + float(seconds)


@dataclass
class HostConfig:
    """The host.json settings the pipeline and the dev host need (host defaults when absent)."""

    max_dequeue_count: int = 5
    visibility_timeout: float = 0.0
    function_timeout: float = 1800.0

    @classmethod
    def load(cls, path: Path = HOST_JSON) -> HostConfig:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:  # defaults are the host's own
            return cls()
        queues = data.get("extensions", {}).get("queues", {})
        return cls(
            max_dequeue_count=int(queues.get("maxDequeueCount", 5)),
            visibility_timeout=_timespan_seconds(queues.get("visibilityTimeout", ""), 0.0),
            function_timeout=_timespan_seconds(data.get("functionTimeout", ""), 1800.0),
        )


@functools.cache
def current() -> HostConfig:
    """The app's own host.json, read once per process (the host reads it once at start too)."""
    return HostConfig.load()
