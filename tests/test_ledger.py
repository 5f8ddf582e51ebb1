"""The ledger on Azurite: conditional writes under threads and processes, claims, leases, one finisher."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob import BlobServiceClient

from pipeline import settings
from pipeline.cli import main
from pipeline.ledger import JobRecord, LeaseLost, Ledger, LedgerConflict, LedgerError

ROOT = Path(__file__).resolve().parent.parent
JOB = {"id": "S5139276810004146", "name": "Nightly discovery export", "submitted_by": "System"}
MESSAGE = {"instance_id": "8816243980004146", "job_id": "S5139276810004146", "event_id": "1"}


@pytest.fixture
def ledger(azurite, unique_name) -> Ledger:
    return Ledger(azurite.connection_string, unique_name)


def files(n: int) -> list[dict]:
    return [{"name": f"BIBS_{i:02d}.xml", "size": 1000 + i} for i in range(n)]


def blob(azurite, container: str, name: str):
    return BlobServiceClient.from_connection_string(azurite.connection_string).get_blob_client(container, name)


def test_a_job_instance_is_planned_once_in_a_compact_blob(ledger, azurite):
    record, created = ledger.create_plan("881", JOB, files(2), message=MESSAGE)
    assert created and record.state == "pending" and record.planned_at
    assert [f.name for f in record.files] == ["BIBS_00.xml", "BIBS_01.xml"]
    assert record.files[0].info == {"size": 1000} and record.message == MESSAGE

    again, created = ledger.create_plan("881", {"name": "something else"}, files(5), message={"x": 1})
    assert not created
    assert again.job == JOB and len(again.files) == 2 and again.message == MESSAGE
    assert again.etag == record.etag  # nothing was written the second time

    raw = blob(azurite, ledger.container, "jobs/881.json").download_blob().readall()
    assert b'", "' not in raw and b'": ' not in raw  # compact separators
    assert json.loads(raw)["instance_id"] == "881"
    assert [r.instance_id for r in ledger.list_instances()] == ["881"]


def test_bad_plans_are_refused_and_write_nothing(ledger):
    with pytest.raises(ValueError, match="needs a non-empty 'name'"):
        ledger.create_plan("1", JOB, [{"size": 3}])
    with pytest.raises(ValueError, match="planned twice"):
        ledger.create_plan("1", JOB, [{"name": "a"}, {"name": "a"}])
    with pytest.raises(ValueError, match="not a plain id"):
        ledger.create_plan("../1", JOB, files(1))
    with pytest.raises(ValueError, match="unknown state"):
        ledger.mark_instance("1", "exploded")
    with pytest.raises(LedgerError, match="no ledger record for job instance 2"):
        ledger.claim_file("2", "a", "w1", 60)
    assert ledger.get("1") is None and ledger.list_instances() == []


def test_claim_semantics(ledger):
    ledger.create_plan("7", JOB, files(2))
    first = ledger.claim_file("7", "BIBS_00.xml", "w1", 300)
    assert first.state == "running" and first.attempts == 1 and first.worker == "w1" and first.checkpoint is None
    assert ledger.claim_file("7", "BIBS_00.xml", "w2", 300) is None  # leased to a live worker
    with pytest.raises(LedgerError, match="has no file 'nope.xml'"):
        ledger.claim_file("7", "nope.xml", "w1", 300)
    record = ledger.get("7")
    assert record.state == "running" and record.started_at

    assert ledger.finish_file("7", "BIBS_00.xml", {"records_out": 10, "rejected": 1}, worker_id="w1") is False
    assert ledger.claim_file("7", "BIBS_00.xml", "w3", 300) is None  # done is never claimed again
    assert ledger.finish_file("7", "BIBS_00.xml", {"records_out": 99}) is False  # redelivery: no change
    assert ledger.get("7").file("BIBS_00.xml").result == {"records_out": 10, "rejected": 1}

    ledger.claim_file("7", "BIBS_01.xml", "w2", 300)
    assert ledger.finish_file("7", "BIBS_01.xml", {"records_out": 5, "rejected": 0}, worker_id="w2") is True
    record = ledger.get("7")
    assert record.manifest.state == "writing" and record.manifest.worker == "w2"
    assert record.totals() == {"records_out": 15, "rejected": 1}
    assert ledger.claim_manifest("7", "w9") is False  # held by w2
    record = ledger.manifest_written("7", "/out/manifest.json")
    assert record.state == "done" and record.finished_at and record.manifest.state == "done"
    assert ledger.claim_manifest("7", "w9") is False


def test_an_expired_lease_is_claimed_again_and_the_old_worker_is_fenced(ledger, azurite):
    start = 1_800_000_000.0
    at = {"t": start}
    clocked = Ledger(azurite.connection_string, ledger.container, clock=lambda: at["t"])
    clocked.create_plan("9", JOB, files(1))
    assert clocked.claim_file("9", "BIBS_00.xml", "killed", 60).attempts == 1
    clocked.checkpoint_file("9", "BIBS_00.xml", {"records": 500}, worker_id="killed", release=False)
    at["t"] = start + 59
    assert clocked.claim_file("9", "BIBS_00.xml", "w2", 60) is None
    at["t"] = start + 61
    taken = clocked.claim_file("9", "BIBS_00.xml", "w2", 60)
    assert taken.worker == "w2" and taken.attempts == 2 and taken.checkpoint == {"records": 500}
    with pytest.raises(LeaseLost, match="worker killed no longer holds it"):
        clocked.checkpoint_file("9", "BIBS_00.xml", {"records": 600}, worker_id="killed")
    assert clocked.get("9").file("BIBS_00.xml").checkpoint == {"records": 500}


def test_a_poisoned_duplicate_does_not_fail_a_file_held_by_a_live_worker(ledger, azurite):
    start = 1_800_000_000.0
    at = {"t": start}
    clocked = Ledger(azurite.connection_string, ledger.container, clock=lambda: at["t"])
    clocked.create_plan("10", JOB, files(2))
    clocked.claim_file("10", "BIBS_00.xml", "alive", 600)
    assert clocked.fail_file("10", "BIBS_00.xml", "duplicate gave up", 5) is False
    held = clocked.get("10").file("BIBS_00.xml")
    assert held.state == "running" and held.worker == "alive" and held.error == "duplicate gave up"
    assert clocked.fail_file("10", "BIBS_00.xml", "holder gave up", 1, worker_id="alive", retryable=True) is False
    assert clocked.get("10").file("BIBS_00.xml").state == "failed"

    clocked.claim_file("10", "BIBS_01.xml", "killed", 600)  # its worker dies; its message is gone
    clocked.checkpoint_file("10", "BIBS_01.xml", {"records": 7}, worker_id="killed", release=False)
    assert clocked.reset_failed("10") == ["BIBS_00.xml"]  # a live lease is not stuck
    at["t"] = start + 601
    assert clocked.reset_failed("10") == ["BIBS_01.xml"]
    record = clocked.get("10")
    assert [f.state for f in record.files] == ["pending", "pending"]
    assert record.file("BIBS_01.xml").checkpoint is None  # a re-run starts afresh
    assert clocked.claim_file("10", "BIBS_01.xml", "w2", 600).attempts == 2


def test_a_checkpoint_hands_the_file_to_the_continuation(ledger):
    ledger.create_plan("5", JOB, files(1))
    ledger.claim_file("5", "BIBS_00.xml", "w1", 300)
    state = ledger.checkpoint_file("5", "BIBS_00.xml", {"offset": 4096, "session": "s1"}, worker_id="w1")
    assert state.state == "pending" and state.worker is None
    resumed = ledger.claim_file("5", "BIBS_00.xml", "w2", 300)
    assert resumed.checkpoint == {"offset": 4096, "session": "s1"}
    assert resumed.attempts == 1 and resumed.continuations == 1
    assert ledger.finish_file("5", "BIBS_00.xml", {"records_out": 3}, worker_id="w2") is True
    done = ledger.get("5").file("BIBS_00.xml")
    assert done.checkpoint is None and done.finished_at and done.state == "done"


def test_failures_settle_the_instance_and_reset_failed_reopens_it(ledger):
    ledger.create_plan("3", JOB, files(2), message=MESSAGE)
    ledger.claim_file("3", "BIBS_00.xml", "w1", 300)
    assert ledger.fail_file("3", "BIBS_00.xml", "SFTP timed out", 1, retryable=True, worker_id="w1") is False
    assert ledger.claim_file("3", "BIBS_00.xml", "w1", 300).attempts == 2  # retryable: claimable
    assert ledger.fail_file("3", "BIBS_00.xml", "x" * 5000, 5, worker_id="w1") is False  # the other file is not settled
    assert ledger.claim_file("3", "BIBS_00.xml", "w1", 300) is None  # failed for good
    failed = ledger.get("3").file("BIBS_00.xml")
    assert failed.attempts == 5 and len(failed.error) == 2000 and not failed.retryable

    ledger.claim_file("3", "BIBS_01.xml", "w2", 300)
    assert ledger.finish_file("3", "BIBS_01.xml", {"records_out": 4}) is True  # settles the instance
    assert ledger.manifest_written("3", "dropbox:/x/manifest.json").state == "failed"
    assert ledger.fail_file("3", "BIBS_01.xml", "late poison", 5) is False  # done stays done

    assert ledger.reset_failed("3") == ["BIBS_00.xml"]
    record = ledger.get("3")
    assert record.state == "running" and record.finished_at is None and record.manifest.state == "pending"
    assert record.file("BIBS_00.xml").error.startswith("xxx")  # the last error stays for the record
    assert ledger.claim_file("3", "BIBS_00.xml", "w3", 300).attempts == 6
    assert ledger.finish_file("3", "BIBS_00.xml", {"records_out": 6}) is True
    assert ledger.manifest_written("3", "dropbox:/x/manifest.json").state == "done"
    assert ledger.reset_failed("3") == []


def test_a_job_that_failed_before_planning_keeps_its_message_and_can_be_planned(ledger):
    ledger.mark_instance("4", "failed", message=MESSAGE, error="Alma said 402218", attempts=5)
    record = ledger.get("4")
    assert record.state == "failed" and record.message == MESSAGE and record.info["error"] == "Alma said 402218"
    assert record.planned_at is None and record.finished_at
    assert ledger.reset_failed("4") == [] and ledger.get("4").state == "pending"
    planned, created = ledger.create_plan("4", JOB, files(1))
    assert created and planned.message == MESSAGE and planned.info["attempts"] == 5


def test_exactly_one_finisher_when_the_last_files_finish_at_once(ledger):
    n = 10
    ledger.create_plan("6", JOB, files(n))
    for i in range(n):
        assert ledger.claim_file("6", f"BIBS_{i:02d}.xml", f"w{i}", 300)
    barrier = threading.Barrier(n)
    answers: dict[int, bool] = {}

    def finish(i: int) -> None:
        barrier.wait()
        answers[i] = ledger.finish_file("6", f"BIBS_{i:02d}.xml", {"records_out": i}, worker_id=f"w{i}")

    threads = [threading.Thread(target=finish, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(answers) == list(range(n))
    winners = [i for i, won in answers.items() if won]
    assert len(winners) == 1
    record = ledger.get("6")
    assert record.manifest.worker == f"w{winners[0]}" and record.totals() == {"records_out": sum(range(n))}
    assert all(f.state == "done" for f in record.files)


def test_racing_claims_give_the_file_to_one_worker(ledger):
    ledger.create_plan("8", JOB, files(1))
    barrier = threading.Barrier(6)
    got: list[str] = []

    def claim(i: int) -> None:
        barrier.wait()
        if ledger.claim_file("8", "BIBS_00.xml", f"w{i}", 300) is not None:
            got.append(f"w{i}")

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 1 and ledger.get("8").file("BIBS_00.xml").worker == got[0]


INCREMENT = """
import sys
from pipeline.ledger import Ledger
conn, container, tag, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
ledger = Ledger(conn, container)
def bump(record, token):
    record.info["count"] = record.info.get("count", 0) + 1
    record.info.setdefault("tokens", []).append(token)
for i in range(n):
    ledger.update("42", lambda r, i=i: bump(r, f"{tag}-{i}"))
"""


def test_concurrent_updates_from_threads_and_processes_lose_nothing(ledger, azurite):
    ledger.create_plan("42", JOB, files(1))
    procs = [
        subprocess.Popen([sys.executable, "-c", INCREMENT, azurite.connection_string, ledger.container, f"p{p}", "20"],
                         cwd=ROOT, stderr=subprocess.PIPE, text=True)
        for p in range(2)
    ]

    def bump(tag: str) -> None:
        for i in range(10):
            token = f"{tag}-{i}"
            ledger.update("42", lambda r, token=token: (
                r.info.__setitem__("count", r.info.get("count", 0) + 1),
                r.info.setdefault("tokens", []).append(token)))

    threads = [threading.Thread(target=bump, args=(f"t{t}",)) for t in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    info = ledger.get("42").info
    expected = {f"p{p}-{i}" for p in range(2) for i in range(20)} | {f"t{t}-{i}" for t in range(3) for i in range(10)}
    assert info["count"] == 70 and len(info["tokens"]) == 70 and set(info["tokens"]) == expected


def test_the_retry_loop_is_bounded(ledger, azurite):
    ledger.create_plan("11", JOB, files(1))
    other = Ledger(azurite.connection_string, ledger.container)
    bounded = Ledger(azurite.connection_string, ledger.container, max_attempts=3)
    calls = []

    def always_overtaken(record: JobRecord) -> None:
        calls.append(1)
        other.mark_instance("11", "running", n=len(calls))  # someone else writes in between, every time
        record.info["mine"] = True

    with pytest.raises(LedgerConflict, match="gave up after 3 conflicting writes"):
        bounded.update("11", always_overtaken)
    record = ledger.get("11")
    assert len(calls) == 3 and record.info == {"n": 3}  # the other writer's updates are all there


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"{not json", "is not valid JSON"),
        (b"\xff\xfe", "is not valid JSON"),
        (b"[1, 2]", "top level is not an object"),
        (b'{"schema": 1, "instance_id": "13", "state": "lost"}', "unknown state 'lost'"),
        (b'{"schema": 1, "instance_id": "13", "surprise": 1}', "unknown keys ['surprise']"),
        (b'{"schema": 99, "instance_id": "13"}', "schema 99, expected 1"),
        (b'{"schema": 1, "instance_id": "14"}', "holds instance '14'"),
    ],
)
def test_a_bad_ledger_blob_is_a_clear_error_and_is_left_alone(ledger, azurite, content, message, caplog):
    ledger.create_plan("12", JOB, files(1))  # creates the container, and a good neighbour
    target = blob(azurite, ledger.container, "jobs/13.json")
    target.upload_blob(content)
    with pytest.raises(LedgerError, match=re.escape(message)) as err:
        ledger.get("13")
    assert f"{ledger.container}/jobs/13.json" in str(err.value) and "fix or delete" in str(err.value)
    with pytest.raises(LedgerError, match=re.escape(message)):
        ledger.claim_file("13", "BIBS_00.xml", "w1", 60)
    assert target.download_blob().readall() == content
    assert [r.instance_id for r in ledger.list_instances()] == ["12"]
    assert "jobs/13.json" in caplog.text


def test_from_settings_uses_the_storage_setting(clean_env, unique_name):
    ledger = Ledger.from_settings(unique_name)
    ledger.mark_instance("1", "pending")
    assert ledger.get("1").state == "pending"
    clean_env.delenv("AzureWebJobsStorage")
    with pytest.raises(settings.SettingError, match="AzureWebJobsStorage__accountName"):
        Ledger.from_settings()


# ---- python -m pipeline requeue ------------------------------------------------------------------


def sample_message() -> dict:
    """The message the webhook makes of the bundled sample event (so the test follows its schema)."""
    from pipeline import events

    event = events.parse_event((ROOT / "samples" / "events" / "job_end.json").read_bytes())
    return json.loads(events.serialize_message(events.job_message(event, "2026-11-20T03:12:46.000Z")))


@pytest.fixture
def queue_name(unique_name) -> str:
    return unique_name + "q"


def received(azurite, queue_name: str) -> list[str]:
    """Raw message texts as the Functions host would see them on the wire."""
    from azure.storage.queue import QueueClient

    queue = QueueClient.from_connection_string(azurite.connection_string, queue_name)
    try:
        return [m.content for m in queue.receive_messages(max_messages=32)]
    except ResourceNotFoundError:  # never created: nothing was sent
        return []


def test_requeue_resets_failed_files_and_sends_the_original_message_base64(
        ledger, azurite, clean_env, queue_name, capsys):
    message = sample_message()
    iid = message["instance_id"]
    ledger.create_plan(iid, JOB, files(3), message=message)
    for i, outcome in enumerate(["done", "failed", "failed"]):
        name = f"BIBS_{i:02d}.xml"
        ledger.claim_file(iid, name, "w1", 300)
        if outcome == "done":
            ledger.finish_file(iid, name, {"records_out": 1})
        else:
            ledger.fail_file(iid, name, "boom", 5, worker_id="w1")
    ledger.manifest_written(iid, "out/manifest.json")

    argv = ["requeue", iid, "--queue", queue_name, "--container", ledger.container]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"job instance {iid}: 2 failed file(s) reset to pending: BIBS_01.xml, BIBS_02.xml" in out
    assert f"sent to queue {queue_name}" in out
    record = ledger.get(iid)
    assert [f.state for f in record.files] == ["done", "pending", "pending"]
    assert record.state == "running" and record.manifest.state == "pending"
    wire = received(azurite, queue_name)
    assert len(wire) == 1
    assert json.loads(base64.b64decode(wire[0], validate=True)) == message  # base64, as the host requires

    assert main(["requeue", "--list", "--container", ledger.container]) == 0
    listing = capsys.readouterr().out
    assert iid in listing and "running" in listing and "1/3" in listing


def test_requeue_of_a_job_that_failed_before_planning(ledger, azurite, clean_env, queue_name, capsys):
    message = sample_message()
    ledger.mark_instance(message["instance_id"], "failed", message=message, error="Alma API 503")
    assert main(["requeue", message["instance_id"], "--queue", queue_name, "--container", ledger.container]) == 0
    assert "0 failed file(s) reset" in capsys.readouterr().out
    assert ledger.get(message["instance_id"]).state == "pending"
    assert len(received(azurite, queue_name)) == 1


def test_requeue_refuses_what_it_cannot_send_and_changes_nothing(ledger, azurite, clean_env, queue_name, capsys):
    base = ["--queue", queue_name, "--container", ledger.container]
    assert main(["requeue", "404", *base]) == 1
    assert "no ledger record for job instance 404" in capsys.readouterr().err

    ledger.create_plan("500", JOB, files(1))  # planned without the original message
    assert main(["requeue", "500", *base]) == 1
    assert "has no original queue message" in capsys.readouterr().err

    ledger.create_plan("501", JOB, files(1), message={"v": 7, "instance_id": "501"})
    ledger.claim_file("501", "BIBS_00.xml", "w", 60)
    ledger.fail_file("501", "BIBS_00.xml", "boom", 5, worker_id="w")
    assert main(["requeue", "501", *base]) == 1
    assert "stored message of job instance 501 is unusable: queue message version 7" in capsys.readouterr().err
    assert ledger.get("501").file("BIBS_00.xml").state == "failed"  # untouched

    message = sample_message()
    ledger.create_plan("502", JOB, files(1), message=message)
    assert main(["requeue", "502", *base]) == 1
    assert f"names instance {message['instance_id']}" in capsys.readouterr().err

    assert main(["requeue", "../x", *base]) == 1
    assert "not a plain id" in capsys.readouterr().err
    assert main(["requeue", *base]) == 2 and main(["requeue", "1", "--list", *base]) == 2
    assert received(azurite, queue_name) == []


def test_requeue_of_a_done_job_sends_nothing_unless_forced(ledger, azurite, clean_env, queue_name, capsys):
    message = sample_message()
    iid = message["instance_id"]
    ledger.create_plan(iid, JOB, files(1), message=message)
    ledger.claim_file(iid, "BIBS_00.xml", "w", 60)
    assert ledger.finish_file(iid, "BIBS_00.xml", {"records_out": 1})
    ledger.manifest_written(iid, "out/manifest.json")
    base = ["--queue", queue_name, "--container", ledger.container]
    assert main(["requeue", iid, *base]) == 0
    assert "is done: nothing to re-run" in capsys.readouterr().out
    assert received(azurite, queue_name) == []
    assert main(["requeue", iid, "--force", *base]) == 0
    assert len(received(azurite, queue_name)) == 1 and ledger.get(iid).state == "done"
