"""`python -m pipeline rules check FILE` and `rules try FILE INPUT [--limit N]`.

`check` validates a rules file and lists its rules in plain words, so a cataloguer can see what the
pipeline understood before a job runs. `try` is a dry run on a sample export: for the first N
records the rules change it prints before/after in MARC mnemonic form with changed lines marked,
plus each rule's trace (why an add was skipped, which condition was not met), then the counts.
Nothing is written. Exit status: 0 fine, 1 the input cannot be read, 2 a bad rules file or usage.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from pipeline.cli import UsageError

if TYPE_CHECKING:
    from pipeline.marc.record import Record, RecordError
    from pipeline.rules import RuleSet


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `rules` command with its `check` and `try` actions."""
    parser = subparsers.add_parser(
        "rules", help="check a rules file, or try it on a sample export (docs/rules.md)",
        description="Validate a record rules file, or dry-run it on an export file.")
    actions = parser.add_subparsers(dest="rules_action", metavar="ACTION")
    check = actions.add_parser("check", help="validate FILE and list its rules in plain words",
                               description="Validate a rules file (exit 2 with the first problem).")
    check.add_argument("file", metavar="FILE", help="rules file (.yaml, .yml or .json)")
    check.set_defaults(func=run_check)
    trial = actions.add_parser("try", help="apply FILE to INPUT and show what changes (writes nothing)",
                               description="Dry run: show before/after of the first N changed records, "
                               "with the rules' trace, and count changed, dropped and rejected records.")
    trial.add_argument("file", metavar="FILE", help="rules file")
    trial.add_argument("input", metavar="INPUT", help="export file (MARCXML, MARC 21, MARC-in-JSON; "
                       "compressed or archived too)")
    trial.add_argument("--limit", type=int, default=10, metavar="N",
                       help="show at most N changed records (default 10; 0 = counts only)")
    trial.add_argument("--max-records", type=int, default=None, metavar="N",
                       help="stop after reading N records (default: the whole input)")
    trial.set_defaults(func=run_try)
    parser.set_defaults(func=lambda args: _usage(parser))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_usage(sys.stderr)
    return 2


def _load(file: str, *, import_hooks: bool = True) -> RuleSet | None:
    from pipeline.rules import RulesError, load_rules

    try:
        return load_rules(file, import_hooks=import_hooks)
    except RulesError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None


def run_check(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Validate and describe; exit 2 on the first error."""
    out = out or sys.stdout
    ruleset = _load(args.file, import_hooks=False)  # checking must never run a hook's code
    if ruleset is None:
        return 2
    count = len(ruleset)
    print(f"{args.file}: OK, {count} rule{'s' if count != 1 else ''}", file=out)
    for line in ruleset.describe():
        print(line, file=out)
    return 0


def read_records(path: str) -> Iterator[Record | RecordError]:
    """Every record of an export file in order: a Record, or the RecordError that rejects it.

    Uses the engine's detection, framing and parsers, so `try` sees exactly what `process` sees.
    """
    from pipeline.marc.detect import max_expanded_default, open_members
    from pipeline.marc.readers import reader
    from pipeline.marc.record import RecordError

    with open(path, "rb") as stream:
        for member in open_members(Path(path).name, stream, max_expanded=max_expanded_default()):
            read = reader(member.format)
            framing = read.framing(member.stream)
            for frame in framing.frames():
                if frame.error is not None or frame.raw is None:  # as the engine: rejected unparsed
                    yield RecordError(frame.error or "record not read", frame.reason or "read-error")
                else:
                    yield read.parse_one(framing.context(), frame.raw)


def run_try(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Dry run: print changed records and the counts; write nothing."""
    from pipeline.marc.framing import InputError
    from pipeline.marc.record import Record, RecordError

    out = out or sys.stdout
    if args.limit < 0:
        raise UsageError("rules try: --limit must be 0 or more")
    if not Path(args.input).is_file():
        raise UsageError(f"rules try: input {args.input} does not exist or is not a file")
    ruleset = _load(args.file)
    if ruleset is None:
        return 2
    counts = {"read": 0, "changed": 0, "unchanged": 0, "dropped": 0, "rejected by rules": 0, "unreadable": 0}
    shown = 0
    try:
        for item in read_records(args.input):
            if args.max_records is not None and counts["read"] >= args.max_records:
                break
            counts["read"] += 1
            number = counts["read"]
            if not isinstance(item, Record):
                counts["unreadable"] += 1
                continue
            before = item.copy()
            trace: list[str] = []
            try:
                after = ruleset.apply(item, trace)
            except RecordError as exc:
                counts["rejected by rules"] += 1
                if shown < args.limit:
                    shown += 1
                    _show(out, number, before, None, trace, f"REJECTED: {exc}")
                continue
            if after is None:
                counts["dropped"] += 1
                status = "DROPPED"
            elif after == before:
                counts["unchanged"] += 1
                continue
            else:
                counts["changed"] += 1
                status = "changed"
            if shown < args.limit:
                shown += 1
                _show(out, number, before, after, trace, status)
    except (InputError, OSError) as exc:
        print(f"error: {args.input}: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # a reader bug must still end in one line, as `process` does
        print(f"error: {args.input}: internal error while reading: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(", ".join(f"{value} {key}" for key, value in counts.items()), file=out)
    return 0


def _show(out: TextIO, number: int, before: Record, after: Record | None, trace: list[str], status: str) -> None:
    """One record: header, the rules' trace, then mnemonic lines marked ' ' same, '-' removed, '+' added."""
    rid = before.id
    print(f"--- record {number} (001 {rid or '?'}): {status}", file=out)
    for line in trace:
        print(f"  # {line}", file=out)
    old = before.mnemonic().splitlines()
    if after is None:
        for line in old:
            print(f"  {line}", file=out)
        print(file=out)
        return
    new = after.mnemonic().splitlines()
    for op in difflib.ndiff(old, new):
        if op.startswith("?"):
            continue
        mark = {"-": "- ", "+": "+ "}.get(op[0], "  ")
        print(f"{mark}{op[2:]}", file=out)
    print(file=out)
