"""CSV/TSV output of chosen values: `--format csv --columns "id=001,title=245ab,isbn=020a"`.

Columns use the rules' path language (pipeline/rules/paths.py). A column's cell holds every value at
its path joined by `join` (default `|`); subfields named together (`245ab`) are joined by a space
within one field. Rows follow RFC 4180 (the `csv` module: quoting, CRLF line ends), UTF-8 without a
byte order mark. The encoder is pure (no state between records), as the engine's contract requires.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable

from pipeline.marc.record import Record
from pipeline.rules.errors import RulesError
from pipeline.rules.paths import parse_path


def parse_columns(spec: str) -> list[tuple[str, Callable[[Record], list[str]]]]:
    """`"id=001,title=245ab"` -> [(name, reader)]; a column without `name=` is named by its path."""
    if not isinstance(spec, str) or not spec.strip():
        raise RulesError('columns: give at least one column, e.g. "id=001,title=245ab,isbn=020a"')
    columns = []
    names: set[str] = set()
    for i, item in enumerate(spec.split(","), 1):
        item = item.strip()
        if not item:
            raise RulesError(f"columns: column {i} is empty (two commas in a row?)")
        name, sep, path_text = item.partition("=")
        if not sep:
            name, path_text = item, item
        name, path_text = name.strip(), path_text.strip()
        if not name:
            raise RulesError(f"columns: column {i} ({item!r}) has no name before =")
        if name in names:
            raise RulesError(f"columns: the name {name!r} is used twice")
        names.add(name)
        try:
            path = parse_path(path_text)
        except RulesError as exc:
            raise RulesError(f"columns: column {name!r}: {exc.problem}") from None
        columns.append((name, path.read))
    return columns


class CsvEncoder:
    """Encoder for CSV: a header row with the column names, then one row per record."""

    extension = "csv"
    delimiter = ","

    def __init__(self, columns: str, join: str = "|") -> None:
        self.columns = parse_columns(columns)
        self.join = join
        self._readers = tuple(read for _, read in self.columns)

    def _row(self, cells: list[str]) -> bytes:
        buf = io.StringIO()
        csv.writer(buf, delimiter=self.delimiter, lineterminator="\r\n").writerow(cells)
        return buf.getvalue().encode("utf-8")

    def header(self) -> bytes:
        return self._row([name for name, _ in self.columns])

    def encode(self, record: Record) -> bytes:
        join = self.join
        return self._row([join.join(read(record)) for read in self._readers])

    def footer(self) -> bytes:
        return b""


class TsvEncoder(CsvEncoder):
    """The same with tabs (`--format tsv`); values containing tabs or quotes are quoted."""

    extension = "tsv"
    delimiter = "\t"
