"""The operations view (issue 14): the job index, the listing and instance data, the `job_status`
function (HTML and JSON), and `python -m pipeline status`, against a real ledger in Azurite."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from azure.storage.blob import BlobServiceClient

from pipeline import jobindex, status, worker
from pipeline.cli import main
from pipeline.dev.host import invoke_http, match_route, registered_functions
from pipeline.ledger import Ledger
from tests.status_support import record_run

NOW = datetime.now(UTC).replace(microsecond=0)
HOSTILE = '<script>alert("owned")</script> Export'


class Requests:
    """Every storage request the ledger's client sends (azure-core's documented response hook)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def __call__(self, response) -> None:
        self.seen.append((response.http_request.method, response.http_request.url))

    def clear(self) -> None:
        self.seen.clear()


@pytest.fixture
def requests_seen():
    return Requests()


@pytest.fixture
def ledger(azurite, unique_name, requests_seen, clean_env):
    service = BlobServiceClient.from_connection_string(azurite.connection_string, raw_response_hook=requests_seen)
    led = Ledger(container=unique_name, service=service)
    worker.set_context(worker.Context(ledger_factory=lambda: led))
    yield led
    worker.set_context(None)


def ids(data):
    return [r["instance_id"] for r in data["instances"]]


def test_pages_are_newest_first_and_each_costs_one_storage_call(ledger, requests_seen):
    for i in range(23):
        record_run(ledger, f"77{i:04d}", NOW - timedelta(hours=23 - i))
    newest_first = [f"77{i:04d}" for i in reversed(range(23))]
    requests_seen.clear()
    first = status.listing(ledger, size=10)
    assert ids(first) == newest_first[:10]
    (request,) = requests_seen.seen  # the first page and its chart: one GET of the index head
    assert request[0] == "GET" and request[1].split("?")[0].endswith("/index-head.json")
    assert len(first["chart"]["runs"]) == 23
    requests_seen.clear()
    second = status.listing(ledger, size=10, token=first["next_page"])
    third = status.listing(ledger, size=10, token=second["next_page"])
    assert len(requests_seen.seen) == 2  # older pages: one List Blobs call each
    assert all("comp=list" in url and "include=metadata" in url for _, url in requests_seen.seen)
    assert ids(second) == newest_first[10:20] and ids(third) == newest_first[20:]
    assert third["next_page"] is None and second["chart"] is None
    assert [r["state"] for r in first["instances"]] == ["done"] * 10
    assert first["instances"][0]["records_out"] == 1000 and first["instances"][0]["outputs"]["kind"] == "Dropbox"


def test_the_head_keeps_the_newest_and_ignores_out_of_order_writes(ledger, azurite, unique_name, monkeypatch):
    monkeypatch.setattr(jobindex, "HEAD_SIZE", 3)
    for i in range(5):
        record_run(ledger, f"78{i:04d}", NOW - timedelta(hours=5 - i))
    record_run(ledger, "789999", NOW - timedelta(days=9))  # older than everything in the head
    container = BlobServiceClient.from_connection_string(azurite.connection_string).get_container_client(unique_name)
    entries, _ = jobindex.read_head(container)
    assert [e["instance_id"] for e in entries] == ["780004", "780003", "780002"]
    stale = dict(entries[0], state="running", updated_at="2000-01-01T00:00:00.000Z")
    jobindex._update_head(container, stale)  # a slow writer's older summary arrives last
    assert jobindex.read_head(container)[0][0]["state"] == "done"
    first = status.listing(ledger, size=2)
    rest = status.listing(ledger, size=10, token=first["next_page"])
    assert ids(first) + ids(rest) == ["780004", "780003", "780002", "780001", "780000", "789999"]


def test_unfinished_instances_are_read_fresh_and_stuck_ones_say_so(ledger, azurite, unique_name):
    record_run(ledger, "770001", NOW - timedelta(hours=5), finish=False)  # planned, untouched for hours
    old = Ledger(container=unique_name, service=BlobServiceClient.from_connection_string(azurite.connection_string),
                 clock=lambda: (NOW - timedelta(hours=4)).timestamp())
    record_run(old, "770002", NOW - timedelta(hours=4), finish=False)
    old.claim_file("770002", "BIBS_770002_1.xml", "dead-worker", 60)  # its worker died 4 hours ago
    record_run(ledger, "770003", NOW - timedelta(minutes=1), finish=False)
    ledger.claim_file("770003", "BIBS_770003_1.xml", "live-worker", 600)

    rows = {r["instance_id"]: r for r in status.listing(ledger, now=NOW + timedelta(seconds=5))["instances"]}
    assert rows["770003"]["state"] == "running" and rows["770003"]["reason"] is None
    assert rows["770002"]["state"] == "stuck" and "lease lapsed" in rows["770002"]["reason"]
    assert rows["770002"]["requeue"] == "python -m pipeline requeue 770002"
    # Planned five hours ago by a ledger clock that is "now": stuck only once nothing moved for long.
    assert rows["770001"]["state"] == "planned"
    later = {r["instance_id"]: r for r in status.listing(ledger, now=NOW + timedelta(hours=3))["instances"]}
    assert later["770001"]["state"] == "stuck" and "no progress since" in later["770001"]["reason"]


def test_failed_runs_show_the_reason_and_the_requeue_command(ledger):
    record_run(ledger, "770010", NOW - timedelta(hours=2),
               files=[("a.xml", 500, {"xml-malformed": 2}), ("b.xml", 10, None)],
               fail="SFTP: connection reset by peer")
    ledger.mark_instance("770011", "failed", message={"v": 1, "received_at": "2026-11-20T03:12:45.200Z",
                                                      "job_id": "S1", "job_name": "Nightly"},
                         error="planning failed on every delivery")
    rows = {r["instance_id"]: r for r in status.listing(ledger)["instances"]}
    failed = rows["770010"]
    assert failed["state"] == "failed" and failed["reason"] == "b.xml: SFTP: connection reset by peer"
    assert failed["requeue"] == "python -m pipeline requeue 770010"
    assert failed["rejects_by_reason"] == [{"reason": "xml-malformed", "count": 2}]
    assert (failed["files_total"], failed["files_done"], failed["files_failed"]) == (2, 1, 1)
    assert rows["770011"]["state"] == "failed" and rows["770011"]["job_name"] == "Nightly"
    assert rows["770011"]["reason"] == "planning failed on every delivery"


def test_instance_detail_has_files_outputs_hashes_timings_and_manifest(ledger):
    record_run(ledger, "770020", NOW - timedelta(hours=1),
               files=[("a.xml", 500, {"marc21-truncated": 3}),
                      ("b.xml", 20, {"marc21-truncated": 1, "rules-reject": 1})])
    data = status.instance(ledger, "770020")
    assert [f["name"] for f in data["files"]] == ["a.xml", "b.xml"]
    assert data["rejects_by_reason"] == [{"reason": "marc21-truncated", "count": 4},
                                         {"reason": "rules-reject", "count": 1}]
    assert data["files"][0]["outputs"][0]["sha256"] == "ab" * 32
    assert data["timings"]["seconds"] is not None and data["manifest"]["state"] == "done"
    assert data["manifest"]["content"]["totals"]["records_out"] == data["records_out"] == 515
    assert status.instance(ledger, "770099") is None
    with pytest.raises(ValueError):
        status.instance(ledger, "../jobs/x")


def test_index_follows_state_changes_and_reindex_repairs_it(ledger, unique_name, azurite):
    record_run(ledger, "770030", NOW - timedelta(hours=1), fail="boom")
    container = BlobServiceClient.from_connection_string(azurite.connection_string).get_container_client(unique_name)
    assert ledger.index_page(10).summaries[0]["state"] == "failed"
    ledger.reset_failed("770030")  # requeue reopens it: the index says so
    names = [b.name for b in container.list_blobs(name_starts_with="index/")]
    assert len(names) == 1 and ledger.index_page(10).summaries[0]["state"] == "pending"
    record_run(ledger, "770031", NOW, finish=False)
    container.delete_blob("jobs/770031.json")  # someone deleted a ledger record by hand
    container.delete_blob("index-head.json")  # and the head: listing falls back to the entries
    assert ids(status.listing(ledger)) == ["770030"]  # an unfinished instance with no record is left out
    assert ledger.reindex() == (1, 1)
    assert ids(status.listing(ledger)) == ["770030"]
    assert [b.name for b in container.list_blobs(name_starts_with="index")] == ["index-head.json", names[0]]


def test_reject_reasons_add_up_over_files_most_frequent_first(ledger):
    record_run(ledger, "770035", NOW, files=[("a.xml", 100, {"xml-malformed": 1, "utf8-invalid": 2}),
                                             ("b.xml", 100, {"xml-malformed": 3})])
    (row,) = status.listing(ledger)["instances"]
    assert row["rejects_by_reason"] == [{"reason": "xml-malformed", "count": 4}, {"reason": "utf8-invalid", "count": 2}]
    assert row["rejected"] == 6


def test_chart_holds_the_last_30_days_only(ledger):
    record_run(ledger, "770040", NOW - timedelta(days=40))
    record_run(ledger, "770041", NOW - timedelta(days=2), files=[("a.xml", 300, {"xml-malformed": 3})])
    record_run(ledger, "770042", NOW - timedelta(days=1))
    chart = status.listing(ledger)["chart"]
    assert [r["instance_id"] for r in chart["runs"]] == ["770041", "770042"]  # oldest first
    out, rejected = chart["svg"]["rows"]
    assert [b["h"] for b in out["bars"]] == [round(70 * 297 / 1000, 1), 70.0]
    assert rejected["max"] == 3 and rejected["bars"][1]["h"] == 0.0


# ---- the HTTP function ---------------------------------------------------------------------------


def get(path: str = "", params=None, headers=None, route=None):
    url = "https://app.example.net/api/status" + (f"/{path}" if path else "")
    response = invoke_http("job_status", "GET", url, params={"code": "k3y", **(params or {})}, headers=headers or {},
                           route_params=route or ({"instance_id": path} if path else {})).response
    return response, response.get_body().decode("utf-8")


def test_function_binding_is_a_get_route_with_function_auth():
    bindings = json.loads(registered_functions()["job_status"].get_function_json())["bindings"]
    trigger = next(b for b in bindings if b["type"] == "httpTrigger")
    assert trigger["route"] == "status/{instance_id?}" and trigger["methods"] == ["GET"]
    assert trigger["authLevel"] == "FUNCTION"
    assert match_route(trigger["route"], "status") == {}
    assert match_route(trigger["route"], "status/123") == {"instance_id": "123"}
    assert match_route(trigger["route"], "status/1/2") is None and match_route(trigger["route"], "webhook") is None


def test_function_serves_html_and_json_and_keeps_the_key_in_links(ledger):
    record_run(ledger, "770050", NOW - timedelta(hours=1), files=[("a.xml", 48213, {"marc21-truncated": 3})])
    response, html = get()
    assert response.status_code == 200 and response.mimetype == "text/html"
    assert "script-src" not in response.headers["Content-Security-Policy"]
    assert "default-src 'none'" in response.headers["Content-Security-Policy"]
    assert '<html lang="en">' in html and "48,210" in html and "3 × marc21-truncated" in html
    assert 'href="/api/status/770050?code=k3y"' in html
    for how in ({"params": {"format": "json"}}, {"headers": {"Accept": "application/json"}}):
        response, body = get(**how)
        assert response.mimetype == "application/json"
        data = json.loads(body)
        assert ids(data) == ["770050"] and data["instances"][0]["records_out"] == 48210
        assert "svg" not in data["chart"] and data["chart"]["runs"][0]["rejected"] == 3
    response, html = get("770050")
    assert response.status_code == 200 and "a.xml" in html and "manifest.json" in html
    response, body = get("770050", params={"format": "json"})
    assert json.loads(body)["files"][0]["records_in"] == 48213


def test_function_errors_are_clear(ledger):
    assert get("770404")[0].status_code == 404
    response, body = get("bad id!", params={"format": "json"})
    assert response.status_code == 400 and "not a plain id" in json.loads(body)["error"]
    response, body = get(params={"size": "lots"})
    assert response.status_code == 400 and "size must be a number" in body
    response, body = get(params={"page": "not-a-token"})
    assert response.status_code == 400 and "page link is not valid" in body


def test_hostile_values_are_shown_as_text(ledger):
    record_run(ledger, "770060", NOW - timedelta(hours=1), job_name=HOSTILE, fail='<img src=x onerror="alert(1)">')
    for path in ("", "770060"):
        _, html = get(path)
        assert "<script" not in html and "<img" not in html
        assert "&lt;script&gt;alert(&#34;owned&#34;)&lt;/script&gt; Export" in html
        assert "&lt;img src=x onerror=&#34;alert(1)&#34;&gt;" in html
    assert json.loads(get(params={"format": "json"})[1])["instances"][0]["job_name"] == HOSTILE


# ---- the command ---------------------------------------------------------------------------------


def test_status_command_lists_and_shows_an_instance(ledger, unique_name, capsys):
    record_run(ledger, "770070", NOW - timedelta(hours=2), files=[("a.xml", 1200, {"marc21-truncated": 2})])
    record_run(ledger, "770071", NOW - timedelta(hours=1), fail="SFTP: connection reset")
    assert main(["status", "--container", unique_name]) == 0
    out = capsys.readouterr().out
    assert out.index("770071") < out.index("770070")
    assert "FAILED: BIBS_770071_1.xml: SFTP: connection reset" in out
    assert "re-run:  python -m pipeline requeue 770071" in out and "rejected 2 x marc21-truncated" in out
    assert main(["status", "770070", "--container", unique_name]) == 0
    out = capsys.readouterr().out
    assert "a.xml" in out and "1,198" in out and "manifest: done" in out
    assert main(["status", "770070", "--json", "--container", unique_name]) == 0
    assert json.loads(capsys.readouterr().out)["files"][0]["rejected"] == 2
    assert main(["status", "--reindex", "--container", unique_name]) == 0
    assert "2 entries written, 0 stale removed" in capsys.readouterr().out
    assert main(["status", "770099", "--container", unique_name]) == 1
    assert "no ledger record for job instance 770099" in capsys.readouterr().err
