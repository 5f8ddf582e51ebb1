"""`xslt:PATH`: an XSLT 1.0 stylesheet applied to each record, results wrapped in one root element.

Each record is given to the stylesheet as its own MARCXML document (`<record xmlns="...slim">`), as
the Library of Congress stylesheets (MARC21slim2DC, MARC21slim2MODS) expect. The stylesheet is
configuration, not input, so it may `xsl:import` local files; it may not fetch from the network or
write files. A transform error rejects that record; an unreadable stylesheet is a usage error.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path

from lxml import etree

from pipeline.marc.marcxml import NS, MarcXmlEncoder
from pipeline.marc.record import Record, RecordError

_NAME = re.compile(r"^[A-Za-z_][\w.\-]*(:[A-Za-z_][\w.\-]*)?$")
_ACCESS = etree.XSLTAccessControl(read_file=True, write_file=False, create_dir=False,
                                  read_network=False, write_network=False)


class XsltEncoder:
    """Per-record XSLT; `root` names the wrapping element (default `collection`)."""

    def __init__(self, path: str, root: str = "collection", extension: str = "xml") -> None:
        if not _NAME.match(root):
            raise ValueError(f"XSLT root {root!r} is not an XML element name")
        self.path = path
        self.root = root
        self.extension = extension
        self._xml = MarcXmlEncoder()
        self.counters: dict[str, int] = self._xml.counters  # removed control characters
        self._local = threading.local()
        self._transform()  # fail early on a bad stylesheet

    def _transform(self) -> etree.XSLT:
        transform = getattr(self._local, "xslt", None)
        if transform is None:
            file = Path(self.path)
            if not file.is_file():
                raise ValueError(f"XSLT stylesheet {self.path} does not exist")
            parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
            try:
                doc = etree.parse(str(file), parser)
                transform = etree.XSLT(doc, access_control=_ACCESS)
            except (etree.XMLSyntaxError, etree.XSLTParseError) as exc:
                raise ValueError(f"XSLT stylesheet {self.path} cannot be used: {exc}") from None
            self._local.xslt = transform
        return transform

    def header(self) -> bytes:
        return f'<?xml version="1.0" encoding="UTF-8"?>\n<{self.root}>\n'.encode()

    def footer(self) -> bytes:
        return f"</{self.root}>\n".encode()

    def encode(self, record: Record) -> bytes:
        text = self._xml.record_text(record)
        doc = etree.fromstring(text.replace("<record>", f'<record xmlns="{NS}">', 1).encode("utf-8"))
        transform = self._transform()
        try:
            result = transform(doc)
        except etree.XSLTApplyError as exc:
            raise RecordError(f"XSLT failed: {exc}") from None
        root = result.getroot()
        if root is None:  # text output method: take the text as is
            return bytes(result).strip() + b"\n"
        return etree.tostring(root, encoding="utf-8") + b"\n"
