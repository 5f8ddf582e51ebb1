"""The Dropbox destination against tests/fake_dropbox.py, with the real `dropbox` SDK and `requests`.

Every fault case checks the same things: the stored file is byte-identical to what was written, its
content hash is Dropbox's own and equals ours, and there is exactly one file (no duplicates).
"""

from __future__ import annotations

import json
import random
import time

import pytest

from pipeline.cli import main
from pipeline.commands.dropbox_auth import authorize
from pipeline.destinations import open_destination
from pipeline.destinations.base import DestinationError
from pipeline.destinations.dropbox import DropboxAuthError, DropboxDestination, build_client
from pipeline.destinations.per_record import PerRecordSink
from pipeline.marc.record import Field, Record
from pipeline.settings import SettingError
from tests.fake_dropbox import TEAM_NS, FakeDropbox, content_hash

MiB = 1024 * 1024


@pytest.fixture
def fake():
    server = FakeDropbox().start()
    yield server
    server.stop()


def make_dest(fake, root="/exports", *, chunk_mib=4, timeout=30.0, **env) -> DropboxDestination:
    environ = fake.environ(DROPBOX_CHUNK_MIB=str(chunk_mib), **env)
    return DropboxDestination.from_url("dropbox:" + root, environ=environ, session=fake.session(),
                                       timeout=timeout, max_attempts=6)


def data_of(size: int, seed: int = 7) -> bytes:
    return random.Random(seed).randbytes(size)


def stream(dest, relpath, data, piece=300_001):
    out = dest.open(relpath)
    for i in range(0, len(data), piece):
        out.write(data[i:i + piece])
    return out.commit()


def assert_delivered(fake, path, data, result):
    stored = fake.file(path)
    assert stored.data == data
    assert stored.content_hash == content_hash(data) == result.content_hash
    assert result.size == len(data)
    assert fake.paths() == [path]


def test_small_output_is_one_files_upload_with_overwrite_and_mute(fake):
    dest = make_dest(fake)
    result = dest.write_bytes("report.json", b'{"ok": true}')
    assert_delivered(fake, "/exports/report.json", b'{"ok": true}', result)
    arg = fake.last_arg["files/upload"]
    assert arg["mode"] == {".tag": "overwrite"} or arg["mode"] == "overwrite"
    assert arg["mute"] is True and arg["content_hash"] == content_hash(b'{"ok": true}')
    assert "files/upload_session/start" not in fake.calls
    assert result.path == "/exports/report.json" and result.extra["rev"]


def test_large_output_streams_in_whole_chunks_through_a_session(fake):
    data = data_of(13 * MiB + 12345)
    dest = make_dest(fake, chunk_mib=8)
    result = stream(dest, "big/export.xml", data)
    assert_delivered(fake, "/exports/big/export.xml", data, result)
    sizes = fake.body_sizes
    assert sizes["files/upload_session/start"] == [8 * MiB]
    assert sizes["files/upload_session/finish"] == [len(data) - 8 * MiB]
    assert fake.last_arg["files/upload_session/finish"]["commit"]["mute"] is True
    assert result.sha256 and not result.extra.get("resumed")


FAULTS = [
    ("files/upload_session/append_v2", "429", {"retry_after": 0}),
    ("files/upload_session/append_v2", "429", {"retry_after": 0, "reason": "too_many_write_operations"}),
    ("files/upload_session/append_v2", "500", {}),
    ("files/upload_session/append_v2", "drop", {}),
    ("files/upload_session/append_v2", "drop_before", {}),
    ("files/upload_session/append_v2", "incorrect_offset", {}),
    ("files/upload_session/append_v2", "slow", {"delay": 2.5}),
    ("files/upload_session/start", "drop", {}),
    ("files/upload_session/finish", "drop", {}),
    ("files/upload_session/finish", "503", {}),
    ("files/upload_session/finish", "slow", {"delay": 2.5}),
    ("files/upload_session/finish", "429", {"retry_after": 1, "reason": "too_many_write_operations"}),
]


@pytest.mark.parametrize(("route", "kind", "params"), FAULTS, ids=[f"{r.split('/')[-1]}-{k}" for r, k, _ in FAULTS])
def test_session_upload_survives_faults_without_duplicating_or_skipping_bytes(fake, route, kind, params):
    data = data_of(3 * 4 * MiB + 999)  # start + 2 appends + finish with a tail
    fake.fail(route, kind, **params)
    dest = make_dest(fake, timeout=1.0)
    result = stream(dest, "x.mrc", data)
    assert fake.pending_faults() == 0
    assert_delivered(fake, "/exports/x.mrc", data, result)
    assert dest.calls[route] == fake.calls[route] or kind in ("drop", "drop_before", "slow")


@pytest.mark.parametrize("kind", ["drop", "slow", "500", "429"])
def test_small_upload_survives_faults(fake, kind):
    fake.fail("files/upload", kind, delay=2.5)
    dest = make_dest(fake, timeout=1.0)
    result = dest.write_bytes("small.xml", b"<collection/>")
    assert_delivered(fake, "/exports/small.xml", b"<collection/>", result)
    assert fake.calls["files/upload"] == 2


def test_a_resent_chunk_after_several_lost_answers_lands_once(fake):
    data = data_of(5 * 4 * MiB)
    fake.fail("files/upload_session/append_v2", "drop", times=3)
    dest = make_dest(fake)
    result = stream(dest, "y.mrc", data, piece=4 * MiB + 1)
    assert_delivered(fake, "/exports/y.mrc", data, result)


def test_rerun_lands_on_the_same_path(fake):
    dest = make_dest(fake)
    dest.write_bytes("daily/out.xml", b"first run")
    result = dest.write_bytes("daily/out.xml", b"second run, longer")
    assert_delivered(fake, "/exports/daily/out.xml", b"second run, longer", result)


def test_conflict_with_a_folder_fails_once_and_clearly(fake):
    fake.add_folder("/exports/out.xml")
    dest = make_dest(fake)
    with pytest.raises(DestinationError, match=r"path/conflict/folder \(something else \(a folder\?\)") as err:
        stream(dest, "out.xml", data_of(4 * MiB + 3))
    assert not err.value.retryable
    assert fake.calls["files/upload_session/finish"] == 1
    assert fake.paths() == []
    fake.remove_folder("/exports/out.xml")
    data = data_of(4 * MiB + 3)
    assert_delivered(fake, "/exports/out.xml", data, stream(dest, "out.xml", data))


@pytest.mark.parametrize(("reason", "hint"), [
    ("no_write_permission", "no permission"),
    ("insufficient_space", "out of space"),
    ("malformed_path", "not valid"),
    ("disallowed_name", "does not allow"),
])
def test_permanent_write_errors_are_not_retried(fake, reason, hint):
    fake.fail("files/upload", "error", error={".tag": "path", "reason": {".tag": reason},
                                               "upload_session_id": "pid_upload_session:x"})
    dest = make_dest(fake)
    with pytest.raises(DestinationError, match=hint) as err:
        dest.write_bytes("a.xml", b"data")
    assert reason in str(err.value) and not err.value.retryable
    assert fake.calls["files/upload"] == 1 and fake.paths() == []


def test_fault_injected_conflict_on_small_upload(fake):
    fake.fail("files/upload", "conflict")
    with pytest.raises(DestinationError, match="conflict"):
        make_dest(fake).write_bytes("a.xml", b"data")
    assert fake.calls["files/upload"] == 1


def test_a_file_dropbox_stored_differently_fails_verification(fake):
    fake.fail("files/upload_session/finish", "corrupt")
    with pytest.raises(DestinationError, match="verification failed"):
        stream(make_dest(fake), "bad.mrc", data_of(4 * MiB + 10))


def test_expired_access_token_is_refreshed_once(fake):
    dest = make_dest(fake)
    dest.write_bytes("a.xml", b"1")
    fake.fail("files/upload", "expire_token")
    result = dest.write_bytes("b.xml", b"2")
    assert fake.file("/exports/b.xml").data == b"2" and result.size == 1
    assert fake.calls["oauth2/token"] == 2


def test_revoked_refresh_token_fails_with_one_message_and_no_retries(fake):
    dest = make_dest(fake, DROPBOX_REFRESH_TOKEN="revoked-token")
    with pytest.raises(DropboxAuthError, match="run `python -m pipeline dropbox-auth`"):
        dest.write_bytes("a.xml", b"1")
    assert fake.calls["oauth2/token"] == 1 and fake.paths() == []


def test_wrong_app_secret_fails_clearly(fake):
    dest = make_dest(fake, DROPBOX_APP_SECRET="wrong")
    with pytest.raises(DropboxAuthError, match="DROPBOX_APP_SECRET"):
        dest.write_bytes("a.xml", b"1")
    assert fake.calls["oauth2/token"] == 1


def test_rate_limit_back_off_is_honoured(fake):
    sleeps: list[float] = []
    dest = DropboxDestination("/x", lambda: build_client(fake.environ(), session=fake.session()),
                              chunk_size=4 * MiB, sleep=sleeps.append)
    fake.fail("files/upload", "429", retry_after=7)
    fake.fail("files/upload", "429", retry_after=3, reason="too_many_write_operations")
    dest.write_bytes("a.xml", b"1")
    assert len(sleeps) == 2 and 7 <= sleeps[0] < 7.5 and 3 <= sleeps[1] < 3.5
    assert fake.file("/x/a.xml").data == b"1"


def test_retries_stop_at_the_callers_deadline_and_at_max_attempts(fake):
    fake.fail("files/upload", "429", retry_after=30)
    dest = make_dest(fake)
    dest.deadline = time.monotonic() + 5
    with pytest.raises(DestinationError, match="out of time after 1 attempts, last: rate limited") as err:
        dest.write_bytes("a.xml", b"1")
    assert err.value.retryable and fake.calls["files/upload"] == 1

    fake.fail("files/upload", "500", times=20)
    dest = make_dest(fake)
    dest.max_attempts = 3
    with pytest.raises(DestinationError, match="gave up after 3 attempts, last: server error 500"):
        dest.write_bytes("b.xml", b"1")
    assert fake.paths() == []


@pytest.mark.parametrize(("chunk_mib", "first_part", "uploaded"), [
    (4, 9 * MiB + 100, 8 * MiB),  # whole chunks already sent; the tail travels in the state
    (8, 5 * MiB + 10, 4 * MiB),  # checkpoint sends the whole 4 MiB block of a part-filled chunk
])
def test_resume_in_another_process_from_a_checkpoint(fake, chunk_mib, first_part, uploaded):
    data = data_of(4 * 4 * MiB + 54321)
    first = make_dest(fake, chunk_mib=chunk_mib)
    out = first.open("resumed/export.xml")
    out.write(data[:first_part])
    state = json.loads(json.dumps(out.checkpoint()))
    assert state["offset"] == uploaded and state["position"] == first_part
    del out  # the invocation ends here

    second = make_dest(fake, chunk_mib=chunk_mib)
    resumed = second.resume(state)
    assert resumed.position == first_part
    resumed.write(data[resumed.position:])
    result = resumed.commit()
    assert_delivered(fake, "/exports/resumed/export.xml", data, result)
    assert result.sha256 == "" and result.extra["resumed"] is True  # documented: content hash only


def test_resume_from_an_older_checkpoint_after_more_was_uploaded(fake):
    """The invocation kept writing (and uploading) after its last checkpoint, then died: the
    regenerated bytes Dropbox already holds are skipped, and the commit's hash check proves them."""
    data = data_of(6 * 4 * MiB + 10)
    out = make_dest(fake).open("again.xml")
    out.write(data[: 4 * MiB + 1])
    state = out.checkpoint()
    out.write(data[4 * MiB + 1: 17 * MiB])  # uploads more chunks, never checkpointed
    resumed = make_dest(fake).resume(state)
    resumed.write(data[resumed.position:])
    result = resumed.commit()
    assert_delivered(fake, "/exports/again.xml", data, result)
    assert resumed.reconciled >= 1


def test_resume_of_a_small_output_before_any_upload(fake):
    out = make_dest(fake).open("tiny.xml")
    out.write(b"<a>")
    state = json.loads(json.dumps(out.checkpoint()))
    assert state["session_id"] is None
    resumed = make_dest(fake).resume(state)
    resumed.write(b"</a>")
    assert_delivered(fake, "/exports/tiny.xml", b"<a></a>", resumed.commit())


def test_team_space_roots_paths_in_the_team_namespace():
    fake = FakeDropbox(team=True).start()
    try:
        dest = make_dest(fake, DROPBOX_TEAM_SPACE="true")
        dest.write_bytes("a.xml", b"team")
        assert fake.file("/exports/a.xml", ns=TEAM_NS).data == b"team"
        assert fake.paths() == []  # nothing in the user's own namespace
    finally:
        fake.stop()


def test_settings_are_checked_before_any_work(fake):
    with pytest.raises(SettingError, match="DROPBOX_CHUNK_MIB: must be a multiple of 4"):
        make_dest(fake, chunk_mib=6)
    with pytest.raises(SettingError, match="DROPBOX_REFRESH_TOKEN: is not set"):
        DropboxDestination.from_url("dropbox:/x", environ={"DROPBOX_APP_KEY": "k"})
    with pytest.raises(SettingError, match="DROPBOX_APP_KEY"):
        open_destination("dropbox:/x", environ={"DROPBOX_REFRESH_TOKEN": "t"})
    assert isinstance(open_destination("dropbox:/x", environ=fake.environ()), DropboxDestination)


def test_location_and_sanitised_paths(fake):
    dest = make_dest(fake, root="/Alma exports/")
    assert dest.location("a/b:c.xml") == "dropbox:/Alma exports/a/b_c.xml"
    with pytest.raises(DestinationError, match="empty"):
        dest.open("//")


# -- one file per record ---------------------------------------------------------------------------

def records(n, dup_every=0):
    for i in range(n):
        ident = str(i % dup_every if dup_every and i % 100 == 99 else i)
        yield Record("00000nam a2200000 a 4500", [Field.control("001", ident)]), f"<record>{i}</record>".encode()


def test_per_record_2500_records_make_3_batch_commits(fake):
    dest = make_dest(fake)
    sink = PerRecordSink(dest, "records/{001}.xml", max_in_flight=8)
    sink.begin()
    for record, data in records(2500, dup_every=7):
        sink.record(record, data)
    results = sink.end()
    assert fake.batch_sizes == [1000, 1000, 500]
    assert fake.calls["files/upload_session/finish_batch_v2"] == 3 and fake.commits == 3
    assert len(results) == 2500 == len(fake.paths())
    assert len(sink.duplicates) == 25
    wanted, used = sink.duplicates[0]
    assert used.endswith("~2.xml") and fake.file("/exports/" + used).data == b"<record>99</record>"
    assert fake.file("/exports/records/5.xml").data == b"<record>5</record>"
    for r in results[:50]:
        assert fake.file(r.path).content_hash == r.content_hash


def test_per_record_rerun_overwrites_instead_of_duplicating(fake):
    dest = make_dest(fake)
    for _ in range(2):
        sink = PerRecordSink(dest, "records/{001}.xml")
        sink.begin()
        for record, data in records(40):
            sink.record(record, data)
        sink.end()
    assert len(fake.paths()) == 40


def test_per_record_batch_survives_lost_answer_and_write_contention(fake):
    fake.fail("files/upload_session/finish_batch_v2", "drop")
    fake.fail("files/upload_session/finish_batch_v2", "429", retry_after=0, reason="too_many_write_operations")
    fake.fail("files/upload_session/finish_batch_v2", "entry_too_many_writes", count=5)
    fake.fail("files/upload_session/start", "drop", times=2)
    dest = make_dest(fake)
    sink = PerRecordSink(dest, "r/{001}.xml", batch_size=50)
    sink.begin()
    for record, data in records(120):
        sink.record(record, data)
    results = sink.end()
    assert len(results) == 120 == len(fake.paths())
    assert fake.pending_faults() == 0
    for i in (0, 60, 119):
        assert fake.file(f"/exports/r/{i}.xml").data == f"<record>{i}</record>".encode()


def test_per_record_failures_are_listed_and_the_rest_delivered(fake):
    fake.add_folder("/exports/r/3.xml")
    sink = PerRecordSink(make_dest(fake), "r/{001}.xml")
    sink.begin()
    for record, data in records(10):
        sink.record(record, data)
    with pytest.raises(DestinationError, match=r"1 of 10 per-record files were not delivered: r/3.xml: .*conflict"):
        sink.end()
    assert len(fake.paths()) == 9


def test_per_record_auth_failure_stops_the_run(fake):
    sink = PerRecordSink(make_dest(fake, DROPBOX_REFRESH_TOKEN="revoked"), "r/{001}.xml")
    sink.begin()
    with pytest.raises(DropboxAuthError):
        for record, data in records(50):
            sink.record(record, data)
        sink.end()
    sink.abort()
    assert fake.paths() == []


# -- dropbox-auth -----------------------------------------------------------------------------------

def test_dropbox_auth_pkce_flow_gives_a_working_refresh_token(fake):
    from urllib.parse import parse_qs, urlsplit

    shown: list[str] = []

    def approve_in_browser(prompt):
        url = next(line.strip() for line in shown if line.strip().startswith("https://"))
        query = parse_qs(urlsplit(url).query)
        assert query["token_access_type"] == ["offline"] and query["code_challenge_method"] == ["S256"]
        assert query["scope"] == ["files.content.write files.metadata.read"]
        return fake.approve(query["code_challenge"][0])

    token = authorize(fake.app_key, approve_in_browser, shown.append, session=fake.session())
    assert f"   DROPBOX_REFRESH_TOKEN={token}" in shown
    # PKCE: no app secret needed to use it
    env = {"DROPBOX_APP_KEY": fake.app_key, "DROPBOX_REFRESH_TOKEN": token, "DROPBOX_CHUNK_MIB": "4"}
    dest = DropboxDestination.from_url("dropbox:/pkce", environ=env, session=fake.session())
    dest.write_bytes("ok.txt", b"ok")
    assert fake.file("/pkce/ok.txt").data == b"ok"


def test_dropbox_auth_with_a_bad_code_fails_clearly(fake):
    from pipeline.cli import CommandError

    with pytest.raises(CommandError, match="did not accept the code"):
        authorize(fake.app_key, lambda prompt: "wrong-code", lambda line: None, session=fake.session())


def test_dropbox_auth_cli_needs_an_app_key(clean_env, capsys):
    assert main(["dropbox-auth"]) == 1
    assert "--app-key or DROPBOX_APP_KEY" in capsys.readouterr().err


def test_engine_per_record_output_to_dropbox(fake):
    import io

    from pipeline.marc.engine import Input, process_file
    from tests import marcgen

    recs = marcgen.records(40, seed=5)
    data = marcgen.marcxml_bytes(recs)
    sink_factory = PerRecordSink.factory("records/{001}.xml")
    result = process_file(Input("export.xml", lambda: io.BytesIO(data), len(data)), make_dest(fake),
                          fmt="marcxml", sink_factory=sink_factory, workers=1)
    assert result.error is None and len(result.outputs) == 40 == len(fake.paths())
    assert fake.batch_sizes == [40]
    first = fake.file(f"/exports/records/{recs[0].control('001')}.xml").data
    assert first.startswith(b"<?xml") and first.rstrip().endswith(b"</collection>")


@pytest.mark.filterwarnings("ignore:upload_session/finish_batch is deprecated")
def test_fake_also_speaks_the_v1_batch_with_its_check_route(fake):
    """For other tests reusing the fake: v1 finish_batch answers through finish_batch/check."""
    import dropbox
    from dropbox import files

    dbx = dropbox.Dropbox(oauth2_refresh_token="fake-refresh-token", app_key=fake.app_key,
                          app_secret=fake.app_secret, session=fake.session())
    sid = dbx.files_upload_session_start(b"v1 batch", close=True).session_id
    launch = dbx.files_upload_session_finish_batch([files.UploadSessionFinishArg(
        files.UploadSessionCursor(sid, 8), files.CommitInfo("/v1.txt", mode=files.WriteMode.overwrite))])
    status = dbx.files_upload_session_finish_batch_check(launch.get_async_job_id())
    assert status.is_complete() and status.get_complete().entries[0].is_success()
    assert fake.file("/v1.txt").data == b"v1 batch"
