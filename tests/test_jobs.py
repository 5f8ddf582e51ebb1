"""The job service with the real engine, real local folders and the in-memory ledger: each finding of
issue #11 that the service owns, as it was found (it failed before) and as it must behave now.
pymarc is the oracle for what the outputs hold."""

from __future__ import annotations

import io
import json
import logging
import tarfile
from pathlib import Path

import pymarc
import pytest

from pipeline import events, webhook, worker
from pipeline.destinations.base import DestinationError
from pipeline.destinations.local import LocalDestination
from pipeline.jobs import MANIFEST, MANIFEST_LEASE, JobService
from pipeline.ledger import Ledger, MemoryStore
from pipeline.marc.engine import Input, process
from pipeline.messages import FileMessage
from tests import marcgen

JOB_ID, JOB_NAME = "S5139276810004146", "Export Bibliographic Records"
END = "2026-11-20T03:12:44.870Z"


class Alma:
    """Answers get_job_instance like the Alma API: the instance, finished, with its file stem."""

    def __init__(self, stem: str) -> None:
        self.stem = stem

    def __enter__(self) -> Alma:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def get_job_instance(self, job_id: str, instance_id: str) -> dict:
        return {"id": instance_id, "name": JOB_NAME, "end_time": END, "status": {"value": "COMPLETED_SUCCESS"},
                "job_info": {"id": job_id, "name": JOB_NAME},
                "counter": [{"type": {"value": "c.jobs.bibExport.link"}, "value": self.stem}]}


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def job_body(instance_id: str) -> bytes:
    message = events.JobMessage(event_id=f"e{instance_id}", action="JOB_END", institution="01XYZ_INST",
                                job_id=JOB_ID, instance_id=instance_id, job_name=JOB_NAME, instance_name=JOB_NAME,
                                status="COMPLETED_SUCCESS", end_time=END, counters={"c.jobs.bibExport.link": "x"},
                                received_at=END)
    return events.serialize_message(message).encode()


@pytest.fixture
def env(clean_env, tmp_path):
    exports = tmp_path / "exports"
    exports.mkdir()
    clean_env.setenv("EXPORT_SOURCE", str(exports))
    clean_env.setenv("DESTINATION", str(tmp_path / "out" / "{job_name}" / "{date}"))
    clean_env.delenv("AzureWebJobsStorage")  # the service needs no Azure storage with the in-memory ledger
    return exports


def make_service(stem: str, ledger: Ledger, **kw) -> JobService:
    return JobService(ledger, alma_factory=lambda: Alma(stem), worker_id=kw.pop("worker_id", "w1"), **kw)


def plan(service: JobService, instance_id: str) -> list[FileMessage]:
    return service.plan(events.parse_queue_message(job_body(instance_id)), json.loads(job_body(instance_id)))


def run_all(service: JobService, messages: list[FileMessage], budget: float = 1e9) -> None:
    while messages:
        messages = messages[1:] + service.run_file(messages[0], budget)


def marc_records(path: Path) -> int:
    """How many records pymarc (the oracle) reads from an output, by its extension."""
    if path.suffix == ".xml":
        return len(pymarc.parse_xml_to_array(str(path)))
    if path.suffix == ".json":
        return sum(len(list(pymarc.JSONReader(line))) for line in path.read_text().splitlines() if line.strip())
    with path.open("rb") as fh:
        return sum(1 for _ in pymarc.MARCReader(fh))


# ---- finding 1: a job stranded without manifest ---------------------------------------------------------


class FailingManifest(LocalDestination):
    failures = 0

    def write_bytes(self, relpath: str, data: bytes):
        if relpath == MANIFEST and FailingManifest.failures:
            FailingManifest.failures -= 1
            raise DestinationError("simulated: the manifest upload failed")
        return super().write_bytes(relpath, data)


def test_a_failed_manifest_write_is_released_and_the_next_delivery_completes_the_job(env):
    marcgen.write_marcxml(env / "B_1.xml", marcgen.records(5, seed=1), namespace=False)
    ledger = Ledger.in_memory()
    service = make_service("B", ledger, destination_factory=lambda url: FailingManifest.from_url(url))
    FailingManifest.failures = 1
    (msg,) = plan(service, "1001")
    with pytest.raises(Exception, match="manifest not written"):
        service.run_file(msg, 1e9)
    record = ledger.get("1001")
    assert record.settled() and record.state == "running"
    assert record.manifest.state == "pending" and "manifest upload failed" in record.info["manifest_error"]
    assert service.run_file(msg, 1e9) == []  # the host's retry of the same message finishes the job
    record = ledger.get("1001")
    assert record.state == "done" and record.manifest.state == "done"
    assert json.loads(Path(record.manifest.location).read_text())["state"] == "done"


def test_a_worker_dying_before_the_manifest_is_completed_after_the_lease_by_a_delivery_or_the_sweeper(env):
    marcgen.write_marcxml(env / "B_1.xml", marcgen.records(5, seed=1), namespace=False)
    for completer in ("delivery", "sweeper"):
        clock = Clock()
        ledger = Ledger.in_memory(clock=clock)

        def die(point: str) -> None:
            if point == "settled":
                raise KeyboardInterrupt  # the process is gone: nothing in the flow may catch this

        dying = make_service("B", ledger, fault=die, worker_id="dies")
        iid = "1002" if completer == "delivery" else "1003"
        (msg,) = plan(dying, iid)
        with pytest.raises(KeyboardInterrupt):
            dying.run_file(msg, 1e9)
        assert ledger.get(iid).manifest.state == "writing"  # held by the dead worker
        other = make_service("B", ledger, worker_id="other")
        if completer == "delivery":
            assert other.run_file(msg, 1e9) == []
            assert ledger.get(iid).manifest.state == "writing"  # within the lease: its writer may be alive
            clock.now += MANIFEST_LEASE + 1
            assert other.run_file(msg, 1e9) == []
        else:
            assert other.sweep(stale_after=100) == []
            assert ledger.get(iid).state == "running"
            clock.now += MANIFEST_LEASE + 1
            assert other.sweep(stale_after=100) == []
        record = ledger.get(iid)
        assert record.state == "done" and record.manifest.state == "done" and record.manifest.location


def test_the_sweeper_continues_a_job_whose_messages_are_gone_and_fails_it_after_bounded_resends(env):
    marcgen.write_marcxml(env / "B_1.xml", marcgen.records(5, seed=1), namespace=False)
    marcgen.write_marcxml(env / "B_2.xml", marcgen.records(5, seed=2), namespace=False)
    clock = Clock()
    ledger = Ledger.in_memory(clock=clock)
    service = make_service("B", ledger, clock=clock)
    first, second = plan(service, "1004")
    run_all(service, [first])  # the second file's message is lost (its worker's process was killed)
    assert service.sweep(stale_after=300) == []  # not stale yet
    clock.now += 301
    (resent,) = service.sweep(stale_after=300)
    assert resent == FileMessage("1004", "B_2.xml", JOB_ID)
    run_all(service, [resent])
    assert ledger.get("1004").state == "done"

    marcgen.write_marcxml(env / "B_3.xml", marcgen.records(5, seed=3), namespace=False)
    assert len(plan(service, "1005")) == 3  # and every one of these messages is lost
    for _ in range(10):  # its messages keep getting lost: after the bounded re-sends, it fails
        clock.now += 301
        service.sweep(stale_after=300)
    record = ledger.get("1005")
    assert record.state == "failed" and record.manifest.state == "done"
    assert all(f.state == "failed" and "re-sends by the sweeper" in f.error for f in record.files)


# ---- finding 2: outputs overwriting each other inside one job -----------------------------------------


def test_same_stem_files_get_distinct_outputs_identical_to_process(env, tmp_path):
    marcgen.write_marcxml(env / "COLL_1.xml", marcgen.records(30, seed=1), namespace=False)
    marcgen.write_marc21(env / "COLL_1.mrc", marcgen.records(20, seed=2, start=30))
    ledger = Ledger.in_memory()
    service = make_service("COLL", ledger)
    run_all(service, plan(service, "2001"), budget=0.0001)  # continuations too
    record = ledger.get("2001")
    assert record.state == "done"
    folder = Path(record.job["destination"])
    outputs = sorted(p.name for p in folder.iterdir() if p.name != MANIFEST)
    assert outputs == ["COLL_1-2.xml", "COLL_1.xml"]
    assert sum(marc_records(folder / n) for n in outputs) == 50  # no record lost
    manifest = json.loads((folder / MANIFEST).read_text())
    paths = [o["path"] for f in manifest["files"] for o in f["outputs"]]
    assert len(paths) == len(set(paths)) == 2

    expected = tmp_path / "process"
    names = [f["name"] for f in manifest["files"]]
    process([Input.from_path(env / n) for n in names], LocalDestination(expected), fmt="marcxml")
    for name in outputs:
        assert (folder / name).read_bytes() == (expected / name).read_bytes()  # named and written as process does


def _tar(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_an_archive_member_called_manifest_does_not_become_the_jobs_manifest(env, clean_env):
    clean_env.setenv("OUTPUT_FORMAT", "json")
    _tar(env / "T_1.tar.gz", {"manifest.xml": marcgen.marcxml_bytes(marcgen.records(7, seed=1)),
                              "report.xml": marcgen.marcxml_bytes(marcgen.records(3, seed=2)),
                              "empty.xml": b""})
    ledger = Ledger.in_memory()
    service = make_service("T", ledger)
    run_all(service, plan(service, "2002"))
    record = ledger.get("2002")
    folder = Path(record.job["destination"])
    assert sorted(p.name for p in folder.iterdir()) == ["manifest-2.json", "manifest.json", "report-2.json"]
    assert marc_records(folder / "manifest-2.json") == 7 and marc_records(folder / "report-2.json") == 3
    assert json.loads((folder / MANIFEST).read_text())["instance_id"] == "2002"  # the job's own manifest


# ---- finding 3: jobs overwriting each other's manifests ----------------------------------------------


def test_two_instances_of_the_same_job_on_the_same_day_never_share_a_folder(env):
    marcgen.write_marcxml(env / "B_1.xml", marcgen.records(5, seed=1), namespace=False)
    ledger = Ledger.in_memory()
    service = make_service("B", ledger)
    for iid in ("3001", "3002"):
        run_all(service, plan(service, iid))
    one, two = ledger.get("3001"), ledger.get("3002")
    assert one.job["destination"].endswith("/2026-11-20/3001") and two.job["destination"].endswith("/2026-11-20/3002")
    for record in (one, two):
        assert json.loads(Path(record.manifest.location).read_text())["instance_id"] == record.instance_id


@pytest.mark.parametrize("destination", ["", "out/{job_name}", "file://relative/x"])
def test_under_the_functions_host_a_relative_destination_fails_the_job_at_planning(env, clean_env, destination):
    clean_env.setenv("FUNCTIONS_WORKER_RUNTIME", "python")
    clean_env.setenv("DESTINATION", destination) if destination else clean_env.delenv("DESTINATION")
    ledger = Ledger.in_memory()
    assert plan(make_service("B", ledger), "3003") == []  # failed at once, not retried
    record = ledger.get("3003")
    assert record.state == "failed" and "setting DESTINATION" in record.info["error"]
    assert "absolute" in record.info["error"]


# ---- finding 4: ids the ledger would refuse are refused where they enter --------------------------------


@pytest.mark.parametrize(("path", "value"), [(("job_instance", "id"), "88/16"),
                                             (("job_instance", "job_info", "id"), "../S1"),
                                             (("job_instance", "id"), "x" * 201)])
def test_the_webhook_refuses_ids_the_ledger_would_refuse(clean_env, path, value):
    import base64
    import hashlib
    import hmac

    event = json.loads((Path(__file__).resolve().parents[1] / "samples" / "events" / "job_end.json").read_text())
    target = event
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    body = json.dumps(event).encode()
    signature = base64.b64encode(hmac.new(b"s", body, hashlib.sha256).digest()).decode()
    result = webhook.handle("POST", {}, {"X-Exl-Signature": signature, "Content-Type": "application/json"}, body,
                            environ={"ALMA_WEBHOOK_SECRET": "s"})
    assert result.response.status == 400 and result.message is None
    assert "is not a plain id" in result.response.text and ".".join(path) in result.response.text


# ---- finding 5: an archive of empty members ---------------------------------------------------------------


def test_an_archive_of_twenty_thousand_empty_members_fails_clearly_and_stays_small(env):
    _tar(env / "E_1.tar.gz", {f"m{i}.xml": b"" for i in range(20_000)})
    assert (env / "E_1.tar.gz").stat().st_size < 200_000
    ledger = Ledger.in_memory()
    service = make_service("E", ledger)
    (msg,) = plan(service, "5001")
    with pytest.raises(Exception, match=r"more than 10000 members \(MAX_ARCHIVE_MEMBERS\)"):
        service.run_file(msg, 1e9)
    service.file_poisoned(msg, 5)
    record = ledger.get("5001")
    assert record.state == "failed" and len(record.to_json()) < 20_000
    folder = Path(record.job["destination"])
    assert sorted(p.name for p in folder.iterdir()) == ["E_1.tar.gz_FAILED.json", MANIFEST]
    assert (folder / MANIFEST).stat().st_size < 20_000


def test_archive_members_without_records_write_no_output_and_the_member_list_is_bounded(env, clean_env):
    clean_env.setenv("MAX_ARCHIVE_MEMBERS", "500")
    members = {f"m{i:03d}.xml": b"" for i in range(300)}
    members["data.xml"] = marcgen.marcxml_bytes(marcgen.records(4, seed=1))
    _tar(env / "E_1.tar.gz", members)
    ledger = Ledger.in_memory()
    service = make_service("E", ledger)
    run_all(service, plan(service, "5002"))
    record = ledger.get("5002")
    folder = Path(record.job["destination"])
    assert sorted(p.name for p in folder.iterdir()) == ["data.xml", MANIFEST]
    (f,) = record.files
    assert len(f.result["members"]) == 100 and f.result["members_total"] == 301


# ---- finding 6: the poison handlers and the host -------------------------------------------------------------


class BrokenStore(MemoryStore):
    def read(self, key: str):
        raise OSError("simulated: storage unreachable")


def test_poison_handlers_never_raise_and_log_the_ids(clean_env, caplog):
    ctx = worker.Context(ledger_factory=lambda: Ledger(store=BrokenStore()), poison_retry_delays=(0.0,))
    caplog.set_level(logging.ERROR)
    file_body = FileMessage("6001", "B_1.xml", JOB_ID).to_json()
    assert worker.export_failed(file_body, "alma-export-files", dequeue_count=5, ctx=ctx) is None
    assert worker.export_failed(job_body("6002"), "alma-export-jobs", dequeue_count=5, ctx=ctx) is None
    assert worker.export_failed(b"\xff not json", "alma-export-files", ctx=ctx) is None
    text = caplog.text
    assert "6001" in text and "B_1.xml" in text and "6002" in text and "storage unreachable" in text


def test_a_poison_message_for_a_done_file_is_not_reported_as_a_failure(env, caplog):
    marcgen.write_marcxml(env / "B_1.xml", marcgen.records(5, seed=1), namespace=False)
    ledger = Ledger.in_memory()
    service = make_service("B", ledger)
    (msg,) = plan(service, "6003")
    run_all(service, [msg])
    caplog.set_level(logging.INFO)
    worker.export_failed(msg.to_json(), "alma-export-files", dequeue_count=5,
                         ctx=worker.Context(ledger_factory=lambda: ledger))
    assert "FAILED" not in caplog.text and not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "which is done" in caplog.text and ledger.get("6003").state == "done"


def test_committing_an_output_removes_what_a_killed_writer_of_it_left(tmp_path):
    dest = LocalDestination(tmp_path)
    killed = dest.open("BIBS_1.xml")
    killed.write(b"half of it")  # then SIGKILL: no abort, no commit
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".part")]
    again = dest.open("BIBS_1.xml")
    again.write(b"all of it")
    again.commit()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["BIBS_1.xml"]
    assert (tmp_path / "BIBS_1.xml").read_bytes() == b"all of it"
