"""Submitter notifications with the real clients: the Alma client against the Alma stand-in, the real
`azure-communication-email` and `azure-communication-sms` SDKs against the TLS Communication Services
stand-in (which checks their HMAC signatures), the ledger in Azurite, and the queue workers' own
job-end path (plan_export -> process_export_file -> manifest -> notify)."""

from __future__ import annotations

import json
import logging
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pipeline import submitter, worker
from pipeline.alma import AlmaClient
from pipeline.events import event_from_mapping, job_message, serialize_message
from pipeline.ledger import FileState, JobRecord, Ledger, ManifestState
from pipeline.settings import REGISTRY, SettingError
from tests.e2e_support import job_end_event
from tests.fake_acs import ACCESS_KEY as ACS_KEY
from tests.fake_acs import FakeACS
from tests.fake_alma import FakeAlma, make_instance
from tests.fake_dropbox import FakeDropbox
from tests.worker_proc import fake_dropbox_context

ROOT = Path(__file__).resolve().parent.parent
EXPORTS = ROOT / "samples" / "exports"
STEM = "BIBS_nightly_8816243980004146"
JOB_ID = "S5139276810004146"
KEY = "submitter-test-key"
EMAIL = "jane.smith@library.example.edu"
MOBILE = "+44 7700 900123"
MOBILE_E164 = "+447700900123"
OFFICE = "+1 617 555 0100"
SENDER = "DoNotReply@exports.library.example.edu"
SMS_FROM = "+18005550100"


@pytest.fixture(scope="module")
def alma():
    with FakeAlma(api_key=KEY) as fake:
        fake.add_user("jsmith", email=EMAIL, sms=MOBILE, other_email="jane@home.example")
        fake.add_user("nomail", email=None, sms=None)
        fake.add_user("local", email=EMAIL, sms="(617) 555-0199")  # no country code
        yield fake


@pytest.fixture(scope="module")
def acs():
    with FakeACS() as fake:
        yield fake


@pytest.fixture(scope="module")
def dropbox():
    fake = FakeDropbox().start()
    yield fake
    fake.stop()


@pytest.fixture
def job(clean_env, alma, acs, dropbox, tmp_path, monkeypatch):
    """Settings as an operator sets them; returns a function that runs one job instance through the workers."""
    env = {
        "ALMA_API_BASE_URL": alma.url, "ALMA_API_KEY": KEY,
        "EXPORT_SOURCE": EXPORTS.as_uri(),
        "DESTINATION": "dropbox:/Alma exports/{job_name}/{instance_id}",
        "NOTIFY_SUBMITTER": "email,sms",
        "ACS_CONNECTION_STRING": acs.connection_string(),
        "ACS_EMAIL_SENDER": SENDER, "ACS_SMS_FROM": SMS_FROM,
        "REQUESTS_CA_BUNDLE": acs.ca_file,  # the stand-in's throwaway certificate, as requests reads it
        **dropbox.environ(),
    }
    for key, value in env.items():
        clean_env.setenv(key, value)
    monkeypatch.setattr(submitter, "EMAIL_POLL_SECONDS", 0.02)  # our own poll interval, not the SDK's
    submitter.clear_cache()
    acs.reset()
    alma.calls.clear()
    alma._faults.clear()
    alma._user_faults.clear()
    ctx = fake_dropbox_context(dropbox.url)

    def run(submitted_by: str = "jsmith", *, redeliver_last: bool = False,
            status: str = "COMPLETED_SUCCESS") -> tuple[str, JobRecord]:
        instance_id = str(88000000000000000 + uuid.uuid4().int % 10**15)
        data = make_instance(JOB_ID, instance_id, stem=STEM, status=status)
        data["submitted_by"] = {"value": submitted_by, "desc": submitted_by.title()}
        alma.add_instance(JOB_ID, instance_id, data=data)
        event = event_from_mapping(job_end_event(instance_id, STEM))
        body = serialize_message(job_message(event, datetime.now(UTC).isoformat()))
        files = worker.plan_export(body, ctx=ctx)
        if status != "COMPLETED_SUCCESS":  # Alma says the job failed: the worker records it failed
            assert files == []
            record = Ledger.from_settings().get(instance_id)
            assert record is not None and record.state == "failed"
            return instance_id, record
        assert len(files) == 2
        for message in files:
            assert worker.process_export_file(message, ctx=ctx, budget=600) == []
        if redeliver_last:  # the queue delivers the last file's message again
            assert worker.process_export_file(files[-1], ctx=ctx, budget=600) == []
            assert worker.plan_export(body, ctx=ctx) == []  # and Alma's webhook retry re-plans nothing
        record = Ledger.from_settings().get(instance_id)
        assert record is not None and record.state == "done"  # whatever happened to the message
        return instance_id, record

    return run


def personal_data_absent(record: JobRecord, dropbox: FakeDropbox, caplog) -> None:
    """Addresses and numbers are nowhere but in the requests to Communication Services."""
    manifest = dropbox.file(f"/Alma exports/Export Bibliographic Records/{record.instance_id}/manifest.json").data
    for where, text in [("ledger", record.to_json().decode()), ("manifest", manifest.decode()),
                        ("logs", caplog.text)]:
        for secret in (EMAIL, "jane@home.example", MOBILE, MOBILE_E164, OFFICE, ACS_KEY):
            assert secret not in text, f"{secret} appears in the {where}"


def test_email_only(job, acs, alma, dropbox, clean_env, caplog):
    caplog.set_level(logging.DEBUG)
    clean_env.setenv("NOTIFY_SUBMITTER", "email")
    instance_id, record = job()
    (email,) = acs.sent
    assert email.channel == "email" and email.to == [EMAIL]  # the preferred address, not the other one
    body = email.body
    assert body["senderAddress"] == SENDER and body["userEngagementTrackingDisabled"] is True
    content = body["content"]
    assert content["subject"] == 'Alma export "Export Bibliographic Records" finished'
    text = content["plainText"]
    assert f"Job instance: {instance_id}" in text and "State: done" in text
    records_out = record.totals()["records_out"]
    assert f"Records out: {records_out:,}" in text and "Rejected: 0" in text and "Files: 2 of 2 done" in text
    link = f"https://www.dropbox.com/home/Alma%20exports/Export%20Bibliographic%20Records/{instance_id}"
    assert f"Where: {link}" in text and f'<a href="{link}">' in content["html"]
    assert "Why:" not in text
    # The send was signed and accepted (202), then its operation polled until it succeeded.
    assert [s for _, _, s in acs.statuses()] == [202, 200, 200]
    assert acs.requests[0].headers["Operation-Id"]
    assert record.info["submitter_notified"]["by"] == ["email"]
    assert record.info["submitter_notified"]["outcome"] == "notified by email"
    assert record.info["submitter_notified"]["user"] == "jsmith"
    assert "submitter jsmith notified by email" in caplog.text
    personal_data_absent(record, dropbox, caplog)


def test_sms_only(job, acs, dropbox, clean_env, caplog):
    caplog.set_level(logging.DEBUG)
    clean_env.setenv("NOTIFY_SUBMITTER", "sms")
    instance_id, record = job()
    (sms,) = acs.sent
    assert sms.channel == "sms" and sms.to == [MOBILE_E164]  # the number marked for SMS, in E.164
    assert sms.body["from"] == SMS_FROM
    text = sms.body["message"]
    link = f"https://www.dropbox.com/home/Alma%20exports/Export%20Bibliographic%20Records/{instance_id}"
    # One segment: the job name gives way to the link, which is what the person wants.
    assert text == (f'Alma export "Export Biblio..." done: {record.totals()["records_out"]:,} records out, '
                    f"0 rejected. {link}")
    assert len(text) <= 160
    assert acs.statuses() == [("POST", "/sms", 202)]
    assert record.info["submitter_notified"]["outcome"] == "notified by sms"
    personal_data_absent(record, dropbox, caplog)


def test_email_and_sms(job, acs, alma, dropbox, caplog):
    caplog.set_level(logging.DEBUG)
    _, record = job()
    assert sorted(s.channel for s in acs.sent) == ["email", "sms"]
    assert record.info["submitter_notified"]["by"] == ["email", "sms"]
    assert record.info["submitter_notified"]["outcome"] == "notified by email and sms"
    (user_call,) = [c for c in alma.calls if c.path.startswith("/almaws/v1/users/")]
    assert user_call.path.startswith("/almaws/v1/users/jsmith?") and "expand=none" in user_call.path
    assert user_call.headers["Authorization"] == f"apikey {KEY}"  # the same client and key
    personal_data_absent(record, dropbox, caplog)


def test_system_submitter_tells_nobody(job, acs, alma, caplog):
    caplog.set_level(logging.INFO)
    _, record = job("System")
    assert acs.requests == [] and alma.user_calls() == 0
    assert "submitter_notified" not in record.info
    assert "not a staff user: no submitter notification" in caplog.text


def test_a_failed_job_tells_why_and_what_to_do(job, acs):
    instance_id, record = job(status="COMPLETED_FAILED")
    email = next(s for s in acs.sent if s.channel == "email").body["content"]
    assert email["subject"] == 'Alma export "Export Bibliographic Records" FAILED'
    assert "Why: job instance" in email["plainText"] and "COMPLETED_FAILED" in email["plainText"]
    assert f"python -m pipeline requeue {instance_id}" in email["plainText"]
    sms = next(s for s in acs.sent if s.channel == "sms").body["message"]
    assert len(sms) <= 160 and "FAILED" in sms and instance_id in sms
    assert record.info["submitter_notified"]["outcome"] == "notified by email and sms"


def test_user_without_email_is_logged_and_the_job_is_unaffected(job, acs, clean_env, caplog):
    clean_env.setenv("NOTIFY_SUBMITTER", "email")
    _, record = job("nomail")
    assert acs.requests == []
    assert record.info["submitter_notified"]["outcome"] == "not notified; email: no preferred email address in Alma"
    assert "submitter nomail not notified; email: no preferred email address in Alma" in caplog.text


def test_sms_number_without_country_code_is_not_guessed(job, acs, caplog):
    _, record = job("local")
    assert [s.channel for s in acs.sent] == ["email"]
    assert record.info["submitter_notified"]["outcome"] == (
        "notified by email; sms: the number marked for SMS in Alma has no country code")


@pytest.mark.parametrize("how", ["unknown user", "HTTP 404"])
def test_alma_not_knowing_the_user_tells_nobody_and_the_job_is_unaffected(job, acs, alma, how, caplog):
    if how == "HTTP 404":
        alma.fail_users_next("not_found")
    _, record = job("jsmith" if how == "HTTP 404" else "gone")
    assert acs.requests == []
    assert alma.calls[-1].status == (404 if how == "HTTP 404" else 400)
    assert record.info["submitter_notified"]["outcome"] == "not notified; the user is not known to Alma"


def test_alma_error_looking_the_user_up_is_logged(job, acs, alma, caplog):
    alma.fail_users_next("unauthorized")
    _, record = job()
    assert acs.requests == []
    outcome = record.info["submitter_notified"]["outcome"]
    assert outcome == "not notified; Alma API error UNAUTHORIZED looking the user up"


@pytest.mark.parametrize("channel, statuses", [("email", [429, 202, 200, 200]), ("sms", [429, 202])])
def test_throttled_then_sent(job, acs, clean_env, channel, statuses):
    clean_env.setenv("NOTIFY_SUBMITTER", channel)
    acs.throttle_next(1, retry_after="1")
    _, record = job()
    assert [s for _, _, s in acs.statuses()] == statuses  # the SDK waited Retry-After, signed again, sent
    assert [s.channel for s in acs.sent] == [channel]  # once
    assert record.info["submitter_notified"]["outcome"] == f"notified by {channel}"


def test_refused_credentials_are_logged_and_the_job_is_unaffected(job, acs, clean_env, caplog):
    clean_env.setenv("ACS_CONNECTION_STRING", acs.connection_string("bm90LXRoZS1yZWFsLWtleQ=="))
    _, record = job()
    assert acs.sent == [] and {s for _, _, s in acs.statuses()} == {401}
    outcome = record.info["submitter_notified"]["outcome"]
    assert outcome == ("not notified; email: Communication Services refused the credentials (HTTP 401); "
                       "sms: Communication Services refused the credentials (HTTP 401)")
    assert any(r.levelno == logging.WARNING and "refused the credentials" in r.getMessage() for r in caplog.records)


def test_duplicate_delivery_sends_one_message(job, acs, alma):
    _, record = job(redeliver_last=True)
    assert sorted(s.channel for s in acs.sent) == ["email", "sms"]  # one email and one SMS, not two of each
    assert alma.user_calls() == 1


def test_second_notify_on_a_told_instance_sends_nothing(job, acs, caplog):
    caplog.set_level(logging.INFO)
    instance_id, record = job()
    acs.reset()
    ledger = Ledger.from_settings()
    assert submitter.notify(ledger, record, alma_factory=AlmaClient.from_settings) is None
    assert acs.requests == []
    assert "was already notified" in caplog.text


def test_a_run_looks_each_user_up_once(job, alma):
    job()
    job()
    assert alma.user_calls() == 1


def test_missing_communication_settings_are_logged_not_raised(job, acs, clean_env, caplog):
    clean_env.delenv("ACS_CONNECTION_STRING")
    _, record = job()
    assert acs.requests == []
    assert "setting ACS_CONNECTION_STRING: is not set, and neither is ACS_ENDPOINT" in \
        record.info["submitter_notified"]["outcome"]


def test_off_by_default(job, acs, alma, clean_env):
    clean_env.delenv("NOTIFY_SUBMITTER")
    _, record = job()
    assert acs.requests == [] and alma.user_calls() == 0 and "submitter_notified" not in record.info


# ---- the pure parts ---------------------------------------------------------------------------------


def test_the_access_key_is_redacted_from_logs(acs):
    from pipeline.redact import redact_text, secret_values

    secrets = secret_values({"ACS_CONNECTION_STRING": acs.connection_string()})
    line = redact_text(f"signing with {acs.access_key} for {acs.url}", secrets)
    assert acs.access_key not in line and "[REDACTED ACS_CONNECTION_STRING]" in line


def test_notify_submitter_setting(clean_env):
    assert submitter.channels() == ()
    assert submitter.channels({"NOTIFY_SUBMITTER": "sms, EMAIL"}) == ("email", "sms")
    with pytest.raises(SettingError, match="NOTIFY_SUBMITTER: fax is not one of off, email, sms"):
        submitter.channels({"NOTIFY_SUBMITTER": "email,fax"})
    with pytest.raises(SettingError, match="NOTIFY_SUBMITTER: is off or a list"):
        submitter.channels({"NOTIFY_SUBMITTER": "off,sms"})
    for name in ("NOTIFY_SUBMITTER", "ACS_CONNECTION_STRING", "ACS_ENDPOINT", "ACS_EMAIL_SENDER", "ACS_SMS_FROM"):
        assert name in REGISTRY


def test_preferred_contact_from_the_alma_user_shape():
    from tests.fake_alma import make_user

    c = submitter.contact_from_user("jsmith", make_user("jsmith", email=EMAIL, sms="0044 7700 900123",
                                                          other_email="x@home.example"))
    assert (c.email, c.sms) == (EMAIL, MOBILE_E164)
    assert EMAIL not in repr(c) and "7700" not in repr(c)
    only = make_user("u", other_email="only@x.example", other_phone="+1 617 555 0100")
    c = submitter.contact_from_user("u", only)
    assert (c.email, c.sms) == ("only@x.example", None)  # the only address; the preferred phone is not for SMS
    assert submitter.contact_from_user("u", {"contact_info": {"email": {"email_address": "a@b.example",
                                                                          "preferred": "true"}}}).email == "a@b.example"
    assert submitter.contact_from_user("u", {}).email is None
    assert [submitter.e164(n) for n in ("+1 (617) 555-0199", "617-555-0199", "+0123456", "")] == \
        ["+16175550199", None, None, None]


def test_submitter_id():
    def rec(**job) -> JobRecord:
        return JobRecord("1", job=job)

    assert submitter.submitter_id(rec(submitted_by_id="jsmith")) == "jsmith"
    assert submitter.submitter_id(rec(submitted_by={"value": "jsmith", "desc": "Jane"})) == "jsmith"
    assert [submitter.submitter_id(rec(submitted_by_id=v)) for v in ("System", "API", "api", "", None)] == [None] * 5
    assert submitter.submitter_id(rec(submitted_by="Smith, Jane")) is None  # a name is not an id


def failed_record(name: str = "Export <b>Bibliographic</b> Records & more") -> JobRecord:
    return JobRecord(
        instance_id="8816243980004146", state="failed",
        job={"job_name": name, "submitted_by_id": "jsmith", "destination": "dropbox:/Alma exports/Nightly/2026-11-20"},
        files=[FileState("BIBS_1.xml", state="done", result={"records_out": 40_000, "rejected": 2}),
               FileState("BIBS_2.xml", state="failed", error="SFTP: No such file <BIBS_2.xml>")],
        manifest=ManifestState(state="done"),
    )


def test_failure_message_says_why_and_what_to_do_and_escapes_html(clean_env):
    m = submitter.build_message(failed_record())
    assert m.subject == 'Alma export "Export <b>Bibliographic</b> Records & more" FAILED'
    assert "Why: BIBS_2.xml: SFTP: No such file <BIBS_2.xml>" in m.text
    assert "What to do:" in m.text and "python -m pipeline requeue 8816243980004146" in m.text
    assert "Records out: 40,000" in m.text and "Files: 1 of 2 done" in m.text
    assert "<b>Bibliographic</b>" not in m.html and "Export &lt;b&gt;Bibliographic&lt;/b&gt; Records &amp; more" \
        in m.html and "&lt;BIBS_2.xml&gt;" in m.html
    assert len(m.sms) <= 160 and "FAILED" in m.sms and "8816243980004146" in m.sms


def test_dropbox_link_respects_the_app_folder(clean_env):
    record = failed_record("Nightly")
    text = submitter.build_message(record).text
    assert "Where: https://www.dropbox.com/home/Alma%20exports/Nightly/2026-11-20" in text
    clean_env.setenv("DROPBOX_APP_FOLDER", "/Apps/Alma exports app")
    assert "https://www.dropbox.com/home/Apps/Alma%20exports%20app/Alma%20exports/Nightly/2026-11-20" in \
        submitter.build_message(record).text
    local = JobRecord("1", state="done", job={"job_name": "J", "destination": "/srv/out/J"})
    assert "Where: /srv/out/J" in submitter.build_message(local).text


LONG_NAME = "Export Bibliographic Records - Nightly discovery export for the union catalogue and the discovery layer"


@pytest.mark.parametrize("name", ["N", LONG_NAME, "Łódź export " * 12])
@pytest.mark.parametrize("state", ["done", "failed"])
def test_sms_fits_one_segment(clean_env, name, state):
    record = failed_record(name)
    record.state = state
    if state == "done":
        record.files = record.files[:1]
    sms = submitter.build_message(record).sms
    gsm = all(c in submitter._GSM7 for c in sms)
    assert len(sms) <= (160 if gsm else 70), sms
    assert sms.startswith('Alma export "' + name[:8])


def test_preview_shows_both_messages(clean_env):
    text = submitter.preview(failed_record("Nightly"))
    assert "Subject: Alma export \"Nightly\" FAILED" in text and "--- SMS (" in text and "<html>" in text
    json.dumps(text)  # printable as is
