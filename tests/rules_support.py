"""Helpers for the rules tests: records written as MARC mnemonic text, and the python-hook plugin.

`mrk()` reads the same text `Record.mnemonic()` writes (`=245  10$aTitle`, `\\` = blank indicator),
so a test states a record and its expected result the way a cataloguer would read them.
"""

from __future__ import annotations

from pipeline.marc.record import Field, Record

LEADER = "00000nam a2200000 a 4500"


def mrk(text: str, leader: str = LEADER) -> Record:
    """Record from mnemonic lines; the leader line is optional."""
    fields = []
    for line in text.strip().splitlines():
        line = line.strip()
        if not line:
            continue
        assert line.startswith("=") and line[4:6] == "  ", f"bad mnemonic line {line!r}"
        tag, body = line[1:4], line[6:]
        if tag == "LDR":
            leader = body
        elif tag < "010":
            fields.append(Field.control(tag, body))
        else:
            ind1, ind2 = (" " if ch == "\\" else ch for ch in body[:2])
            subfields = [(chunk[0], chunk[1:]) for chunk in body[2:].split("$")[1:]]
            fields.append(Field(tag, ind1, ind2, subfields))
    return Record(leader, fields)


def body(record: Record | None) -> list[str]:
    """The record's mnemonic lines without the leader (what most assertions compare)."""
    assert record is not None, "the record was dropped"
    return record.mnemonic().splitlines()[1:]


# -- the python hook plugin (rules say `python: "rules_support:..."`) --------------------------


def add_local_note(record: Record) -> Record:
    """A well-behaved hook: adds a 590 with the record's id."""
    record.fields.append(Field("590", " ", " ", [("a", f"checked {record.id}")]))
    return record


def drop_serials(record: Record) -> Record | None:
    """Returns None to drop serials (leader/07 = s)."""
    return None if record.leader[7] == "s" else record


def explode_on_bad(record: Record) -> Record:
    """Raises for records whose 001 starts with 'bad': the engine must reject only those."""
    if (record.id or "").startswith("bad"):
        raise ValueError(f"cannot handle {record.id}")
    return record


def return_garbage(record: Record) -> str:
    return "not a record"


def via_pymarc(record: Record) -> Record:
    """Uses pymarc's API through the documented converters."""
    from pipeline.marc.record import from_pymarc, to_pymarc

    pm = to_pymarc(record)
    pm.remove_fields("500")
    return from_pymarc(pm)


NOT_CALLABLE = 42
