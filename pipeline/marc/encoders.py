"""The writers' contract and registry: `get_encoder("marcxml" | "marc21" | "json" | "csv" | "tsv" | "xslt:PATH")`.

An Encoder is pure (no I/O): `header()`, `encode(record)` and `footer()` return bytes, so parallel
workers can encode chunks of records and the engine writes them in input order. `encode` raises
`RecordError` to reject one record (e.g. a MARC 21 record over 99,999 bytes). `counters` holds
what the encoder changed without rejecting (e.g. removed XML-illegal characters); the engine sums
and resets it after each chunk.
"""

from __future__ import annotations

from typing import Any, Protocol

from pipeline.marc.record import Record


class Encoder(Protocol):
    extension: str
    counters: dict[str, int]

    def header(self) -> bytes: ...

    def encode(self, record: Record) -> bytes: ...

    def footer(self) -> bytes: ...


FORMATS = ("marcxml", "marc21", "json", "csv", "tsv", "xslt:PATH")
TABULAR = ("csv", "tsv")  # formats that take `columns` and `join`


class FormatError(ValueError):
    """An unknown output format or bad encoder options: a usage error."""


def get_encoder(fmt: str, **options: Any) -> Encoder:
    """Build the encoder for `fmt` with its options (`root` for xslt, `columns`/`join` for csv and tsv)."""
    options = {k: v for k, v in options.items() if v is not None}
    try:
        if fmt == "marcxml":
            from pipeline.marc.marcxml import MarcXmlEncoder

            _no_options(fmt, options)
            return MarcXmlEncoder()
        if fmt == "marc21":
            from pipeline.marc.marc21 import Marc21Encoder

            _no_options(fmt, options)
            return Marc21Encoder()
        if fmt == "json":
            from pipeline.marc.marcjson import MarcJsonEncoder

            _no_options(fmt, options)
            return MarcJsonEncoder()
        if fmt.startswith("xslt:"):
            from pipeline.marc.xslt import XsltEncoder

            return XsltEncoder(fmt[5:], **options)
        if fmt in TABULAR:
            from pipeline.marc.csv_writer import CsvEncoder, TsvEncoder

            return (CsvEncoder if fmt == "csv" else TsvEncoder)(**options)
    except TypeError as exc:  # unexpected keyword
        raise FormatError(f"format {fmt}: {exc}") from None
    except ValueError as exc:
        if isinstance(exc, FormatError):
            raise
        raise FormatError(str(exc)) from None
    raise FormatError(f"unknown output format {fmt!r}; choose one of {', '.join(FORMATS)}")


def _no_options(fmt: str, options: dict[str, Any]) -> None:
    if options:
        raise FormatError(f"format {fmt} takes no options, got {', '.join(sorted(options))}")
