"""Soak: the kill loop of tests/test_worker_e2e.py, 50 trials (SOAK_TRIALS), outside `make test`.

Each trial is one job instance of a split export (three MARCXML files) whose queue workers are
SIGKILLed at random moments (three kills), then left to finish with the sweeper run as the timer
would. Every trial must end `done`, with one manifest and outputs byte-identical to
`python -m pipeline process` on the same files. Prints trials, failures and identical outputs.

    python bench/soak.py            # not part of `make bench`: it is about correctness, not speed
"""

from __future__ import annotations

import os
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.dev import azurite  # noqa: E402
from pipeline.dev.host import DevHost  # noqa: E402
from pipeline.hostconfig import HostConfig  # noqa: E402
from tests import marcgen  # noqa: E402
from tests.e2e_support import RULES, expected_outputs  # noqa: E402
from tests.fake_alma import FakeAlma  # noqa: E402
from tests.killloop import run_trial  # noqa: E402

TRIALS = int(os.environ.get("SOAK_TRIALS", "50"))
SECRET = "soak-secret"
STEM = "BIBS_soak"


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="soak-"))
    exports = work / "exports"
    exports.mkdir()
    names = [f"{STEM}_1.xml", f"{STEM}_2.xml", f"{STEM}_10.xml"]
    for i, name in enumerate(names):
        marcgen.write_marcxml(exports / name, marcgen.records(250, seed=i, start=250 * i), namespace=False)
    expected = expected_outputs(exports, names, work)
    server = azurite.start()
    failures = identical = 0
    started = time.monotonic()
    try:
        with FakeAlma(api_key="soak-key") as alma:
            env = {"AzureWebJobsStorage": server.connection_string, "ALMA_WEBHOOK_SECRET": SECRET,
                   "ALMA_API_BASE_URL": alma.url, "ALMA_API_KEY": "soak-key", "EXPORT_SOURCE": str(exports),
                   "DESTINATION": str(work / "out" / "{instance_id}"), "TRANSFORM_RULES": str(RULES),
                   "OUTPUT_FORMAT": "marcxml", "WORKER_TIME_BUDGET": "0.05"}
            os.environ.update(env)
            host = DevHost(server.connection_string, config=HostConfig(max_dequeue_count=50, visibility_timeout=0))
            rng = random.Random(int(os.environ.get("SOAK_SEED", "20261202")))
            for n in range(1, TRIALS + 1):
                trial = run_trial(host, alma, stem=STEM, secret=SECRET, out_root=work / "out", expected=expected,
                                  rng=rng, env=env)
                identical += trial.identical
                failures += trial.problem is not None
                print(f"trial {n:>3}: instance {trial.instance_id} {trial.state}, {trial.kills} kill(s), "
                      f"{'identical' if trial.identical else 'DIFFERENT'}"
                      + (f"  {trial.problem}" if trial.problem else ""), flush=True)
    finally:
        server.stop()
    print(f"\ntrials {TRIALS}, failures {failures}, identical outputs {identical}/{TRIALS} "
          f"({time.monotonic() - started:.0f} s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
