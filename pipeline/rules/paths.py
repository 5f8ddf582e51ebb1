"""The path language every rule, template and CSV column uses to point into a record.

Forms (the same as Catmandu's MARC paths): `LDR`, `LDR/06`, `LDR/06-07`; control fields `001`..`009`
with positions `008/35-37`; data fields by tag with `X` as a digit wildcard (`245`, `6XX`);
indicators in brackets `650[ 0]` (`*` any value; ` `, `#`, `_` blank); subfield codes after the tag
(`245ab`, `650[ 0]a`, `245$a$b`).

Reading a path gives a list of strings:
- `LDR`, a control field, or a position range: the (sliced) value;
- a data field with no codes: one value per field, all its subfields joined by a space;
- a data field with one code (`020a`): every occurrence of that subfield, one value each;
- a data field with several codes (`245ab`): one value per field, those subfields joined by a space.

Paths compile once into closures over plain list comprehensions: they run on every record.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from itertools import product

from pipeline.marc.record import Field, Record
from pipeline.rules.errors import RulesError

_TAG = re.compile(r"[0-9A-Z]{3}")
_CODE = re.compile(r"[a-zA-Z0-9]")
_BLANKS = {" ", "#", "_"}
LEADER_LENGTH = 24

FieldTest = Callable[[Field], bool]


def blank(indicator: str) -> str:
    """`#` and `_` are the cataloguer's ways to write a blank indicator."""
    return " " if indicator in _BLANKS else indicator


def expand_tag(pattern: str) -> frozenset[str]:
    """Every concrete tag a pattern with `X` wildcards matches (at most 1,000)."""
    choices = ["0123456789" if ch == "X" else ch for ch in pattern]
    return frozenset("".join(p) for p in product(*choices))


def is_control_tag(tag: str) -> bool:
    """Tags 001-009 hold control fields (no indicators, no subfields)."""
    return len(tag) == 3 and tag.startswith("00") and (tag[2].isdigit() or tag[2] == "X")


@dataclass(frozen=True)
class Path:
    """A parsed path; build with `parse_path`. Compiled accessors are cached properties."""

    text: str
    tag: str  # "LDR" or a tag pattern such as "245" or "6XX"
    ind1: str | None = None  # None = any
    ind2: str | None = None
    codes: str = ""
    start: int | None = None
    end: int | None = None  # inclusive

    @property
    def is_leader(self) -> bool:
        return self.tag == "LDR"

    @property
    def is_control(self) -> bool:
        return is_control_tag(self.tag)

    @property
    def wildcard(self) -> bool:
        return "X" in self.tag

    @property
    def has_positions(self) -> bool:
        return self.start is not None

    @property
    def whole_fields(self) -> bool:
        """Points at whole fields (no codes, no positions, not the leader)."""
        return not self.is_leader and not self.codes and self.start is None

    @property
    def width(self) -> int | None:
        return None if self.start is None else self.end - self.start + 1  # type: ignore[operator]

    def describe(self) -> str:
        """The path in plain words, for `rules check`."""
        if self.is_leader:
            return "the leader" if self.start is None else f"leader positions {self._positions()}"
        what = f"fields {self.tag}" if self.wildcard else f"field {self.tag}"
        if self.ind1 is not None or self.ind2 is not None:
            ind = "".join("*" if i is None else ("#" if i == " " else i) for i in (self.ind1, self.ind2))
            what += f" with indicators {ind}"
        if self.codes:
            codes = ", ".join(f"${c}" for c in self.codes)
            return f"{codes} of {what}"
        if self.start is not None:
            return f"positions {self._positions()} of {what}"
        return what

    def _positions(self) -> str:
        return f"{self.start:02d}" if self.start == self.end else f"{self.start:02d}-{self.end:02d}"

    # -- compiled accessors ------------------------------------------------------------------

    @cached_property
    def match_field(self) -> FieldTest:
        """Does one field match tag, indicators and kind (codes need data, positions need control)?"""
        tag, tags, i1, i2 = self.tag, expand_tag(self.tag), self.ind1, self.ind2
        need_data, need_control = bool(self.codes), self.start is not None
        exact = not self.wildcard

        def test(f: Field) -> bool:
            if (f.tag != tag) if exact else (f.tag not in tags):
                return False
            if need_data and f.subfields is None:
                return False
            if need_control and f.subfields is not None:
                return False
            if i1 is not None and blank(f.ind1) != i1:
                return False
            return i2 is None or blank(f.ind2) == i2

        return test

    @cached_property
    def select(self) -> Callable[[Record], list[Field]]:
        """The record's fields this path points at, in record order."""
        if self.is_leader:
            raise AssertionError("the leader is not a field")
        tag, tags = self.tag, expand_tag(self.tag)
        by_tag: Callable[[Record], list[Field]]
        if self.wildcard:
            by_tag = lambda rec: [f for f in rec.fields if f.tag in tags]  # noqa: E731
        else:
            by_tag = lambda rec: [f for f in rec.fields if f.tag == tag]  # noqa: E731
        if self.ind1 is None and self.ind2 is None and not self.codes and self.start is None:
            return by_tag
        # the tag test inline (cheap, rules out most fields), the rest only on the candidates
        test = self.match_field

        def select(rec: Record) -> list[Field]:
            found = by_tag(rec)
            return [f for f in found if test(f)] if found else found
        return select

    @cached_property
    def field_values(self) -> Callable[[Field], list[str]]:
        """The values this path reads from one field that already matched."""
        codes, start, end = self.codes, self.start, self.end
        if start is not None:
            stop = end + 1  # type: ignore[operator]
            return lambda f: [f.value[start:stop]] if f.value is not None and len(f.value) > start else []
        if len(codes) == 1:
            return lambda f: [v for c, v in f.subfields if c == codes] if f.subfields else []
        if codes:
            def joined(f: Field) -> list[str]:
                parts = [v for c, v in f.subfields or () if c in codes]
                return [" ".join(parts)] if parts else []
            return joined

        def whole(f: Field) -> list[str]:
            if f.subfields is None:
                return [] if f.value is None else [f.value]
            return [" ".join(v for _, v in f.subfields)] if f.subfields else []
        return whole

    @cached_property
    def read(self) -> Callable[[Record], list[str]]:
        """Every value at this path in the record (see the module docstring)."""
        if self.is_leader:
            if self.start is None:
                return lambda rec: [rec.leader]
            start, stop = self.start, self.end + 1  # type: ignore[operator]
            return lambda rec: [rec.leader[start:stop]] if len(rec.leader) > start else []
        select, values = self.select, self.field_values
        if len(self.codes) == 1 and not self.wildcard and self.ind1 is None and self.ind2 is None:
            tag, code = self.tag, self.codes
            return lambda rec: [v for f in rec.fields if f.tag == tag and f.subfields
                                for c, v in f.subfields if c == code]
        return lambda rec: [v for f in select(rec) for v in values(f)]

    @cached_property
    def first(self) -> Callable[[Record], str | None]:
        """The first value at this path, or None (templates use this)."""
        if self.is_control and not self.wildcard and self.ind1 is None and self.ind2 is None:
            tag, start = self.tag, self.start
            stop = None if self.end is None else self.end + 1

            def control(rec: Record) -> str | None:
                for f in rec.fields:
                    if f.tag == tag and f.subfields is None:
                        if start is None:
                            return f.value
                        return f.value[start:stop] if f.value is not None and len(f.value) > start else None
                return None
            return control
        read = self.read

        def first(rec: Record) -> str | None:
            values = read(rec)
            return values[0] if values else None
        return first


def parse_path(text: object, *, what: str = "path") -> Path:
    """Parse a path or raise `RulesError` saying exactly what is wrong with it."""
    if not isinstance(text, str):
        raise RulesError(f"{what} must be text such as \"245a\", got {kind_of(text)}")
    raw = text.strip()
    if not raw:
        raise RulesError(f"{what} is empty; expected a path such as 245a, 008/35-37 or LDR/06")

    def bad(problem: str) -> RulesError:
        return RulesError(f"{what} {raw!r}: {problem}")

    tag = raw[:3]
    if tag.upper() == "LDR" and tag != "LDR":
        raise bad("write the leader as LDR")
    if tag != "LDR" and not _TAG.fullmatch(tag):
        lowered = [ch for ch in tag if ch.islower()]
        if re.fullmatch(r"[0-9A-Za-z]{3}", tag) and (set(lowered) == {"x"} or tag.isalpha()):
            raise bad("write letters in tags in upper case (X is the digit wildcard), e.g. 6XX")
        raise bad("a tag has 3 characters (digits, or X for any digit), e.g. 245, 6XX or LDR")
    rest = raw[3:]
    ind1 = ind2 = None
    if rest.startswith("["):
        close = rest.find("]")
        if close < 0:
            raise bad("missing ] after the indicators")
        inds = rest[1:close]
        if len(inds) != 2:
            raise bad("indicators in brackets are exactly two characters, e.g. 650[ 0] "
                      "(* = any value; space, # or _ = blank)")
        if tag == "LDR" or is_control_tag(tag):
            raise bad("control fields and the leader have no indicators")
        ind1, ind2 = (None if ch == "*" else blank(ch) for ch in inds)
        rest = rest[close + 1:]
    start = end = None
    if "/" in rest:
        rest, positions = rest.split("/", 1)
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", positions)
        if not m:
            raise bad("positions are a number or a range after /, e.g. 008/35-37 or LDR/06")
        start = int(m.group(1))
        end = int(m.group(2)) if m.group(2) is not None else start
        if end < start:
            raise bad(f"the range {positions} ends before it starts")
        if tag != "LDR" and not is_control_tag(tag):
            raise bad("positions are only for the leader and control fields 001-009, e.g. 008/35-37")
        if tag == "LDR" and end >= LEADER_LENGTH:
            raise bad(f"the leader has positions 00-{LEADER_LENGTH - 1}")
    codes = rest.replace("$", "")
    if codes:
        bad_chars = [ch for ch in codes if not _CODE.fullmatch(ch)]
        if bad_chars:
            raise bad(f"{bad_chars[0]!r} is not a subfield code (codes are letters or digits), "
                      "e.g. 245ab or 650[ 0]a")
        if tag == "LDR" or is_control_tag(tag):
            raise bad("the leader and control fields 001-009 have no subfields; use positions, e.g. 008/35-37")
        if start is not None:
            raise bad("positions come after the tag, not after subfield codes")
        codes = "".join(dict.fromkeys(codes))  # de-duplicate, keep order
    return Path(raw, tag, ind1, ind2, codes, start, end)


# -- paths relative to one field (the `where:` filter) ----------------------------------------


@dataclass(frozen=True)
class FieldPath:
    """A path inside one field: `$a` / `$ab` (subfields), `ind1`, `ind2`, `tag`, `value`."""

    text: str
    read: Callable[[Field], list[str]]
    is_indicator: bool = False

    def describe(self) -> str:
        return self.text


def parse_field_path(text: object, *, what: str = "path") -> FieldPath:
    """Parse a `where:` path; it is relative to the field being filtered."""
    if not isinstance(text, str):
        raise RulesError(f"{what} must be text such as \"$2\" or \"ind2\", got {kind_of(text)}")
    raw = text.strip()
    if raw in ("ind1", "ind2"):
        attr = raw
        return FieldPath(raw, lambda f: [blank(getattr(f, attr))], is_indicator=True)
    if raw == "tag":
        return FieldPath(raw, lambda f: [f.tag])
    if raw == "value":
        return FieldPath(raw, lambda f: [] if f.value is None else [f.value])
    if raw.startswith("$") and len(raw) > 1:
        codes = raw.replace("$", "")
        if all(_CODE.fullmatch(ch) for ch in codes):
            field_path = Path(raw, "XXX", codes=codes)
            return FieldPath(raw, field_path.field_values)
    raise RulesError(f"{what} {raw!r}: inside where: a path is relative to the field: "
                     "$a (subfield codes), ind1, ind2, tag or value")


def kind_of(value: object) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return f"{str(value).lower()} (a yes/no value)"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"{type(value).__name__} {value!r}"


