"""Templates: text with `{PATH}` placeholders filled from the record (`(MyLib){001}`).

A placeholder takes the first value at its path; `{{` and `}}` are literal braces. When a path has
no value the template has no value either (None), so the action is skipped and the trace says which
path was missing, rather than writing `(MyLib)` with an empty id.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pipeline.marc.record import Record
from pipeline.rules.errors import RulesError
from pipeline.rules.paths import Path, kind_of, parse_path


@dataclass(frozen=True)
class Template:
    """A compiled template; `render(record)` gives the text or None, `missing(record)` says why."""

    text: str
    paths: tuple[Path, ...]
    render: Callable[[Record], str | None]

    @property
    def constant(self) -> bool:
        return not self.paths

    def missing(self, record: Record) -> str | None:
        """The first placeholder with no value in this record, as `{PATH}`, or None."""
        for p in self.paths:
            if p.first(record) is None:
                return "{" + p.text + "}"
        return None


def parse_template(text: object, *, what: str = "value") -> Template:
    """Compile a template, or raise `RulesError` naming the bad placeholder."""
    if not isinstance(text, str):
        raise RulesError(f"{what} must be text, got {kind_of(text)} (put it in quotes)")
    parts: list[str | Path] = []
    literal: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "{" and text.startswith("{{", i):
            literal.append("{")
            i += 2
        elif ch == "}" and text.startswith("}}", i):
            literal.append("}")
            i += 2
        elif ch == "{":
            close = text.find("}", i + 1)
            if close < 0:
                raise RulesError(f"{what} {text!r}: {{ at position {i} is not closed (write {{{{ for a literal brace)")
            inner = text[i + 1:close]
            try:
                path = parse_path(inner, what="placeholder")
            except RulesError as exc:
                raise RulesError(f"{what} {text!r}: {exc.problem}") from None
            if literal:
                parts.append("".join(literal))
                literal = []
            parts.append(path)
            i = close + 1
        elif ch == "}":
            raise RulesError(f"{what} {text!r}: }} at position {i} has no opening {{ (write }}}} for a literal brace)")
        else:
            literal.append(ch)
            i += 1
    if literal:
        parts.append("".join(literal))
    paths = tuple(p for p in parts if isinstance(p, Path))
    return Template(text, paths, _compile(parts))


def _compile(parts: list[str | Path]) -> Callable[[Record], str | None]:
    if not parts:
        return lambda rec: ""
    if len(parts) == 1 and isinstance(parts[0], str):
        const = parts[0]
        return lambda rec: const
    if len(parts) <= 3 and sum(isinstance(p, Path) for p in parts) == 1:
        # the common shape: prefix{PATH}suffix
        idx = next(i for i, p in enumerate(parts) if isinstance(p, Path))
        prefix = "".join(p for p in parts[:idx] if isinstance(p, str))
        suffix = "".join(p for p in parts[idx + 1:] if isinstance(p, str))
        first = parts[idx].first  # type: ignore[union-attr]

        def one(rec: Record) -> str | None:
            value = first(rec)
            return None if value is None else prefix + value + suffix
        return one
    getters = [(p.first if isinstance(p, Path) else None, p) for p in parts]

    def many(rec: Record) -> str | None:
        out = []
        for get, part in getters:
            if get is None:
                out.append(part)
            else:
                value = get(rec)
                if value is None:
                    return None
                out.append(value)
        return "".join(out)
    return many
