"""Status page cost with thousands of job instances (issue 14), against Azurite.

A ledger of STATUS_INSTANCES (default 5,000) generated finished instances (a few failed), written
as the ledger stores them, with their index entries. Measured side by side on the same ledger:
- the first page of the `job_status` function (HTML and JSON), through the registered function,
  which reads the index head (one GET: the newest instances' summaries, the chart's too);
- a later page (following `next_page`): one List Blobs call over the index entries. Azure lists a
  range of names; Azurite filters and sorts every blob it holds, so here this grows with the ledger;
- the baseline: listing by reading every ledger record (`Ledger.list_instances`, what
  `requeue --list` does), the cost the index avoids; its ratio to the first page.
Target: the first page in under 200 ms here.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from azure.storage.blob import BlobServiceClient  # noqa: E402

from pipeline import jobindex, worker  # noqa: E402
from pipeline.dev import azurite  # noqa: E402
from pipeline.dev.host import invoke_http  # noqa: E402
from pipeline.ledger import CONTAINER, Ledger  # noqa: E402
from tests.status_support import generated_record, store_generated  # noqa: E402

INSTANCES = int(os.environ.get("STATUS_INSTANCES", "5000"))
REPEAT = int(os.environ.get("STATUS_REPEAT", "15"))


def fill(service: BlobServiceClient) -> None:
    container = service.get_container_client(CONTAINER)
    container.create_container()
    now = datetime.now(UTC)

    def one(i: int):
        record = generated_record(str(9900000000000000 + i), now - timedelta(hours=6 * (INSTANCES - i)),
                                  failed=i % 50 == 0)
        store_generated(container, record)
        return record

    with ThreadPoolExecutor(8) as pool:
        records = list(pool.map(one, range(INSTANCES)))
    jobindex.write_head(container, records)


def timed(fn, repeat: int = REPEAT) -> tuple[float, float, object]:
    samples, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples), max(samples), result


def get(params: dict[str, str]):
    response = invoke_http("job_status", "GET", "http://localhost/api/status", params={"code": "x", **params}).response
    assert response.status_code == 200, response.get_body()[:300]
    return response


def main() -> int:
    server = azurite.start()
    try:
        os.environ["AzureWebJobsStorage"] = server.connection_string
        service = BlobServiceClient.from_connection_string(server.connection_string)
        started = time.perf_counter()
        fill(service)
        print(f"ledger: {INSTANCES:,} instances written in {time.perf_counter() - started:.0f} s", flush=True)
        ledger = Ledger(service=service)
        worker.set_context(worker.Context(ledger_factory=lambda: ledger))
        get({})  # templates compiled, connections open: what every later request finds

        html_ms, html_max, html = timed(lambda: get({}))
        json_ms, json_max, first = timed(lambda: get({"format": "json"}))
        data = json.loads(first.get_body())
        assert len(data["instances"]) == 25 and data["next_page"]
        later_ms, later_max, _ = timed(lambda: get({"format": "json", "page": data["next_page"]}))
        base_ms, base_max, records = timed(ledger.list_instances, repeat=1)
        assert len(records) == INSTANCES

        print(f"\n{'request (' + str(INSTANCES) + ' instances)':<44}{'median ms':>10}{'max ms':>10}")
        for name, median, worst in [("first page, HTML (listing + 30-day chart)", html_ms, html_max),
                                    ("first page, JSON", json_ms, json_max),
                                    ("a later page, JSON (no chart)", later_ms, later_max),
                                    ("baseline: read every ledger record", base_ms, base_max)]:
            print(f"{name:<44}{median:>10.1f}{worst:>10.1f}")
        print(f"\nHTML page size: {len(html.get_body()):,} bytes")
        print(f"baseline / first page (HTML): {base_ms / html_ms:.0f}x")
        print(f"first page under 200 ms: {'yes' if html_ms < 200 else 'NO'} ({html_ms:.0f} ms median)")
        print("(a later page lists the index; Azurite's listing reads every blob it holds, Azure's does not)")
        return 0
    finally:
        worker.set_context(None)
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
