"""Read a rules file (YAML or JSON) into plain data that remembers the line of every key.

Two YAML 1.1 traps matter for MARC: `tag: 035` is the octal number 29 and `1:20` is 80. Numbers
and dates are therefore *not* resolved: every unquoted scalar except true/false/null stays the text
the cataloguer typed. Duplicate keys (which PyYAML silently overwrites) are an error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from pipeline.rules.errors import RulesError

MAX_RULES_FILE = 1024 * 1024  # a rules file is hand-written; anything bigger is a mistake


class LineDict(dict):
    """A mapping from the file, with `line` (of the mapping) and `key_lines` (line of each key)."""

    line: int | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.key_lines: dict[Any, int] = {}

    def line_of(self, key: Any) -> int | None:
        return self.key_lines.get(key, self.line)

    def __reduce__(self) -> tuple:  # pickle as a plain dict
        return (dict, (dict(self),))


class LineList(list):
    """A sequence from the file, with `line` and `item_lines` (line where each item starts)."""

    line: int | None = None

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.item_lines: list[int] = []

    def line_of(self, index: int) -> int | None:
        return self.item_lines[index] if 0 <= index < len(self.item_lines) else self.line

    def __reduce__(self) -> tuple:
        return (list, (list(self),))


_KEEP_RESOLVERS = {"tag:yaml.org,2002:bool", "tag:yaml.org,2002:null", "tag:yaml.org,2002:merge"}


class _Loader(yaml.SafeLoader):
    pass


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag in _KEEP_RESOLVERS]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> LineDict:
    loader.flatten_mapping(node)
    out = LineDict()
    out.line = node.start_mark.line + 1
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        if not isinstance(key, str | bool | type(None)):
            raise RulesError("a key must be plain text, not a list or a mapping", line=line)
        if key in out:
            raise RulesError(f"duplicate key {key!r} (the first one, line {out.key_lines[key]}, "
                             "would be silently ignored)", line=line)
        out[key] = loader.construct_object(value_node, deep=True)
        out.key_lines[key] = line
    return out


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode) -> LineList:
    out = LineList(loader.construct_object(child, deep=True) for child in node.value)
    out.line = node.start_mark.line + 1
    out.item_lines = [child.start_mark.line + 1 for child in node.value]
    return out


_Loader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)
_Loader.add_constructor("tag:yaml.org,2002:seq", _construct_sequence)


def parse_text(text: str, *, json_syntax: bool = False) -> Any:
    """Parse rules text; `json_syntax` checks it as strict JSON first (for `.json` files)."""
    plain = None
    if json_syntax:
        try:
            plain = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RulesError(f"JSON syntax error: {exc.msg} (column {exc.colno})", line=exc.lineno) from None
    try:
        # JSON is read again as YAML (a superset) to learn the lines; the JSON result is the fallback
        return yaml.load(text, Loader=_Loader)  # _Loader derives from SafeLoader
    except RecursionError:
        raise RulesError("the file is nested too deeply to read") from None
    except yaml.YAMLError as exc:
        if json_syntax:
            return plain
        if isinstance(exc, yaml.MarkedYAMLError):
            mark = exc.problem_mark or exc.context_mark
            problem = exc.problem or exc.context or "cannot parse"
            where = f" (column {mark.column + 1})" if mark else ""
            raise RulesError(f"YAML syntax error: {problem}{where}",
                             line=mark.line + 1 if mark else None) from None
        raise RulesError(f"YAML syntax error: {exc}") from None


def read_file(path: str | Path) -> tuple[str, Any]:
    """Return (text, data) of a rules file; errors name the file."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > MAX_RULES_FILE:
            raise RulesError(f"is {size} bytes; a rules file is at most {MAX_RULES_FILE} bytes", source=str(path))
        raw = p.read_bytes()
    except OSError as exc:
        raise RulesError(f"cannot read: {exc.strerror or exc}", source=str(path)) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise RulesError(f"is not UTF-8 text (byte {exc.start})", source=str(path)) from None
    try:
        return text, parse_text(text, json_syntax=p.suffix.lower() == ".json")
    except RulesError as exc:
        raise exc.with_source(str(path)) from None
