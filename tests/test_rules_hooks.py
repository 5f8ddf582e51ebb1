"""Rules are data unless the operator says otherwise (issue 12, finding 5): `python:` hooks need
RULES_ALLOW_PYTHON=true, `rules check` never imports a hook's module, and anything a hook raises,
SystemExit included, rejects that record only."""

from __future__ import annotations

import io
import json

import pymarc
import pytest

from pipeline.cli import main
from pipeline.destinations.local import LocalDestination
from pipeline.marc.engine import Input, process_file
from pipeline.marc.record import Field
from pipeline.rules import RulesError, load_rules
from tests import marcgen

HOOK = '''
import pathlib
pathlib.Path(__file__).with_name("IMPORTED").write_text("the hook module ran")


def touch(record):
    return record
'''


@pytest.fixture
def hooked(tmp_path):
    """A rules file next to a hook module whose import leaves a mark."""
    (tmp_path / "marker_hook.py").write_text(HOOK)
    rules = tmp_path / "rules.yaml"
    rules.write_text('- remove: 9XX\n- python: "marker_hook:touch"\n')
    return rules


def test_a_hook_is_refused_by_default_with_the_reason(hooked, monkeypatch):
    monkeypatch.delenv("RULES_ALLOW_PYTHON", raising=False)
    with pytest.raises(RulesError, match="arbitrary Python code.*RULES_ALLOW_PYTHON=true"):
        load_rules(hooked)
    assert not (hooked.parent / "IMPORTED").exists()


def test_rules_check_refuses_a_hook_by_default_and_runs_nothing(hooked, monkeypatch, capsys):
    monkeypatch.delenv("RULES_ALLOW_PYTHON", raising=False)
    assert main(["rules", "check", str(hooked)]) == 2
    assert "RULES_ALLOW_PYTHON=true" in capsys.readouterr().err
    assert not (hooked.parent / "IMPORTED").exists()


def test_rules_check_never_imports_the_hook_even_when_hooks_are_allowed(hooked, monkeypatch, capsys):
    monkeypatch.setenv("RULES_ALLOW_PYTHON", "true")
    assert main(["rules", "check", str(hooked)]) == 0
    out = capsys.readouterr().out
    assert "call marker_hook:touch(record)" in out and "not imported by check" in out
    assert not (hooked.parent / "IMPORTED").exists()
    load_rules(hooked)  # loading for a run does import it: that is what the operator allowed
    assert (hooked.parent / "IMPORTED").exists()


def test_rules_check_still_checks_the_hook_spelling(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RULES_ALLOW_PYTHON", "true")
    rules = tmp_path / "r.yaml"
    rules.write_text('- python: "os; rm -rf:x"\n')
    assert main(["rules", "check", str(rules)]) == 2
    assert "must be Python names" in capsys.readouterr().err


def test_a_bad_setting_value_is_named(hooked, monkeypatch):
    from pipeline.settings import SettingError

    monkeypatch.setenv("RULES_ALLOW_PYTHON", "perhaps")
    with pytest.raises(SettingError, match="RULES_ALLOW_PYTHON"):
        load_rules(hooked)


@pytest.mark.parametrize("hook", ["sys:exit", "builtins:exit"])
def test_a_hook_ending_the_process_rejects_each_record_and_the_run_goes_on(tmp_path, monkeypatch, hook):
    """Was: `python: "sys:exit"` raised SystemExit past the per-record handler and ended the run."""
    monkeypatch.setenv("RULES_ALLOW_PYTHON", "true")
    rules = tmp_path / "exit.yaml"
    rules.write_text(f'- python: "{hook}"\n  if: {{match: {{path: "001", pattern: "[02468]$"}}}}\n')
    recs = marcgen.records(10, seed=5)
    for i, r in enumerate(recs):
        r.fields = [f for f in r.fields if f.tag != "001"]
        r.fields.insert(0, Field.control("001", f"id{i}"))
    data = marcgen.marc21_bytes(recs)
    out = tmp_path / "out"
    result = process_file(Input("in.mrc", lambda: io.BytesIO(data), len(data)), LocalDestination(out),
                          fmt="marc21", rules_path=str(rules), workers=1)
    assert result.error is None
    even = [r for r in recs if r.control("001")[-1] in "02468"]
    assert len(even) == 5
    assert (result.records_in, result.rejected, result.records_out) == (10, 5, 5)
    with open(out / "in.mrc", "rb") as fh:
        written = [r["001"].data for r in pymarc.MARCReader(fh)]
    assert written == [r.control("001") for r in recs if r not in even]
    reasons = [json.loads(line)["error"] for line in (out / "in.rejects.jsonl").read_text().splitlines()]
    assert reasons and all(f"{hook} raised SystemExit" in reason for reason in reasons)
