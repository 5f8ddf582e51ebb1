"""The job flow under every interleaving hypothesis finds: a rule-based state machine over the job
service with the in-memory ledger store.

Two job instances of the same job ending the same day (so the same default folder), with file names
chosen to collide (`C_1.xml` and `C_1.mrc`, an archive member called `manifest.xml`), go through a
model of the queues: deliveries in any order, duplicates, workers killed between any two steps of
the flow, clocks jumping past leases, a failed manifest write, a failed ledger write, poison
messages and sweeps. The engine is replaced by a small runner that names outputs exactly as the
engine does and stops when the time budget says so; the engine itself is proven by the end-to-end
tests. After every run the queues are drained with sweeps, and the promises are checked:

- every planned file ends `done` or `failed`, and every job `done` or `failed`, within a bounded
  number of sweeps (no job stays `running`);
- each instance has exactly one manifest, listing every file once and every output once;
- no output path is written by two files or two instances, nor equal to a control file;
- every done file's outputs hold all its records (nothing lost or overwritten).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from pipeline import events, worker
from pipeline.destinations.base import DestinationError
from pipeline.jobs import FAILED, MANIFEST, SWEEP_MAX_RESENDS, FileOutcome, FileWork, JobService
from pipeline.ledger import Ledger, MemoryStore
from pipeline.marc.detect import stem_of
from pipeline.marc.engine import _unique
from pipeline.plan import natural_key
from pipeline.queues import FILES_QUEUE, JOBS_QUEUE
from pipeline.sources.base import SourceEntry

JOB_ID, JOB_NAME, STEM = "S5139276810004146", "Export Bibliographic Records", "C"
MAX_DEQUEUE = 3
BUDGET = 2.5  # seconds of the fake clock; the runner spends one per record
STALE_AFTER = 100.0
POINTS = ("planned", "claimed", "processed", "settled", "manifest claimed", "manifest written", "swept")

# Export files: name -> members (member name, records). The archive's members are named to collide
# with another file's output (C_1), with the job's manifest, and one has no records at all.
FILES: dict[str, list[tuple[str, int]]] = {
    "C_1.xml": [("C_1.xml", 4)],
    "C_1.mrc": [("C_1.mrc", 3)],
    "C_2.xml": [("C_2.xml", 0)],
    "C_3.tar": [("C_3.tar/manifest.xml", 2), ("C_3.tar/C_1.xml", 1), ("C_3.tar/empty.xml", 0),
                ("C_3.tar/report.xml", 1)],
}


class Killed(BaseException):
    """The worker process died here (not an Exception: nothing in the flow may catch it)."""


class StoreDown(OSError):
    """A ledger write that failed (storage unavailable)."""


class FlakyStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.fail_writes = 0

    def write(self, key: str, data: bytes, etag: str | None) -> str:
        if self.fail_writes:
            self.fail_writes -= 1
            raise StoreDown("simulated storage error")
        return super().write(key, data, etag)


class Files:
    """Every destination's files in one dict, with who wrote each path."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.writers: dict[str, set[tuple[str, str]]] = {}
        self.fail_manifest = 0

    def destination(self, url: str) -> Any:
        files = self

        class Destination:
            def __init__(self) -> None:
                self.url = url

            def write_bytes(self, relpath: str, data: bytes, writer: str | None = None) -> Any:
                if relpath == MANIFEST and files.fail_manifest:
                    files.fail_manifest -= 1
                    raise DestinationError("simulated failed manifest write")
                path = f"{url}/{relpath}"
                files.data[path] = data
                files.writers.setdefault(path, set()).add((url, writer or relpath))
                return SimpleNamespace(path=path)

            def delete(self, relpath: str) -> bool:
                return files.data.pop(f"{url}/{relpath}", None) is not None

        return Destination()


class Source:
    def __init__(self) -> None:
        self.location = "memory"

    def list(self) -> list[SourceEntry]:
        return [SourceEntry(name, 100) for name in FILES]

    def close(self) -> None:
        pass


class Alma:
    def __init__(self, end_time: str) -> None:
        self.end_time = end_time

    def __enter__(self) -> Alma:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def get_job_instance(self, job_id: str, instance_id: str) -> dict[str, Any]:
        return {"id": instance_id, "name": f"{JOB_NAME} - nightly", "end_time": self.end_time,
                "status": {"value": "COMPLETED_SUCCESS"}, "job_info": {"id": job_id, "name": JOB_NAME},
                "counter": [{"type": {"value": "c.jobs.bibExport.link"}, "value": STEM}]}


def record_line(file: str, member: str, i: int) -> bytes:
    return f"{file}|{member}|{i}\n".encode()


@dataclass
class Clock:
    now: float = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Message:
    body: bytes
    queue: str
    dequeue: int = 0
    id: int = field(default=0)


def job_body(instance_id: str, end_time: str) -> bytes:
    message = events.JobMessage(event_id=f"e{instance_id}", action="JOB_END", institution="01XYZ_INST",
                                job_id=JOB_ID, instance_id=instance_id, job_name=JOB_NAME,
                                instance_name=f"{JOB_NAME} - nightly", status="COMPLETED_SUCCESS", end_time=end_time,
                                counters={"c.jobs.bibExport.link": STEM}, received_at=end_time)
    return events.serialize_message(message).encode("utf-8")


class JobFlow(RuleBasedStateMachine):
    """The queues, the workers and the sweeper, with faults anywhere."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock()
        self.store = FlakyStore()
        self.ledger = Ledger(store=self.store, clock=self.clock)
        self.files = Files()
        self.queue: list[Message] = []
        self.poison: list[Message] = []
        self.kill_at: str | None = None
        self.instances = ["8816243980004146", "8816243980004147"]
        self.end_time = "2026-11-20T03:12:44.870Z"
        self.next_id = 0

    # ---- the world the service talks to -------------------------------------------------------------

    def fault(self, point: str) -> None:
        if self.kill_at == point:
            self.kill_at = None
            raise Killed(point)

    def runner(self, work: FileWork) -> FileOutcome:
        """The engine's naming (stems unique against `used_stems`, archive members without records
        write nothing) and its budget (stop at a record boundary once a record is done)."""
        used = set(work.used_stems)
        index, done_now, outputs, stopped = 0, 0, [], None
        members = FILES[work.name]
        for member, count in members:
            stem = _unique(stem_of(member), used)
            first, index = index, index + count
            if count == 0 and "/" in member:
                continue  # an archive member without records writes nothing
            if (count and index <= work.start_record) or (not count and first < work.start_record):
                continue  # written by an earlier invocation
            for i in range(max(first, work.start_record), index):
                if done_now and work.should_stop():
                    stopped = i
                    break
                self.clock.now += 1.0
                done_now += 1
            if stopped is not None:
                break
            data = b"".join(record_line(work.name, member, i) for i in range(first, index))
            path = work.destination.write_bytes(f"{stem}.xml", data, writer=work.name).path
            outputs.append({"path": path, "size": len(data)})
        complete = stopped is None
        summary = {"records_in": done_now, "records_out": done_now, "rejected": 0, "dropped": 0, "bytes_in": 0,
                   "seconds": 0.0, "input_format": "marcxml", "members": [m for m, _ in members], "outputs": outputs}
        return FileOutcome(complete, index if complete else stopped, None, summary, {})

    def service(self) -> JobService:
        return JobService(self.ledger, alma_factory=lambda: Alma(self.end_time), source_factory=lambda url: Source(),
                          destination_factory=self.files.destination, worker_id=f"w{self.next_id}",
                          clock=self.clock, runner=self.runner, fault=self.fault)

    def context(self) -> Any:
        flow = self

        class Context(worker.Context):
            def service(self) -> JobService:
                return flow.service()

        return Context(ledger_factory=lambda: self.ledger, poison_retry_delays=(0.0,))

    # ---- the host: deliveries, retries, poison ---------------------------------------------------------

    def send(self, body: bytes | str, queue: str) -> None:
        self.next_id += 1
        self.queue.append(Message(body.encode() if isinstance(body, str) else body, queue, 0, self.next_id))

    def deliver_one(self, message: Message) -> None:
        self.queue.remove(message)
        message.dequeue += 1
        ctx = self.context()
        try:
            if message.queue == JOBS_QUEUE:
                out = worker.plan_export(message.body, dequeue_count=message.dequeue, max_dequeue=MAX_DEQUEUE,
                                         ctx=ctx)
            else:
                out = worker.process_export_file(message.body, dequeue_count=message.dequeue, ctx=ctx,
                                                 budget=BUDGET)
        except (Exception, Killed):
            if message.dequeue >= MAX_DEQUEUE:
                self.poison.append(message)
            else:
                self.queue.append(message)
            return
        for body in out:
            self.send(body, FILES_QUEUE)

    def deliver_poison(self, message: Message) -> None:
        try:
            worker.export_failed(message.body, message.queue, dequeue_count=message.dequeue, ctx=self.context())
        except Killed:
            return  # the message comes back: there is no poison queue for a poison queue
        self.poison.remove(message)  # it returned, so the host deletes the message

    def sweep_once(self) -> None:
        try:
            out = worker.sweep_jobs(ctx=self.context(), stale_after=STALE_AFTER)
        except Killed:
            return
        for body in out:
            self.send(body, FILES_QUEUE)

    # ---- rules ----------------------------------------------------------------------------------------

    @initialize(both=st.booleans())
    def jobs_end(self, both: bool) -> None:
        for iid in self.instances[:2 if both else 1]:
            self.send(job_body(iid, self.end_time), JOBS_QUEUE)
        self.instances = self.instances[:2 if both else 1]

    @precondition(lambda self: self.queue)
    @rule(i=st.integers(0, 50))
    def deliver(self, i: int) -> None:
        self.deliver_one(self.queue[i % len(self.queue)])

    @precondition(lambda self: self.queue)
    @rule(i=st.integers(0, 50))
    def duplicate(self, i: int) -> None:
        m = self.queue[i % len(self.queue)]
        self.send(m.body, m.queue)

    @precondition(lambda self: self.poison)
    @rule(i=st.integers(0, 50))
    def poisoned(self, i: int) -> None:
        self.deliver_poison(self.poison[i % len(self.poison)])

    @rule(point=st.sampled_from(POINTS))
    def kill_a_worker(self, point: str) -> None:
        self.kill_at = point

    @rule(seconds=st.sampled_from([1.0, 6.0, 120.0, 700.0]))
    def time_passes(self, seconds: float) -> None:
        self.clock.now += seconds

    @rule()
    def a_manifest_write_fails(self) -> None:
        self.files.fail_manifest = 1

    @rule()
    def a_ledger_write_fails(self) -> None:
        self.store.fail_writes = 1

    @rule()
    def sweep(self) -> None:
        self.sweep_once()

    # ---- promises -----------------------------------------------------------------------------------

    @invariant()
    def no_path_has_two_writers(self) -> None:
        for path, writers in self.files.writers.items():
            assert len(writers) == 1, (path, writers)

    def teardown(self) -> None:
        """Drain with sweeps, no more faults: every job must finish within a bounded number of sweeps."""
        self.kill_at, self.files.fail_manifest, self.store.fail_writes = None, 0, 0
        rounds = 0
        while not self.finished():
            rounds += 1
            assert rounds <= SWEEP_MAX_RESENDS + 3, self.describe()
            for _ in range(500):
                if self.queue:
                    self.deliver_one(self.queue[0])
                elif self.poison:
                    self.deliver_poison(self.poison[0])
                else:
                    break
            self.clock.now += STALE_AFTER + 700.0  # past every lease, manifest claims included
            self.sweep_once()
        self.check_outputs()

    def finished(self) -> bool:
        if self.queue or self.poison:
            return False
        for iid in self.instances:
            record = self.ledger.get(iid)
            if record is None or record.state not in ("done", "failed"):
                return False
            if record.planned_at is not None and record.manifest.state != "done":
                return False
        return True

    def describe(self) -> str:
        return json.dumps([json.loads(r.to_json()) for r in self.ledger.list_instances()], indent=1)[:4000]

    def check_outputs(self) -> None:
        manifests: dict[str, list[str]] = {}
        for path in self.files.data:
            if path.endswith("/" + MANIFEST):
                manifests.setdefault(path.rsplit("/", 2)[-2], []).append(path)
        for iid in self.instances:
            record = self.ledger.get(iid)
            if record.planned_at is None:  # failed before planning: recorded, with _FAILED.json
                assert record.state == "failed" and record.info.get("error")
                continue
            assert all(f.state in ("done", "failed") for f in record.files)
            folder = record.job["destination"]
            assert folder.endswith("/" + iid)  # the default folder is per instance
            assert manifests.get(iid) == [f"{folder}/{MANIFEST}"], manifests  # exactly one manifest
            manifest = json.loads(self.files.data[f"{folder}/{MANIFEST}"])
            assert [f["name"] for f in manifest["files"]] == sorted(FILES, key=natural_key)  # each once, in order
            assert manifest["state"] == record.state
            listed = [o["path"] for f in manifest["files"] for o in f.get("outputs", [])]
            assert len(listed) == len(set(listed))  # every output once
            for f in manifest["files"]:
                if f["state"] != "done":
                    assert f"{folder}/{f['name']}{FAILED}" in self.files.data
                    continue
                got = b"".join(self.files.data[o["path"]] for o in f["outputs"])
                expected_lines = sum(n for m, n in FILES[f["name"]])
                assert got.count(b"\n") == expected_lines, (f, got)  # nothing lost or overwritten
                for o in f["outputs"]:
                    assert not o["path"].rsplit("/", 1)[-1].startswith(("manifest.", "report.", "_FAILED"))


EXAMPLES = int(os.environ.get("JOBFLOW_EXAMPLES", "2000"))  # fewer while working on it; make test runs 2000
JobFlow.TestCase.settings = settings(max_examples=EXAMPLES, stateful_step_count=20, deadline=None,
                                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
test_job_flow_keeps_its_promises_under_every_interleaving = JobFlow.TestCase
pytestmark = pytest.mark.timeout(1200)  # 2,000 examples: about a minute on an idle core, more on a busy one


@pytest.fixture(autouse=True)
def _settings(clean_env):
    clean_env.setenv("DESTINATION", "/exports/{job_name}/{date}")
    clean_env.setenv("EXPORT_SOURCE", "memory:")
    clean_env.delenv("AzureWebJobsStorage")
