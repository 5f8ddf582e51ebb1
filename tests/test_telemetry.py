"""Traces and metrics (issue 14): one demo run is one trace, webhook -> plan -> every file
invocation (continuations included) -> uploads, carried across the queues by `traceparent`; the
metrics add up to the manifest's counts; log lines carry the same ids. Recorded with the
OpenTelemetry SDK's in-memory exporters."""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from pipeline import telemetry
from pipeline.cli import main
from pipeline.commands.demo import SAMPLE_EXPORTS

INSTANCE = "8816243980004146"
BAD = ('<record><leader>00000nam a2200000 i 4500</leader><datafield tag="245" ind1="0" ind2="0">'
       '<subfield code="a">broken</datafield></record>\n')


@pytest.fixture
def recorded():
    spans, reader = InMemorySpanExporter(), InMemoryMetricReader()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    telemetry.use(tracer_provider, MeterProvider(metric_readers=[reader]))
    yield spans, reader
    telemetry.use(None, None)


@pytest.fixture
def exports(tmp_path) -> Path:
    """The demo's sample export, its first file four times as long (several batches, so a tiny time
    budget continues it), and two broken records at the end of its second file."""
    folder = tmp_path / "exports"
    shutil.copytree(SAMPLE_EXPORTS, folder)
    first = folder / f"BIBS_nightly_{INSTANCE}_1.xml"
    text = first.read_text()
    head, body = text.split("<record>", 1)
    body, tail = body.rsplit("</collection>", 1)
    first.write_text(head + ("<record>" + body) * 4 + "</collection>" + tail)
    second = folder / f"BIBS_nightly_{INSTANCE}_2.xml"
    second.write_text(second.read_text().replace("</collection>", BAD + BAD + "</collection>"))
    return folder


def metric_sums(reader) -> dict[str, float]:
    out: dict[str, float] = {}
    for rm in reader.get_metrics_data().resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                for point in metric.data.data_points:
                    value = point.sum if hasattr(point, "sum") else point.value
                    out[metric.name] = out.get(metric.name, 0) + value
                    if hasattr(point, "count"):
                        out[metric.name + ".count"] = out.get(metric.name + ".count", 0) + point.count
    return out


def test_one_demo_run_is_one_trace_and_metrics_equal_the_manifest(clean_env, recorded, exports, tmp_path, caplog):
    spans, reader = recorded
    clean_env.setenv("EXPORT_SOURCE", exports.as_uri())
    clean_env.setenv("WORKER_TIME_BUDGET", "0.001")  # every file is continued: its parts must join the trace
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO, logger="pipeline"):
        assert main(["demo", "--out", str(out)]) == 0
    manifest = json.loads(next(out.rglob("manifest.json")).read_text())

    finished = spans.get_finished_spans()
    by_name: dict[str, list] = {}
    for span in finished:
        by_name.setdefault(span.name, []).append(span)
    (webhook,) = by_name["alma_webhook"]
    (plan,) = by_name["plan_export"]
    files = by_name["process_export_file"]
    uploads = by_name["upload"]
    trace_id = webhook.context.trace_id
    assert {s.context.trace_id for s in finished} == {trace_id}  # one trace, nothing outside it
    assert webhook.parent is None and plan.parent.span_id == webhook.context.span_id
    assert webhook.attributes["alma.instance_id"] == INSTANCE and plan.attributes["alma.instance_id"] == INSTANCE

    # Every file message is a child of the plan or of the invocation that handed the file over.
    ids = {s.context.span_id: s for s in files}
    for span in files:
        parent = span.parent.span_id
        assert parent == plan.context.span_id or ids[parent].attributes["alma.file"] == span.attributes["alma.file"]
    names = [f["name"] for f in manifest["files"]]
    assert sorted({s.attributes["alma.file"] for s in files}) == names
    assert len(files) > len(names)  # continuations happened and each is in the trace
    assert all(f["parts"] == sum(1 for s in files if s.attributes["alma.file"] == f["name"])
               for f in manifest["files"])

    # Each delivered output and the manifest is an upload span under a file invocation (or the last one).
    outputs = {o["path"] for f in manifest["files"] for o in f["outputs"]}
    uploaded = {s.attributes["alma.output"] for s in uploads if "alma.bytes" in s.attributes}
    assert outputs <= uploaded and any(p.endswith("manifest.json") for p in uploaded)
    assert all(s.parent.span_id in ids for s in uploads)

    totals = manifest["totals"]
    assert totals["rejected"] == 2 and totals["records_out"] == 4 * 60 + 40
    assert totals["rejected_by_reason"] == {"xml-malformed": 2}
    sums = metric_sums(reader)
    assert sums["alma_export.records.in"] == totals["records_in"]
    assert sums["alma_export.records.out"] == totals["records_out"]
    assert sums["alma_export.records.rejected"] == totals["rejected"]
    assert sums["alma_export.records.dropped"] == totals["dropped"]
    assert sums["alma_export.bytes.in"] == totals["bytes_in"]
    assert sums["alma_export.file.duration.count"] == len(files)
    assert sum(s.attributes["alma.records_out"] for s in files) == totals["records_out"]
    assert sum(s.attributes["alma.rejected"] for s in files) == totals["rejected"]

    # Log lines made while a file was worked on carry the instance, the file and the trace.
    done = [r for r in caplog.records  # the message as logged (redaction may have formatted it already)
            if r.name == "pipeline.jobs" and re.match(r"job instance \d+ file \S+ done: ", r.getMessage())]
    assert len(done) == len(names)
    for record in done:
        assert record.instance_id == INSTANCE and record.file in names
        assert record.trace_id == format(trace_id, "032x")


def test_without_a_provider_messages_are_unchanged_and_nothing_is_wrapped():
    telemetry.use(None, None)
    message = '{"v":1,"instance_id":"1","file":"f"}'
    with telemetry.consuming("process_export_file", message):
        assert telemetry.stamp(message) == message
        assert telemetry.stamp([message]) == [message]
    destination = object()
    assert telemetry.traced(destination) is destination


def test_a_traceparent_in_a_message_makes_the_consumer_its_child(recorded):
    spans, _ = recorded
    with telemetry.request("alma_webhook"):
        stamped = json.loads(telemetry.stamp('{"v":1,"instance_id":"42","job_id":"S1"}'))
    assert stamped["instance_id"] == "42" and stamped["traceparent"].startswith("00-")
    with telemetry.consuming("plan_export", json.dumps(stamped)):
        pass
    with telemetry.consuming("plan_export", '{"v":1,"traceparent":"not a traceparent"}'):
        pass
    webhook, child, orphan = spans.get_finished_spans()
    assert child.parent.span_id == webhook.context.span_id and child.context.trace_id == webhook.context.trace_id
    assert orphan.parent is None  # a malformed traceparent starts a new trace instead of failing the message
