"""Every file of the real-world corpus (../shared/realdata): each record comes out exact, or is
rejected with a reason code and its original bytes, in MARCXML, MARC 21 and MARC-in-JSON, and the
round trip MARCXML -> MARC 21 -> MARCXML gives the same records (see tests/conformance.py for what is
compared and which documented rules the comparison applies).

The files are checked in a process pool, largest first. `python tests/test_realdata_conformance.py`
prints the figures of a run (files, records, rejects per reason, salvages, seconds).
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))
import conformance

pytestmark = pytest.mark.skipif(not conformance.REALDATA.is_dir(),
                                reason=f"real-data corpus not found at {conformance.REALDATA}")


def run_corpus() -> tuple[list[dict[str, Any]], float]:
    from pipeline.marc.engine import available_cores

    started = time.monotonic()
    with ProcessPoolExecutor(max(2, available_cores())) as pool:
        reports = list(pool.map(conformance.check_path, conformance.corpus_files(), chunksize=1))
    return reports, time.monotonic() - started


@pytest.fixture(scope="module")
def corpus() -> tuple[list[dict[str, Any]], float]:
    return run_corpus()


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_every_record_is_exact_or_rejected_with_its_reason(corpus):
    reports, _ = corpus
    assert reports and len(reports) == len(conformance.corpus_files())
    problems = [f"{r['file']}: {p}" for r in reports for p in r["problems"]]
    assert not problems, f"{len(problems)} unexplained differences:\n" + "\n".join(problems[:60])


def test_the_corpus_was_really_compared(corpus):
    """Guards the guard: records were read by the independent readers and compared, not skipped."""
    reports, _ = corpus
    assert sum(r["records"] for r in reports) > 4000
    compared = sum(min(r["written"].values(), default=0) for r in reports)
    assert compared > 0.9 * sum(r["records"] for r in reports) - sum(r["unverified"] for r in reports)
    assert sum(r["salvaged"] for r in reports) > 0  # Boston University's character-counted directory


def test_records_pymarc_cannot_read_are_checked_with_yaz(corpus):
    if not conformance.yaz_available():
        pytest.skip("yaz-marcdump not installed (Debian package yaz): records pymarc cannot read are "
                    "only checked for being written or rejected with a reason")
    reports, _ = corpus
    assert any(reader.endswith("yaz") for r in reports for reader in r["readers"])


def figures(reports: list[dict[str, Any]], seconds: float) -> str:
    lines = [f"files {len(reports)}, records {sum(r['records'] for r in reports)} (read by pymarc or yaz), "
             f"pieces no independent reader can read {sum(r.get('unreadable', 0) for r in reports)}, "
             f"seconds {seconds:.1f}"]
    for fmt in (*conformance.FORMATS, "roundtrip"):
        counts: dict[str, int] = {}
        for r in reports:
            for reason, n in r["rejects"].get(fmt, {}).items():
                counts[reason] = counts.get(reason, 0) + n
        written = sum(r["written"].get(fmt, 0) for r in reports)
        lines.append(f"{fmt}: written {written}, rejected {sum(counts.values())}: "
                     + ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])))
    lines.append(f"salvaged (directory fallback) {sum(r['salvaged'] for r in reports)}, "
                 f"unverified (no independent reader) {sum(r['unverified'] for r in reports)}, "
                 f"files refused as a whole {sum(1 for r in reports if r['file_errors'])}, records in "
                 f"JSON documents (refused as files: not JSON lines) "
                 f"{sum(r.get('json_document_records', 0) for r in reports)}")
    lines.extend(f"  {r['file']}: {p}" for r in reports for p in r["problems"])
    return "\n".join(lines)


if __name__ == "__main__":
    print(figures(*run_corpus()))
