"""`rules check`, `rules try` and `process --rules` end to end, on MARCXML and MARC 21 files written
by the engine's own encoders from generated records."""

from __future__ import annotations

import json

import pytest
from rules_support import mrk

from pipeline.cli import main
from pipeline.commands.rules import read_records
from pipeline.marc.marc21 import Marc21Encoder
from pipeline.marc.marcxml import MarcXmlEncoder
from pipeline.marc.record import Record

RULES = r"""
version: 1
rules:
  - name: local fields
    remove: 9XX
  - add: {tag: "035", subfields: {a: "(MyLib){001}"}}
  - remove: "650"
    where: {equals: {path: $2, value: fast}}
  - replace: {path: 245ab, pattern: '\s*[:/]$', with: ""}
  - set: {path: LDR/17, value: "7"}
  - copy: {from: 008/35-37, to: 041a}
  - drop: true
    if: {match: {path: "001", pattern: "3$"}}
  - python: "rules_support:explode_on_bad"
  - sort: fields
"""


@pytest.fixture(autouse=True)
def allow_hooks(monkeypatch):
    """RULES above uses a python: hook, which the operator must allow (RULES_ALLOW_PYTHON)."""
    monkeypatch.setenv("RULES_ALLOW_PYTHON", "true")


def records(n: int = 24) -> list[Record]:
    """Varied records: some without 001 (the add is skipped), one the hook rejects, some dropped."""
    out = []
    for i in range(n):
        rid = f"bad{i}" if i == 5 else f"99{i:04d}"
        rec = mrk(rf"""
=LDR  00000cam a2200000 i 4500
=001  {rid}
=008  200101s2020    nyu           000 0 {("eng", "fre", "ger")[i % 3]} d
=245  1{i % 10}$aTitle {i} :$bsub {i} /$cby Someone.
=650  \0$aTopic {i}
=650  \7$aFast topic$2fast
=949  \\$aitem {i}$bcopy
""")
        if i % 7 == 6:
            rec.fields.pop(0)  # no 001
        if i % 4 == 0:
            rec.fields.append(rec.fields[1].copy())  # a second 008-like oddity keeps parsers honest
            rec.fields[-1].tag = "500"
            rec.fields[-1].value = None
            rec.fields[-1].subfields = [("a", "Café ünïcödé ☃ note")]
        out.append(rec)
    return out


def write(path, encoder, recs) -> str:
    with open(path, "wb") as f:
        f.write(encoder.header())
        for rec in recs:
            f.write(encoder.encode(rec))
        f.write(encoder.footer())
    return str(path)


@pytest.fixture
def files(tmp_path):
    recs = records()
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES, encoding="utf-8")
    return {
        "rules": str(rules),
        "xml": write(tmp_path / "export.xml", MarcXmlEncoder(), recs),
        "mrc": write(tmp_path / "export.mrc", Marc21Encoder(), recs),
        "tmp": tmp_path,
    }


def test_check_lists_the_rules_in_plain_words(files, capsys):
    assert main(["rules", "check", files["rules"]]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{files['rules']}: OK, 9 rules"
    assert out[1] == "  1. remove fields 9XX [local fields]"
    assert out[3] == "  3. remove field 650 where $2 is 'fast'"
    assert out[7] == "  7. drop the record, if 001 matches /3$/"


def test_check_a_bad_file_exits_2_with_one_line(files, capsys):
    bad = files["tmp"] / "bad.yaml"
    bad.write_text("- remove: 9XX\n- replace: {path: 245a, pattern: 'ab(c'}\n")
    assert main(["rules", "check", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {bad}:2: rule 2 (replace): pattern: missing ), unterminated subpattern at position 2\n"


def test_try_shows_changed_records_with_marks_trace_and_counts(files, capsys):
    assert main(["rules", "try", files["rules"], files["xml"], "--limit", "2"]) == 0
    out = capsys.readouterr().out
    first = out.split("\n\n")[0].splitlines()
    assert first[0] == "--- record 1 (001 990000): changed"
    assert "  # rule 1 (remove): changed (-1 +0 lines)" in first
    assert r"+ =035  \\$a(MyLib)990000" in first
    assert "- =245  10$aTitle 0 :$bsub 0 /$cby Someone." in first
    assert "+ =245  10$aTitle 0$bsub 0$cby Someone." in first
    assert "  =001  990000" in first
    assert out.count("--- record") == 2
    # 24 read: 2 dropped (001 ending in 3: 3 and 23; 13 has no 001), 1 rejected by the hook
    assert out.rstrip().splitlines()[-1] == (
        "24 read, 21 changed, 0 unchanged, 2 dropped, 1 rejected by rules, 0 unreadable")


def test_try_shows_why_an_add_was_skipped_and_rejections(files, capsys):
    assert main(["rules", "try", files["rules"], files["mrc"], "--limit", "30"]) == 0
    out = capsys.readouterr().out
    skipped = next(block for block in out.split("\n\n") if "record 7 " in block)
    assert "  # rule 2 (add): 035 not added: {001} has no value" in skipped
    rejected = next(block for block in out.split("\n\n") if "record 6 " in block)
    assert "REJECTED: rule 8 (python): ValueError: cannot handle bad5" in rejected
    dropped = next(block for block in out.split("\n\n") if "record 4 " in block)
    assert "DROPPED" in dropped.splitlines()[0]


def test_try_usage_errors(files, capsys):
    assert main(["rules", "try", files["rules"], str(files["tmp"] / "nope.xml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["rules", "try", files["rules"], files["xml"], "--limit", "-1"]) == 2
    capsys.readouterr()
    text = files["tmp"] / "notes.txt"
    text.write_text("not a MARC file\n")
    assert main(["rules", "try", files["rules"], str(text)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {text}: ") and "unknown content" in err and err.count("\n") == 1


def _outputs(folder, name):
    return [json.loads(line) for line in (folder / name).read_text(encoding="utf-8").splitlines()]


def test_process_with_rules_gives_the_same_records_from_marcxml_and_marc21(files, capsys):
    tmp = files["tmp"]
    assert main(["process", files["xml"], "--out", str(tmp / "a"), "--rules", files["rules"], "--format", "json"]) == 0
    assert main(["process", files["mrc"], "--out", str(tmp / "b"), "--rules", files["rules"], "--format", "json"]) == 0
    from_xml, from_mrc = _outputs(tmp / "a", "export.json"), _outputs(tmp / "b", "export.json")
    assert len(from_xml) == 21
    assert [r["fields"] for r in from_xml] == [r["fields"] for r in from_mrc]
    assert {r["leader"][17] for r in from_xml + from_mrc} == {"7"}
    for report in (tmp / "a" / "report.json", tmp / "b" / "report.json"):
        totals = json.loads(report.read_text())["totals"]
        assert (totals["records_in"], totals["records_out"], totals["dropped"], totals["rejected"]) == (24, 21, 2, 1)
    rejects = (tmp / "a" / "export.rejects.jsonl").read_text()
    assert "rule 8 (python): ValueError: cannot handle bad5" in rejects
    # what try reads is what process reads
    assert [r.fields for r in read_records(files["xml"])] == [r.fields for r in read_records(files["mrc"])]


def test_process_csv_output_with_rules(files, capsys):
    tmp = files["tmp"]
    assert main(["process", files["mrc"], "--out", str(tmp / "c"), "--rules", files["rules"], "--format", "csv",
                 "--columns", "id=001,title=245ab,lang=041a,topics=6XXa", "--join", ";"]) == 0
    lines = (tmp / "c" / "export.csv").read_bytes().decode("utf-8").split("\r\n")
    assert lines[0] == "id,title,lang,topics"
    assert lines[1] == "990000,Title 0 sub 0,eng,Topic 0"
    assert len([line for line in lines if line]) == 22
