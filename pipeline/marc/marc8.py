"""Strict MARC-8 -> Unicode decoding, using pymarc's LoC character tables.

pymarc's own converter turns unmappable bytes into spaces and prints to stderr; a silent space is
data loss, so this decoder raises `Marc8Error` instead and the engine rejects the record. Output is
NFC, like pymarc's (MARC-8 stores decomposed letters, combining mark first).

State rules (LoC "MARC-8 character sets"): each field starts with G0 = Basic Latin (ASCII) and
G1 = ANSEL; escape sequences redesignate G0/G1 (ESC ( , ESC $ for G0; ESC ) - for G1; ESC $ 1 for
the 3-byte EACC set) and ESC g/b/p/s are the Greek-symbol / subscript / superscript / back-to-ASCII
shifts. Combining marks precede their base letter in MARC-8 and follow it in Unicode.
"""

from __future__ import annotations

import unicodedata

from pymarc import marc8_mapping

_BASIC_LATIN = 0x42
_ANSEL = 0x45
_EACC = 0x31
_CODESETS = marc8_mapping.CODESETS
_ODD = marc8_mapping.ODD_MAP


class Marc8Error(ValueError):
    """Bytes that are not valid MARC-8 (unknown character or broken escape sequence)."""


def _lookup(charset: int, code: int) -> tuple[int, int] | None:
    table = _CODESETS.get(charset)
    if table is None:
        return None
    hit = table.get(code)
    if hit is None:  # tables are keyed either by the G0 (0x21-0x7E) or the G1 (0xA1-0xFE) form
        hit = table.get(code ^ 0x80) if code < 0x100 else None
    return hit


def decode_marc8(data: bytes) -> str:
    """Decode one field's MARC-8 bytes; raise `Marc8Error` naming the byte offset of a problem."""
    if data.isascii() and b"\x1b" not in data:
        return data.decode("ascii")
    g0, g1 = _BASIC_LATIN, _ANSEL
    out: list[str] = []
    pending: list[str] = []  # combining marks waiting for their base character
    pos, n = 0, len(data)
    while pos < n:
        b = data[pos]
        if b == 0x1B:
            pos, g0, g1 = _escape(data, pos, g0, g1)
            continue
        if b < 0x20 or b == 0x7F:  # control characters (delimiters are split off before decoding)
            out.append(chr(b))
            pos += 1
            continue
        if g0 == _EACC and b < 0x80:
            if b == 0x20:
                out.extend(pending)
                pending.clear()
                out.append(" ")
                pos += 1
                continue
            if pos + 3 > n:
                raise Marc8Error(f"truncated 3-byte EACC character at byte {pos}")
            code = (b << 16) | (data[pos + 1] << 8) | data[pos + 2]
            hit = _lookup(_EACC, code)
            width = 3
        else:
            if b == 0x20 and g0 != _EACC:
                hit = (0x20, 0)
            elif b < 0x80:
                hit = _lookup(g0, b)
            else:
                hit = _lookup(g1, b)
            code = b
            width = 1
        if hit is None:
            odd = _ODD.get(code)
            if odd is None:
                raise Marc8Error(f"byte 0x{code:X} at offset {pos} has no MARC-8 mapping "
                                 f"(G0 0x{g0:02X}, G1 0x{g1:02X})")
            hit = (odd, 0)
        uni, combining = hit
        if combining:
            pending.append(chr(uni))
        else:
            out.append(chr(uni))
            if pending:
                out.extend(pending)
                pending.clear()
        pos += width
    if pending:
        raise Marc8Error("combining mark at the end of the field has no base character")
    return unicodedata.normalize("NFC", "".join(out))


def _escape(data: bytes, pos: int, g0: int, g1: int) -> tuple[int, int, int]:
    """Apply the escape sequence at `pos`; return the new position and character sets."""
    seq = data[pos + 1:pos + 4]
    if not seq:
        raise Marc8Error(f"escape character at the end of the field (offset {pos})")
    first = seq[0]
    if first in b"gbp":  # technique 1: Greek symbols, subscript, superscript
        return pos + 2, first, g1
    if first == 0x73:  # ESC s: back to ASCII
        return pos + 2, _BASIC_LATIN, g1
    if first in b"(,)-" and len(seq) >= 3 and seq[1] == 0x21:  # ESC ( ! E / ESC ) ! E: ANSEL
        return (pos + 4, _ANSEL, g1) if first in b"(," else (pos + 4, g0, _ANSEL)
    if first in b"(,":
        if len(seq) < 2:
            raise Marc8Error(f"incomplete escape sequence at offset {pos}")
        return pos + 3, _charset(seq[1], pos), g1
    if first in b")-":
        if len(seq) < 2:
            raise Marc8Error(f"incomplete escape sequence at offset {pos}")
        return pos + 3, g0, _charset(seq[1], pos)
    if first == 0x24:  # ESC $ [ , ( ) - ] F : multibyte set
        if len(seq) >= 3 and seq[1] in b",(":
            return pos + 4, _charset(seq[2], pos), g1
        if len(seq) >= 3 and seq[1] in b")-":
            return pos + 4, g0, _charset(seq[2], pos)
        if len(seq) >= 2:
            return pos + 3, _charset(seq[1], pos), g1
    raise Marc8Error(f"unknown escape sequence {data[pos:pos + 4]!r} at offset {pos}")


def _charset(final: int, pos: int) -> int:
    if final not in _CODESETS:
        raise Marc8Error(f"escape at offset {pos} names unknown character set 0x{final:02X}")
    return final
