"""Destination path templates and names Dropbox, local file systems (and Windows sync clients) accept.

The worker expands `DESTINATION` (e.g. `dropbox:/Alma exports/{job_name}/{date}`) with the values of
one Alma job event. Values come from Alma and may contain `/`, `:` or trailing dots, so each value
is sanitised as one path segment before it is placed: a job called "A/B: daily" can never create an
extra folder or a name Dropbox refuses. Empty segments (an event without an institution) vanish
instead of producing `//`.

Limits are in UTF-8 bytes, because that is what file systems count: a name is at most `MAX_NAME`
bytes, so the local destination's temporary name (`.NAME.xxxxxxxx.part`, `TEMP_NAME_EXTRA` bytes
more) still fits the 255 bytes of ext4, NTFS and Dropbox; a longer one is shortened and ends in `~`
plus 8 hex digits of the SHA-256 of the full name (stable: the same value always gives the same
name), its extension kept. A whole relative path is at most `MAX_PATH` bytes.
"""

from __future__ import annotations

import hashlib
import re
import string
import unicodedata

PLACEHOLDERS = ("job_name", "job_id", "instance_id", "institution", "date")

# Characters Dropbox refuses in names or that break Windows/macOS sync clients (C0 and C1 controls too).
_BAD_CHARS = re.compile(r'[\x00-\x1f\x7f-\x9f<>:"/\\|?*]')
# Names Dropbox ignores or refuses to sync (compared case-insensitively).
_DISALLOWED_NAMES = {"desktop.ini", "thumbs.db", ".ds_store", "icon\r", ".dropbox", ".dropbox.attr"}
# Device names Windows refuses as a file name, with or without an extension (`CON`, `nul.txt`).
_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$",
                     *(f"COM{i}" for i in "123456789\u00b9\u00b2\u00b3"),
                     *(f"LPT{i}" for i in "123456789\u00b9\u00b2\u00b3")}

TEMP_NAME_EXTRA = len(".") + len(".12345678.part")
"""Bytes the local destination's temporary name adds to a final name."""
MAX_NAME = 255 - TEMP_NAME_EXTRA
"""Longest name (one path component) in UTF-8 bytes."""
MAX_PATH = 4096
"""Longest relative output path in UTF-8 bytes (Linux PATH_MAX; Dropbox documents no shorter one)."""
_HASH_SUFFIX = 9  # "~" + 8 hex digits


def _invisible_or_control(text: str) -> str:
    """Format characters (bidi overrides, zero-width joiners, BOM) are removed: they make a name
    look like another one. Line and paragraph separators become spaces."""
    if text.isascii():
        return text
    out = []
    for ch in text:
        category = unicodedata.category(ch)
        if category == "Cf":
            continue
        out.append(" " if category in ("Zl", "Zp") else ch)
    return "".join(out)


def fit_name(name: str, limit: int = MAX_NAME) -> str:
    """`name` itself when it fits `limit` UTF-8 bytes; otherwise cut (never inside a character) and
    ended with `~` + 8 hex digits of its SHA-256, the extension (up to 16 bytes) kept."""
    data = name.encode("utf-8", "surrogatepass")
    if len(data) <= limit:
        return name
    digest = hashlib.sha256(data).hexdigest()[:8]
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem or len(ext.encode("utf-8", "surrogatepass")) > 16 or " " in ext:
        stem, ext = name, ""
    tail = f"~{digest}" + (f".{ext}" if ext else "")
    room = limit - len(tail.encode("utf-8"))
    cut = stem.encode("utf-8", "surrogatepass")[:room].decode("utf-8", "ignore").rstrip(". ")
    return cut + tail


def sanitize_segment(value: str) -> str:
    """One path segment every destination accepts: control characters and characters Dropbox or
    Windows refuse become `_`, invisible format characters (bidi, zero-width) go, no trailing dots
    or spaces, reserved names get a `_` prefix, at most `MAX_NAME` bytes (see `fit_name`);
    "" stays "" (the caller drops empty segments)."""
    text = unicodedata.normalize("NFC", value)
    text = _invisible_or_control(text)
    text = _BAD_CHARS.sub("_", text)
    text = re.sub(r"\s+", " ", text).strip(" ")
    text = text.rstrip(". ")
    if text in ("", ".", ".."):
        return ""
    if text.lower() in _DISALLOWED_NAMES or text.split(".")[0].rstrip(" ").upper() in _WINDOWS_RESERVED:
        text = "_" + text
    return fit_name(text)


def sanitize_path(path: str) -> str:
    """A relative path whose every segment is sanitised; empty segments are dropped. A path longer
    than `MAX_PATH` bytes raises `ValueError` naming it (no shortening can keep it meaningful)."""
    segments = [sanitize_segment(part) for part in path.replace("\\", "/").split("/")]
    clean = "/".join(s for s in segments if s)
    check_path_length(clean)
    return clean


def check_path_length(path: str) -> None:
    """Refuse a relative path over `MAX_PATH` UTF-8 bytes."""
    size = len(path.encode("utf-8", "surrogatepass"))
    if size > MAX_PATH:
        raise ValueError(f"path {path[:80]!r}... is {size} bytes long; the limit is {MAX_PATH}")


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
