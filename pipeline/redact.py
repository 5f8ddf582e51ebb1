"""Secrets never reach a log line, at any level, whoever logs it (our code, urllib3, the SDKs).

A log record is redacted when it is created (`logging.setLogRecordFactory`), so every handler sees
the redacted text: the Functions host's, the CLI's, pytest's. Redacted are the values of every
`secret` setting in the registry (and a connection string's keys and signatures one by one), the
path and query of NOTIFY_URL (its token), and the request target of every urllib3 request to the
notification receiver or the Alma API (urllib3 logs `"POST /services/.../<token> HTTP/1.1"` at
DEBUG). A record's exception text is redacted too. Secrets are read from the environment on each
record created (what they give is cached while they stay the same), so a setting changed at run time
is covered at once.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

from pipeline import settings

MIN_SECRET = 6
"""Shorter values are not searched for (a one-letter secret would blank every line)."""
_URL_SETTINGS = ("NOTIFY_URL", "ALMA_API_BASE_URL")
_CONNECTION_KEYS = ("accountkey", "accesskey", "sharedaccesssignature", "sharedaccesskey", "password", "pwd")
_URLLIB3_REQUEST = "urllib3.connectionpool"

_installed: Callable[..., logging.LogRecord] | None = None
_lock = threading.Lock()


_SECRET_NAMES = tuple(name for name, s in settings.REGISTRY.items() if s.kind == "secret")
_cache: list[Any] = [None, {}]  # (raw values, what they gave): the environment rarely changes


def secret_values(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """value -> what it is called in the redacted text, for every secret that is set; longest value
    first, the order `redact_text` replaces in."""
    env = os.environ if environ is None else environ
    raws = tuple(env.get(name) for name in _SECRET_NAMES)
    if environ is None and raws == _cache[0]:
        return _cache[1]
    found = _secrets_of(dict(zip(_SECRET_NAMES, raws, strict=True)))
    if environ is None:
        _cache[:] = [raws, found]
    return found


def _secrets_of(env: Mapping[str, str | None]) -> dict[str, str]:
    found: dict[str, str] = {}
    for name in _SECRET_NAMES:
        raw = env.get(name)
        if not raw:
            continue
        for value in {raw, raw.strip()}:
            if len(value) >= MIN_SECRET:
                found[value] = name
        for part in raw.split(";"):  # connection strings: each key and signature on its own
            key, sep, value = part.partition("=")
            if sep and key.strip().lower() in _CONNECTION_KEYS and len(value.strip()) >= MIN_SECRET:
                found[value.strip()] = name
    notify_url = (env.get("NOTIFY_URL") or "").strip()
    if notify_url:
        try:
            parts = urlsplit(notify_url)
        except ValueError:
            parts = None
        if parts is not None:
            target = parts.path + (f"?{parts.query}" if parts.query else "")
            if len(target) >= MIN_SECRET:
                found[target] = "NOTIFY_URL"
            if len(parts.query) >= MIN_SECRET:
                found[parts.query] = "NOTIFY_URL"
    return {value: found[value] for value in sorted(found, key=len, reverse=True)}


def sensitive_hosts(environ: Mapping[str, str] | None = None) -> set[str]:
    """Hosts whose request paths are hidden: the notification receiver and the Alma API."""
    env = os.environ if environ is None else environ
    hosts = set()
    for name in _URL_SETTINGS:
        value = (env.get(name) or "").strip()
        if value:
            try:
                host = urlsplit(value).hostname
            except ValueError:
                host = None
            if host:
                hosts.add(host.lower())
    if not env.get("ALMA_API_BASE_URL"):
        hosts.update(h for h in _alma_gateways())
    return hosts


def _alma_gateways() -> Iterable[str]:
    from pipeline.alma import REGIONS

    return (urlsplit(url).hostname or "" for url in REGIONS.values())


def redact_text(text: str, secrets: Mapping[str, str]) -> str:
    """`text` with every secret value replaced by `[REDACTED NAME]`, in the order of `secrets`
    (`secret_values` gives the longest first, so a secret that contains another is replaced whole)."""
    for value in secrets:
        if value in text:
            text = text.replace(value, f"[REDACTED {secrets[value]}]")
    return text


def redact_record(record: logging.LogRecord) -> logging.LogRecord:
    """Rewrite one record in place: its message becomes the redacted, formatted text."""
    secrets = secret_values()
    if record.name == _URLLIB3_REQUEST and isinstance(record.args, tuple) and len(record.args) >= 5:
        host = str(record.args[1]).lower()
        if host in sensitive_hosts():
            args = list(record.args)
            args[4] = "/[REDACTED path]"
            record.args = tuple(args)
    if not secrets:
        return record
    try:
        message = record.getMessage()
    except Exception:  # a broken format string: logging reports it later; keep the raw pieces
        message = f"{record.msg} {record.args}"
    clean = redact_text(message, secrets)
    if clean != message or record.args:
        record.msg, record.args = clean, None
    if record.exc_info and not record.exc_text:
        record.exc_text = logging.Formatter().formatException(record.exc_info)
    if record.exc_text:
        record.exc_text = redact_text(record.exc_text, secrets)
    if record.stack_info:
        record.stack_info = redact_text(record.stack_info, secrets)
    return record


def install() -> None:
    """Redact every log record from now on (idempotent: installing twice changes nothing)."""
    global _installed
    with _lock:
        if _installed is not None:
            return
        previous = logging.getLogRecordFactory()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            return redact_record(previous(*args, **kwargs))

        logging.setLogRecordFactory(factory)
        _installed = previous
