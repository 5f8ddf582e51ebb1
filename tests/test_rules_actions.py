"""Every action, on records built from mnemonic text, with `where:` filters and the trace."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rules_support import body, mrk

from pipeline.marc.record import Field, Record, RecordError
from pipeline.rules import compile_text, load_rules

REC = r"""
=LDR  01234cam a2200301 i 4500
=001  9912345
=003  OCoLC
=008  200101s2020    nyu           000 0 eng d
=020  \\$a9780000000001$qpaperback
=100  1\$aAuthor, A.,$eauthor.
=245  14$aThe title :$bthe subtitle /$cby A. Author.
=500  \\$aA note.
=650  \0$aCats$xBehavior.
=650  \7$aCats$2fast
=856  41$uhttp://example.org/1
=949  \\$alocal$bcopy 1
"""

SERIAL = REC.replace("01234cam", "01234cas")


def run(rules: str, record: str = REC, trace: list[str] | None = None):
    return compile_text(rules).apply(mrk(record), trace)


# -- remove ------------------------------------------------------------------------------


def test_remove_fields_by_tag_and_wildcard():
    out = body(run("- remove: 9XX\n- remove: '003'\n- remove: '500'"))
    assert not [line for line in out if line[1:4] in ("949", "003", "500")]
    assert len(out) == 8


def test_remove_subfields_and_a_field_left_empty_goes_too():
    out = body(run("- remove: 020q\n- remove: 949ab\n- remove: 650[ 7]2"))
    assert r"=020  \\$a9780000000001" in out
    assert not any(line.startswith("=949") for line in out)
    assert r"=650  \7$aCats" in out


def test_remove_with_indicator_filter():
    out = body(run("- remove: 650[ 7]"))
    assert [line for line in out if line.startswith("=650")] == [r"=650  \0$aCats$xBehavior."]


def test_remove_where_subfield_2_is_fast():
    rules = "- remove: '650'\n  where: {equals: {path: $2, value: fast}}"
    out = body(run(rules))
    assert [line for line in out if line.startswith("=650")] == [r"=650  \0$aCats$xBehavior."]
    # the mapping form with where inside is the same rule
    out2 = body(run("- remove: {path: '650', where: {equals: {path: $2, value: fast}}}"))
    assert out2 == out


# -- add ---------------------------------------------------------------------------------


def test_add_data_field_from_a_template_in_tag_order():
    out = body(run('- add: {tag: "035", ind1: " ", ind2: "#", subfields: {a: "(MyLib){001}"}}'))
    assert out[4] == r"=035  \\$a(MyLib)9912345"  # after 020, before 100
    assert out[3].startswith("=020")


def test_add_with_repeated_codes_in_list_form_and_indicators():
    rules = '- add: {tag: "246", ind1: "3", ind2: "0", subfields: [[a, "one"], [a, "two"], {b: "three"}]}'
    assert r"=246  30$aone$atwo$bthree" in body(run(rules))


def test_add_control_field():
    out = body(run('- add: {tag: "007", value: "cr |||||||||||"}'))
    assert out[2] == "=007  cr |||||||||||"


def test_add_is_skipped_when_a_template_has_no_value_and_the_trace_says_why():
    trace: list[str] = []
    out = body(run('- add: {tag: "035", subfields: {a: "(ISBN){020z}"}}', trace=trace))
    assert not any(line.startswith("=035") for line in out)
    assert trace == ["rule 1 (add): 035 not added: {020z} has no value"]


def test_add_unless_exists():
    rules = '- add: {tag: "003", value: "MyLib"}\n  unless: {exists: "003"}'
    trace: list[str] = []
    out = body(run(rules, trace=trace))
    assert out.count("=003  OCoLC") == 1 and "=003  MyLib" not in out
    assert trace == ["rule 1 (add): not applied: unless field 003 exists"]


# -- set ---------------------------------------------------------------------------------


def test_set_subfield_values_and_add_where_missing():
    out = body(run('- set: {path: "650q", value: "x"}\n- set: {path: 245c, value: "by {100a}"}'))
    assert r"=650  \0$aCats$xBehavior.$qx" in out
    assert r"=245  14$aThe title :$bthe subtitle /$cby Author, A.," in out


def test_set_positions_in_leader_and_control_fields():
    out = run('- set: {path: "LDR/06-07", value: "as"}\n- set: {path: "008/35-37", value: "ger"}')
    assert out.leader[6:8] == "as"
    assert body(out)[2] == "=008  200101s2020    nyu           000 0 ger d"


def test_set_positions_pads_a_short_control_field():
    out = run('- set: {path: "008/10-11", value: "zz"}', record="=008  2001")
    assert body(out) == ["=008  2001      zz"]


def test_set_control_field_value_adds_it_when_missing():
    assert body(run('- set: {path: "003", value: "MyLib"}'))[1] == "=003  MyLib"
    out = body(run('- set: {path: "003", value: "MyLib"}', record="=001  1\n=245  00$aX"))
    assert out == ["=001  1", "=003  MyLib", "=245  00$aX"]


def test_set_indicators_only():
    out = body(run('- set: {path: "245", ind2: "0"}\n- set: {path: "650[ 7]", ind1: "#", ind2: "4"}'))
    assert r"=245  10$aThe title :$bthe subtitle /$cby A. Author." in out
    assert r"=650  \4$aCats$2fast" in out


def test_set_where_filter():
    rules = '- set: {path: "650a", value: "Felines", where: {equals: {path: ind2, value: "7"}}}'
    out = body(run(rules))
    assert r"=650  \0$aCats$xBehavior." in out and r"=650  \7$aFelines$2fast" in out


def test_set_with_a_template_of_the_wrong_width_rejects_the_record():
    ruleset = compile_text('- set: {path: "008/35-37", value: "{001}"}')
    with pytest.raises(RecordError, match=r"rule 1 \(set\): set 008/35-37: '9912345' has 7 characters"):
        ruleset(mrk(REC))


def test_set_skipped_when_template_has_no_value():
    trace: list[str] = []
    out = run('- set: {path: "500a", value: "{999a}"}', trace=trace)
    assert r"=500  \\$aA note." in body(out)
    assert trace == ["rule 1 (set): not set: {999a} has no value"]


# -- replace -----------------------------------------------------------------------------


def test_replace_strips_isbd_punctuation_with_backreferences():
    rules = r"""
- replace: {path: "245ab", pattern: '\s*[:/;]$', with: ""}
- replace: {path: "100a", pattern: '^(\w+), (\w+)\.,$', with: '\2 \1'}
- replace: {path: "650", pattern: '(?P<word>Cats)', with: '\g<word>!', flags: ""}
"""
    out = body(run(rules))
    assert r"=245  14$aThe title$bthe subtitle$cby A. Author." in out
    assert r"=100  1\$aA Author$eauthor." in out
    assert r"=650  \0$aCats!$xBehavior." in out


def test_replace_flags_and_control_fields_and_positions():
    out = run(r"""
- replace: {path: "856u", pattern: '^HTTP:', with: 'https:', flags: i}
- replace: {path: "003", pattern: 'OCoLC', with: 'MyLib'}
- replace: {path: "LDR/05", pattern: 'c', with: 'n'}
""")
    assert r"=856  41$uhttps://example.org/1" in body(out)
    assert "=003  MyLib" in body(out)
    assert out.leader[5] == "n"


def test_replace_changing_the_width_of_positions_rejects_the_record():
    ruleset = compile_text("- replace: {path: 'LDR/05', pattern: 'c', with: 'cc'}")
    with pytest.raises(RecordError, match=r"rule 1 \(replace\): .*positions must keep their width"):
        ruleset(mrk(REC))


def test_replace_where():
    out = body(run("- replace: {path: 650a, pattern: Cats, with: Felines, where: {exists: $2}}"))
    assert r"=650  \0$aCats$xBehavior." in out and r"=650  \7$aFelines$2fast" in out


# -- copy / move -------------------------------------------------------------------------


def test_copy_values_into_new_fields():
    out = body(run('- copy: {from: "001", to: "035a"}\n- copy: {from: "650a", to: "690a", ind2: "4"}'))
    assert r"=035  \\$a9912345" in out
    assert out.count(r"=690  \4$aCats") == 2


def test_copy_whole_fields_keeps_subfields_and_indicators():
    out = body(run('- copy: {from: "100", to: "700"}'))
    assert out[-3] == r"=700  1\$aAuthor, A.,$eauthor."  # tag order: before 856
    assert r"=100  1\$aAuthor, A.,$eauthor." in out


def test_copy_positions_and_leader():
    out = body(run('- copy: {from: "008/35-37", to: "041a"}\n- copy: {from: "LDR/06", to: "909a"}'))
    assert r"=041  \\$aeng" in out and r"=909  \\$aa" in out


def test_move_subfields_removes_the_source():
    out = body(run('- move: {from: "949b", to: "852h"}'))
    assert r"=949  \\$alocal" in out and r"=852  \\$hcopy 1" in out


def test_move_whole_fields_with_where():
    rules = '- move: {from: "650", to: "690", where: {equals: {path: $2, value: fast}}}'
    out = body(run(rules))
    assert r"=690  \7$aCats$2fast" in out
    assert [line for line in out if line.startswith("=650")] == [r"=650  \0$aCats$xBehavior."]


# -- keep, drop, sort --------------------------------------------------------------------


def test_keep_lists_data_fields_and_control_fields_stay():
    out = run("- keep: ['020a', '245', '6XX[ 0]']")
    assert body(out) == [
        "=001  9912345", "=003  OCoLC", "=008  200101s2020    nyu           000 0 eng d",
        r"=020  \\$a9780000000001",
        r"=245  14$aThe title :$bthe subtitle /$cby A. Author.",
        r"=650  \0$aCats$xBehavior.",
    ]
    assert out.leader == "01234cam a2200301 i 4500"


def test_keep_listing_a_control_field_removes_the_other_control_fields():
    out = body(run("- keep: ['001', '245a']"))
    assert out == ["=001  9912345", "=245  14$aThe title :"]


def test_drop_with_if_and_counts_as_dropped():
    ruleset = compile_text("- drop: true\n  if: {equals: {path: LDR/07, value: m}}")
    assert ruleset(mrk(REC)) is None
    serial = mrk(SERIAL)
    assert ruleset(serial) is serial
    trace: list[str] = []
    assert ruleset.apply(mrk(REC), trace) is None and trace == ["rule 1 (drop): dropped"]


def test_sort_fields_is_stable_by_tag():
    out = body(run('- add: {tag: "020", subfields: {a: "last"}}\n- copy: {from: "001", to: "999a"}\n'
                   "- set: {path: '001', value: 'x'}\n- sort: fields",
                   record=r"=245  00$aT" "\n=001  1\n=020  \\\\$afirst"))
    assert out == ["=001  x", r"=020  \\$afirst", r"=020  \\$alast", "=245  00$aT", r"=999  \\$a1"]


# -- python hook -------------------------------------------------------------------------


def test_python_hook_edits_and_drops():
    ruleset = compile_text('- python: "rules_support:add_local_note"\n- python: "rules_support:drop_serials"',
                           allow_python=True)
    out = ruleset(mrk(REC))
    assert r"=590  \\$achecked 9912345" in body(out)
    assert ruleset(mrk(SERIAL)) is None


def test_python_hook_using_pymarc():
    out = compile_text('- python: "rules_support:via_pymarc"', allow_python=True)(mrk(REC))
    assert not any(line.startswith("=500") for line in body(out))
    assert "=001  9912345" in body(out)


def test_python_hook_failure_rejects_only_that_record_with_the_rule_number():
    ruleset = compile_text('- remove: 9XX\n- python: "rules_support:explode_on_bad"', allow_python=True)
    good = ruleset(mrk("=001  ok1\n=245  00$aT"))
    assert body(good) == ["=001  ok1", "=245  00$aT"]
    with pytest.raises(RecordError, match=r"^rule 2 \(python\): ValueError: cannot handle bad7$"):
        ruleset(mrk("=001  bad7\n=245  00$aT"))
    assert body(ruleset(mrk("=001  ok2"))) == ["=001  ok2"]  # the set still works afterwards


def test_python_hook_returning_garbage_is_a_record_error():
    with pytest.raises(RecordError, match=r"rule 1 \(python\): rules_support:return_garbage returned str"):
        compile_text('- python: "rules_support:return_garbage"', allow_python=True)(mrk(REC))


# -- the set as a whole ------------------------------------------------------------------


def test_rules_apply_in_order_and_trace_names_changes():
    trace: list[str] = []
    run('- remove: "500"\n- remove: "500"\n- add: {tag: "035", subfields: {a: "x"}}', trace=trace)
    assert trace == ["rule 1 (remove): changed (-1 +0 lines)", "rule 3 (add): changed (-0 +1 lines)"]


def test_rule_set_pickles_by_recompiling_its_text():
    ruleset = compile_text("- remove: 9XX\n- add: {tag: '035', subfields: {a: '(X){001}'}}")
    clone = pickle.loads(pickle.dumps(ruleset))
    assert body(clone(mrk(REC))) == body(ruleset(mrk(REC)))


def test_plain_dicts_and_json_compile_too():
    from pipeline.rules import compile_rules

    ruleset = compile_rules({"version": 1, "rules": [{"remove": "9XX"}, {"name": "n", "sort": "fields"}]})
    assert not any(line.startswith("=949") for line in body(ruleset(mrk(REC))))
    assert ruleset.describe()[1] == "  2. sort fields by tag (stable: fields with the same tag keep their order) [n]"
    json_set = compile_text('{"version": 1, "rules": [{"remove": "9XX"}]}', json_syntax=True)
    assert len(json_set) == 1


# -- robustness: the sample rule sets on arbitrary records --------------------------------

SAMPLES = Path(__file__).resolve().parent.parent / "samples" / "rules"
SAMPLE_SETS = [load_rules(str(SAMPLES / name)) for name in ("bench-12.yaml", "discovery-cleanup.yaml")]
_tags = st.sampled_from(["001", "003", "005", "008", "020", "035", "041", "100", "245", "300", "500", "541",
                         "650", "651", "856", "949", "AVA"])
_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)
_fields = st.builds(
    lambda tag, i1, i2, subs, value: (Field.control(tag, value) if tag < "010"
                                      else Field(tag, i1, i2, subs)),
    _tags, st.sampled_from([" ", "0", "1", "7"]), st.sampled_from([" ", "0", "4", "7"]),
    st.lists(st.tuples(st.sampled_from(["a", "b", "q", "u", "2", "x"]), _text), max_size=4), _text)


@settings(max_examples=150, deadline=None)
@given(st.lists(_fields, max_size=12), st.text(alphabet="0123456789acdmns ", max_size=26))
def test_sample_rule_sets_never_fail_on_odd_records(fields, leader):
    for ruleset in SAMPLE_SETS:
        record = Record(leader, [f.copy() for f in fields])
        try:
            result = ruleset(record)
        except RecordError as exc:
            assert str(exc).startswith("rule ")
            continue
        assert result is None or isinstance(result, Record)
