"""`python -m pipeline settings check|table|sample`: every app setting, from the one registry.

`check` validates the settings this process sees (what an operator runs before deploying);
`table` and `sample` print README's settings table and local.settings.sample.json, which the tests
compare with the committed files so the docs cannot drift from the code.
"""

from __future__ import annotations

import argparse
import json

from pipeline import settings


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `settings` command."""
    parser = subparsers.add_parser("settings", help="check the app settings, or print their table or a sample file")
    parser.add_argument("action", choices=["check", "table", "sample"],
                        help="check: validate the current environment; table: README markdown; "
                        "sample: local.settings.sample.json")
    parser.set_defaults(func=run)


def _shown_default(setting: settings.Setting) -> str:
    value = setting.default
    if value is None:
        return ""
    if isinstance(value, tuple):
        return ",".join(value)
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def table() -> str:
    rows = ["| Setting | Default | What it is | Example |", "|---|---|---|---|"]
    for s in settings.REGISTRY.values():
        default = f"`{_shown_default(s)}`" if _shown_default(s) else "—"
        rows.append(f"| `{s.name}` | {default} | {s.help} | `{s.example}` |")
    return "\n".join(rows) + "\n"


def sample() -> str:
    values = {"FUNCTIONS_WORKER_RUNTIME": "python"}  # worker indexing is the default: no feature flag
    for s in settings.REGISTRY.values():
        values[s.name] = "UseDevelopmentStorage=true" if s.name == "AzureWebJobsStorage" else _shown_default(s)
    return json.dumps({"IsEncrypted": False, "Values": values}, indent=2) + "\n"


def check() -> int:
    problems = 0
    for s in settings.REGISTRY.values():
        try:
            value = settings.get(s.name)
        except settings.SettingError as exc:
            print(f"ERROR {exc}")
            problems += 1
            continue
        shown = "(not set)" if value is None else ("(set, hidden)" if s.kind == "secret" else repr(value))
        print(f"ok    {s.name} = {shown if not hasattr(value, 'pattern') else repr(value.pattern)}")
    print(f"{problems} problem(s)")
    return 1 if problems else 0


def run(args: argparse.Namespace) -> int:
    if args.action == "table":
        print(table(), end="")
        return 0
    if args.action == "sample":
        print(sample(), end="")
        return 0
    return check()
