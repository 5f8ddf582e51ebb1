"""The record rules language: a small declarative way for cataloguers to reshape records.

`load_rules(path)` reads and checks a YAML/JSON rules file and returns a `RuleSet`, the engine's
Transform: `ruleset(record) -> Record | None` (None = dropped by rules). `RuleSet.apply(record,
trace)` fills a list with what each rule did, for `rules try`. A malformed file raises `RulesError`
naming file, line, rule, key and problem. See docs/rules.md.

Modules: `paths` (the path language), `templates`, `conditions`, `actions`, `spec` (located
values for messages), `loader` (YAML/JSON with line numbers), `compiler` (the RuleSet).
"""

from pipeline.rules.compiler import CompiledRule, RuleSet, compile_rules, compile_text, load_rules
from pipeline.rules.errors import RulesError
from pipeline.rules.paths import Path, parse_path

__all__ = ["CompiledRule", "Path", "RuleSet", "RulesError", "compile_rules", "compile_text", "load_rules",
           "parse_path"]
