"""The two queue messages of the job flow and the id rule they share with the ledger and the webhook.

`alma-export-jobs` carries the job message the webhook makes (schema and serialisation in
pipeline/events.py, docs/queue-message.md); `alma-export-files` carries a `FileMessage`. Both are
read here, with the instance and job ids checked by the same rule the ledger uses for its keys, so
an id the ledger would refuse is refused where it enters (the webhook answers 400) instead of
failing later where nothing can be recorded. Both travel as bytes: the Functions host re-serialises
a `str` output that looks like JSON (docs/queue-message.md).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from pipeline.events import JobMessage, QueueMessageError, parse_queue_message

FILE_MESSAGE_VERSION = 1
ID_RULE = "1-200 characters: letters, digits, '.', '_', '-', starting with a letter or digit"
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


class MessageError(ValueError):
    """A queue message that cannot be used; retrying it cannot help."""


def check_id(value: object, what: str = "job instance id") -> str:
    """The one rule for ids that become ledger keys and path segments."""
    if not isinstance(value, str) or not _ID.match(value):
        raise ValueError(f"{what} {value!r} is not a plain id ({ID_RULE})")
    return value


def parse_job(raw: str | bytes) -> JobMessage:
    """A job message as the planner needs it: valid schema and ids the ledger accepts."""
    try:
        message = parse_queue_message(raw)
        check_id(message.instance_id, "instance_id")
        check_id(message.job_id, "job_id")
    except (QueueMessageError, ValueError) as exc:
        raise MessageError(f"job message rejected: {exc}") from None
    return message


@dataclass(frozen=True)
class FileMessage:
    """One message on `alma-export-files`: which file of which planned instance to process.

    Everything else (job spec, checkpoint) is in the ledger, so the message stays tiny and a
    continuation is the same message again with `part` + 1.
    """

    instance_id: str
    file: str
    job_id: str = ""
    part: int = 0  # 0 for the first delivery, n for the n-th continuation

    def to_json(self) -> str:
        return json.dumps({"v": FILE_MESSAGE_VERSION, "instance_id": self.instance_id, "file": self.file,
                           "job_id": self.job_id, "part": self.part}, separators=(",", ":"))

    @classmethod
    def parse(cls, raw: str | bytes) -> FileMessage:
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise MessageError(f"file message is not JSON: {exc}") from None
        if not isinstance(data, dict) or data.get("v") != FILE_MESSAGE_VERSION:
            text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
            raise MessageError(f"file message has no supported version (v={FILE_MESSAGE_VERSION}): {text[:200]}")
        iid, name = data.get("instance_id"), data.get("file")
        if not isinstance(name, str) or not name:
            raise MessageError("file message needs non-empty 'instance_id' and 'file'")
        try:
            check_id(iid, "instance_id")
        except ValueError as exc:
            raise MessageError(f"file message rejected: {exc}") from None
        part = data.get("part", 0)
        return cls(iid, name, str(data.get("job_id") or ""), part if isinstance(part, int) else 0)
