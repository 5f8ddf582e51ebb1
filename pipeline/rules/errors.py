"""The one error a rules file can raise while it is loaded or compiled.

A cataloguer fixes the file from this message alone, so it names the file and line when known, the
rule number and action, the key, and what is wrong: `rules.yaml:14: rule 3 (replace): pattern:
missing ), unterminated subpattern at position 4`.
"""

from __future__ import annotations


class RulesError(ValueError):
    """A rules file (or a path/column spec) is malformed; `str()` is the full one-line message."""

    def __init__(self, problem: str, *, rule: int | None = None, action: str | None = None,
                 key: str | None = None, line: int | None = None, source: str | None = None) -> None:
        self.problem = problem
        self.rule = rule
        self.action = action
        self.key = key
        self.line = line
        self.source = source
        super().__init__(self._format())

    def _format(self) -> str:
        parts = []
        if self.source and self.line:
            parts.append(f"{self.source}:{self.line}")
        elif self.source:
            parts.append(self.source)
        elif self.line:
            parts.append(f"line {self.line}")
        if self.rule is not None:
            parts.append(f"rule {self.rule} ({self.action})" if self.action else f"rule {self.rule}")
        if self.key:
            parts.append(self.key)
        parts.append(self.problem)
        return ": ".join(parts)

    def with_source(self, source: str) -> RulesError:
        """The same error, naming the file it came from."""
        return RulesError(self.problem, rule=self.rule, action=self.action, key=self.key,
                          line=self.line, source=source)
