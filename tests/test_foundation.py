"""The foundation: settings validation, the CLI's front door, the Azurite harness."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from azure.storage.queue import QueueClient

from pipeline import settings
from pipeline.cli import main

ROOT = Path(__file__).resolve().parent.parent


def test_azurite_harness_serves_real_queues(azurite, unique_name):
    queue = QueueClient.from_connection_string(azurite.connection_string, unique_name)
    queue.create_queue()
    queue.send_message("hello")
    assert [m.content for m in queue.receive_messages()] == ["hello"]


@pytest.mark.parametrize(
    ("name", "raw", "message"),
    [
        ("ALMA_WEBHOOK_ALLOW_UNSIGNED", "maybe", "setting ALMA_WEBHOOK_ALLOW_UNSIGNED: must be true or false"),
        ("DROPBOX_CHUNK_MIB", "two", "setting DROPBOX_CHUNK_MIB: must be an integer"),
        ("DROPBOX_CHUNK_MIB", "2", "setting DROPBOX_CHUNK_MIB: must be at least 4"),
        ("ALMA_API_TIMEOUT", "x", "setting ALMA_API_TIMEOUT: must be a number"),
        ("EXPORT_JOB_FILTER", "(unclosed", "setting EXPORT_JOB_FILTER: is not a valid regular expression"),
        ("EXPORT_JOB_STATUSES", " , ", "setting EXPORT_JOB_STATUSES: must be a comma-separated list"),
    ],
)
def test_bad_settings_name_the_setting_and_the_problem(name, raw, message):
    with pytest.raises(settings.SettingError) as err:
        settings.get(name, {name: raw})
    assert str(err.value).startswith(message)


def test_settings_parse_and_default():
    env = {"ALMA_WEBHOOK_ALLOW_UNSIGNED": "TRUE", "EXPORT_JOB_STATUSES": "A, B,,C", "DROPBOX_CHUNK_MIB": "12"}
    assert settings.get("ALMA_WEBHOOK_ALLOW_UNSIGNED", env) is True
    assert settings.get("EXPORT_JOB_STATUSES", env) == ("A", "B", "C")
    assert settings.get("DROPBOX_CHUNK_MIB", env) == 12
    assert settings.get("DROPBOX_CHUNK_MIB", {}) == 8
    assert settings.get("ALMA_WEBHOOK_SECRET", {"ALMA_WEBHOOK_SECRET": "   "}) is None
    with pytest.raises(settings.SettingError, match="ALMA_API_KEY: is not set"):
        settings.require("ALMA_API_KEY", {})


def test_sample_settings_file_is_generated_from_the_registry():
    from pipeline.commands.settings import sample

    committed = json.loads((ROOT / "local.settings.sample.json").read_text())
    assert committed == json.loads(sample())
    assert "AzureWebJobsFeatureFlags" not in committed["Values"]  # EnableWorkerIndexing is obsolete
    assert set(committed["Values"]) - {"FUNCTIONS_WORKER_RUNTIME", "AzureWebJobsFeatureFlags"} == set(settings.REGISTRY)


def test_readme_settings_table_is_generated_from_the_registry():
    from pipeline.commands.settings import table

    readme = (ROOT / "README.md").read_text()
    assert table() in readme  # regenerate with: python -m pipeline settings table
    missing = [name for name in settings.REGISTRY if f"`{name}`" not in readme]
    assert not missing


def test_settings_check_names_each_bad_setting(clean_env, capsys):
    clean_env.setenv("ALMA_API_TIMEOUT", "soon")
    clean_env.setenv("ALMA_WEBHOOK_SECRET", "s3cret-value")
    assert main(["settings", "check"]) == 1
    out = capsys.readouterr().out
    assert "ERROR setting ALMA_API_TIMEOUT: must be a number, got 'soon'" in out
    assert "s3cret-value" not in out and "ALMA_WEBHOOK_SECRET = (set, hidden)" in out


def test_cli_help_works_and_usage_errors_are_one_line():
    out = subprocess.run([sys.executable, "-m", "pipeline", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and "usage: python -m pipeline" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "pipeline", "--no-such-option"],
                         capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2
    assert len(bad.stderr.strip().splitlines()) == 1 and "unrecognized arguments" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_cli_unknown_command_exit_2(capsys):
    assert main(["no-such-command"]) == 2
    assert "invalid choice" in capsys.readouterr().err
