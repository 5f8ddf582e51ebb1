"""Seeded fuzzing in the suite (issue 12, point 7).

Webhook: 3,000 mutated JSON, XML and random bodies, signed and unsigned, lone surrogates included,
through the registered `alma_webhook` function exactly as the Functions host calls it; the only
answers allowed are 200, 202, 400, 401 and 413, and every 202 queues a message the worker reads.

MARC readers: mutated MARC 21, MARCXML and MARC-in-JSON made from the sample export go through the
engine one file at a time; every run must end with each record written or rejected (or the file
refused with a clear reason), never an internal error, with bounded memory; what was written is
read back by pymarc, not by our own reader. The long run (50,000 bodies) is bench/fuzz_webhook.py.
"""

from __future__ import annotations

import io
import resource
from collections import Counter

import azure.functions as func
import pymarc
import pytest

from pipeline.destinations.local import LocalDestination
from pipeline.dev.host import user_function
from pipeline.events import parse_queue_message
from pipeline.marc.engine import Input, process_file
from tests.fuzz_support import ALLOWED, marc_inputs, sign, webhook_bodies

SECRET = "fuzz-secret"
WEBHOOK_BODIES = 3000
MARC_RUNS = 240
SEED = 12


class Out:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def set(self, value: str) -> None:
        self.calls.append(value)


def test_webhook_fuzz_through_the_registered_function(clean_env):
    clean_env.setenv("ALMA_WEBHOOK_SECRET", SECRET)
    function = user_function("alma_webhook")
    statuses: Counter[int] = Counter()
    queued = signed = 0
    for index, (body, is_signed) in enumerate(webhook_bodies(SEED, WEBHOOK_BODIES)):
        headers = {"Content-Type": "application/json"}
        if is_signed:
            headers["X-Exl-Signature"] = sign(SECRET, body)
            signed += 1
        elif index % 3 == 0:
            headers["X-Exl-Signature"] = sign("not-the-secret", body)
        request = func.HttpRequest(method="POST", url="https://app.azurewebsites.net/api/webhook",
                                   params={"code": "key"}, headers=headers, body=body)
        out = Out()
        response = function(request, out)  # an exception here fails the test: it is never allowed
        status = response.status_code
        assert status in ALLOWED, f"seed {SEED} body {index}: {status} {response.get_body()[:200]!r}"
        assert response.headers.get("X-Content-Type-Options") == "nosniff"
        if status == 202:
            (message,) = out.calls
            parse_queue_message(message)
            message.decode("utf-8")  # bytes, as the host enqueues them: valid UTF-8
            queued += 1
        else:
            assert out.calls == []
        if not is_signed:
            assert status in (401, 413)
        statuses[status] += 1
    assert sum(statuses.values()) == WEBHOOK_BODIES
    assert statuses[400] and statuses[401] and statuses[413] and queued  # every kind of answer was reached
    print(f"webhook fuzz: {WEBHOOK_BODIES} bodies ({signed} signed), answers {dict(sorted(statuses.items()))}")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.parametrize("out_format", ["marc21"])
def test_marc_reader_fuzz_every_record_is_written_or_rejected(tmp_path, out_format):
    before = peak_rss_mib()
    totals: Counter[str] = Counter()
    for index, (name, data) in enumerate(marc_inputs(SEED, MARC_RUNS)):
        out = tmp_path / str(index)
        result = process_file(Input(name, lambda data=data: io.BytesIO(data), len(data)), LocalDestination(out),
                              fmt=out_format, workers=1)
        where = f"seed {SEED} input {index} ({name})"
        if result.error is not None:
            assert "internal error" not in result.error, f"{where}: {result.error}"
            totals["files refused"] += 1
            continue
        assert result.records_in == result.records_out + result.rejected, where
        stem = name.rsplit(".", 1)[0]
        with open(out / f"{stem}.mrc", "rb") as fh:
            readable = [r for r in pymarc.MARCReader(fh, to_unicode=True, permissive=True) if r is not None]
        assert len(readable) == result.records_out, where
        totals["records written"] += result.records_out
        totals["records rejected"] += result.rejected
        totals["files"] += 1
    growth = peak_rss_mib() - before
    assert growth < 256, f"peak memory grew {growth:.0f} MiB over {MARC_RUNS} runs"
    assert totals["records written"] and totals["records rejected"]
    print(f"MARC reader fuzz: {MARC_RUNS} files, {dict(totals)}, peak memory +{growth:.0f} MiB")
