"""CSV/TSV encoder: columns in the path language, joins, quoting, bad column specs."""

from __future__ import annotations

import csv
import io

import pytest
from rules_support import mrk

from pipeline.marc.csv_writer import CsvEncoder, TsvEncoder
from pipeline.marc.encoders import FormatError, get_encoder
from pipeline.rules import RulesError

REC = mrk(r"""
=LDR  01234cam a2200301 i 4500
=001  9912345
=008  200101s2020    nyu           000 0 eng d
=020  \\$a9780000000001$qpbk
=020  \\$a9780000000002
=245  14$aThe "quoted" title,$bwith comma /$cby A.
=500  \\$aLine one
=650  \0$aCats$xBehavior.
=650  \7$aDogs$2fast
""")


def rows(data: bytes, delimiter: str = ",") -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode("utf-8"), newline=""), delimiter=delimiter))


def test_header_and_row_with_joins_and_quoting():
    enc = CsvEncoder("id=001,title=245ab,isbn=020a,lang=008/35-37,subjects=650[ 0],type=LDR/06,none=500z")
    assert enc.extension == "csv"
    assert enc.header() == b"id,title,isbn,lang,subjects,type,none\r\n"
    data = enc.encode(REC)
    assert data.endswith(b"\r\n")
    assert rows(data) == [["9912345", 'The "quoted" title, with comma /', "9780000000001|9780000000002", "eng",
                           "Cats Behavior.", "a", ""]]
    assert enc.footer() == b""


def test_custom_join_and_unnamed_columns_and_repeated_fields():
    enc = CsvEncoder("001, 650a ,all6=6XX", join=" ; ")
    assert rows(enc.header()) == [["001", "650a", "all6"]]
    assert rows(enc.encode(REC)) == [["9912345", "Cats ; Dogs", "Cats Behavior. ; Dogs fast"]]


def test_newlines_and_unicode_survive_a_round_trip():
    rec = mrk("=001  1\n=245  00$aCafé ☃")
    rec.fields[1].subfields.append(("b", "two\nlines"))
    enc = CsvEncoder("t=245ab")
    assert rows(enc.header() + enc.encode(rec)) == [["t"], ["Café ☃ two\nlines"]]


def test_tsv():
    enc = TsvEncoder("id=001,t=245a")
    assert enc.extension == "tsv"
    assert rows(enc.header() + enc.encode(REC), "\t") == [["id", "t"], ["9912345", 'The "quoted" title,']]


def test_the_engines_registry_builds_it():
    enc = get_encoder("csv", columns="id=001", join="/")
    assert isinstance(enc, CsvEncoder) and enc.join == "/"
    with pytest.raises(FormatError, match="columns: column 'x': path '24'"):
        get_encoder("csv", columns="x=24")


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("", "give at least one column"),
        ("id=001,,t=245", "column 2 is empty"),
        ("=001", "has no name before ="),
        ("id=001,id=245a", "the name 'id' is used twice"),
        ("t=245a-b", "'-' is not a subfield code"),
        ("t=24", "column 't': path '24': a tag has 3 characters"),
    ],
)
def test_bad_column_specs(spec, problem):
    with pytest.raises(RulesError, match=problem):
        CsvEncoder(spec)
