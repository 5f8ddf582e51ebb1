"""Destination path templates and names Dropbox (and Windows sync clients) accept.

The worker expands `DESTINATION` (e.g. `dropbox:/Alma exports/{job_name}/{date}`) with the values of
one Alma job event. Values come from Alma and may contain `/`, `:` or trailing dots, so each value
is sanitised as one path segment before it is placed: a job called "A/B: daily" can never create an
extra folder or a name Dropbox refuses. Empty segments (an event without an institution) vanish
instead of producing `//`.
"""

from __future__ import annotations

import re
import string
import unicodedata

PLACEHOLDERS = ("job_name", "job_id", "instance_id", "institution", "date")

# Characters Dropbox refuses in names or that break Windows/macOS sync clients.
_BAD_CHARS = re.compile(r'[\x00-\x1f\x7f<>:"/\\|?*]')
# Names Dropbox ignores or refuses to sync (compared case-insensitively).
_DISALLOWED_NAMES = {"desktop.ini", "thumbs.db", ".ds_store", "icon\r", ".dropbox", ".dropbox.attr"}
_MAX_SEGMENT = 255


def sanitize_segment(value: str) -> str:
    """One path segment Dropbox accepts: bad characters become `_`, no trailing dots or spaces,
    no reserved names, at most 255 characters; "" stays "" (the caller drops empty segments)."""
    text = unicodedata.normalize("NFC", value)
    text = _BAD_CHARS.sub("_", text)
    text = re.sub(r"\s+", " ", text).strip(" ")
    text = text.rstrip(". ")
    if text in ("", ".", ".."):
        return ""
    if text.lower() in _DISALLOWED_NAMES:
        text = "_" + text
    if len(text) > _MAX_SEGMENT:
        text = text[:_MAX_SEGMENT].rstrip(". ")
    return text


def sanitize_path(path: str) -> str:
    """A relative path whose every segment is sanitised; empty segments are dropped."""
    segments = [sanitize_segment(part) for part in path.replace("\\", "/").split("/")]
    return "/".join(s for s in segments if s)


def expand_template(template: str, values: dict[str, str | None]) -> str:
    """Fill `{name}` placeholders with sanitised values; `{{`/`}}` are literal braces.

    An unknown placeholder is an error naming it and the known ones, so a typo in the setting fails
    the first run instead of writing to a folder literally called `{jobname}`.
    """
    out: list[str] = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"path template {template!r} is malformed: {exc}") from None
    for literal, name, spec, conversion in parsed:
        out.append(literal)
        if name is None:
            continue
        if spec or conversion:
            raise ValueError(f"path template {template!r}: {{{name}}} takes no format spec or conversion")
        if name not in values:
            known = ", ".join("{" + k + "}" for k in values)
            raise ValueError(f"path template {template!r}: unknown placeholder {{{name}}} (known: {known})")
        value = values[name]
        # A value is one segment: its slashes must not create folders.
        out.append(sanitize_segment(value or "").replace("/", "_"))
    return "".join(out)


def destination_url(
    template: str,
    *,
    job_name: str | None = None,
    job_id: str | None = None,
    instance_id: str | None = None,
    institution: str | None = None,
    date: str | None = None,
) -> str:
    """Expand the `DESTINATION` setting for one job event (what the worker calls).

    `date` is the job's end date as `YYYY-MM-DD`. For `dropbox:` URLs the whole path is also
    normalised: one leading `/`, no empty or reserved segments. Local paths keep their form
    (absolute or relative, `file://`), only the placeholders' values are sanitised.
    """
    if date is not None and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", date):
        raise ValueError(f"date {date!r} is not YYYY-MM-DD")
    values = {"job_name": job_name, "job_id": job_id, "instance_id": instance_id,
              "institution": institution, "date": date}
    if template.startswith("dropbox:"):
        expanded = expand_template(template[len("dropbox:"):], values)
        return "dropbox:" + dropbox_root(expanded)
    expanded = expand_template(template, values)
    if expanded.startswith("file://"):
        return "file://" + re.sub("/{2,}", "/", expanded[len("file://"):])
    return re.sub("/{2,}", "/", expanded)


def dropbox_root(path: str) -> str:
    """Normalise a Dropbox folder path: `/a/b` ("" for the root), every segment sanitised."""
    clean = sanitize_path(path)
    return "/" + clean if clean else ""
