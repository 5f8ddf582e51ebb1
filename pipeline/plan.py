"""The export plan: is a job instance really done, and which files did it write?

The webhook says a job ended; the instance fetched from the Alma API is the proof. Its status must
be in EXPORT_JOB_STATUSES, and its `c.jobs.bibExport.link` counter holds the file-name stem: the
files are `<stem>_1.xml`, `<stem>_2.xml`, ... or `<stem>.tar.gz`, taken in numeric order (`_2`
before `_10`). EXPORT_FILE_PATTERN covers other layouts (publishing jobs). Alma may still be
writing when the event arrives, so "no file yet" is a retryable `NotThereYet`; only on the last
attempt does it become a `PlanError` naming where we looked and for what.
"""

from __future__ import annotations

import fnmatch
import glob
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pipeline import settings
from pipeline.settings import SettingError
from pipeline.sources.base import Source, SourceEntry, SourceError, check_name

STEM_COUNTER = "c.jobs.bibExport.link"
RUNNING_STATUSES = frozenset({"PENDING", "QUEUED", "INITIALIZING", "RUNNING", "FINALIZING"})
_LINK_JOB = re.compile(r"/conf/jobs/([^/]+)/instances/")


class PlanError(Exception):
    """A final failure: retrying will not help (the job failed, or it wrote nothing we can find)."""


class NotThereYet(Exception):
    """Retryable: the job is still running, or its files are not visible yet."""


@dataclass
class JobInstance:
    """The parts of an Alma job instance the pipeline uses (API JSON or webhook `job_instance`)."""

    job_id: str
    instance_id: str
    name: str = ""
    job_name: str = ""
    status: str = ""
    status_desc: str = ""
    progress: float | None = None
    end_time: str = ""
    counters: dict[str, str] = field(default_factory=dict)
    counter_labels: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_api(cls, data: Mapping[str, Any], job_id: str | None = None) -> JobInstance:
        """Parse the instance JSON. The job id comes from `job_info.id`: `link` may say `M0`."""
        if not isinstance(data, Mapping) or not data.get("id"):
            raise PlanError("the Alma job instance has no id (not a job instance object?)")
        info = data.get("job_info") or {}
        link_match = _LINK_JOB.search(str(data.get("link") or ""))
        resolved = str(info.get("id") or job_id or (link_match.group(1) if link_match else "") or "")
        status = data.get("status") or {}
        if isinstance(status, str):
            status = {"value": status}
        counters: dict[str, str] = {}
        labels: dict[str, str] = {}
        raw_counters = data.get("counter") or []
        if isinstance(raw_counters, Mapping):  # one counter arrives as an object, not a list
            raw_counters = [raw_counters]
        for counter in raw_counters:
            kind = counter.get("type") or {}
            name = kind.get("value") if isinstance(kind, Mapping) else str(kind)
            if name:
                counters[name] = "" if counter.get("value") is None else str(counter.get("value"))
                if isinstance(kind, Mapping) and kind.get("desc"):
                    labels[name] = str(kind["desc"])
        progress = data.get("progress")
        try:
            progress = float(progress) if progress is not None else None
        except (TypeError, ValueError):
            progress = None
        return cls(
            job_id=resolved, instance_id=str(data["id"]), name=str(data.get("name") or ""),
            job_name=str(info.get("name") or ""), status=str(status.get("value") or "").upper(),
            status_desc=str(status.get("desc") or ""), progress=progress, end_time=str(data.get("end_time") or ""),
            counters=counters, counter_labels=labels,
        )

    @property
    def stem(self) -> str | None:
        value = self.counters.get(STEM_COUNTER, "").strip()
        return value or None


@dataclass
class ExportPlan:
    instance: JobInstance
    source: str  # the source location (no secrets)
    patterns: list[str]
    files: list[SourceEntry]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for the ledger, the queue and the CLI."""
        i = self.instance
        return {
            "job_id": i.job_id, "instance_id": i.instance_id, "job_name": i.job_name, "instance_name": i.name,
            "status": i.status, "stem": i.stem, "source": self.source, "patterns": self.patterns,
            "files": [{"name": f.name, "size": f.size} for f in self.files], "counters": dict(i.counters),
        }


def natural_key(name: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key that compares digit runs as numbers, so `_2` sorts before `_10`."""
    return tuple((0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", name) if part)


class _Placeholders(dict):
    def __missing__(self, key: str) -> str:
        raise SettingError("EXPORT_FILE_PATTERN", f"unknown placeholder {{{key}}}; use {{stem}}, {{job_id}}, "
                           "{instance_id}")


def file_patterns(instance: JobInstance, pattern: str | None = None) -> list[str]:
    """The globs (relative to the source folder) of the files this instance wrote."""
    stem = instance.stem
    needs_stem = pattern is None or "{stem}" in pattern
    if needs_stem:
        if not stem:
            raise PlanError(
                f"job instance {instance.instance_id} ({instance.name or instance.job_name}) has no "
                f"{STEM_COUNTER} counter, so its file names are unknown; if it is not a bibliographic "
                "export (e.g. a publishing job), set EXPORT_FILE_PATTERN")
        try:
            check_name(stem)
        except SourceError:
            raise PlanError(f"file-name stem {stem!r} from Alma is a path, not a file name: refusing it") from None
    values = _Placeholders(stem=glob.escape(stem or ""), job_id=glob.escape(instance.job_id),
                           instance_id=glob.escape(instance.instance_id))
    if pattern is None:
        return [f"{values['stem']}_*", f"{values['stem']}.*"]
    if "/" in pattern or "\\" in pattern:
        raise SettingError("EXPORT_FILE_PATTERN", "must be a file-name glob without folders; put the folder in "
                           "EXPORT_SOURCE")
    try:
        return [pattern.format_map(values)]
    except (ValueError, IndexError) as exc:
        raise SettingError("EXPORT_FILE_PATTERN", f"is not a valid pattern: {exc}") from None


def select_files(entries: Iterable[SourceEntry], patterns: list[str]) -> list[SourceEntry]:
    """Entries matching any pattern, in natural (numeric) order, each once."""
    chosen = {e.name: e for e in entries if any(fnmatch.fnmatchcase(e.name, p) for p in patterns)}
    return sorted(chosen.values(), key=lambda e: natural_key(e.name))


def check_done(instance: JobInstance, statuses: Iterable[str] | None = None,
               environ: Mapping[str, str] | None = None) -> None:
    """Raise unless the instance ended with an accepted status (NotThereYet while it still runs)."""
    accepted = {s.upper() for s in (statuses or settings.get("EXPORT_JOB_STATUSES", environ))}
    label = f"job instance {instance.instance_id} of job {instance.job_id}"
    if instance.status in accepted:
        return
    if instance.status in RUNNING_STATUSES or not instance.status:
        raise NotThereYet(f"{label} is not finished yet (status {instance.status or 'unknown'})")
    desc = f" ({instance.status_desc})" if instance.status_desc else ""
    raise PlanError(f"{label} ended with status {instance.status}{desc}, not one of EXPORT_JOB_STATUSES "
                    f"({', '.join(sorted(accepted))}): nothing exported")


def plan_export(instance: JobInstance | Mapping[str, Any], source: Source, *, pattern: str | None = None,
                statuses: Iterable[str] | None = None, last_attempt: bool = False,
                environ: Mapping[str, str] | None = None) -> ExportPlan:
    """Check the instance is done and list the files it wrote in `source`, in order.

    `pattern` defaults to EXPORT_FILE_PATTERN. With no matching file this raises `NotThereYet`,
    or `PlanError` when `last_attempt` says no more retries will come.
    """
    if not isinstance(instance, JobInstance):
        instance = JobInstance.from_api(instance)
    check_done(instance, statuses, environ)
    if pattern is None:
        pattern = settings.get("EXPORT_FILE_PATTERN", environ)
    patterns = file_patterns(instance, pattern)
    files = select_files(source.list(), patterns)
    if not files:
        where = (f"no file matching {' or '.join(patterns)} in {source.location} for job instance "
                 f"{instance.instance_id} (stem {instance.stem!r})")
        if last_attempt:
            raise PlanError(f"{where}, and the job ended {instance.end_time or 'already'}: check the export "
                            "profile's S/FTP connection and EXPORT_SOURCE / EXPORT_FILE_PATTERN")
        raise NotThereYet(f"{where} yet (Alma may still be writing)")
    return ExportPlan(instance, source.location, patterns, files)
