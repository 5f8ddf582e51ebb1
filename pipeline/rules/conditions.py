"""Conditions: `exists`, `match`, `equals`, combined with `all`, `any`, `not`.

The same language serves two scopes: `if:`/`unless:` test the whole record with record paths
(`856u`), and `where:` tests each field an action is about to touch with paths relative to that
field (`$2`, `ind1`, `ind2`, `tag`). A condition compiles to a plain predicate.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from pipeline.rules.paths import blank
from pipeline.rules.spec import Node

Predicate = Callable[[Any], bool]
CONDITIONS = ("exists", "match", "equals", "all", "any", "not")
REGEX_FLAGS = {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL, "x": re.VERBOSE, "a": re.ASCII}


def compile_regex(node: Node, flags_node: Node | None) -> re.Pattern[str]:
    """Compile a rule's regular expression; `re.error` becomes a message naming the key."""
    pattern = node.text()
    flags = 0
    if flags_node is not None:
        for ch in flags_node.text(allow_empty=True):
            if ch not in REGEX_FLAGS:
                raise flags_node.fail(f"unknown flag {ch!r} (use i, m, s, x or a)")
            flags |= REGEX_FLAGS[ch]
    try:
        return re.compile(pattern, flags)
    except re.error as exc:
        raise node.fail(str(exc)) from None
    except (RecursionError, OverflowError) as exc:
        raise node.fail(f"cannot compile: {exc}") from None


def compile_condition(node: Node, *, field_scope: bool = False) -> tuple[Predicate, str]:
    """Compile a condition to (predicate, plain-words description).

    A list is read as `all:`. Record scope predicates take a Record, field scope ones a Field.
    """
    if isinstance(node.value, list):
        return _combine(node, "all", field_scope)
    node.mapping(CONDITIONS, example="{exists: \"856u\"}")
    if len(node.value) != 1:
        raise node.fail(f"a condition has exactly one of {', '.join(CONDITIONS)}; got "
                        f"{', '.join(map(str, node.value))} (combine them with all: or any:)")
    kind, child = next(node.items())
    if kind in ("all", "any"):
        return _combine(child, kind, field_scope)
    if kind == "not":
        pred, text = compile_condition(child, field_scope=field_scope)
        return (lambda x: not pred(x)), f"not ({text})"
    if kind == "exists":
        path_node = child
    else:
        child.mapping(("path", "pattern", "flags") if kind == "match" else ("path", "value"),
                      ("path", "pattern") if kind == "match" else ("path", "value"),
                      example="{path: \"245a\", pattern: \"^The \"}" if kind == "match"
                      else "{path: \"LDR/06\", value: \"a\"}")
        path_node = child["path"]
    if field_scope:
        fpath = path_node.field_path()
        read, label, indicator = fpath.read, fpath.text, fpath.is_indicator
    else:
        path = path_node.path()
        read, label, indicator = path.read, path.text, False
        if kind == "exists" and path.whole_fields:
            select = path.select
            return (lambda rec: bool(select(rec))), f"{path.describe()} exists"
    if kind == "exists":
        return (lambda x: bool(read(x))), f"{label} exists"
    if kind == "match":
        rx = compile_regex(child["pattern"], child.get("flags"))
        search = rx.search

        def matches(x: Any) -> bool:  # a loop, not any(generator): this runs on every field of every record
            for v in read(x):
                if search(v):
                    return True
            return False
        return matches, f"{label} matches /{rx.pattern}/"
    value_node = child["value"]
    value = value_node.text(allow_empty=True)
    if indicator:
        value = blank(value)
    return (lambda x: value in read(x)), f"{label} is {value!r}"


def _combine(node: Node, kind: str, field_scope: bool) -> tuple[Predicate, str]:
    parts = [compile_condition(item, field_scope=field_scope) for item in node.elements()]
    preds = tuple(p for p, _ in parts)
    joiner = " and " if kind == "all" else " or "
    text = joiner.join(f"({t})" if len(parts) > 1 else t for _, t in parts)
    if len(preds) == 1:
        return preds[0], text
    if kind == "all":
        def every(x: Any) -> bool:  # loops, not all()/any() over a generator (cheaper per call)
            for p in preds:
                if not p(x):
                    return False
            return True
        return every, text

    def some(x: Any) -> bool:
        for p in preds:
            if p(x):
                return True
        return False
    return some, text
