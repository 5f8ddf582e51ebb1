"""Export-source benchmark: our streaming readers against the plain client libraries, same run.

    python bench/sources.py [--mib 64]

Serves one generated file from real servers on 127.0.0.1 (asyncssh SFTP, pyftpdlib FTP, Azurite) and
reads it to the end in 256 KiB reads, each reader in its own process so its peak RSS is its own.
Baselines: paramiko's whole-file prefetch (what SFTPClient.getfo uses; also with at most 64 requests
in flight), whose request thread cannot be stopped when a read ends early or the link drops, so
the source fetches bounded windows instead; paramiko without prefetch; ftplib.retrbinary; the
azure-storage-blob SDK with its defaults; a plain open(). The
"drop" rows cut the connection once mid-file: the cost of resuming. Ratios are against the
baseline of the same protocol; a resume includes the reader's deliberate 0.5 s pause before
reconnecting. The machine is shared: figures are noisy, ratios less so.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]
READ = 256 * 1024


def _drain(fh) -> int:
    n = 0
    while chunk := fh.read(READ):
        n += len(chunk)
    return n


def measure(task: str, cfg: dict) -> dict:
    import ftplib  # every reader pays the same imports, outside the timed part

    import paramiko
    from azure.storage.blob import BlobServiceClient

    from pipeline.sources import open_source

    name = "data.bin"
    started = time.perf_counter()
    if task == "local-open":
        with open(Path(cfg["root"]) / "exports" / name, "rb") as fh:
            n = _drain(fh)
    elif task.startswith("paramiko"):
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        client.connect("127.0.0.1", cfg["sftp_port"], username="alma", password=cfg["sftp_password"],
                       allow_agent=False, look_for_keys=False)
        with client.open_sftp() as sftp, sftp.open(f"/exports/{name}", "rb") as fh:
            if task == "paramiko-prefetch":
                fh.prefetch()
            elif task == "paramiko-prefetch64":
                fh.prefetch(max_concurrent_requests=64)
            n = _drain(fh)
        client.close()
    elif task == "ftplib":
        count = [0]
        with ftplib.FTP() as ftp:
            ftp.connect("127.0.0.1", cfg["ftp_port"])
            ftp.login("alma", cfg["ftp_password"])
            ftp.cwd("/exports")
            ftp.retrbinary(f"RETR {name}", lambda b: count.__setitem__(0, count[0] + len(b)), blocksize=READ)
        n = count[0]
    elif task == "blob-sdk":
        service = BlobServiceClient.from_connection_string(cfg["blob_connection"])
        blob = service.get_blob_client(cfg["container"], f"exports/{name}")
        n = sum(len(c) for c in blob.download_blob(max_concurrency=1).chunks())
    else:  # ours: local, sftp, ftp, blob (+ "-drop")
        kind = task.removesuffix("-drop")
        env = cfg["env"][kind]
        with open_source(env["EXPORT_SOURCE"], env) as source, source.open(name) as fh:
            n = _drain(fh)
    seconds = time.perf_counter() - started
    return {"bytes": n, "seconds": seconds, "rss_mb": _peak_rss_mb()}


def _peak_rss_mb() -> float:
    """VmHWM (this process's own peak; ru_maxrss would carry the parent's over fork+exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--measure", nargs=2, metavar=("TASK", "CONFIG"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure[0], json.loads(Path(args.measure[1]).read_text()))))
        return 0

    import logging

    from azure.storage.blob import BlobServiceClient

    from pipeline.dev import azurite

    logging.getLogger("pyftpdlib").setLevel(logging.WARNING)
    from tests.ftp_server import FtpTestServer
    from tests.sftp_server import SftpTestServer

    size = args.mib << 20
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "root"
        (root / "exports").mkdir(parents=True)
        data = random.Random(7).randbytes(size)
        (root / "exports" / "data.bin").write_bytes(data)
        store = azurite.start()
        sftp = SftpTestServer(root)
        ftp = FtpTestServer(root)
        try:
            sftp.start()
            ftp.start()
            container = f"bench{os.getpid()}"
            service = BlobServiceClient.from_connection_string(store.connection_string)
            service.create_container(container).upload_blob("exports/data.bin", data, max_concurrency=2)
            del data
            cfg = {
                "root": str(root), "sftp_port": sftp.port, "sftp_password": sftp.password,
                "ftp_port": ftp.port, "ftp_password": ftp.password, "blob_connection": store.connection_string,
                "container": container,
                "env": {
                    "local": {"EXPORT_SOURCE": f"file://{root / 'exports'}"},
                    "sftp": sftp.env("/exports"),
                    "ftp": ftp.env("/exports"),
                    "blob": {"EXPORT_SOURCE": f"blob://{container}/exports",
                             "EXPORT_SOURCE_CONNECTION": store.connection_string},
                },
            }
            cfg_path = Path(tmp) / "cfg.json"
            cfg_path.write_text(json.dumps(cfg))
            rows = [
                ("local", "local-open", None), ("local", "local", None),
                ("sftp", "paramiko-prefetch", None), ("sftp", "paramiko-prefetch64", None),
                ("sftp", "paramiko-plain", None), ("sftp", "sftp", None),
                ("sftp", "sftp-drop", sftp), ("ftp", "ftplib", None), ("ftp", "ftp", None),
                ("ftp", "ftp-drop", ftp), ("blob", "blob-sdk", None), ("blob", "blob", None),
            ]
            results: dict[str, dict] = {}
            print(f"file: {args.mib} MiB, reads of {READ >> 10} KiB, each reader in its own process")
            print(f"{'protocol':8} {'reader':18} {'MiB/s':>8} {'vs baseline':>12} {'peak RSS MiB':>13}")
            baseline = {"local": "local-open", "sftp": "paramiko-prefetch", "ftp": "ftplib", "blob": "blob-sdk"}
            for proto, task, server in rows:
                if server is not None:
                    server.drop_after(size // 2)
                out = subprocess.run([sys.executable, __file__, "--measure", task, str(cfg_path)],
                                     capture_output=True, text=True, cwd=ROOT)
                if out.returncode != 0:
                    print(f"{proto:8} {task:18} FAILED: {out.stderr.strip().splitlines()[-1:]}")
                    continue
                r = json.loads(out.stdout.strip().splitlines()[-1])
                if r["bytes"] != size:
                    print(f"{proto:8} {task:18} WRONG SIZE {r['bytes']} != {size}")
                    continue
                results[task] = r
                speed = size / r["seconds"] / (1 << 20)
                base = results.get(baseline[proto])
                ratio = f"{base['seconds'] / r['seconds']:.2f}x" if base else "-"
                print(f"{proto:8} {task:18} {speed:8.1f} {ratio:>12} {r['rss_mb']:13.1f}")
        finally:
            sftp.stop()
            ftp.stop()
            store.stop()
    print("(vs baseline > 1 means faster than the plain library reader of the same protocol)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
