"""Start and stop the Azurite storage emulator for local runs (`make demo`) and the tests.

Azurite comes from npm (`node_modules/.bin/azurite`, pinned in package.json). Each run gets free
ports and in-memory persistence, so parallel sessions never share state.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

ACCOUNT = "devstoreaccount1"
# Azurite's documented, public development key (not a secret).
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Azurite:
    process: subprocess.Popen
    blob_port: int
    queue_port: int
    table_port: int

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
            f"BlobEndpoint=http://127.0.0.1:{self.blob_port}/{ACCOUNT};"
            f"QueueEndpoint=http://127.0.0.1:{self.queue_port}/{ACCOUNT};"
            f"TableEndpoint=http://127.0.0.1:{self.table_port}/{ACCOUNT};"
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def find_executable(root: Path | None = None) -> str:
    root = root or Path(__file__).resolve().parents[2]
    local = root / "node_modules" / ".bin" / "azurite"
    if local.exists():
        return str(local)
    found = shutil.which("azurite")
    if not found:
        raise RuntimeError("azurite is not installed: run `npm install` in the project folder (make does)")
    return found


def start(timeout: float = 30.0) -> Azurite:
    """Start Azurite on free loopback ports and wait until all three services listen."""
    ports = [_free_port() for _ in range(3)]
    cmd = [
        find_executable(), "--silent", "--skipApiVersionCheck", "--disableTelemetry",
        "--inMemoryPersistence", "--loose",
        "--blobHost", "127.0.0.1", "--queueHost", "127.0.0.1", "--tableHost", "127.0.0.1",
        "--blobPort", str(ports[0]), "--queuePort", str(ports[1]), "--tablePort", str(ports[2]),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    azurite = Azurite(proc, *ports)
    deadline = time.monotonic() + timeout
    pending = list(ports)
    while pending:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise RuntimeError(f"azurite exited with {proc.returncode}: {err.strip()[:500]}")
        if time.monotonic() > deadline:
            azurite.stop()
            raise RuntimeError(f"azurite did not listen on {ports} within {timeout:.0f} s")
        port = pending[0]
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                pending.pop(0)
        except OSError:
            time.sleep(0.1)
    return azurite
