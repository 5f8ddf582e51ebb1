"""The kill loop, shared by tests/test_worker_e2e.py (a few trials in `make test`) and bench/soak.py
(many): a job goes through worker processes that are SIGKILLed at random moments, then one is left
to finish, with the sweeper run as the timer would; the outputs must be byte-identical to what
`python -m pipeline process` makes of the same files, with one manifest, and the job `done`."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import worker
from pipeline.ledger import Ledger
from pipeline.queues import FILES_QUEUE
from tests.e2e_support import send_webhook

ROOT = Path(__file__).resolve().parent.parent
JOB_ID = "S5139276810004146"


@dataclass
class Trial:
    instance_id: str
    kills: int
    identical: bool
    state: str
    problem: str | None = None


def spawn_worker(env: dict[str, str], idle_exit: float) -> subprocess.Popen:
    full = {**os.environ, **env, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, str(ROOT / "tests" / "worker_proc.py"), "--idle-exit", str(idle_exit),
                             "--lease", "2", "--visibility", "0", "--max-dequeue", "50"],
                            env=full, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def folder_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()} if folder.is_dir() else {}


def run_trial(host: Any, alma: Any, *, stem: str, secret: str, out_root: Path, expected: dict[str, bytes],
              rng: random.Random, env: dict[str, str], kills: int = 3, timeout: float = 240.0) -> Trial:
    """One job: `kills` workers killed at random moments, then recovery; compare with `expected`."""
    instance_id = str(66000000000000000 + uuid.uuid4().int % 10**15)
    alma.add_instance(JOB_ID, instance_id, stem=stem)
    send_webhook(host, instance_id, stem, secret)
    ledger = Ledger.from_settings()
    done_kills = 0
    for _ in range(kills):
        proc = spawn_worker(env, idle_exit=60)
        time.sleep(rng.uniform(0.5, 4.0))  # start-up, planning, mid-file, checkpoint, manifest: anywhere
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        done_kills += 1
        record = ledger.get(instance_id)
        if record is not None and record.manifest.state == "done":
            break
    deadline = time.monotonic() + timeout
    record = ledger.get(instance_id)
    while (record is None or record.manifest.state != "done") and time.monotonic() < deadline:
        spawn_worker(env, idle_exit=3).wait()
        record = ledger.get(instance_id)
        if record is not None and record.manifest.state != "done":  # nothing queued for it: the timer's turn
            for message in worker.sweep_jobs(ctx=worker.Context(), stale_after=2.0):
                host.send(FILES_QUEUE, message)
            time.sleep(1.0)
            record = ledger.get(instance_id)
    folder = out_root / instance_id
    got = folder_files(folder)
    has_manifest = got.pop("manifest.json", None) is not None
    identical = got == expected
    state = record.state if record is not None else "missing"
    problem = None
    if not (identical and has_manifest and state == "done"):
        problem = (f"state {state}, manifest {has_manifest}, files {sorted(got)} vs {sorted(expected)}, "
                   f"differing {[n for n in expected if got.get(n) != expected[n]]}")
    return Trial(instance_id, done_kills, identical and has_manifest, state, problem)
