"""`replay` and `alma instance` end to end: a saved webhook body, the fake Alma API, a real SFTP server,
the job service with the real engine. Replay's outputs must be byte-identical to `process` run on the
same files, with the manifest the queue workers would write beside them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pipeline.cli import main
from tests import marcgen
from tests.fake_alma import FakeAlma
from tests.sftp_server import SftpTestServer

ROOT = Path(__file__).resolve().parent.parent
EVENT_JSON = ROOT / "samples" / "events" / "job_end.json"
EVENT_XML = ROOT / "samples" / "events" / "job_end.xml"
RULES = ROOT / "samples" / "rules" / "discovery-cleanup.yaml"
JOB, INSTANCE = "S5139276810004146", "8816243980004146"
STEM = "BIBS_nightly_8816243980004146"
KEY = "replay-test-key"


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """An SFTP server whose /exports holds a split export (named so that text order is wrong)."""
    root = tmp_path_factory.mktemp("replay-sftp")
    folder = root / "exports"
    folder.mkdir()
    marcgen.write_marcxml(folder / f"{STEM}_1.xml", marcgen.records(60, seed=1), namespace=False)
    marcgen.write_marcxml(folder / f"{STEM}_2.xml", marcgen.records(25, seed=2, start=60))
    marcgen.write_marc21(folder / f"{STEM}_10.mrc", marcgen.records(15, seed=3, start=85))
    (folder / "BIBS_other_1.xml").write_bytes(b"<collection/>")  # another job's file
    with SftpTestServer(root) as server:
        yield server, folder


@pytest.fixture(scope="module")
def alma():
    with FakeAlma(api_key=KEY) as server:
        server.add_instance(JOB, INSTANCE, stem=STEM, exported=100)
        server.add_instance(JOB, "RUNNING1", stem="BIBS_running", status="RUNNING")
        server.add_instance(JOB, "EMPTY1", stem="BIBS_nothing_here")
        yield server


@pytest.fixture
def env(clean_env, alma, exports):
    server, _ = exports
    for key, value in {**server.env("/exports"), "ALMA_API_BASE_URL": alma.url, "ALMA_API_KEY": KEY}.items():
        clean_env.setenv(key, value)
    return clean_env


def outputs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name not in ("report.json", "manifest.json")}


def event_for(tmp_path, instance_id: str, action: str = "JOB_END") -> Path:
    body = json.loads(EVENT_JSON.read_text())
    body["job_instance"]["id"] = instance_id
    body["action"] = action
    path = tmp_path / f"event-{instance_id}.json"
    path.write_text(json.dumps(body))
    return path


@pytest.mark.parametrize("event", [EVENT_JSON, EVENT_XML], ids=["json", "xml"])
def test_replay_matches_process_on_the_same_files(env, alma, exports, tmp_path, capsys, event):
    server, folder = exports
    replayed, processed = tmp_path / "replay", tmp_path / "process"
    assert main(["replay", str(event), "--out", str(replayed), "--rules", str(RULES)]) == 0
    printed = capsys.readouterr().out
    assert "3 file(s)" in printed and "COMPLETED_SUCCESS" in printed

    ordered = [folder / f"{STEM}_1.xml", folder / f"{STEM}_2.xml", folder / f"{STEM}_10.mrc"]
    assert main(["process", *map(str, ordered), "--out", str(processed), "--rules", str(RULES)]) == 0
    mine, theirs = outputs(replayed), outputs(processed)
    assert mine == theirs and len(mine) >= 3
    manifest = json.loads((replayed / "manifest.json").read_text())
    assert [f["name"] for f in manifest["files"]] == [p.name for p in ordered]  # _2 before _10
    assert manifest["state"] == "done" and manifest["totals"]["records_in"] == 100
    totals = json.loads((processed / "report.json").read_text())["totals"]
    assert {k: totals[k] for k in ("records_in", "records_out", "rejected")} == {
        k: manifest["totals"][k] for k in ("records_in", "records_out", "rejected")}
    assert f"/almaws/v1/conf/jobs/{JOB}/instances/{INSTANCE}" in [c.path for c in alma.calls]


def test_replay_survives_a_dropped_sftp_connection(env, exports, tmp_path):
    server, folder = exports
    clean, dropped = tmp_path / "clean", tmp_path / "dropped"
    assert main(["replay", str(EVENT_JSON), "--out", str(clean), "--format", "marc21"]) == 0
    drops = server.drops
    server.drop_after(40_000)
    assert main(["replay", str(EVENT_JSON), "--out", str(dropped), "--format", "marc21"]) == 0
    assert server.drops == drops + 1
    assert outputs(clean) == outputs(dropped)


@pytest.mark.parametrize(
    ("instance", "action", "message"),
    [
        ("RUNNING1", "JOB_END", "not ready: job instance RUNNING1 of job S5139276810004146 is not finished yet"),
        ("EMPTY1", "JOB_END", "no file matching BIBS_nothing_here_* or BIBS_nothing_here.* in sftp://"),
        ("nope", "JOB_END", "Alma API error 402218: Invalid job instance ID"),
        (INSTANCE, "LOAN", "is a LOAN event, not JOB_END"),
    ],
)
def test_replay_failures_are_one_clear_line(env, tmp_path, capsys, instance, action, message):
    out = tmp_path / "out"
    assert main(["replay", str(event_for(tmp_path, instance, action)), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert message in err
    assert not out.exists() or not any(out.iterdir())  # nothing half-written


def test_replay_bad_inputs(env, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert main(["replay", str(bad), "--out", str(tmp_path / "o")]) == 1
    assert "is not a usable Alma event" in capsys.readouterr().err
    assert main(["replay", str(tmp_path / "missing.json"), "--out", str(tmp_path / "o")]) == 2
    assert main(["replay", str(EVENT_JSON), "--out", str(tmp_path / "o"), "--format", "nope"]) == 2
    env.setenv("ALMA_API_KEY", "wrong")
    assert main(["replay", str(EVENT_JSON), "--out", str(tmp_path / "o")]) == 1
    assert "UNAUTHORIZED" in capsys.readouterr().err


def test_replay_with_a_local_source_copy(env, exports, tmp_path):
    _, folder = exports
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    env.delenv("EXPORT_SOURCE")
    out = tmp_path / "out"
    assert main(["replay", str(EVENT_JSON), "--out", str(out), "--source", f"file://{copy}"]) == 0
    assert len(outputs(out)) >= 3


def test_alma_instance_summary(env, capsys):
    assert main(["alma", "instance", JOB, INSTANCE]) == 0
    out = capsys.readouterr().out
    assert "status:   COMPLETED_SUCCESS (Completed Successfully)" in out
    assert "c.jobs.bibExport.exported (Records exported): 100" in out
    lines = [line.strip().split()[0] for line in out.splitlines() if STEM in line and "bytes" in line]
    assert lines == [f"{STEM}_1.xml", f"{STEM}_2.xml", f"{STEM}_10.mrc"]


def test_alma_instance_json_and_problems(env, capsys):
    assert main(["alma", "instance", JOB, INSTANCE, "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["stem"] == STEM and [f["name"] for f in plan["files"]][-1] == f"{STEM}_10.mrc"
    assert main(["alma", "instance", JOB, "RUNNING1"]) == 1
    assert "not finished yet" in capsys.readouterr().out
    env.delenv("EXPORT_SOURCE")
    assert main(["alma", "instance", JOB, INSTANCE]) == 1
    assert "EXPORT_SOURCE is not set" in capsys.readouterr().out
    assert main(["alma", "instance", JOB, "nope"]) == 1
    assert "402218" in capsys.readouterr().err
