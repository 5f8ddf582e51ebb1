"""A `_FAILED.json` does not outlive the failure (issue 12, finding 8): after the operator fixes the
file and runs `requeue`, the re-run that succeeds removes the marker next to the outputs."""

from __future__ import annotations

import json
import uuid

from pipeline.commands.requeue import requeue
from pipeline.ledger import Ledger
from tests import marcgen
from tests.e2e_support import send_webhook
from tests.test_redaction import JOB_ID, STEM, job_world  # noqa: F401  (the fixture)


def test_a_successful_requeue_removes_the_stale_failed_marker(job_world, tmp_path):  # noqa: F811
    host, env, alma, dropbox, receiver, azurite = job_world
    instance_id = str(88000000000000000 + uuid.uuid4().int % 10**15)
    alma.add_instance(JOB_ID, instance_id, stem=STEM)
    send_webhook(host, instance_id, STEM, env["ALMA_WEBHOOK_SECRET"])
    host.drain(timeout=120)
    folder = f"/Alma exports/Export Bibliographic Records/{instance_id}"
    marker = f"{folder}/{STEM}_2.xml_FAILED.json"
    assert marker in dropbox.paths()
    assert json.loads(dropbox.file(f"{folder}/manifest.json").data)["state"] == "failed"

    # the operator fixes the export file on the server and re-runs the job
    fixed = marcgen.marcxml_bytes(marcgen.records(5, seed=8))
    sftp_root = tmp_path / "sftp"
    (sftp_root / f"{STEM}_2.xml").write_bytes(fixed)
    done = requeue(Ledger.from_settings(), host.queue("alma-export-jobs"), instance_id)
    assert done.sent and done.reset == [f"{STEM}_2.xml"]
    host.drain(timeout=120)

    assert marker not in dropbox.paths(), dropbox.calls.get("files/delete_v2")
    assert f"{folder}/{STEM}_2.xml" in dropbox.paths()
    assert json.loads(dropbox.file(f"{folder}/manifest.json").data)["state"] == "done"
    assert Ledger.from_settings().get(instance_id).state == "done"


def test_the_local_destination_removes_a_marker_and_says_when_there_was_none(tmp_path):
    from pipeline.destinations.local import LocalDestination

    dest = LocalDestination(tmp_path)
    dest.write_bytes("BIBS_2.xml_FAILED.json", b"{}")
    assert dest.delete("BIBS_2.xml_FAILED.json") is True
    assert not (tmp_path / "BIBS_2.xml_FAILED.json").exists()
    assert dest.delete("BIBS_2.xml_FAILED.json") is False


def test_a_requeued_job_that_could_not_be_planned_loses_its_marker_once_planned(job_world, tmp_path):  # noqa: F811
    host, env, alma, dropbox, receiver, azurite = job_world
    late = "BIBS_late"  # Alma says the job wrote files, but none are on the server yet
    instance_id = str(88000000000000000 + uuid.uuid4().int % 10**15)
    alma.add_instance(JOB_ID, instance_id, stem=late)
    send_webhook(host, instance_id, late, env["ALMA_WEBHOOK_SECRET"])
    host.drain(timeout=120)
    marker = f"/Alma exports/Export Bibliographic Records/{instance_id}/_FAILED.json"
    assert marker in dropbox.paths()
    assert Ledger.from_settings().get(instance_id).state == "failed"

    (tmp_path / "sftp" / f"{late}_1.xml").write_bytes(marcgen.marcxml_bytes(marcgen.records(3, seed=1)))
    assert requeue(Ledger.from_settings(), host.queue("alma-export-jobs"), instance_id).sent
    host.drain(timeout=120)
    assert marker not in dropbox.paths()
    assert Ledger.from_settings().get(instance_id).state == "done"
