"""`python -m pipeline process`: outputs, exit codes 0/1/2, one-line messages, no progress bar off a TTY."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import marcgen

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", "process", *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_process_ok_with_rejects_is_exit_0(tmp_path):
    recs = marcgen.records(20, seed=1)
    blobs = [marcgen.marc21_record(r) for r in recs]
    blobs[3] = blobs[3][:30] + b"\xff" + blobs[3][31:]
    (tmp_path / "a.mrc").write_bytes(b"".join(blobs))
    marcgen.write_marcxml(tmp_path / "b.xml", recs, namespace=False)
    out = tmp_path / "out"
    proc = cli(tmp_path / "a.mrc", tmp_path / "b.xml", "--out", out, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # no progress bar when stderr is not a terminal
    assert "a.mrc: 20 records in, 19 out, 1 rejected" in proc.stdout
    assert sorted(p.name for p in out.iterdir()) == ["a.json", "a.rejects.jsonl", "a.rejects.mrc", "b.json",
                                                     "report.json"]
    report = json.loads((out / "report.json").read_text())
    assert report["ok"] and report["format"] == "json" and report["totals"]["records_out"] == 39


def test_unprocessable_file_is_exit_1_with_one_line(tmp_path):
    (tmp_path / "x.xml").write_text("<collection><record><leader>")
    proc = cli(tmp_path / "x.xml", "--out", tmp_path / "out")
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: x.xml:") and "Traceback" not in proc.stderr
    assert json.loads((tmp_path / "out" / "report.json").read_text())["ok"] is False


def test_usage_errors_are_exit_2(tmp_path):
    good = marcgen.write_marc21(tmp_path / "in.mrc", marcgen.records(2, seed=2))
    bad_rules = tmp_path / "rules.yaml"
    bad_rules.write_text("version: 1\nrules:\n  - frobnicate: 245\n")
    cases = [
        (["--out", tmp_path / "o"], "required"),  # no input
        ([tmp_path / "missing.xml", "--out", tmp_path / "o"], "does not exist"),
        ([good, "--out", tmp_path / "o", "--bogus"], "unrecognized arguments"),
        ([good, "--out", tmp_path / "o", "--format", "pdf"], "unknown output format"),
        ([good, "--out", tmp_path / "o", "--format", "csv"], "--columns"),
        ([good, "--out", tmp_path / "o", "--root", "r"], "--root"),
        ([good, "--out", tmp_path / "o", "--rules", bad_rules], "rules.yaml"),
        ([good, "--out", tmp_path / "o", "--rules", tmp_path / "none.yaml"], "none.yaml"),
        ([good, "--out", tmp_path, "--format", "marc21"], "overwrite input"),
        ([good, "--out", tmp_path / "o", "--workers", "0"], "--workers"),
    ]
    for args, message in cases:
        proc = cli(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert message in proc.stderr and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "o").exists()


def test_progress_line_on_a_terminal(tmp_path):
    import os
    import pty

    marcgen.write_marc21(tmp_path / "in.mrc", marcgen.records(30, seed=3))
    master, slave = pty.openpty()
    proc = subprocess.run([sys.executable, "-m", "pipeline", "process", str(tmp_path / "in.mrc"), "--out",
                           str(tmp_path / "out")], stdout=subprocess.PIPE, stderr=slave, cwd=ROOT, timeout=120)
    os.close(slave)
    shown = b""
    try:
        while chunk := os.read(master, 4096):
            shown += chunk
    except OSError:  # the terminal is gone once everything was read
        pass
    os.close(master)
    assert proc.returncode == 0
    assert b"records" in shown and b"rec/s" in shown and b"100.0%" in shown
