"""Every example in docs/rules.md runs: a `yaml` block of rules, then the record before and after
(`marc` blocks in mnemonic form; an empty `after` means the record is dropped)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from rules_support import mrk

from pipeline.rules import compile_text

DOC = Path(__file__).resolve().parent.parent / "docs" / "rules.md"
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```$", re.S | re.M)


def examples() -> list[tuple[str, str, str | None, str | None]]:
    """(heading, rules, before, after) for each yaml block; before/after None when none follow."""
    text = DOC.read_text(encoding="utf-8")
    blocks = [(m.start(), m.group(1), m.group(2)) for m in BLOCK.finditer(text)]
    out = []
    for i, (pos, lang, body) in enumerate(blocks):
        if lang != "yaml":
            continue
        heading = re.findall(r"^#+ (.+)$", text[:pos], re.M)[-1]
        follow = blocks[i + 1:i + 3]
        if len(follow) == 2 and all(b[1] == "marc" for b in follow):
            out.append((heading, body, follow[0][2], follow[1][2]))
        else:
            out.append((heading, body, None, None))
    return out


EXAMPLES = examples()


def test_the_doc_has_an_example_for_every_action_and_condition():
    headings = {heading for heading, _, before, _ in EXAMPLES if before is not None}
    for name in ("remove", "add", "set", "replace", "copy", "move", "keep", "drop", "sort", "python",
                 "exists", "match", "equals", "all, any, not", "unless", "Field filters: `where:`"):
        assert name in headings, f"no runnable example under a heading {name!r}"


@pytest.mark.parametrize(("heading", "rules", "before", "after"), EXAMPLES, ids=[e[0] for e in EXAMPLES])
def test_doc_example(heading, rules, before, after):
    ruleset = compile_text(rules, allow_python=True)  # the python: example runs as an operator who allowed hooks
    if before is None:
        return  # a fragment: compiling it is the test
    result = ruleset(mrk(before))
    if not after.strip():
        assert result is None, f"{heading}: expected the record to be dropped"
        return
    expected = mrk(after)
    assert result is not None, f"{heading}: the record was dropped"
    assert result.mnemonic() == expected.mnemonic()
