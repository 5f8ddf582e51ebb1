"""The one record model every stage shares: readers build it, rules edit it, writers encode it.

Plain slotted objects, not pymarc classes: pymarc's Record/Field construction is the measured
bottleneck of MARC pipelines, and these cost a fraction of it. `to_pymarc`/`from_pymarc` convert for
plugins (the rules' `python:` hook) that want pymarc's API.

Model:
- `Record.leader`: a str of 24 characters (readers keep what the input had; writers recompute the
  length and base address).
- `Record.fields`: list of `Field` in record order.
- A control field (tags 001-009) has `value: str` and `subfields is None`; `ind1`/`ind2` are " ".
- A data field has `subfields: list[tuple[str, str]]` of (code, value) in order, repeats allowed,
  and `value is None`.
All text is `str` (Unicode, as decoded from UTF-8 or MARC-8); nothing is normalised here.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


class RecordError(Exception):
    """One record cannot be read, transformed or written: it is rejected, the stream goes on.

    `code` is the reject's stable kebab-case reason (docs/formats.md lists them), counted per reason in
    report.json and the manifest so that a thousand rejects of one kind read as one line; None lets
    the stage that caught it name it (`read-error`, `rules-reject`, `write-error`)."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code

    def __reduce__(self) -> tuple[Any, ...]:  # keep the code when a worker process sends it back
        return (type(self), (str(self), self.code))


class Field:
    __slots__ = ("tag", "ind1", "ind2", "subfields", "value")

    def __init__(
        self,
        tag: str,
        ind1: str = " ",
        ind2: str = " ",
        subfields: list[tuple[str, str]] | None = None,
        value: str | None = None,
    ) -> None:
        self.tag = tag
        self.ind1 = ind1
        self.ind2 = ind2
        self.subfields = subfields
        self.value = value

    @classmethod
    def control(cls, tag: str, value: str) -> Field:
        return cls(tag, " ", " ", None, value)

    @property
    def is_control(self) -> bool:
        return self.subfields is None

    def get(self, code: str) -> str | None:
        """First value of subfield `code`, or None."""
        for c, v in self.subfields or ():
            if c == code:
                return v
        return None

    def get_all(self, code: str) -> list[str]:
        return [v for c, v in self.subfields or () if c == code]

    def copy(self) -> Field:
        return Field(self.tag, self.ind1, self.ind2,
                     None if self.subfields is None else list(self.subfields), self.value)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Field) and self.tag == other.tag and self.ind1 == other.ind1
                and self.ind2 == other.ind2 and self.subfields == other.subfields
                and self.value == other.value)

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"Field({mnemonic_field(self)!r})"


class Record:
    __slots__ = ("leader", "fields")

    def __init__(self, leader: str = " " * 24, fields: list[Field] | None = None) -> None:
        self.leader = leader
        self.fields = [] if fields is None else fields

    def control(self, tag: str) -> str | None:
        """Value of the first control field with `tag`, or None."""
        for f in self.fields:
            if f.tag == tag and f.subfields is None:
                return f.value
        return None

    @property
    def id(self) -> str | None:
        """The 001 (in Alma, the MMS ID)."""
        return self.control("001")

    def get_fields(self, *tags: str) -> list[Field]:
        return [f for f in self.fields if f.tag in tags] if tags else list(self.fields)

    def __iter__(self) -> Iterator[Field]:
        return iter(self.fields)

    def copy(self) -> Record:
        return Record(self.leader, [f.copy() for f in self.fields])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Record) and self.leader == other.leader and self.fields == other.fields

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Record(id={self.id!r}, fields={len(self.fields)})"

    def mnemonic(self) -> str:
        """MarcEdit-style text (`=245  10$aTitle`), for humans: `rules try`, error messages."""
        lines = [f"=LDR  {self.leader}"]
        lines.extend(mnemonic_field(f) for f in self.fields)
        return "\n".join(lines)


def mnemonic_field(field: Field) -> str:
    if field.subfields is None:
        return f"={field.tag}  {field.value}"
    ind = (field.ind1 or " ").replace(" ", "\\") + (field.ind2 or " ").replace(" ", "\\")
    return f"={field.tag}  {ind}" + "".join(f"${c}{v}" for c, v in field.subfields)


def to_pymarc(record: Record) -> Any:
    """Convert to a `pymarc.Record` (for plugins that prefer pymarc's API)."""
    import pymarc

    out = pymarc.Record(force_utf8=True, leader=record.leader)
    for f in record.fields:
        if f.subfields is None:
            out.add_field(pymarc.Field(tag=f.tag, data=f.value))
        else:
            out.add_field(pymarc.Field(
                tag=f.tag, indicators=pymarc.Indicators(f.ind1, f.ind2),
                subfields=[pymarc.Subfield(c, v) for c, v in f.subfields]))
    return out


def from_pymarc(record: Any) -> Record:
    """Convert a `pymarc.Record` back into the pipeline's model."""
    fields = []
    for f in record.fields:
        if f.is_control_field():
            fields.append(Field.control(f.tag, f.data))
        else:
            fields.append(Field(f.tag, f.indicator1 or " ", f.indicator2 or " ",
                                [(s.code, s.value) for s in f.subfields]))
    return Record(str(record.leader), fields)
