"""The path language and templates, read against records built directly."""

from __future__ import annotations

import pytest
from rules_support import mrk

from pipeline.rules import RulesError, parse_path
from pipeline.rules.templates import parse_template

REC = mrk(r"""
=LDR  01234cam a2200301 i 4500
=001  9912345
=008  200101s2020    nyu           000 0 eng d
=020  \\$a9780000000001$qpaperback
=020  \\$a9780000000002
=041  0\$aeng$afre
=245  14$aThe title :$bthe subtitle /$cby A. Author.
=650  \0$aCats$xBehavior.
=650  \7$aCats$2fast
=651  \0$aParis (France)
=856  41$uhttp://example.org/1
=949  \\$alocal
""")


@pytest.mark.parametrize(
    ("path", "values"),
    [
        ("LDR", ["01234cam a2200301 i 4500"]),
        ("LDR/06", ["a"]),
        ("LDR/06-07", ["am"]),
        ("001", ["9912345"]),
        ("008/35-37", ["eng"]),
        ("008/07-10", ["2020"]),
        ("245", ["The title : the subtitle / by A. Author."]),
        ("245ab", ["The title : the subtitle /"]),
        ("245$a$b", ["The title : the subtitle /"]),
        ("245ba", ["The title : the subtitle /"]),  # record order, not path order
        ("020a", ["9780000000001", "9780000000002"]),
        ("041a", ["eng", "fre"]),  # one code: every occurrence
        ("6XX", ["Cats Behavior.", "Cats fast", "Paris (France)"]),
        ("65Xa", ["Cats", "Cats", "Paris (France)"]),
        ("650[ 0]a", ["Cats"]),
        ("650[#0]a", ["Cats"]),
        ("650[_7]2", ["fast"]),
        ("650[*7]a", ["Cats"]),
        ("856[4*]u", ["http://example.org/1"]),
        ("9XX", ["local"]),
        ("500a", []),
        ("245z", []),
    ],
)
def test_every_path_form_reads_the_documented_values(path, values):
    assert parse_path(path).read(REC) == values


def test_first_value_and_selected_fields():
    assert parse_path("001").first(REC) == "9912345"
    assert parse_path("008/35-37").first(REC) == "eng"
    assert parse_path("020a").first(REC) == "9780000000001"
    assert parse_path("500").first(REC) is None
    assert [f.ind2 for f in parse_path("650").select(REC)] == ["0", "7"]
    assert [f.tag for f in parse_path("6XX[ 0]").select(REC)] == ["650", "651"]


def test_positions_past_the_end_of_a_short_control_field_have_no_value():
    short = mrk("=008  2001")
    assert parse_path("008/35-37").read(short) == []
    assert parse_path("008/02-05").read(short) == ["01"]


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("24", "a tag has 3 characters"),
        ("", "path is empty"),
        ("24a", "a tag has 3 characters"),
        ("6xx", "write letters in tags in upper case"),
        ("ldr/06", "write the leader as LDR"),
        ("650[0]a", "indicators in brackets are exactly two characters"),
        ("650[ 0a", "missing ]"),
        ("001[ 0]", "have no indicators"),
        ("245/06", "positions are only for the leader and control fields"),
        ("008/35-", "positions are a number or a range"),
        ("008/37-35", "ends before it starts"),
        ("LDR/24", "the leader has positions 00-23"),
        ("001a", "have no subfields"),
        ("245a-b", "'-' is not a subfield code"),
    ],
)
def test_bad_paths_say_what_is_wrong(path, problem):
    with pytest.raises(RulesError, match=problem):
        parse_path(path)


def test_non_text_path_is_an_error():
    with pytest.raises(RulesError, match="must be text"):
        parse_path(245)


def test_templates_fill_first_values_and_keep_literal_braces():
    assert parse_template("(MyLib){001}").render(REC) == "(MyLib)9912345"
    assert parse_template("{008/07-10}-{020a}").render(REC) == "2020-9780000000001"
    assert parse_template("{{literal}} {001}").render(REC) == "{literal} 9912345"
    assert parse_template("no placeholders").render(REC) == "no placeholders"
    assert parse_template("").render(REC) == ""


def test_template_with_a_missing_value_has_no_value_and_says_which():
    template = parse_template("{001}: {500a}")
    assert template.render(REC) is None
    assert template.missing(REC) == "{500a}"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("(MyLib){001", "is not closed"),
        ("x}", "has no opening"),
        ("{24}", "a tag has 3 characters"),
    ],
)
def test_bad_templates(text, problem):
    with pytest.raises(RulesError, match=problem):
        parse_template(text)
