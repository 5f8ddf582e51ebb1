"""Dropbox upload benchmark against tests/fake_dropbox.py running in its own process.

1. Streaming: a generated output (1 GiB by default) written in 64 KiB pieces through
   `DropboxDestination.open()`; peak RSS above the process baseline (target: under 3 chunk sizes),
   MB/s as a ratio of raw HTTP POSTs of the same chunks to the same fake (no SDK, no hashing), and
   the API calls made.
2. One file per record: 10,000 records through `PerRecordSink` (closed sessions + finish_batch_v2)
   against one `files_upload` per record (the reference listener's way), with the fake refusing
   overlapping commits with 429 too_many_write_operations the way Dropbox does: namespace commits
   per 1,000 records, API calls per record, records/s. The baseline runs on a sample of records
   (it is slow by design) and its rate is compared per record.

Usage: python bench/upload.py [--size-mib 1024] [--records 10000] [--baseline-records 300]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.destinations.dropbox import DropboxDestination  # noqa: E402
from pipeline.destinations.per_record import PerRecordSink  # noqa: E402
from pipeline.marc.record import Field, Record  # noqa: E402
from tests.fake_dropbox import RewriteAdapter  # noqa: E402

MiB = 1024 * 1024
ENV = {"DROPBOX_APP_KEY": "fake-app-key", "DROPBOX_APP_SECRET": "fake-app-secret",
       "DROPBOX_REFRESH_TOKEN": "fake-refresh-token"}


class FakeProcess:
    """The fake Dropbox in a child process, so its buffers do not count in our RSS."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.fake_dropbox", *args], cwd=ROOT,
                                     stdout=subprocess.PIPE, text=True)
        self.url = self.proc.stdout.readline().strip()

    def session(self) -> requests.Session:
        s = requests.Session()
        s.mount("https://", RewriteAdapter(self.url))
        return s

    def stats(self) -> dict:
        return requests.get(self.url + "/_fake/stats", timeout=10).json()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


class PeakRss:
    def __init__(self) -> None:
        self.proc = psutil.Process()
        self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def streaming(size: int, chunk_mib: int) -> None:
    fake = FakeProcess()
    try:
        dest = DropboxDestination.from_url("dropbox:/bench", environ={**ENV, "DROPBOX_CHUNK_MIB": str(chunk_mib)},
                                           session=fake.session())
        dest.write_bytes("warm-up.txt", b"x")  # client, token and connection ready before the baseline
        piece = os.urandom(64 * 1024)
        baseline = psutil.Process().memory_info().rss
        with PeakRss() as rss:
            started = time.perf_counter()
            out = dest.open("big/output.xml")
            written = 0
            while written < size:
                take = min(len(piece), size - written)
                out.write(piece[:take] if take < len(piece) else piece)
                written += take
            result = out.commit()
            ours = time.perf_counter() - started
        assert result.size == size

        # Baseline: the same chunks as raw HTTP POSTs to the same fake (no SDK, no hashing).
        session = requests.Session()
        chunk = os.urandom(chunk_mib * MiB)
        token = requests.post(fake.url + "/oauth2/token", data={
            "grant_type": "refresh_token", "refresh_token": ENV["DROPBOX_REFRESH_TOKEN"],
            "client_id": ENV["DROPBOX_APP_KEY"], "client_secret": ENV["DROPBOX_APP_SECRET"]}).json()["access_token"]
        started = time.perf_counter()
        sent = 0
        while sent < size:
            body = chunk if size - sent >= len(chunk) else chunk[: size - sent]
            r = session.post(fake.url + "/2/files/upload_session/start", data=body, headers={
                "Authorization": f"Bearer {token}", "Content-Type": "application/octet-stream",
                "Dropbox-API-Arg": '{"close": false}'})
            r.raise_for_status()
            sent += len(body)
        raw = time.perf_counter() - started
        stats = fake.stats()
    finally:
        fake.stop()
    delta = rss.peak - baseline
    calls = sum(v for k, v in dest.calls.items())
    print(f"streaming {size / MiB:.0f} MiB, chunk {chunk_mib} MiB:")
    print(f"  peak RSS above baseline: {delta / MiB:.1f} MiB = {delta / (chunk_mib * MiB):.2f} chunk sizes "
          f"(target < 3) [baseline {baseline / MiB:.0f} MiB]")
    print(f"  throughput: {size / MiB / ours:.0f} MiB/s; raw HTTP POSTs of the same chunks {size / MiB / raw:.0f} MiB/s"
          f" -> ratio {raw / ours:.2f} of raw speed")
    print(f"  API calls: {calls} ({dict(dest.calls)}); fake saw {stats['calls']}")


def make_records(n: int) -> list[tuple[Record, bytes]]:
    out = []
    for i in range(n):
        ident = f"99{i:08d}3506421"
        rec = Record("00000nam a2200000 a 4500", [Field.control("001", ident)])
        out.append((rec, f'<record><controlfield tag="001">{ident}</controlfield>{"x" * 1500}</record>'.encode()))
    return out


def per_record(n: int, baseline_n: int, latency: float) -> None:
    recs = make_records(n)
    fake = FakeProcess("--contention", "--commit-latency", str(latency))
    try:
        dest = DropboxDestination.from_url("dropbox:/bench", environ=ENV, session=fake.session())
        dest.write_bytes("warm-up.txt", b"x")
        before = fake.stats()
        started = time.perf_counter()
        sink = PerRecordSink(dest, "records/{001}.xml", max_in_flight=8)
        sink.begin()
        for rec, data in recs:
            sink.record(rec, data)
        results = sink.end()
        ours = time.perf_counter() - started
        after = fake.stats()
    finally:
        fake.stop()
    assert len(results) == n
    commits = after["commits"] - before["commits"]
    calls = sum(after["calls"].values()) - sum(before["calls"].values())

    fake = FakeProcess("--contention", "--commit-latency", str(latency))
    try:
        dest = DropboxDestination.from_url("dropbox:/bench", environ=ENV, session=fake.session(), max_attempts=50)
        dest.write_bytes("warm-up.txt", b"x")
        before = fake.stats()
        started = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda rd: dest.write_bytes(f"records/{rd[0].control('001')}.xml", rd[1]),
                          recs[:baseline_n]))
        base = time.perf_counter() - started
        after_b = fake.stats()
    finally:
        fake.stop()
    b_commits = after_b["commits"] - before["commits"]
    b_calls = sum(after_b["calls"].values()) - sum(before["calls"].values())
    refused = after_b["contention_refusals"] - before["contention_refusals"]
    print(f"per-record, commit latency {latency * 1000:.0f} ms, overlapping commits refused (429 "
          "too_many_write_operations):")
    print(f"  batched ({n} records): {commits} namespace commits = {commits / n * 1000:.1f} per 1,000 records "
          f"(target <= 1), {calls / n:.2f} API calls/record, {n / ours:.0f} records/s, "
          f"batches {after['batch_sizes'][-3:]}...")
    print(f"  files_upload per record ({baseline_n} records, 8 threads): {b_commits / baseline_n * 1000:.0f} commits "
          f"per 1,000 records, {b_calls / baseline_n:.2f} API calls/record ({refused} refused), "
          f"{baseline_n / base:.1f} records/s")
    print(f"  -> batched is {(n / ours) / (baseline_n / base):.1f}x the records/s, "
          f"{(b_commits / baseline_n) / max(commits / n, 1e-9):.0f}x fewer namespace commits")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--chunk-mib", type=int, default=8)
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--baseline-records", type=int, default=300)
    parser.add_argument("--commit-latency", type=float, default=0.05)
    args = parser.parse_args()
    streaming(args.size_mib * MiB, args.chunk_mib)
    per_record(args.records, args.baseline_records, args.commit_latency)
    return 0


if __name__ == "__main__":
    sys.exit(main())
