"""The long webhook fuzz: 50,000 seeded hostile bodies through the registered `alma_webhook`.

The same generator as the suite's 3,000-body fuzz (tests/fuzz_support.py: mutated JSON and XML
events, lone surrogates, deep nesting, entity declarations, random and oversized bodies; half
signed), called as the Functions host calls the function. Fails (exit 1) on any answer other than
200/202/400/401/413 or any exception. Speed is reported as a ratio against the baseline measured
side by side: HMAC-SHA256 over the same bodies plus `json.loads`, the least a listener must do.
`BENCH_FUZZ_BODIES` and `BENCH_FUZZ_SEED` change the run.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import azure.functions as func  # noqa: E402

from pipeline.dev.host import user_function  # noqa: E402
from tests.fuzz_support import ALLOWED, sign, webhook_bodies  # noqa: E402

SECRET = "bench-fuzz-secret"
BODIES = int(os.environ.get("BENCH_FUZZ_BODIES", "50000"))
SEED = int(os.environ.get("BENCH_FUZZ_SEED", "2026"))


class Out:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def set(self, value: str) -> None:
        self.calls.append(value)


def baseline(bodies: list[tuple[bytes, bool]]) -> float:
    """CPU seconds for HMAC + json.loads over the same bodies (bad JSON costs its attempt only)."""
    started = time.process_time()
    for body, _ in bodies:
        hmac.new(SECRET.encode(), body, hashlib.sha256).digest()
        try:
            json.loads(body)
        except (ValueError, RecursionError):
            pass
    return time.process_time() - started


def main() -> int:
    os.environ["ALMA_WEBHOOK_SECRET"] = SECRET
    logging.basicConfig(level=logging.INFO, stream=open(os.devnull, "w"))
    function = user_function("alma_webhook")
    bodies = list(webhook_bodies(SEED, BODIES))
    statuses: Counter[int] = Counter()
    failures: list[str] = []
    started, cpu = time.perf_counter(), time.process_time()
    for index, (body, signed) in enumerate(bodies):
        headers = {"X-Exl-Signature": sign(SECRET, body)} if signed else {}
        request = func.HttpRequest(method="POST", url="https://app.azurewebsites.net/api/webhook", params={},
                                   headers=headers, body=body)
        try:
            status = function(request, Out()).status_code
        except Exception as exc:  # never allowed: a request must always get an answer
            failures.append(f"body {index}: {type(exc).__name__}: {exc}")
            continue
        statuses[status] += 1
        if status not in ALLOWED:
            failures.append(f"body {index}: status {status}")
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    base = baseline(bodies)
    print(f"{BODIES} bodies (seed {SEED}, {sum(s for _, s in bodies)} signed) in {elapsed:.1f} s, "
          f"{BODIES / elapsed:.0f} bodies/s")
    print(f"answers: {dict(sorted(statuses.items()))}")
    print(f"CPU per body: {cpu / BODIES * 1000:.3f} ms, {cpu / base:.1f}x the baseline (HMAC + json.loads)")
    for line in failures[:20]:
        print("FAILED", line)
    print(f"disallowed answers or exceptions: {len(failures)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
