"""What the real Functions host does that the pipeline must agree with, and the dev host imitates:
app-setting overrides of host.json, no poison queue for a poison queue, the timer function, and the
Python version the worker library allows."""

from __future__ import annotations

import importlib.metadata
import json
import re
import time
import tomllib
from pathlib import Path

from pipeline.dev.host import DevHost, registered_functions
from pipeline.hostconfig import HostConfig

ROOT = Path(__file__).resolve().parent.parent


def test_host_json_overrides_from_app_settings_are_read_like_the_host_reads_them(tmp_path):
    host_json = tmp_path / "host.json"
    queues = {"maxDequeueCount": 5, "visibilityTimeout": "00:05:00"}
    host_json.write_text(json.dumps({"functionTimeout": "00:30:00", "extensions": {"queues": queues}}))
    assert HostConfig.load(host_json, environ={}) == HostConfig(5, 300.0, 1800.0)
    overridden = HostConfig.load(host_json, environ={
        "AzureFunctionsJobHost__functionTimeout": "00:10:00",
        "azurefunctionsjobhost__extensions__queues__maxDequeueCount": "2",  # the host ignores case
        "AzureFunctionsJobHost__extensions__queues__visibilityTimeout": "00:00:30",
    })
    assert overridden == HostConfig(max_dequeue_count=2, visibility_timeout=30.0, function_timeout=600.0)


class _Failing:
    """A registered-function look-alike whose handler always raises (a poison handler with a bug)."""

    calls = 0

    def get_bindings(self):
        return []

    def get_user_function(self):
        def handler(msg):
            _Failing.calls += 1
            raise RuntimeError("handler failed")

        return handler


def test_a_failing_handler_on_a_poison_queue_keeps_its_message_and_there_is_no_poison_poison(azurite, unique_name):
    host = DevHost(azurite.connection_string, config=HostConfig(max_dequeue_count=1, visibility_timeout=0),
                   lease_seconds=1)
    queue = f"{unique_name}-poison"
    host.triggers[queue] = ("failing", _Failing())
    host.send(queue, "a poison message")
    outcomes = []
    for _ in range(3):
        inv = None
        for _ in range(40):  # the message comes back once its hold lapses
            inv = host.run_once(queue)
            if inv is not None:
                break
            time.sleep(0.1)
        outcomes.append(inv.outcome)
    assert outcomes == ["stuck", "stuck", "stuck"] and _Failing.calls == 3  # it comes back, every time
    assert host.queue(f"{queue}-poison").peek_messages() == []  # never moved to <queue>-poison-poison


def test_the_sweeper_is_a_timer_on_the_schedule_setting_and_outputs_file_messages():
    fn = registered_functions()["sweep_jobs"]
    bindings = {b["name"]: b for b in json.loads(fn.get_function_json())["bindings"]}
    assert bindings["timer"]["type"] == "timerTrigger" and bindings["timer"]["schedule"] == "%SWEEP_SCHEDULE%"
    assert bindings["files"]["type"] == "queue" and bindings["files"]["queueName"] == "alma-export-files"
    from pipeline import settings

    assert settings.get("SWEEP_SCHEDULE", environ={}) == "0 */15 * * * *"


def test_the_python_range_is_the_worker_librarys():
    required = importlib.metadata.metadata("azure-functions")["Requires-Python"]
    upper = re.search(r"<\s*3\.(\d+)", required)
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert upper and f"<3.{upper.group(1)}" in declared.replace(" ", "")


def test_the_job_flow_imports_without_the_azure_sdk_and_the_app_without_dev_tooling():
    import subprocess
    import sys

    code = ("import sys; import pipeline.jobs, pipeline.worker, pipeline.notify, pipeline.ledger; "
            "print(sorted(m for m in sys.modules if m.startswith('azure')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr
    code = "import sys, function_app; print(sorted(m for m in sys.modules if m.startswith('pipeline.dev')))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr
    assert "pipeline/dev" in (ROOT / ".funcignore").read_text().split()
