"""The product end to end: signed webhook -> Azurite queues -> plan_export -> process_export_file ->
fake Dropbox (real SDK), with the fake Alma API and a real SFTP server, through the registered
functions of function_app.py driven the way the Functions host drives them (pipeline/dev/host.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from pipeline import worker
from pipeline.destinations.local import LocalDestination
from pipeline.ledger import Ledger
from tests import marcgen
from tests.e2e_support import RULES, expected_outputs, send_webhook, worker_host
from tests.fake_alma import FakeAlma
from tests.fake_dropbox import FakeDropbox, content_hash
from tests.sftp_server import SftpTestServer
from tests.test_notify import Receiver

ROOT = Path(__file__).resolve().parent.parent
SECRET = "e2e-webhook-secret"
JOB_ID = "S5139276810004146"
DEST_ROOT = "/Alma exports"

# Export sets on the SFTP server: stem -> [(file name, records or raw bytes)]
SMALL = "BIBS_e2e"
BIG = "BIBS_big"
POISON = "BIBS_poison"


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sftp")
    # A split export whose numbering checks natural order (_2 before _10), as Alma writes it: no namespace.
    marcgen.write_marcxml(root / f"{SMALL}_1.xml", marcgen.records(300, seed=1), namespace=False)
    marcgen.write_marcxml(root / f"{SMALL}_2.xml", marcgen.records(250, seed=2, start=300), namespace=False)
    marcgen.write_marcxml(root / f"{SMALL}_10.xml", marcgen.records(200, seed=3, start=550), namespace=False)
    marcgen.write_marc21(root / f"{BIG}_1.mrc", marcgen.iter_records(6000, seed=4))
    marcgen.write_marc21(root / f"{BIG}_2.mrc", marcgen.iter_records(6000, seed=5, start=6000))
    marcgen.write_marcxml(root / f"{POISON}_1.xml", marcgen.records(100, seed=6), namespace=False)
    (root / f"{POISON}_2.xml").write_bytes(b"this is not MARC at all\n" * 10)
    return root


@pytest.fixture(scope="module")
def sftp(export_dir):
    server = SftpTestServer(export_dir)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def alma():
    with FakeAlma(api_key="e2e-key") as fake:
        yield fake


@pytest.fixture
def dropbox():
    fake = FakeDropbox().start()
    yield fake
    fake.stop()


@pytest.fixture
def e2e(clean_env, azurite, sftp, alma, dropbox):
    """Settings as an operator would set them, queues emptied, the worker pointed at the fakes."""
    env = {
        "ALMA_WEBHOOK_SECRET": SECRET,
        "ALMA_API_BASE_URL": alma.url,
        "ALMA_API_KEY": "e2e-key",
        "DESTINATION": f"dropbox:{DEST_ROOT}/{{job_name}}/{{instance_id}}",
        "TRANSFORM_RULES": str(RULES),
        "OUTPUT_FORMAT": "marcxml",
        "DROPBOX_CHUNK_MIB": "4",
        **sftp.env("/"),
        **dropbox.environ(),
    }
    for key, value in env.items():
        clean_env.setenv(key, value)
    with worker_host(azurite.connection_string, dropbox.url, max_dequeue_count=3) as host:
        yield host, env


def new_instance(alma: FakeAlma, stem: str) -> str:
    instance_id = str(88000000000000000 + uuid.uuid4().int % 10**15)
    alma.add_instance(JOB_ID, instance_id, stem=stem)
    return instance_id


def folder(event: dict) -> str:
    return f"{DEST_ROOT}/{event['job_instance']['job_info']['name']}/{event['job_instance']['id']}"


def stored(dropbox: FakeDropbox, prefix: str) -> dict[str, bytes]:
    files = {}
    for path in dropbox.paths():
        if path.startswith(prefix + "/"):
            files[path[len(prefix) + 1:]] = dropbox.file(path).data
    return files


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def test_webhook_to_dropbox_outputs_identical_to_process(e2e, alma, dropbox, export_dir, tmp_path, receiver):
    host, _ = e2e
    os.environ["NOTIFY_URL"] = receiver.url  # clean_env restores it
    instance_id = new_instance(alma, SMALL)
    event = send_webhook(host, instance_id, SMALL, SECRET)
    invocations = host.drain(timeout=120)
    assert [(i.outcome, i.error) for i in invocations] == [("ok", None)] * len(invocations)

    names = [f"{SMALL}_1.xml", f"{SMALL}_2.xml", f"{SMALL}_10.xml"]
    expected = expected_outputs(export_dir, names, tmp_path)
    got = stored(dropbox, folder(event))
    manifest = json.loads(got.pop("manifest.json"))
    assert got == expected  # byte-identical, nothing more, nothing less

    assert [f["name"] for f in manifest["files"]] == names  # natural order: _2 before _10
    assert manifest["state"] == "done" and manifest["instance_id"] == instance_id
    assert manifest["job"]["job_id"] == JOB_ID and manifest["job"]["submitted_by"] == "System"
    by_path = {o["path"].rsplit("/", 1)[-1]: o for f in manifest["files"] for o in f["outputs"]}
    for name, data in expected.items():
        assert by_path[name]["size"] == len(data)
        assert by_path[name]["content_hash"] == content_hash(data)
    assert manifest["totals"]["records_out"] == sum(f["records_out"] for f in manifest["files"]) > 0
    record = Ledger.from_settings().get(instance_id)
    assert record.state == "done" and all(f.state == "done" and f.attempts == 1 for f in record.files)
    (note,) = [b["json"] for b in receiver.bodies]  # one summary per finished job instance
    assert note["pipeline"]["job_name"] == "Export Bibliographic Records"
    assert note["pipeline"]["submitted_by"] == "System"
    assert note["pipeline"]["records_out"] == manifest["totals"]["records_out"]
    assert folder(event) in note["text"]


def test_same_webhook_three_times_gives_one_set_of_outputs(e2e, alma, dropbox, export_dir, tmp_path):
    host, _ = e2e
    instance_id = new_instance(alma, SMALL)
    for _ in range(3):
        event = send_webhook(host, instance_id, SMALL, SECRET)
    host.drain(timeout=120)
    got = stored(dropbox, folder(event))
    assert set(got) == {f"{SMALL}_1.xml", f"{SMALL}_2.xml", f"{SMALL}_10.xml", "manifest.json"}
    assert dropbox.commits == 4  # three outputs and one manifest, each committed once
    assert alma.calls and sum(1 for c in alma.calls if instance_id in c.path) == 1  # planned once
    record = Ledger.from_settings().get(instance_id)
    assert [f.attempts for f in record.files] == [1, 1, 1]


def test_tiny_time_budget_continues_and_gives_identical_output(e2e, alma, dropbox, export_dir, tmp_path):
    host, _ = e2e
    os.environ["WORKER_TIME_BUDGET"] = "0.001"  # clean_env restores it
    instance_id = new_instance(alma, SMALL)
    event = send_webhook(host, instance_id, SMALL, SECRET)
    host.drain(timeout=180)
    record = Ledger.from_settings().get(instance_id)
    assert all(f.state == "done" for f in record.files)
    assert sum(f.continuations for f in record.files) >= 3  # every file was continued at least once
    names = [f"{SMALL}_1.xml", f"{SMALL}_2.xml", f"{SMALL}_10.xml"]
    got = stored(dropbox, folder(event))
    manifest = json.loads(got.pop("manifest.json"))
    assert got == expected_outputs(export_dir, names, tmp_path)
    assert all(f["parts"] >= 2 for f in manifest["files"])


def test_a_file_that_keeps_failing_goes_to_poison_and_the_rest_completes(e2e, alma, dropbox, receiver):
    host, _ = e2e
    os.environ["NOTIFY_URL"] = receiver.url
    instance_id = new_instance(alma, POISON)
    event = send_webhook(host, instance_id, POISON, SECRET)
    invocations = host.drain(timeout=120)
    assert [i.outcome for i in invocations].count("poison") == 1
    got = stored(dropbox, folder(event))
    assert f"{POISON}_1.xml" in got and f"{POISON}_2.xml" not in got
    failed = json.loads(got[f"{POISON}_2.xml_FAILED.json"])
    assert failed["file"] == f"{POISON}_2.xml" and "not" in failed["error"] and failed["attempts"] >= 3
    manifest = json.loads(got["manifest.json"])
    assert manifest["state"] == "failed"
    states = {f["name"]: f["state"] for f in manifest["files"]}
    assert states == {f"{POISON}_1.xml": "done", f"{POISON}_2.xml": "failed"}
    record = Ledger.from_settings().get(instance_id)
    bad = record.file(f"{POISON}_2.xml")
    assert record.state == "failed" and bad.state == "failed" and not bad.retryable and bad.error
    (note,) = [b["json"] for b in receiver.bodies]
    assert note["pipeline"]["state"] == "failed" and f"{POISON}_2.xml" in note["text"]


def _spawn_worker(env: dict[str, str], dropbox: FakeDropbox, idle_exit: float = 4.0) -> subprocess.Popen:
    full = {**os.environ, **env, "FAKE_DROPBOX_URL": dropbox.url, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, str(ROOT / "tests" / "worker_proc.py"), "--idle-exit", str(idle_exit),
                             "--lease", "3", "--visibility", "1"],
                            env=full, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_two_workers_share_a_split_export_and_do_every_file_once(e2e, alma, dropbox, export_dir, tmp_path):
    host, env = e2e
    instance_id = new_instance(alma, SMALL)
    event = send_webhook(host, instance_id, SMALL, SECRET)
    procs = [_spawn_worker(env, dropbox) for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, err.decode()[-2000:]
    got = stored(dropbox, folder(event))
    got.pop("manifest.json")
    names = [f"{SMALL}_1.xml", f"{SMALL}_2.xml", f"{SMALL}_10.xml"]
    assert got == expected_outputs(export_dir, names, tmp_path)
    assert dropbox.commits == 4
    record = Ledger.from_settings().get(instance_id)
    assert record.state == "done" and record.manifest.state == "done"
    assert [f.attempts for f in record.files] == [1, 1, 1]


@pytest.mark.timeout(900)  # killed workers, leases and redeliveries take wall time
def test_worker_killed_mid_file_completes_after_redelivery(e2e, alma, dropbox, export_dir, tmp_path):
    host, env = e2e
    env = {**env, "WORKER_TIME_BUDGET": "1"}  # checkpoints every second; lease = 2 s
    instance_id = new_instance(alma, BIG)
    event = send_webhook(host, instance_id, BIG, SECRET)
    proc = _spawn_worker(env, dropbox, idle_exit=60)
    ledger = Ledger.from_settings()
    deadline = time.monotonic() + 120
    killed_during = None
    while time.monotonic() < deadline and killed_during is None:
        record = ledger.get(instance_id)
        running = [f for f in (record.files if record else []) if f.state == "running" and f.continuations >= 1]
        if running:
            proc.send_signal(signal.SIGKILL)
            killed_during = running[0].name
        time.sleep(0.05)
    proc.wait(timeout=30)
    assert killed_during, "the worker never got into the middle of a file"
    assert not any(p.startswith(folder(event) + "/manifest") for p in dropbox.paths())

    # Redelivery: the message reappears once its invisibility lapses; the ledger lease lapses too.
    os.environ["WORKER_TIME_BUDGET"] = "1"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        host.drain(timeout=300)
        record = ledger.get(instance_id)
        if record.manifest.state == "done":
            break
        time.sleep(0.5)
    record = ledger.get(instance_id)
    assert record.state == "done", ([(f.name, f.state, f.error) for f in record.files],
                                    [(i.outcome, i.error) for i in host.history])
    assert record.file(killed_during).attempts == 2  # taken over after its worker died
    got = stored(dropbox, folder(event))
    got.pop("manifest.json")
    names = [f"{BIG}_1.mrc", f"{BIG}_2.mrc"]
    assert got == expected_outputs(export_dir, names, tmp_path)  # complete, correct, no partial or extra file


class FlakyDestination(LocalDestination):
    """Our local folder, except that the first resumed output fails on its first write: a disk or
    network error in the middle of a continued file."""

    failures = 0

    def resume(self, state):
        out = super().resume(state)
        if FlakyDestination.failures == 0:
            FlakyDestination.failures += 1
            original = out.write

            def write(data: bytes) -> None:
                out.write = original
                raise OSError("simulated write error after a continuation")

            out.write = write
        return out


def test_a_failure_after_a_continuation_restarts_the_file_and_output_is_identical(e2e, alma, export_dir, tmp_path):
    host, _ = e2e
    out = tmp_path / "flaky"
    os.environ["WORKER_TIME_BUDGET"] = "0.001"
    os.environ["DESTINATION"] = str(out)
    worker.set_context(worker.Context(destination_factory=lambda url: FlakyDestination(url)))
    instance_id = new_instance(alma, SMALL)
    send_webhook(host, instance_id, SMALL, SECRET)
    invocations = host.drain(timeout=180)
    assert FlakyDestination.failures == 1
    assert [i.error for i in invocations if i.outcome == "retry"] == [
        f"WorkerError: job instance {instance_id} file {SMALL}_1.xml: {SMALL}_1.xml: "
        "simulated write error after a continuation"]
    record = Ledger.from_settings().get(instance_id)
    assert record.state == "done" and record.file(f"{SMALL}_1.xml").attempts == 2
    names = [f"{SMALL}_1.xml", f"{SMALL}_2.xml", f"{SMALL}_10.xml"]
    folder = out / instance_id  # DESTINATION without {instance_id}: the instance's own folder is appended
    got = {p.name: p.read_bytes() for p in folder.iterdir() if p.suffix == ".xml"}
    assert got == expected_outputs(export_dir, names, tmp_path)
    assert not [p for p in folder.iterdir() if p.name.endswith(".part")]  # nothing half-written left behind


@pytest.mark.timeout(900)  # killed workers, leases and redeliveries take wall time
def test_kill_loop_five_trials_end_with_outputs_identical_to_process(e2e, alma, export_dir, tmp_path):
    """Workers SIGKILLed at random moments, five jobs in a row (50 in bench/soak.py)."""
    import random

    from tests.killloop import run_trial

    host, env = e2e
    out_root = tmp_path / "kill"
    env = {**env, "DESTINATION": str(out_root / "{instance_id}"), "EXPORT_SOURCE": str(export_dir),
           "WORKER_TIME_BUDGET": "0.05"}
    os.environ.update(env)  # the sweeper runs in this process; clean_env restores the settings
    expected = expected_outputs(export_dir, [f"{SMALL}_1.xml", f"{SMALL}_2.xml", f"{SMALL}_10.xml"], tmp_path)
    rng = random.Random(11)
    trials = [run_trial(host, alma, stem=SMALL, secret=SECRET, out_root=out_root, expected=expected, rng=rng,
                        env=env) for _ in range(5)]
    assert [t.problem for t in trials] == [None] * 5
    assert all(t.identical and t.state == "done" for t in trials) and sum(t.kills for t in trials) >= 5
