"""Malformed rules files: each mistake gets its own one-line message naming file, line, rule and key."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.rules import RulesError, load_rules


def check(tmp_path, text: str, name: str = "rules.yaml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(RulesError) as err:
        load_rules(str(path), allow_python=True)  # hook errors are checked as the operator allowing them sees them
    message = str(err.value)
    assert "\n" not in message and "Traceback" not in message
    return message.replace(str(path), "FILE")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # the list
        ("rules:\n  - remove: 9XX\n  - delete: '500'\n",
         "FILE:3: rule 2: unknown action 'delete'; the actions are remove, add, set, replace, copy, move, "
         "keep, drop, sort, python"),
        ("rules:\n  - remove: '500'\n    add: {tag: '035', subfields: {a: x}}\n",
         "FILE:3: rule 1 (remove): has two actions (remove, add); put each in its own rule"),
        ("- remove: '24'\n",
         "FILE:1: rule 1 (remove): path '24': a tag has 3 characters (digits, or X for any digit), e.g. 245, "
         "6XX or LDR"),
        ("version: 1\nrules:\n- remove: 9XX\n- remove: 9XX\n- replace:\n    path: 245a\n    pattern: 'ab(cd'\n",
         "FILE:7: rule 3 (replace): pattern: missing ), unterminated subpattern at position 2"),
        ("- add: {tag: '035', subfields: [a, b]}\n",
         "FILE:1: rule 1 (add): subfields: #1: each subfield is a pair [code, \"text\"], e.g. [a, \"(MyLib){001}\"]"),
        ("- drop: yes please\n", "FILE:1: rule 1 (drop): write drop: true (and say when with if:/unless:)"),
        ("- keep: {a: 1}\n", "FILE:1: rule 1 (keep): must be a list of paths"),
        ("rules:\n  - remove: [9XX\n", "FILE:3: YAML syntax error: expected ',' or ']', but got '<stream end>'"),
        ("rules:\n  - remove: 9XX\n   - add: x\n", "FILE:3: YAML syntax error:"),
        # more wrong types and keys
        ("", "FILE: the file is empty; expected {version: 1, rules: [...]}"),
        ("just text\n", "FILE: a rules file is {version: 1, rules: [...]} or a list of rules"),
        ("version: 2\nrules: []\n", "FILE:1: version: '2' is not supported"),
        ("version: 1\nrule: []\n", "FILE:2: rule: unknown key 'rule' (did you mean 'rules'?)"),
        ("rules: {remove: 9XX}\n", "FILE:1: rules: must be a list of rules"),
        ("- 9XX\n", "FILE:1: rule 1: a rule is a mapping with one action"),
        ("- name: only a name\n", "FILE:1: rule 1: has no action"),
        ("- remove: 9XX\n  wher: {exists: $a}\n",
         "FILE:2: rule 1 (remove): unknown key 'wher' (did you mean 'where'?)"),
        ("- remove: 9XX\n  remove: 5XX\n", "FILE:2: duplicate key 'remove'"),
        ("- add: {tag: 35, subfields: {a: x}}\n", "FILE:1: rule 1 (add): tag: a tag is 3 digits"),
        ("- add: {tag: '6XX', subfields: {a: x}}\n", "rule 1 (add): tag: '6XX': a new field needs a concrete tag"),
        ("- add: {tag: '245', value: x}\n", "rule 1 (add): value: data field 245 takes subfields:"),
        ("- add: {tag: '003', subfields: {a: x}}\n", "rule 1 (add): subfields: control field 003 has no subfields"),
        ("- add: {tag: '245', ind1: '10', subfields: {a: x}}\n", "rule 1 (add): ind1: an indicator is one character"),
        ("- add: {tag: '245', subfields: {aa: x}}\n", "rule 1 (add): subfields: aa: a subfield code is one letter"),
        ("- add: {tag: '245', subfields: {a: true}}\n",
         "rule 1 (add): subfields: a: value must be text, got true (a yes/no value)"),
        ("- add: {tag: '035', subfields: {a: '(X){001'}}\n", "rule 1 (add): subfields: a: value '(X){001': { at"),
        ("- add: {tag: '035', sub: {a: x}}\n", "FILE:1: rule 1 (add): sub: unknown key 'sub'"),
        ("- set: {path: '245a'}\n", "rule 1 (set): set needs value:"),
        ("- set: {path: '245', value: x}\n", "rule 1 (set): path: set value: on a data field needs a subfield code"),
        ("- set: {path: 'LDR/06', value: 'ab'}\n", "rule 1 (set): value: 'ab' has 2 characters but LDR/06 holds 1"),
        ("- set: {path: '008', ind1: '1'}\n", "rule 1 (set): path: the leader and control fields have no indicators"),
        ("- replace: {path: 245a, pattern: x, with: '\\2'}\n", "rule 1 (replace): with: invalid group reference 2"),
        ("- replace: {path: 245a, pattern: x, flags: q}\n", "rule 1 (replace): flags: unknown flag 'q'"),
        ("- replace: {path: 245a}\n", "rule 1 (replace): pattern: is missing"),
        ("- copy: {from: '001', to: '035'}\n", "rule 1 (copy): to: name the subfield code the values go into"),
        ("- copy: {from: '041a', to: '008/35-37'}\n", "rule 1 (copy): to: copy makes new fields"),
        ("- move: {from: '008/35-37', to: '041a'}\n", "rule 1 (move): from: move cannot take the leader or positions"),
        ("- remove: LDR\n", "rule 1 (remove): the leader cannot be removed"),
        ("- remove: 008/35-37\n", "rule 1 (remove): remove takes fields or subfields, not positions"),
        ("- sort: subfields\n", "rule 1 (sort): the only sort is sort: fields"),
        ("- python: nocolon\n", "rule 1 (python): 'nocolon': write module:function"),
        ("- python: 'no_such_module_xyz:f'\n", "rule 1 (python): cannot import no_such_module_xyz"),
        ("- python: 'rules_support:nope'\n", "rule 1 (python): module rules_support has no nope"),
        ("- python: 'rules_support:NOT_CALLABLE'\n", "rule 1 (python): rules_support:NOT_CALLABLE is not a function"),
        ("- drop: true\n  where: {exists: $a}\n", "rule 1 (drop): where: filters fields for remove"),
        ("- remove: '650'\n  where: {exists: '650a'}\n",
         "FILE:2: rule 1 (remove): where: exists: path '650a': inside where: a path is relative to the field"),
        ("- remove: '650'\n  where: {exists: $a, equals: {path: $2, value: x}}\n",
         "rule 1 (remove): where: a condition has exactly one of"),
        ("- remove: '650'\n  if: {all: [{exists: '001'}, {match: {path: '245a', pattern: '[a'}}]}\n",
         "rule 1 (remove): if: all: #2: match: pattern: unterminated character set at position 0"),
        ("- remove: '650'\n  if: {exist: '001'}\n",
         "rule 1 (remove): if: exist: unknown key 'exist' (did you mean 'exists'?)"),
        ("- remove: '650'\n  if: {equals: {path: '001'}}\n", "rule 1 (remove): if: equals: value: is missing"),
        ("- remove: '650'\n  if: {any: []}\n", "rule 1 (remove): if: any: is an empty list"),
        ("- remove: {path: '650', where: {exists: $a}}\n  where: {exists: $b}\n",
         "rule 1 (remove): where: is given twice"),
    ],
)
def test_malformed_yaml_rules_each_have_their_own_message(tmp_path, text, expected):
    message = check(tmp_path, text)
    assert message.startswith(expected) or (not expected.startswith("FILE") and f": {expected}" in message)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"version": 1, "rules": [{"remove": "9XX"},]}', "FILE:1: JSON syntax error: Expecting value (column 44)"),
        ('{"rules": [\n {"remove": "9XX"},\n {"replace": {"path": "245a", "pattern": "("}}\n]}',
         "FILE:3: rule 2 (replace): pattern: missing ), unterminated subpattern at position 0"),
    ],
)
def test_malformed_json_rules(tmp_path, text, expected):
    assert check(tmp_path, text, "rules.json") == expected


def test_unreadable_and_non_utf8_files(tmp_path):
    with pytest.raises(RulesError, match="cannot read: No such file"):
        load_rules(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(b"- remove: '9XX'  # caf\xe9\n")
    with pytest.raises(RulesError, match=r"is not UTF-8 text \(byte 22\)"):
        load_rules(str(bad))


def test_yaml_numbers_stay_text_so_tags_keep_their_zeros(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("version: 1\nrules:\n  - add: {tag: 035, ind1: 0, subfields: {a: 0012}}\n  - remove: 0359\n")
    assert load_rules(str(path)).describe() == [
        "  1. add 035 0# $a0012", "  2. remove $9 of field 035 (a field left with no subfields goes too)"]


def test_self_referencing_alias_and_deep_nesting_are_errors_not_crashes(tmp_path):
    assert "recursive" in check(tmp_path, "- remove: '650'\n  if: &c {not: *c}\n")
    deep = "- remove: '650'\n  if: " + "{not: " * 3000 + "{exists: '001'}" + "}" * 3000 + "\n"
    assert "nested too deeply" in check(tmp_path, deep)
    assert "recursive" in check(tmp_path, "- remove: '650'\n  if: {all: &l [*l]}\n")


_scalars = st.one_of(st.none(), st.booleans(), st.sampled_from(
    ["", "245", "245a", "24", "6XX", "LDR/06", "008/35-37", "$2", "ind1", "(", "{001}", "{", "x:y", "fields", "a"]))
_values = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3),
    st.dictionaries(st.sampled_from(["path", "pattern", "with", "value", "tag", "subfields", "ind1", "from", "to",
                                     "exists", "all", "not", "equals", "match", "a", "flags", "where"]),
                    inner, max_size=3)), max_leaves=8)
_rules = st.lists(st.dictionaries(
    st.sampled_from(["remove", "add", "set", "replace", "copy", "move", "keep", "drop", "sort", "python",
                     "name", "if", "unless", "where", "bogus"]), _values, min_size=1, max_size=3), max_size=3)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_rules)
def test_arbitrary_rule_documents_compile_or_raise_rules_error(doc):
    from pipeline.marc.record import Field, Record, RecordError
    from pipeline.rules import compile_rules

    try:
        ruleset = compile_rules({"version": "1", "rules": doc})
    except RulesError as exc:
        assert str(exc)
        return
    record = Record("00000nam a2200000 a 4500", [Field.control("001", "1"), Field("245", "1", "0", [("a", "T")])])
    try:
        ruleset(record)
    except RecordError:
        pass  # a per-record rejection is allowed; anything else is a bug
