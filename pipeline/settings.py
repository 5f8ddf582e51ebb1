"""App settings: read from environment variables lazily and validated on use.

Azure app settings and `local.settings.json` `Values` both arrive as environment variables. Reading
at import time would make the Functions host index zero functions when one is missing, so every
value is read when it is needed, and a bad value raises `SettingError` naming the setting.

`REGISTRY` is the single list of settings: README's table and `local.settings.sample.json` are
checked against it by the tests.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit


class SettingError(ValueError):
    """A setting is missing or malformed; the message names it and says what is wrong."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"setting {name}: {problem}")
        self.name = name
        self.problem = problem


@dataclass(frozen=True)
class Setting:
    name: str
    kind: str  # str | secret | bool | int | float | list | regex
    default: Any
    help: str
    example: str = ""
    minimum: float | None = None
    maximum: float | None = None
    strip: bool = True  # surrounding whitespace removed (not for a value whose exact bytes matter)
    choices: tuple[str, ...] | None = None  # for kind "list": the items allowed


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}

REGISTRY: dict[str, Setting] = {
    s.name: s
    for s in [
        # Storage and queues
        Setting("AzureWebJobsStorage", "secret", None,
                "Storage account connection string for queues, the ledger and (by default) blob sources.",
                "UseDevelopmentStorage=true"),
        Setting("AzureWebJobsStorage__accountName", "str", None,
                "Storage account name for managed-identity access (instead of a connection string in "
                "AzureWebJobsStorage); the app's identity needs blob and queue data roles.", "almaexportstore"),
        # Webhook (issue: foundation and webhook)
        Setting("ALMA_WEBHOOK_SECRET", "secret", None,
                "Secret of the Alma webhook integration profile; signs every event (X-Exl-Signature). Used "
                "exactly as set, spaces included (other settings are trimmed).",
                "change-me-to-the-profile-secret", strip=False),
        Setting("ALMA_WEBHOOK_ALLOW_UNSIGNED", "bool", False,
                "Accept unsigned events. Local experiments only; logged as a warning on every request.",
                "false"),
        Setting("EXPORT_JOB_STATUSES", "list",
                ("COMPLETED_SUCCESS", "COMPLETED_WARNING", "COMPLETED_WARNINGS"),
                "Job end statuses that count as a finished export worth processing.",
                "COMPLETED_SUCCESS,COMPLETED_WARNING,COMPLETED_WARNINGS"),
        Setting("EXPORT_JOB_FILTER", "regex", None,
                "Regex searched in job id, job name and instance name; unset = any job with a "
                "c.jobs.bibExport.link counter.", "Nightly discovery export"),
        # Alma API
        Setting("ALMA_API_KEY", "secret", None,
                "Alma API key with read access to Configuration (jobs), and to Users when NOTIFY_SUBMITTER is on.",
                "l8xx-your-api-key"),
        Setting("ALMA_REGION", "str", "na",
                "Alma API region: na, eu, ap, aps, ca, cn (ignored when ALMA_API_BASE_URL is set).", "eu"),
        Setting("ALMA_API_BASE_URL", "str", None,
                "Alma API base URL (https; http only to a loopback address); overrides ALMA_REGION.",
                "https://api-eu.hosted.exlibrisgroup.com"),
        Setting("ALMA_API_TIMEOUT", "float", 30.0,
                "Seconds to wait for one Alma API answer.", "30", minimum=1, maximum=300),
        # Export sources
        Setting("EXPORT_SOURCE", "str", None,
                "Where Alma's export profile writes files: sftp://user@host:port/dir, ftp://, ftps://, "
                "blob://container/prefix, https://ACCOUNT.blob.core.windows.net/container/prefix, file:///dir.",
                "sftp://alma@sftp.example.edu:22/exports"),
        Setting("EXPORT_SOURCE_PASSWORD", "secret", None, "Password for the SFTP/FTP source.", "secret"),
        Setting("EXPORT_SOURCE_KEY", "secret", None, "Private key (PEM text) for the SFTP source.",
                "-----BEGIN OPENSSH PRIVATE KEY-----..."),
        Setting("EXPORT_SOURCE_HOST_KEY", "str", None,
                "The SFTP server's host key as a known_hosts line.",
                "sftp.example.edu ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA..."),
        Setting("EXPORT_SOURCE_INSECURE", "bool", False,
                "Skip SFTP host-key verification (logged as a warning). Never in production.", "false"),
        Setting("EXPORT_SOURCE_CONNECTION", "secret", None,
                "Storage connection string for a blob:// source; default: AzureWebJobsStorage.",
                "DefaultEndpointsProtocol=https;AccountName=...;AccountKey=...;EndpointSuffix=core.windows.net"),
        Setting("EXPORT_FILE_PATTERN", "str", None,
                "Glob of the files a job wrote, with {stem}, {job_id}, {instance_id}; default: "
                "{stem}_* and {stem}.*", "{stem}_new*.xml.tar.gz"),
        # Transformation and output
        Setting("TRANSFORM_RULES", "str", None,
                "Path (inside the app) of a rules file applied to every record.",
                "samples/rules/discovery-cleanup.yaml"),
        Setting("RULES_ALLOW_PYTHON", "bool", False,
                "Allow `python:` hooks in the rules file. A hook is arbitrary code running with every app "
                "setting and secret; off by default, so a rules file is data.", "false"),
        Setting("OUTPUT_FORMAT", "str", "marcxml",
                "Output format: marcxml, marc21, json, csv, xslt:PATH.", "marcxml"),
        Setting("MAX_EXPANDED_MIB", "int", 20480,
                "Cap on the bytes one compressed export file may expand to (decompression-bomb guard).",
                "20480", minimum=1),
        Setting("MAX_ARCHIVE_MEMBERS", "int", 10000,
                "Cap on the members one tar or zip export file may have; a file with more fails.",
                "10000", minimum=1),
        Setting("OUTPUT_PER_RECORD", "str", None,
                "Write one file per record with this path template instead of one file per input.",
                "records/{001}.xml"),
        Setting("DESTINATION", "str", "out/{job_name}/{instance_id}",
                "Where outputs go: dropbox:/path/... or a local folder (file:///path or a path; absolute in "
                "Azure). Without {instance_id}, /{instance_id} is appended: two job instances never share a "
                "folder.", "dropbox:/Alma exports/{job_name}/{date}/{instance_id}"),
        # Dropbox
        Setting("DROPBOX_APP_KEY", "str", None, "Dropbox app key.", "abcd1234efgh567"),
        Setting("DROPBOX_APP_SECRET", "secret", None,
                "Dropbox app secret (omit when the refresh token came from PKCE).", "secret"),
        Setting("DROPBOX_REFRESH_TOKEN", "secret", None,
                "Dropbox refresh token from `python -m pipeline dropbox-auth`.", "refresh-token"),
        Setting("DROPBOX_TEAM_SPACE", "bool", False, "Root paths in the team space.", "false"),
        Setting("DROPBOX_CHUNK_MIB", "int", 8,
                "Upload chunk size in MiB (a multiple of 4).", "8", minimum=4, maximum=148),
        # Worker
        Setting("WORKER_TIME_BUDGET", "float", None,
                "Seconds one invocation may work on a file before it checkpoints and continues in a new "
                "message; default derived from host.json functionTimeout.", "540", minimum=0.001),
        Setting("SWEEP_SCHEDULE", "str", "0 */15 * * * *",
                "When the sweeper (sweep_jobs) looks for stuck jobs: an NCRONTAB schedule with seconds; the "
                "host reads it from the app setting, so set it in Azure.", "0 */15 * * * *"),
        Setting("NOTIFY_URL", "secret", None,
                "Teams/Slack incoming webhook or any URL that receives a summary per finished job (https; "
                "http only to a loopback address; redirects are not followed).",
                "https://example.webhook.office.com/..."),
        # Telling the person who ran the job (pipeline/submitter.py, docs/notifications.md)
        Setting("NOTIFY_SUBMITTER", "list", ("off",),
                "Tell the staff user who submitted the job (looked up in the Alma Users API): off, email, "
                "sms, or email,sms. Needs ACS_CONNECTION_STRING or ACS_ENDPOINT.", "email,sms",
                choices=("off", "email", "sms")),
        Setting("ACS_CONNECTION_STRING", "secret", None,
                "Azure Communication Services connection string (endpoint and access key); or leave empty "
                "and set ACS_ENDPOINT to connect with the app's managed identity.",
                "endpoint=https://alma-notify.europe.communication.azure.com/;accesskey=..."),
        Setting("ACS_ENDPOINT", "str", None,
                "Azure Communication Services endpoint, used with managed identity when "
                "ACS_CONNECTION_STRING is empty.", "https://alma-notify.europe.communication.azure.com"),
        Setting("ACS_EMAIL_SENDER", "str", None,
                "Sender address for submitter emails, on a domain verified in Communication Services.",
                "DoNotReply@exports.library.example.edu"),
        Setting("ACS_SMS_FROM", "str", None,
                "Phone number (E.164) or alphanumeric sender ID of the Communication Services resource "
                "that sends submitter texts.", "+18005550100"),
        Setting("DROPBOX_APP_FOLDER", "str", None,
                "For an App-folder Dropbox app: the folder's path as Dropbox shows it, so links in "
                "submitter messages open the right folder.", "/Apps/Alma exports"),
        # Observability
        Setting("APPLICATIONINSIGHTS_CONNECTION_STRING", "secret", None,
                "Application Insights connection string: traces, metrics and logs are exported with "
                "azure-monitor-opentelemetry when set, and nothing is exported when unset.",
                "InstrumentationKey=...;IngestionEndpoint=https://westeurope-5.in.applicationinsights.azure.com/"),
    ]
}


def _raw(name: str, environ: Mapping[str, str] | None, strip: bool = True) -> str | None:
    env = os.environ if environ is None else environ
    value = env.get(name)
    if value is None or value.strip() == "":
        return None
    return value.strip() if strip else value


def get(name: str, environ: Mapping[str, str] | None = None) -> Any:
    """Return the parsed value of a registered setting, or its default when unset."""
    setting = REGISTRY[name]
    raw = _raw(name, environ, setting.strip)
    if raw is None:
        return setting.default
    return parse(setting, raw)


def require(name: str, environ: Mapping[str, str] | None = None) -> Any:
    """Like `get`, but a setting with no value and no default is an error."""
    value = get(name, environ)
    if value is None:
        raise SettingError(name, "is not set (" + REGISTRY[name].help + ")")
    return value


_LOOPBACK_NAMES = {"localhost", "localhost.localdomain"}


def is_loopback(host: str | None) -> bool:
    """127.0.0.0/8, ::1 or localhost: a stand-in on this machine (tests, the demo)."""
    if not host:
        return False
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def https_url(name: str, url: str) -> str:
    """`url` when it is https, or http to a loopback address; else `SettingError`. The message names
    the scheme and host only: some URLs (NOTIFY_URL) carry a token in their path."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        raise SettingError(name, "is not a URL") from None
    if parts.scheme == "https" and host:
        return url
    if parts.scheme == "http" and is_loopback(host):
        return url
    raise SettingError(name, f"must start with https:// (http:// only to a loopback address), got "
                             f"{parts.scheme or 'no'} scheme for host {host or '(none)'}")


def parse(setting: Setting, raw: str) -> Any:
    name, kind = setting.name, setting.kind
    if kind in ("str", "secret"):
        return raw
    if kind == "bool":
        low = raw.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise SettingError(name, f"must be true or false, got {raw!r}")
    if kind in ("int", "float"):
        try:
            value: float = int(raw) if kind == "int" else float(raw)
        except ValueError:
            raise SettingError(name, f"must be a{'n integer' if kind == 'int' else ' number'}, got {raw!r}") from None
        if setting.minimum is not None and value < setting.minimum:
            raise SettingError(name, f"must be at least {setting.minimum:g}, got {raw}")
        if setting.maximum is not None and value > setting.maximum:
            raise SettingError(name, f"must be at most {setting.maximum:g}, got {raw}")
        return value
    if kind == "list":
        items = tuple(item.strip() for item in raw.split(",") if item.strip())
        if not items:
            raise SettingError(name, "must be a comma-separated list with at least one item")
        if setting.choices is not None:
            items = tuple(item.lower() for item in items)
            unknown = [item for item in items if item not in setting.choices]
            if unknown:
                raise SettingError(name, f"{', '.join(unknown)} is not one of {', '.join(setting.choices)}")
        return items
    if kind == "regex":
        try:
            return re.compile(raw)
        except re.error as exc:
            raise SettingError(name, f"is not a valid regular expression: {exc}") from None
    raise AssertionError(f"unknown setting kind {kind}")
