"""A worker process for the end-to-end tests and bench/e2e.py: the dev host running the registered
queue functions of function_app.py, with the worker's destinations pointed at a fake Dropbox.

    python tests/worker_proc.py --idle-exit 5

Settings come from the environment (as in Azure); FAKE_DROPBOX_URL routes the real Dropbox SDK to
the fake through a rewriting requests session. Runs until every queue has been empty for
`--idle-exit` seconds, or until it is killed (the tests SIGKILL it on purpose).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline import worker  # noqa: E402
from pipeline.destinations import open_destination  # noqa: E402
from pipeline.dev.host import DevHost  # noqa: E402
from pipeline.hostconfig import HostConfig  # noqa: E402


def fake_dropbox_context(fake_url: str | None) -> worker.Context:
    """A worker Context whose dropbox: destinations talk to the fake at `fake_url`."""
    if not fake_url:
        return worker.Context()
    import requests

    from pipeline.destinations.dropbox import DropboxDestination
    from tests.fake_dropbox import RewriteAdapter

    session = requests.Session()
    session.mount("https://", RewriteAdapter(fake_url))

    def destination(url: str):
        if url.startswith("dropbox:"):
            return DropboxDestination.from_url(url, session=session)
        return open_destination(url)

    return worker.Context(destination_factory=destination)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--idle-exit", type=float, default=5.0)
    parser.add_argument("--visibility", type=float, default=1.0)
    parser.add_argument("--max-dequeue", type=int, default=3)
    parser.add_argument("--lease", type=float, default=5.0, help="message invisibility while a function runs")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker %(process)d %(levelname)s %(message)s")
    logging.getLogger("azure").setLevel(logging.WARNING)
    worker.set_context(fake_dropbox_context(os.environ.get("FAKE_DROPBOX_URL")))
    host = DevHost(os.environ["AzureWebJobsStorage"],
                   config=HostConfig(max_dequeue_count=args.max_dequeue, visibility_timeout=args.visibility),
                   lease_seconds=args.lease)
    idle_since = time.monotonic()
    pause = 0.05
    while time.monotonic() - idle_since < args.idle_exit:
        worked = False
        for queue in host.triggers:
            if host.run_once(queue) is not None:
                worked = True
        if worked:
            idle_since, pause = time.monotonic(), 0.05
        else:  # back off like the host's queue listener (up to maxPollingInterval; here 1 s)
            time.sleep(pause)
            pause = min(1.0, pause * 2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
