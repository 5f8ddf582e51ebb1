"""The Alma REST client: authentication, timeouts, bounded retries and Alma's error shapes.

A webhook body is not proof that a job ended well, so the worker asks the Alma API for the job
instance. Alma enforces a per-second and a daily quota per institution: the per-second one is worth
retrying after a short, jittered pause; the daily one is not (retrying only burns what is left),
and neither are authentication or request errors, which a retry can never fix.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

import requests
from lxml import etree

from pipeline import settings
from pipeline.settings import SettingError

log = logging.getLogger(__name__)

REGIONS: dict[str, str] = {
    "na": "https://api-na.hosted.exlibrisgroup.com",
    "eu": "https://api-eu.hosted.exlibrisgroup.com",
    "ap": "https://api-ap.hosted.exlibrisgroup.com",
    "aps": "https://api-aps.hosted.exlibrisgroup.com",
    "ca": "https://api-ca.hosted.exlibrisgroup.com",
    # China's gateway is documented inconsistently; set ALMA_API_BASE_URL if this one is wrong.
    "cn": "https://api-cn.hosted.exlibrisgroup.com.cn",
}

# Error codes (Alma gateway and our own) that are worth another attempt.
RETRYABLE_CODES = frozenset({"PER_SECOND_THRESHOLD", "HTTP_5XX", "CONNECTION", "TIMEOUT"})


class AlmaError(Exception):
    """An Alma API call failed; `code` and `message` are Alma's own when it sent them.

    Our own codes: CONNECTION, TIMEOUT, HTTP_<status> (no parsable error body), BAD_RESPONSE.
    """

    def __init__(self, code: str, message: str, *, status: int | None = None, url: str = "",
                 attempts: int = 1, retryable: bool | None = None, retry_after: float | None = None) -> None:
        where = f" ({url}, HTTP {status})" if status else (f" ({url})" if url else "")
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        super().__init__(f"Alma API error {code}: {message}{where}{tries}")
        self.code = code
        self.message = message
        self.status = status
        self.url = url
        self.attempts = attempts
        # True when a later attempt (e.g. a queue retry) may succeed.
        self.retryable = code in RETRYABLE_CODES if retryable is None else retryable
        self.retry_after = retry_after  # seconds, from a Retry-After header


def base_url_from_settings(environ: Mapping[str, str] | None = None) -> str:
    """ALMA_API_BASE_URL wins; otherwise the gateway of ALMA_REGION."""
    explicit = settings.get("ALMA_API_BASE_URL", environ)
    if explicit:
        return settings.https_url("ALMA_API_BASE_URL", explicit).rstrip("/")
    region = settings.get("ALMA_REGION", environ).lower()
    if region not in REGIONS:
        raise SettingError("ALMA_REGION", f"must be one of {', '.join(REGIONS)}, got {region!r}")
    return REGIONS[region]


def _first_error(errors: Any) -> tuple[str, str] | None:
    if isinstance(errors, list):
        errors = errors[0] if errors else None
    if not isinstance(errors, dict):
        return None
    code = str(errors.get("errorCode") or "").strip()
    message = str(errors.get("errorMessage") or "").strip()
    return (code, message) if code or message else None


def parse_error_body(body: bytes, content_type: str = "") -> tuple[str, str] | None:
    """(code, message) from any of Alma's three error shapes, or None when the body has none.

    JSON `{"errorList": {"error": [...]}}`, JSON `{"web_service_result": {"errorList": {"error": {...}}}}`
    (error may be one object or a list), and XML `<web_service_result><errorList><error>...`.
    """
    text = body.lstrip()
    if not text:
        return None
    if text.startswith((b"{", b"[")) or "json" in content_type:
        try:
            data = json.loads(text)
        except ValueError:
            return None
        if isinstance(data, dict) and "web_service_result" in data:
            data = data["web_service_result"]
        if isinstance(data, dict) and isinstance(data.get("errorList"), dict):
            return _first_error(data["errorList"].get("error"))
        return None
    if text.startswith(b"<"):
        parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)
        try:
            root = etree.fromstring(text, parser)
        except etree.XMLSyntaxError:
            return None
        for error in root.iter("{*}error"):
            code = (error.findtext("{*}errorCode") or "").strip()
            message = (error.findtext("{*}errorMessage") or "").strip()
            if code or message:
                return code, message
    return None


class AlmaClient:
    """A small client for the Alma REST API (only what the pipeline needs: GET with retries).

    Retries 429 PER_SECOND_THRESHOLD, 5xx, timeouts and connection errors with jittered exponential
    backoff, stopping at `max_attempts` or when `max_total` seconds would be exceeded, whichever
    comes first. The API key travels only in the Authorization header and is never logged.
    """

    def __init__(self, base_url: str, api_key: str, *, timeout: float = 30.0, max_attempts: int = 5,
                 max_total: float = 60.0, backoff: float = 0.5, backoff_cap: float = 8.0,
                 session: requests.Session | None = None, sleep: Callable[[float], None] = time.sleep) -> None:
        if not api_key:
            raise SettingError("ALMA_API_KEY", "is empty")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.max_attempts = max(1, max_attempts)
        self.max_total = max_total
        self.backoff = backoff
        self.backoff_cap = backoff_cap
        self._sleep = sleep
        self._session = session or requests.Session()
        self._headers = {"Authorization": f"apikey {api_key}", "Accept": "application/json"}
        self.remaining: int | None = None  # last x-exl-api-remaining seen

    @classmethod
    def from_settings(cls, environ: Mapping[str, str] | None = None, **kwargs: Any) -> AlmaClient:
        """Build from ALMA_API_BASE_URL / ALMA_REGION, ALMA_API_KEY and ALMA_API_TIMEOUT."""
        return cls(
            base_url_from_settings(environ),
            settings.require("ALMA_API_KEY", environ),
            timeout=settings.get("ALMA_API_TIMEOUT", environ),
            **kwargs,
        )

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> AlmaClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get_job_instance(self, job_id: str, instance_id: str) -> dict[str, Any]:
        """The authoritative job instance (`GET /almaws/v1/conf/jobs/{job_id}/instances/{instance_id}`)."""
        for label, value in (("job id", job_id), ("instance id", instance_id)):
            if not value or not str(value).strip():
                raise ValueError(f"{label} is empty")
        path = f"/almaws/v1/conf/jobs/{quote(str(job_id), safe='')}/instances/{quote(str(instance_id), safe='')}"
        return self.get(path)

    def get_user(self, primary_id: str) -> dict[str, Any]:
        """One user with contact details (`GET /almaws/v1/users/{primary_id}`), to tell a job's submitter.

        `expand=none` skips the loan, request and fee counts Alma would otherwise compute for us.
        """
        if not primary_id or not str(primary_id).strip():
            raise ValueError("user primary id is empty")
        path = f"/almaws/v1/users/{quote(str(primary_id), safe='')}"
        return self.get(path, {"user_id_type": "all_unique", "view": "full", "expand": "none"})

    def get(self, path: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """GET a JSON object from the API, retrying what is worth retrying."""
        url = self.base_url + path
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                return self._once(url, params)
            except AlmaError as err:
                err.attempts = attempt
                if not err.retryable or attempt >= self.max_attempts:
                    raise self._final(err, attempt) from err
                delay = self._delay(attempt, err)
                if time.monotonic() - started + delay > self.max_total:
                    raise self._final(err, attempt) from err
                log.info("Alma API %s (%s); attempt %d of %d, retrying in %.2fs",
                         err.code, err.message, attempt, self.max_attempts, delay)
                self._sleep(delay)

    def _final(self, err: AlmaError, attempt: int) -> AlmaError:
        return AlmaError(err.code, err.message, status=err.status, url=err.url, attempts=attempt,
                         retryable=err.retryable)

    def _delay(self, attempt: int, err: AlmaError) -> float:
        # "Full jitter": random in [0, min(cap, base * 2^n)], so parallel workers do not retry in step.
        delay = random.uniform(0, min(self.backoff_cap, self.backoff * (2 ** (attempt - 1))))
        if err.retry_after is not None:
            delay = max(delay, min(err.retry_after, self.backoff_cap))
        return delay

    def _once(self, url: str, params: Mapping[str, Any] | None) -> dict[str, Any]:
        try:
            response = self._session.get(url, params=params, headers=self._headers, timeout=self.timeout)
        except requests.Timeout as exc:
            raise AlmaError("TIMEOUT", f"no answer within {self.timeout:g}s", url=url) from exc
        except requests.ConnectionError as exc:
            raise AlmaError("CONNECTION", f"cannot reach the Alma API: {type(exc).__name__}", url=url) from exc
        remaining = response.headers.get("x-exl-api-remaining")
        if remaining is not None:
            log.debug("Alma API: x-exl-api-remaining=%s", remaining)
            try:
                self.remaining = int(remaining)
            except ValueError:
                pass
        status = response.status_code
        body = response.content
        if 200 <= status < 300:
            try:
                data = response.json()
            except ValueError:
                raise AlmaError("BAD_RESPONSE", "the answer is not JSON", status=status, url=url) from None
            if not isinstance(data, dict):
                raise AlmaError("BAD_RESPONSE", "the answer is not a JSON object", status=status, url=url)
            return data
        parsed = parse_error_body(body, response.headers.get("Content-Type", ""))
        if parsed:
            code, message = parsed
            code = code or f"HTTP_{status}"
        else:
            code, message = f"HTTP_{status}", (response.reason or "no error details")
        # 5xx is server-side trouble whatever code Alma put in the body; a 429 is the per-second
        # limit unless Alma says it is the daily one (retrying that only burns what is left).
        retryable = status >= 500 or (status == 429 and code != "DAILY_THRESHOLD")
        raise AlmaError(code, message, status=status, url=url, retryable=retryable,
                        retry_after=_retry_after(response.headers.get("Retry-After")))


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
