"""`python -m pipeline process INPUT... --out DIR`: run the MARC engine on local files.

Exit status: 0 when every file was processed (rejected records are reported, not failures),
1 when a file could not be processed, 2 for usage errors (bad option, missing input, bad rules
file, unusable stylesheet). Messages are one line on stderr; a progress line appears on a
terminal only.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from pipeline.cli import CommandError, UsageError
from pipeline.commands import _output
from pipeline.marc.encoders import TABULAR


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `process` command."""
    parser = subparsers.add_parser(
        "process",
        help="transform MARC export files (MARCXML, MARC 21, MARC-in-JSON; gzip/tar/zip) into a folder",
        description="Read each INPUT (format detected from its content; gzip, bzip2, xz, tar and zip "
        "containers unwrapped), apply --rules, write DIR/<stem>.<ext>, rejected records to "
        "DIR/<stem>.rejects.*, and DIR/report.json.",
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="export files to process")
    _output.add_arguments(parser)
    parser.add_argument("--format", default="marcxml", metavar="FORMAT",
                        help="marcxml (default), marc21, json (MARC-in-JSON lines), csv, tsv, or xslt:PATH")
    parser.add_argument("--rules", metavar="FILE", help="rules file applied to every record (docs/rules.md)")
    parser.add_argument("--root", metavar="NAME", help="with --format xslt:PATH: the wrapping element "
                        "(default collection)")
    parser.add_argument("--columns", metavar="SPEC", help="with --format csv or tsv: the columns (docs/rules.md)")
    parser.add_argument("--join", metavar="TEXT", help="with --format csv or tsv: separator for repeated values "
                        "(default |)")
    parser.add_argument("--workers", type=int, metavar="N",
                        help="worker processes (default: all cores for inputs over 4 MB, else 1)")
    parser.add_argument("--max-expanded-mib", type=int, metavar="MIB",
                        help="cap on what one compressed input may expand to (default MAX_EXPANDED_MIB)")
    parser.set_defaults(func=run)


def _encoder_options(args: argparse.Namespace) -> dict[str, str]:
    fmt = args.format
    if args.root is not None and not fmt.startswith("xslt:"):
        raise UsageError("process: --root only applies to --format xslt:PATH")
    if (args.columns is not None or args.join is not None) and fmt not in TABULAR:
        raise UsageError("process: --columns and --join only apply to --format csv or tsv")
    if fmt in TABULAR and not args.columns:
        raise UsageError(f"process: --format {fmt} needs --columns")
    options = {"root": args.root} if fmt.startswith("xslt:") and args.root else {}
    if fmt in TABULAR:
        options["columns"] = args.columns
        if args.join is not None:
            options["join"] = args.join
    return options


def run(args: argparse.Namespace) -> int:
    from pipeline.destinations.base import DestinationError
    from pipeline.marc.encoders import FormatError, get_encoder
    from pipeline.marc.engine import Input, process

    if args.workers is not None and args.workers < 1:
        raise UsageError("process: --workers must be at least 1")
    if args.max_expanded_mib is not None and args.max_expanded_mib < 1:
        raise UsageError("process: --max-expanded-mib must be at least 1")
    options = _encoder_options(args)
    try:
        encoder = get_encoder(args.format, **options)
    except FormatError as exc:
        raise UsageError(f"process: {exc}") from None
    rules = None
    if args.rules:
        from pipeline.rules import RulesError, load_rules

        try:
            rules = load_rules(args.rules)  # compiled once: the engine and its workers use this
        except RulesError as exc:
            raise UsageError(f"process: {exc}") from None
        except OSError as exc:
            raise UsageError(f"process: rules file {args.rules}: {exc.strerror}") from None
    inputs = []
    for name in args.inputs:
        path = Path(name)
        if not path.is_file():
            raise UsageError(f"process: input {name} does not exist or is not a file")
        inputs.append(Input.from_path(path))
    if _output.is_local(args.out):
        _refuse_overwriting_inputs([Path(n) for n in args.inputs], Path(args.out), encoder.extension)
    destination, sink_factory = _output.open_output("process", args.out, args.per_record)
    try:
        report = process(inputs, destination, fmt=args.format, rules_path=args.rules, rules=rules,
                         encoder_options=options, workers=args.workers, progress=True, sink_factory=sink_factory,
                         max_expanded_bytes=None if args.max_expanded_mib is None else args.max_expanded_mib << 20)
    except (OSError, DestinationError) as exc:
        raise CommandError(f"writing to {args.out}: {exc}") from None
    return _output.print_summary(report, destination)


def _refuse_overwriting_inputs(inputs: list[Path], out: Path, extension: str) -> None:
    """An output named like an input in the same folder would replace the file being read."""
    from pipeline.marc.detect import stem_of

    targets = {os.path.realpath(out / f"{stem_of(p.name)}.{extension}") for p in inputs}
    for p in inputs:
        if os.path.realpath(p) in targets:
            raise UsageError(f"process: output would overwrite input {p}; choose another --out folder")
