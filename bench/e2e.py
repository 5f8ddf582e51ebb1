"""End-to-end benchmark (issue "queue worker"): a generated split export through the whole product.

signed webhook -> alma_webhook -> Azurite queue -> plan_export -> alma-export-files ->
process_export_file in 1 or 2 worker processes -> fake Dropbox (its own process, real SDK).

Printed side by side, same files, same rules, same run:
- `process` alone (the CLI's engine) on one core and on all cores, into a local folder;
- end to end with 1 and with 2 worker processes: records/s from the webhook to manifest.json;
- the ratios: end to end (1 worker) / process (1 core)   target >= 0.8
              end to end (2 workers) / end to end (1)     target >= 1.7 on 2 cores

E2E_RECORDS (default 100000) sets the total; the export is split in E2E_FILES (default 4) files.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.destinations.local import LocalDestination  # noqa: E402
from pipeline.dev import azurite  # noqa: E402
from pipeline.dev.host import DevHost  # noqa: E402
from pipeline.ledger import Ledger  # noqa: E402
from pipeline.marc.engine import Input, process  # noqa: E402
from tests import marcgen  # noqa: E402
from tests.e2e_support import clear_queues, send_webhook  # noqa: E402
from tests.fake_alma import FakeAlma  # noqa: E402

RECORDS = int(os.environ.get("E2E_RECORDS", "100000"))
FILES = int(os.environ.get("E2E_FILES", "4"))
RULES = ROOT / "samples" / "rules" / "discovery-cleanup.yaml"
SECRET = "bench-secret"
JOB_ID = "S5139276810004146"
STEM = "BIBS_bench"


def generate(folder: Path) -> list[Path]:
    per_file = RECORDS // FILES
    paths = []
    for i in range(FILES):
        path = folder / f"{STEM}_{i + 1}.xml"
        marcgen.write_marcxml(path, marcgen.iter_records(per_file, seed=100 + i, start=i * per_file), namespace=False)
        paths.append(path)
    return paths


def time_process(paths: list[Path], workers: int) -> float:
    out = Path(tempfile.mkdtemp(prefix="bench-e2e-process-"))
    try:
        started = time.perf_counter()
        report = process([Input.from_path(p) for p in paths], LocalDestination(out), fmt="marcxml",
                         rules_path=str(RULES), workers=workers)
        seconds = time.perf_counter() - started
        assert all(f.error is None for f in report.files), [f.error for f in report.files]
        return seconds
    finally:
        shutil.rmtree(out, ignore_errors=True)


def start_fake_dropbox() -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "tests.fake_dropbox"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    return proc, proc.stdout.readline().strip()


def time_e2e(workers: int, env: dict[str, str], host: DevHost, alma: FakeAlma) -> float:
    clear_queues(host)
    instance_id = str(77000000000000000 + uuid.uuid4().int % 10**15)
    alma.add_instance(JOB_ID, instance_id, stem=STEM, exported=RECORDS)
    procs = [subprocess.Popen([sys.executable, str(ROOT / "tests" / "worker_proc.py"), "--idle-exit", "30",
                               "--lease", "60"], env={**os.environ, **env}, cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(workers)]
    try:
        time.sleep(2.0)  # let the workers start (imports) before the clock starts, as warm instances would
        ledger = Ledger.from_settings()
        started = time.perf_counter()
        send_webhook(host, instance_id, STEM, SECRET)
        while True:
            record = ledger.get(instance_id)
            if record is not None and record.manifest.state == "done":
                break
            if all(p.poll() is not None for p in procs):
                raise RuntimeError("the workers exited before the job was done")
            time.sleep(0.25)  # each poll is a storage request: keep the observer light
        seconds = time.perf_counter() - started
        assert record.state == "done", [(f.name, f.state, f.error) for f in record.files]
        assert sum((f.result or {}).get("records_in", 0) for f in record.files) == RECORDS // FILES * FILES
        return seconds
    finally:
        for p in procs:
            p.kill()
            p.wait()


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="bench-e2e-"))
    server = azurite.start()
    fake_proc, fake_url = start_fake_dropbox()
    try:
        print(f"generating {RECORDS} records in {FILES} MARCXML files ...", flush=True)
        paths = generate(work)
        size = sum(p.stat().st_size for p in paths)
        total = RECORDS // FILES * FILES
        print(f"export: {total} records, {size / 1e6:.0f} MB; rules: {RULES.name}; output: MARCXML\n", flush=True)

        t_proc1 = time_process(paths, 1)
        t_proc_all = time_process(paths, os.cpu_count() or 1)

        with FakeAlma(api_key="bench-key") as alma:
            env = {
                "AzureWebJobsStorage": server.connection_string,
                "ALMA_WEBHOOK_SECRET": SECRET,
                "ALMA_API_BASE_URL": alma.url, "ALMA_API_KEY": "bench-key",
                "EXPORT_SOURCE": work.as_uri(),
                "DESTINATION": "dropbox:/bench/{instance_id}",
                "DROPBOX_APP_KEY": "fake-app-key", "DROPBOX_APP_SECRET": "fake-app-secret",
                "DROPBOX_REFRESH_TOKEN": "fake-refresh-token",
                "FAKE_DROPBOX_URL": fake_url,
                "TRANSFORM_RULES": str(RULES), "OUTPUT_FORMAT": "marcxml",
            }
            os.environ.update(env)
            host = DevHost(server.connection_string)
            t_e2e1 = time_e2e(1, env, host, alma)
            t_e2e2 = time_e2e(2, env, host, alma)

        rows = [
            ("process, 1 core", t_proc1),
            (f"process, {os.cpu_count()} cores", t_proc_all),
            ("end to end, 1 worker", t_e2e1),
            ("end to end, 2 workers", t_e2e2),
        ]
        print(f"{'pipeline':<26}{'seconds':>10}{'records/s':>12}")
        for name, seconds in rows:
            print(f"{name:<26}{seconds:>10.1f}{total / seconds:>12,.0f}")
        print()
        print(f"end to end (1 worker) / process (1 core):      {t_proc1 / t_e2e1:.2f}x   (target >= 0.8)")
        print(f"end to end (2 workers) / process (all cores):  {t_proc_all / t_e2e2:.2f}x")
        print(f"2-worker speed-up (end to end):                {t_e2e1 / t_e2e2:.2f}x   (target >= 1.7 on 2 cores)")
        return 0
    finally:
        fake_proc.terminate()
        fake_proc.wait()
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
