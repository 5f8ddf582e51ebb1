"""Compile a rules document into a `RuleSet`: one callable the engine runs on every record.

A document is `{version: 1, rules: [...]}` or a bare list. Each rule has exactly one action key,
optionally `name`, `if`/`unless` (record conditions) and `where` (a field filter for remove, set,
replace, copy, move). Everything is validated here, before a job runs, so a bad file fails at
`rules check` (exit 2) and never half-way through an export.

At run time the set is applied in order and edits the record in place (copy it first if you need
the original: `rules try` does). A rule failing on one record raises `RecordError("rule 3 (python):
...")` so the engine rejects that record only.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipeline.marc.record import Record, RecordError
from pipeline.rules.actions import BUILDERS, WHERE_ACTIONS, ActionFn, Trace
from pipeline.rules.conditions import compile_condition
from pipeline.rules.errors import RulesError
from pipeline.rules.loader import LineDict, LineList, parse_text, read_file
from pipeline.rules.spec import Node, RuleContext, suggest

META_KEYS = ("name", "if", "unless", "where")
Step = Callable[[Record, Trace], "Record | None"]


@dataclass(frozen=True)
class CompiledRule:
    """One rule, ready to run; `describe` is the plain-words line `rules check` prints."""

    number: int
    action: str
    name: str | None
    line: int | None
    describe: str
    step: Step  # condition + action

    @property
    def label(self) -> str:
        return f"rule {self.number} ({self.action})"


class RuleSet:
    """The compiled rules: `ruleset(record)` is the engine's Transform (None = dropped by rules)."""

    def __init__(self, rules: list[CompiledRule], *, source: str | None = None,
                 text: str | None = None, json_syntax: bool = False) -> None:
        self.rules = rules
        self.source = source
        self._text = text
        self._json = json_syntax
        self._base_dir: str | None = None
        self._allow_python: bool | None = None
        self._steps = tuple((r.label, r.step) for r in rules)

    def __len__(self) -> int:
        return len(self.rules)

    def __call__(self, record: Record) -> Record | None:
        """Apply every rule in order (fast path, no trace)."""
        for label, step in self._steps:
            try:
                record = step(record, None)  # type: ignore[assignment]
            except RecordError as exc:
                raise RecordError(f"{label}: {exc}") from exc
            except Exception as exc:
                raise RecordError(f"{label}: {type(exc).__name__}: {exc}") from exc
            if record is None:
                return None
        return record

    def apply(self, record: Record, trace: list[str] | None = None) -> Record | None:
        """Like calling the set; with a `trace` list, append what each rule did or why it did not."""
        if trace is None:
            return self(record)
        for rule in self.rules:
            before = record.mnemonic().splitlines()
            mark = len(trace)
            try:
                result = rule.step(record, trace)
            except RecordError as exc:
                raise RecordError(f"{rule.label}: {exc}") from exc
            except Exception as exc:
                raise RecordError(f"{rule.label}: {type(exc).__name__}: {exc}") from exc
            for i in range(mark, len(trace)):
                trace[i] = f"{rule.label}: {trace[i]}"
            if result is None:
                if len(trace) == mark:
                    trace.append(f"{rule.label}: dropped")
                return None
            record = result
            after = record.mnemonic().splitlines()
            if after != before:
                removed = sum(1 for line in before if line not in after)
                added = sum(1 for line in after if line not in before)
                trace.append(f"{rule.label}: changed (-{removed} +{added} lines)")
        return record

    def describe(self) -> list[str]:
        """One line per rule, in plain words."""
        out = []
        for r in self.rules:
            name = f" [{r.name}]" if r.name else ""
            out.append(f"{r.number:>3}. {r.describe}{name}")
        return out

    def __reduce__(self) -> tuple:
        """Pickle as the source text, recompiled on load (worker processes get the same rules)."""
        if self._text is None:
            raise TypeError("a RuleSet compiled from data cannot be pickled; load it from text or a file")
        return (_from_text, (self._text, self.source, self._json, self._base_dir, self._allow_python))


def _from_text(text: str, source: str | None, json_syntax: bool, base_dir: str | None,
               allow_python: bool | None = None) -> RuleSet:
    return compile_text(text, source=source, json_syntax=json_syntax, base_dir=base_dir, allow_python=allow_python)


def compile_rules(data: Any, *, source: str | None = None, base_dir: str | None = None,
                  allow_python: bool | None = None, import_hooks: bool = True) -> RuleSet:
    """Compile a parsed rules document (as read by the loader, or plain dicts/lists). `python:` hooks
    need `allow_python` (default: the RULES_ALLOW_PYTHON setting); `import_hooks=False` checks them
    without importing their modules."""
    ctx = RuleContext(None, source=source)
    doc = Node(ctx, data, "", getattr(data, "line", None))
    if data is None:
        raise doc.fail("the file is empty; expected {version: 1, rules: [...]}")
    if isinstance(data, dict):
        doc.mapping(("version", "rules"), ("rules",), example="{version: 1, rules: [...]}")
        version = doc.get("version")
        if version is not None and str(version.value) != "1":
            raise version.fail(f"{version.value!r} is not supported (this pipeline reads version 1)")
        rules_node = doc["rules"]
    elif isinstance(data, list):
        rules_node = doc
    else:
        raise doc.fail("a rules file is {version: 1, rules: [...]} or a list of rules")
    if not isinstance(rules_node.value, list):
        raise rules_node.fail("must be a list of rules")
    items = rules_node.value
    lines = items.item_lines if isinstance(items, LineList) else []
    compiled = []
    for i, item in enumerate(items):
        line = lines[i] if i < len(lines) else None
        try:
            compiled.append(compile_rule(item, number=i + 1, line=line, source=source, base_dir=base_dir,
                                         allow_python=allow_python, import_hooks=import_hooks))
        except RecursionError:  # `not: {not: ...}` thousands deep, or a YAML alias that contains itself
            raise RulesError("conditions are nested too deeply (or refer to themselves through a YAML alias)",
                             rule=i + 1, line=line, source=source) from None
    ruleset = RuleSet(compiled, source=source)
    ruleset._allow_python = allow_python
    return ruleset


def compile_rule(item: Any, *, number: int, line: int | None = None, source: str | None = None,
                 base_dir: str | None = None, allow_python: bool | None = None,
                 import_hooks: bool = True) -> CompiledRule:
    """Compile one rule mapping; errors name the rule number, action and key."""
    ctx = RuleContext(number, source=source)
    node = Node(ctx, item, "", line)
    if not isinstance(item, dict):
        raise node.fail(f"a rule is a mapping with one action ({', '.join(BUILDERS)}), e.g. "
                        "- remove: \"9XX\"")
    actions = [k for k in item if k in BUILDERS]
    unknown = [k for k in item if k not in BUILDERS and k not in META_KEYS]
    if unknown:
        key = unknown[0]
        if not actions:
            raise _bare(node, key).fail(
                f"unknown action{suggest(str(key), BUILDERS)}; the actions are {', '.join(BUILDERS)}")
        ctx.action = actions[0]
        raise _bare(node, key).fail(f"unknown key{suggest(str(key), [*BUILDERS, *META_KEYS])} "
                                  f"(a rule has one action plus name, if, unless, where)")
    if not actions:
        raise node.fail(f"has no action; give one of {', '.join(BUILDERS)}")
    if len(actions) > 1:
        ctx.action = actions[0]
        raise _bare(node, actions[1]).fail(f"has two actions ({', '.join(actions)}); put each in its own rule")
    action = ctx.action = actions[0]
    if isinstance(item, LineDict):
        node.line = item.line_of(action)

    name = None
    if node.has("name"):
        name = node["name"].text()
    action_node = Node(ctx, item[action], "", node.line)  # the label already names the action
    where_node = node.get("where")
    if action_node.is_mapping() and action_node.has("where"):
        if where_node is not None:
            raise action_node["where"].fail("is given twice (in the rule and in the action)")
        where_node = action_node["where"]
    where = None
    if where_node is not None:
        if action not in WHERE_ACTIONS:
            raise where_node.fail(f"filters fields for {', '.join(WHERE_ACTIONS)}; not for {action}")
        where, where_text = compile_condition(where_node, field_scope=True)
    conds = []
    for key in ("if", "unless"):
        cond_node = node.get(key)
        if cond_node is not None:
            pred, text = compile_condition(cond_node)
            conds.append((key, pred, text))

    if action == "python":
        fn, describe = BUILDERS[action](action_node, where, base_dir, allow=allow_python, load=import_hooks)
    else:
        fn, describe = BUILDERS[action](action_node, where)
    if action == "drop" and not conds:
        describe = "drop EVERY record (no if: or unless: given)"
    if where is not None:
        describe += f" where {where_text}"
    for key, _, text in conds:
        describe += f", {key} {text}"
    return CompiledRule(number, action, name, node.line, describe, _guard(fn, conds))


def _bare(node: Node, key: Any) -> Node:
    """The rule itself, located at the line of `key` (the message names the key itself)."""
    line = node.value.line_of(key) if isinstance(node.value, LineDict) else node.line
    return Node(node.ctx, node.value, "", line)


def _guard(fn: ActionFn, conds: list[tuple[str, Callable[[Any], bool], str]]) -> Step:
    """Wrap the action with its if/unless conditions."""
    if not conds:
        return fn
    tests = tuple((key == "if", pred, text) for key, pred, text in conds)
    if len(tests) == 1:
        want, pred, text = tests[0]
        skip = f"not applied: {'if' if want else 'unless'} {text}"

        def guarded(rec: Record, trace: Trace) -> Record | None:
            if pred(rec) is want:
                return fn(rec, trace)
            if trace is not None:
                trace.append(skip)
            return rec
        return guarded

    def guarded_all(rec: Record, trace: Trace) -> Record | None:
        for want, pred, text in tests:
            if pred(rec) is not want:
                if trace is not None:
                    trace.append(f"not applied: {'if' if want else 'unless'} {text}")
                return rec
        return fn(rec, trace)
    return guarded_all


def compile_text(text: str, *, source: str | None = None, json_syntax: bool = False,
                 base_dir: str | None = None, allow_python: bool | None = None) -> RuleSet:
    """Parse and compile rules text (YAML, or JSON when `json_syntax`)."""
    try:
        data = parse_text(text, json_syntax=json_syntax)
    except RulesError as exc:
        raise exc.with_source(source) if source else exc from None
    ruleset = compile_rules(data, source=source, base_dir=base_dir, allow_python=allow_python)
    ruleset._text, ruleset._json, ruleset._base_dir = text, json_syntax, base_dir
    return ruleset


def load_rules(path: str | os.PathLike[str], *, allow_python: bool | None = None,
               import_hooks: bool = True) -> RuleSet:
    """Load and compile a rules file (YAML, or JSON by extension); raise `RulesError` if malformed.
    `import_hooks=False` (`rules check`) validates `python:` hooks without importing them."""
    text, data = read_file(path)
    source = str(path)
    base_dir = os.path.dirname(os.path.abspath(source))
    ruleset = compile_rules(data, source=source, base_dir=base_dir, allow_python=allow_python,
                            import_hooks=import_hooks)
    ruleset._text, ruleset._json, ruleset._base_dir = text, source.lower().endswith(".json"), base_dir
    return ruleset
