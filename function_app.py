"""Azure Functions entry point (v2 programming model): bindings only, all logic lives in `pipeline/`.

Importing this module must not read any setting: the host indexes the functions at import time and
a missing setting would leave it with zero functions. Settings are read per request instead.
Annotations are real objects (no `from __future__ import annotations`) and multi-message outputs
use `typing.List`, the form the Functions Python worker documents and checks for. The job message is
a `bytes` output: the host re-serialises a `str` that looks like JSON (docs/queue-message.md).
Nothing here imports development tooling (pipeline/dev/ is not deployed).
"""

import logging
import typing

import azure.functions as func

from pipeline import hostconfig, status, telemetry, webhook, worker
from pipeline.queues import FILES_QUEUE, JOBS_QUEUE

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
Messages = typing.List[str]  # noqa: UP006 - several queue messages, in the worker's documented form
logging.getLogger("azure").setLevel(logging.WARNING)  # the storage SDK logs every HTTP call at INFO


@app.function_name("alma_webhook")
@app.route(route="webhook", methods=["GET", "POST"], auth_level=func.AuthLevel.FUNCTION)
@app.queue_output(arg_name="msg", queue_name=JOBS_QUEUE, connection="AzureWebJobsStorage")
def alma_webhook(req: func.HttpRequest, msg: func.Out[bytes]) -> func.HttpResponse:
    """Alma's listener URL (`/api/webhook?code=...`): verify, normalise, enqueue; no other I/O."""
    with telemetry.request("alma_webhook") as span:
        result = webhook.handle(req.method, req.params, req.headers, req.get_body())
        span.set_attribute("http.response.status_code", result.response.status)
        if result.message is not None:
            msg.set(telemetry.stamp(result.message).encode("utf-8"))
    return func.HttpResponse(
        result.response.text,
        status_code=result.response.status,
        headers=result.response.headers,
        mimetype="application/json",
        charset="utf-8",
    )


@app.function_name("plan_export")
@app.queue_trigger(arg_name="job", queue_name=JOBS_QUEUE, connection="AzureWebJobsStorage")
@app.queue_output(arg_name="files", queue_name=FILES_QUEUE, connection="AzureWebJobsStorage")
def plan_export(job: func.QueueMessage, files: func.Out[Messages]) -> None:
    """Fetch the job instance from Alma, plan its files in the ledger, one message per file."""
    with telemetry.consuming("plan_export", job.get_body()):
        messages = worker.plan_export(job.get_body(), dequeue_count=job.dequeue_count or 1,
                                      max_dequeue=hostconfig.current().max_dequeue_count)
        if messages:
            files.set(telemetry.stamp(messages))


@app.function_name("process_export_file")
@app.queue_trigger(arg_name="file", queue_name=FILES_QUEUE, connection="AzureWebJobsStorage")
@app.queue_output(arg_name="more", queue_name=FILES_QUEUE, connection="AzureWebJobsStorage")
def process_export_file(file: func.QueueMessage, more: func.Out[Messages]) -> None:
    """Stream one export file source -> reader -> rules -> writer -> destination; continue if out of time."""
    with telemetry.consuming("process_export_file", file.get_body()):
        continuation = worker.process_export_file(file.get_body(), dequeue_count=file.dequeue_count or 1)
        if continuation:
            more.set(telemetry.stamp(continuation))


@app.function_name("export_failed")
@app.queue_trigger(arg_name="poison", queue_name=f"{JOBS_QUEUE}-poison", connection="AzureWebJobsStorage")
def export_failed(poison: func.QueueMessage) -> None:
    """A job message that failed every delivery: record it, write _FAILED.json, notify; never raises."""
    with telemetry.consuming("export_failed", poison.get_body()):
        worker.export_failed(poison.get_body(), JOBS_QUEUE, dequeue_count=poison.dequeue_count or 0)


@app.function_name("export_file_failed")
@app.queue_trigger(arg_name="poison", queue_name=f"{FILES_QUEUE}-poison", connection="AzureWebJobsStorage")
def export_file_failed(poison: func.QueueMessage) -> None:
    """A file message that failed every delivery: the file is failed, the rest of the job goes on; never raises."""
    with telemetry.consuming("export_file_failed", poison.get_body()):
        worker.export_failed(poison.get_body(), FILES_QUEUE, dequeue_count=poison.dequeue_count or 0)


@app.function_name("sweep_jobs")
@app.timer_trigger(arg_name="timer", schedule="%SWEEP_SCHEDULE%", run_on_startup=False, use_monitor=True)
@app.queue_output(arg_name="files", queue_name=FILES_QUEUE, connection="AzureWebJobsStorage")
def sweep_jobs(timer: func.TimerRequest, files: func.Out[Messages]) -> None:
    """Every SWEEP_SCHEDULE: continue, fail or complete the jobs nobody is working on."""
    messages = worker.sweep_jobs()
    if messages:
        files.set(messages)


@app.function_name("job_status")
@app.route(route="status/{instance_id?}", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def job_status(req: func.HttpRequest) -> func.HttpResponse:
    """The operations view (`/api/status`, `/api/status/{instance_id}`): HTML, or JSON on request."""
    with telemetry.request("job_status"):
        answer = status.handle(lambda: worker.context().ledger, req.method, req.url, req.params, req.headers,
                               req.route_params.get("instance_id"))
    return func.HttpResponse(answer.body, status_code=answer.status, headers=answer.headers,
                             mimetype=answer.mimetype, charset="utf-8")
