"""What a run did, per input file: counts, timings, outputs with their SHA-256, errors.

`RunReport.to_json()` is `report.json` (shape documented in docs/formats.md). The queue worker
stores `FileResult.to_dict()` in its ledger.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pipeline.destinations.base import OutputResult


@dataclass
class FileResult:
    name: str
    records_in: int = 0  # records read in this run (a continuation counts from start_record)
    records_out: int = 0
    rejected: int = 0
    dropped: int = 0  # removed by the rules
    bytes_in: int = 0  # bytes read from the source (compressed size for compressed inputs)
    seconds: float = 0.0
    outputs: list[OutputResult] = field(default_factory=list)
    error: str | None = None
    input_format: str | None = None
    members: list[str] = field(default_factory=list)  # container members processed, in order
    counters: dict[str, int] = field(default_factory=dict)  # e.g. control_chars_removed
    rejected_by_reason: dict[str, int] = field(default_factory=dict)  # reason code -> rejected records
    complete: bool = True  # False when should_stop ended the run early
    records_done: int = 0  # input records consumed in total (start_record + records_in)

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "input_format": self.input_format,
            "members": self.members,
            "records_in": self.records_in,
            "records_out": self.records_out,
            "rejected": self.rejected,
            "dropped": self.dropped,
            "rejected_by_reason": dict(sorted(self.rejected_by_reason.items())),
            "bytes_in": self.bytes_in,
            "seconds": round(self.seconds, 3),
            "records_per_second": round(self.records_in / self.seconds) if self.seconds > 0 else None,
            **{name: value for name, value in sorted(self.counters.items())},
            "complete": self.complete,
            "records_done": self.records_done,
            "error": self.error,
            "outputs": [output_dict(o) for o in self.outputs],
        }


def merge_reasons(counts: Iterable[dict[str, int] | None]) -> dict[str, int]:
    """Rejects per reason code summed over files (or parts of a file), sorted by code."""
    out: dict[str, int] = {}
    for part in counts:
        for reason, n in (part or {}).items():
            out[reason] = out.get(reason, 0) + n
    return dict(sorted(out.items()))


def output_dict(result: OutputResult) -> dict[str, Any]:
    return {"path": result.path, "kind": result.extra.get("kind", "records"), "size": result.size,
            "sha256": result.sha256, "content_hash": result.content_hash,
            **{k: v for k, v in result.extra.items() if k != "kind"}}


@dataclass
class RunReport:
    format: str
    rules: str | None = None
    started: str = ""
    seconds: float = 0.0
    workers: int = 1
    files: list[FileResult] = field(default_factory=list)
    peak_rss_mb: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(f.ok for f in self.files)

    def to_dict(self) -> dict[str, Any]:
        totals = {key: sum(getattr(f, key) for f in self.files)
                  for key in ("records_in", "records_out", "rejected", "dropped", "bytes_in")}
        return {
            "version": 1,
            "ok": self.ok,
            "started": self.started,
            "seconds": round(self.seconds, 3),
            "format": self.format,
            "rules": self.rules,
            "workers": self.workers,
            "totals": {"files": len(self.files), "failed": sum(not f.ok for f in self.files), **totals,
                       "rejected_by_reason": merge_reasons(f.rejected_by_reason for f in self.files)},
            "peak_rss_mb": self.peak_rss_mb,
            "files": [f.to_dict() for f in self.files],
        }

    def to_json(self) -> bytes:
        return (json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n").encode("utf-8")
