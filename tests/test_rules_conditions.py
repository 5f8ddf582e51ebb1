"""Record conditions (if/unless) and field filters (where), each form and combination."""

from __future__ import annotations

import pytest
from rules_support import body, mrk

from pipeline.rules import compile_text

BOOK = mrk(r"""
=LDR  01234cam a2200301 i 4500
=001  9912345
=008  200101s2020    nyu           000 0 eng d
=245  14$aThe title.
=650  \0$aCats
=650  \7$aDogs$2fast
=856  40$uhttp://example.org/1
""")


def applies(condition: str, record=BOOK) -> bool:
    """Does a rule guarded by `if: condition` run on the record?"""
    ruleset = compile_text(f"- add: {{tag: '999', subfields: {{a: hit}}}}\n  if: {condition}")
    return any(line.startswith("=999") for line in body(ruleset(record.copy())))


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ("{exists: '856u'}", True),
        ("{exists: '856'}", True),
        ("{exists: '500'}", False),
        ("{exists: '856z'}", False),
        ("{exists: '650[ 7]'}", True),
        ("{exists: '6XX[ 4]'}", False),
        ("{match: {path: '245a', pattern: '^The '}}", True),
        ("{match: {path: '245a', pattern: '^the '}}", False),
        ("{match: {path: '245a', pattern: '^the ', flags: i}}", True),
        ("{match: {path: '650a', pattern: 'Dog'}}", True),  # any value matches
        ("{equals: {path: 'LDR/06', value: a}}", True),
        ("{equals: {path: '008/35-37', value: eng}}", True),
        ("{equals: {path: '008/35-37', value: fre}}", False),
        ("{equals: {path: '650a', value: Dogs}}", True),
        ("{equals: {path: '650a', value: Dog}}", False),
        ("{all: [{exists: '001'}, {exists: '856'}]}", True),
        ("{all: [{exists: '001'}, {exists: '500'}]}", False),
        ("{any: [{exists: '500'}, {exists: '856'}]}", True),
        ("{any: [{exists: '500'}, {exists: '510'}]}", False),
        ("{not: {exists: '500'}}", True),
        ("{not: {any: [{exists: '500'}, {equals: {path: 'LDR/07', value: m}}]}}", False),
        ("[{exists: '001'}, {exists: '245'}]", True),  # a list is all:
    ],
)
def test_record_conditions(condition, expected):
    assert applies(condition) is expected


def test_unless_is_the_opposite_of_if():
    ruleset = compile_text("- remove: '856'\n  unless: {equals: {path: '856[4*]u', value: 'http://example.org/1'}}")
    assert any(line.startswith("=856") for line in body(ruleset(BOOK.copy())))
    both = compile_text("- remove: '245'\n  if: {exists: '001'}\n  unless: {exists: '856'}")
    trace: list[str] = []
    assert any(line.startswith("=245") for line in body(both.apply(BOOK.copy(), trace)))
    assert trace == ["rule 1 (remove): not applied: unless field 856 exists"]


@pytest.mark.parametrize(
    ("where", "left"),
    [
        ("{equals: {path: $2, value: fast}}", [r"=650  \0$aCats"]),
        ("{exists: $2}", [r"=650  \0$aCats"]),
        ("{not: {exists: $2}}", [r"=650  \7$aDogs$2fast"]),
        ("{equals: {path: ind2, value: '0'}}", [r"=650  \7$aDogs$2fast"]),
        ("{equals: {path: ind1, value: '#'}}", []),  # blank written as #
        ("{match: {path: $a, pattern: '^C'}}", [r"=650  \7$aDogs$2fast"]),
        ("{any: [{equals: {path: $a, value: Cats}}, {equals: {path: $a, value: Dogs}}]}", []),
        ("{all: [{equals: {path: tag, value: '650'}}, {exists: $2}]}", [r"=650  \0$aCats"]),
    ],
)
def test_where_filters_test_each_field_with_relative_paths(where, left):
    ruleset = compile_text(f"- remove: 6XX\n  where: {where}")
    assert [line for line in body(ruleset(BOOK.copy())) if line.startswith("=6")] == left
