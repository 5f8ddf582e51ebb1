"""The XSLT sandbox (issue 12, finding 6): a stylesheet reads only files in its own folder (for
xsl:include and lookup documents), never the network, never writes, and documents it loads have no
entities expanded. Each door is tried with a real stylesheet; a refusal rejects that record only."""

from __future__ import annotations

import io
import socket

import pytest
from lxml import etree

from pipeline.destinations.local import LocalDestination
from pipeline.marc.engine import Input, process_file
from pipeline.marc.record import Field, Record, RecordError
from pipeline.marc.xslt import XsltEncoder
from tests import marcgen

MARKER = "TOP-SECRET-OUTSIDE-THE-FOLDER"
HEAD = ('<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform" '
        'xmlns:m="http://www.loc.gov/MARC21/slim" xmlns:exsl="http://exslt.org/common" '
        'extension-element-prefixes="exsl">\n<xsl:output method="xml"/>\n')


def record(url: str = "lookup.xml", rid: str = "1") -> Record:
    return Record("00000nam a2200000 a 4500", [Field.control("001", rid),
                                                Field("887", " ", " ", [("u", url)])])


@pytest.fixture
def folder(tmp_path):
    """A stylesheet folder with a lookup file, and a secret file beside (not inside) it."""
    (tmp_path / "secret.xml").write_text(f"<s>{MARKER}</s>")
    sheets = tmp_path / "sheets"
    sheets.mkdir()
    (sheets / "lookup.xml").write_text("<t>inside-the-folder</t>")
    return sheets


def sheet(folder, body: str, name: str = "main.xsl") -> str:
    path = folder / name
    path.write_text(HEAD + body + "\n</xsl:stylesheet>\n")
    return str(path)


# A stylesheet that passes record data to document(): the link in (an otherwise unused) 887 $u.
DOCUMENT_OF_LINK = ('<xsl:template match="/"><r><xsl:value-of select="document('
                   '//m:datafield[@tag=\'887\']/m:subfield[@code=\'u\'])"/></r></xsl:template>')


def test_a_lookup_document_in_the_stylesheet_folder_is_read(folder):
    out = XsltEncoder(sheet(folder, DOCUMENT_OF_LINK)).encode(record("lookup.xml"))
    assert b"inside-the-folder" in out


@pytest.mark.parametrize("url", ["../secret.xml", "{tmp}/secret.xml", "file://{tmp}/secret.xml", "/etc/passwd",
                                 "file:///etc/passwd"])
def test_record_data_cannot_make_document_read_outside_the_folder(folder, url):
    encoder = XsltEncoder(sheet(folder, DOCUMENT_OF_LINK))
    with pytest.raises(RecordError, match="outside the stylesheet's folder") as err:
        encoder.encode(record(url.format(tmp=folder.parent)))
    assert MARKER not in str(err.value)


def test_a_symbolic_link_in_the_folder_does_not_lead_out(folder):
    (folder / "link.xml").symlink_to(folder.parent / "secret.xml")
    with pytest.raises(RecordError, match="outside the stylesheet's folder"):
        XsltEncoder(sheet(folder, DOCUMENT_OF_LINK)).encode(record("link.xml"))


def test_entities_in_a_loaded_document_are_not_expanded(folder):
    """The finding: a local XML file with an external entity returned the server's file."""
    (folder / "xxe.xml").write_text(f'<?xml version="1.0"?>\n<!DOCTYPE t [<!ENTITY x SYSTEM '
                                    f'"file://{folder.parent}/secret.xml">]>\n<t>&x;</t>')
    out = XsltEncoder(sheet(folder, DOCUMENT_OF_LINK)).encode(record("xxe.xml"))
    assert MARKER.encode() not in out


def test_xsl_include_works_inside_the_folder_and_is_refused_outside(folder):
    (folder / "part.xsl").write_text(HEAD + '<xsl:template name="p"><p>included</p></xsl:template></xsl:stylesheet>')
    body = '<xsl:include href="part.xsl"/><xsl:template match="/"><xsl:call-template name="p"/></xsl:template>'
    assert b">included</p>" in XsltEncoder(sheet(folder, body)).encode(record())
    (folder.parent / "evil.xsl").write_text(HEAD + f'<xsl:template name="p">{MARKER}</xsl:template></xsl:stylesheet>')
    body = body.replace("part.xsl", "../evil.xsl")
    with pytest.raises(ValueError, match="cannot be used"):
        XsltEncoder(sheet(folder, body, "outside.xsl"))


def test_the_network_is_refused_and_never_contacted(folder):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.setblocking(False)
        port = listener.getsockname()[1]
        encoder = XsltEncoder(sheet(folder, DOCUMENT_OF_LINK))
        with pytest.raises(RecordError, match="XSLT failed"):
            encoder.encode(record(f"http://127.0.0.1:{port}/x.xml"))
        with pytest.raises(BlockingIOError):  # nobody knocked
            listener.accept()


@pytest.mark.parametrize("writer", [
    '<exsl:document href="{out}"><w>written</w></exsl:document>',
    '<xsl:document href="{out}" version="1.1"><w>written</w></xsl:document>',
])
def test_writes_are_refused(folder, writer):
    target = folder / "written.xml"
    body = f'<xsl:template match="/"><r>{writer.format(out=target)}</r></xsl:template>'
    try:
        encoder = XsltEncoder(sheet(folder, body))
    except ValueError:  # refused when compiled: just as good
        assert not target.exists()
        return
    with pytest.raises(RecordError):
        encoder.encode(record())
    assert not target.exists()


def test_a_refused_load_rejects_that_record_and_the_others_are_written(folder, tmp_path):
    recs = marcgen.records(4, seed=9)
    for i, r in enumerate(recs):
        url = "../secret.xml" if i == 2 else "lookup.xml"
        r.fields.append(Field("887", " ", " ", [("u", url)]))
    data = marcgen.marcxml_bytes(recs)
    out = tmp_path / "out"
    result = process_file(Input("in.xml", lambda: io.BytesIO(data), len(data)), LocalDestination(out),
                          fmt=f"xslt:{sheet(folder, DOCUMENT_OF_LINK)}",
                          workers=1)
    assert result.error is None
    assert (result.records_out, result.rejected) == (3, 1)
    (written,) = [o.path for o in result.outputs if o.path.endswith("in.xml")]
    doc = etree.parse(written)
    assert [r.text for r in doc.getroot()] == ["inside-the-folder"] * 3
    assert MARKER not in (out / "in.rejects.jsonl").read_text()
