"""Read one rule's mapping with its location, so every error names rule, key and line.

A `Node` is a value from the rules file plus where it came from (rule number, action, key path such
as `if: all #2: match: pattern`, line). The compilers for actions and conditions only use `Node`,
so they never have to assemble an error message by hand.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from pipeline.rules.errors import RulesError
from pipeline.rules.loader import LineDict, LineList
from pipeline.rules.paths import FieldPath, Path, blank, kind_of, parse_field_path, parse_path
from pipeline.rules.templates import Template, parse_template


@dataclass
class RuleContext:
    """Which rule is being compiled (for messages)."""

    number: int | None
    action: str | None = None
    source: str | None = None


class Node:
    """A value from the rules file and its location."""

    __slots__ = ("ctx", "value", "key", "line")

    def __init__(self, ctx: RuleContext, value: Any, key: str = "", line: int | None = None) -> None:
        self.ctx = ctx
        self.value = value
        self.key = key
        self.line = line

    def fail(self, problem: str) -> RulesError:
        """An error about this value (raise it)."""
        return RulesError(problem, rule=self.ctx.number, action=self.ctx.action, key=self.key or None,
                          line=self.line, source=self.ctx.source)

    def _sub(self, label: str, value: Any, line: int | None) -> Node:
        key = f"{self.key}: {label}" if self.key else label
        return Node(self.ctx, value, key, line or self.line)

    # -- mappings -----------------------------------------------------------------------

    def is_mapping(self) -> bool:
        return isinstance(self.value, dict)

    def mapping(self, allowed: Iterable[str], required: Iterable[str] = (), example: str = "") -> Node:
        """Check this is a mapping with only `allowed` keys and every `required` one."""
        allowed = list(allowed)
        if not isinstance(self.value, dict):
            hint = f", e.g. {example}" if example else ""
            raise self.fail(f"must be a mapping with {', '.join(allowed)}{hint}; got {kind_of(self.value)}")
        for key in self.value:
            if key not in allowed:
                raise self._sub(str(key), None, self._line_of(key)).fail(
                    f"unknown key{suggest(str(key), allowed)} (allowed here: {', '.join(allowed)})")
        for key in required:
            if key not in self.value:
                raise self.fail(f"{key}: is missing")
        return self

    def _line_of(self, key: Any) -> int | None:
        return self.value.line_of(key) if isinstance(self.value, LineDict) else self.line

    def has(self, key: str) -> bool:
        return isinstance(self.value, dict) and key in self.value

    def get(self, key: str) -> Node | None:
        if not self.has(key):
            return None
        return self._sub(key, self.value[key], self._line_of(key))

    def __getitem__(self, key: str) -> Node:
        node = self.get(key)
        if node is None:
            raise self.fail(f"{key}: is missing")
        return node

    def items(self) -> Iterator[tuple[str, Node]]:
        for key in self.value:
            yield str(key), self._sub(str(key), self.value[key], self._line_of(key))

    # -- lists --------------------------------------------------------------------------

    def elements(self, *, allow_single: bool = False, nonempty: bool = True) -> list[Node]:
        """The items of a list (or this single value when `allow_single`)."""
        if not isinstance(self.value, list):
            if allow_single and self.value is not None:
                return [self]
            raise self.fail(f"must be a list, got {kind_of(self.value)}")
        if nonempty and not self.value:
            raise self.fail("is an empty list")
        lines = self.value.item_lines if isinstance(self.value, LineList) else []
        return [self._sub(f"#{i + 1}", v, lines[i] if i < len(lines) else None)
                for i, v in enumerate(self.value)]

    # -- scalars ------------------------------------------------------------------------

    def text(self, *, allow_empty: bool = False) -> str:
        if not isinstance(self.value, str):
            raise self.fail(f"must be text, got {kind_of(self.value)} (put it in quotes)")
        if not allow_empty and not self.value:
            raise self.fail("is empty")
        return self.value

    def path(self) -> Path:
        try:
            return parse_path(self.value)
        except RulesError as exc:
            raise self.fail(exc.problem) from None

    def field_path(self) -> FieldPath:
        try:
            return parse_field_path(self.value)
        except RulesError as exc:
            raise self.fail(exc.problem) from None

    def template(self) -> Template:
        try:
            return parse_template(self.value)
        except RulesError as exc:
            raise self.fail(exc.problem) from None

    def indicator(self) -> str:
        value = self.value
        if not isinstance(value, str) or len(value) != 1:
            raise self.fail(f"an indicator is one character (a digit, or space, # or _ for blank); got "
                            f"{kind_of(value)}")
        return blank(value)

    def code(self) -> str:
        value = self.value
        if not isinstance(value, str) or len(value) != 1 or not value.isalnum():
            raise self.fail(f"a subfield code is one letter or digit, got {kind_of(value)}")
        return value

    def concrete_tag(self) -> str:
        value = self.value
        if not isinstance(value, str) or len(value) != 3 or not value.isalnum() or value != value.upper():
            raise self.fail(f"a tag is 3 digits or capital letters such as \"035\", got {kind_of(value)}")
        if "X" in value and value.replace("X", "0").isdigit():
            raise self.fail(f"{value!r}: a new field needs a concrete tag, not a wildcard")
        return value


def suggest(word: str, choices: Iterable[str]) -> str:
    """` 'wher' (did you mean 'where'?)`, or just the quoted word."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" {word!r} (did you mean {close[0]!r}?)" if close else f" {word!r}"
