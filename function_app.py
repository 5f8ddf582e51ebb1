"""Azure Functions entry point (v2 programming model): bindings only, all logic lives in `pipeline/`.

Importing this module must not read any setting: the host indexes the functions at import time and
a missing setting would leave it with zero functions. Settings are read per request instead.
"""

from __future__ import annotations

import azure.functions as func

from pipeline import webhook
from pipeline.events import JOBS_QUEUE

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)


@app.function_name("alma_webhook")
@app.route(route="webhook", methods=["GET", "POST"], auth_level=func.AuthLevel.FUNCTION)
@app.queue_output(arg_name="msg", queue_name=JOBS_QUEUE, connection="AzureWebJobsStorage")
def alma_webhook(req: func.HttpRequest, msg: func.Out[str]) -> func.HttpResponse:
    """Alma's listener URL (`/api/webhook?code=...`): verify, normalise, enqueue; no other I/O."""
    result = webhook.handle(req.method, req.params, req.headers, req.get_body())
    if result.message is not None:
        msg.set(result.message)
    return func.HttpResponse(
        result.response.text,
        status_code=result.response.status,
        headers=result.response.headers,
        mimetype="application/json",
        charset="utf-8",
    )
