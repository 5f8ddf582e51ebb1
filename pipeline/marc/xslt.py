"""`xslt:PATH`: an XSLT 1.0 stylesheet applied to each record, results wrapped in one root element.

Each record is given to the stylesheet as its own MARCXML document (`<record xmlns="...slim">`), as
the Library of Congress stylesheets (MARC21slim2DC, MARC21slim2MODS) expect. A transform error
rejects that record; an unreadable stylesheet is a usage error.

The stylesheet is configuration, but what it loads may be steered by record data (`document()` of
an 856 $u), so it runs in a sandbox: every file it loads (`xsl:include`, `xsl:import`, `document()`)
must lie inside the stylesheet's own folder (symbolic links resolved), and is parsed here without
entity expansion, DTD loading or network access; the network and all writes (`xsl:document`,
`exsl:document`) are refused by libxslt's access control. A refused load rejects that record.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path
from urllib.parse import unquote, urlsplit

from lxml import etree

from pipeline.marc.marcxml import NS, MarcXmlEncoder
from pipeline.marc.record import Record, RecordError

_NAME = re.compile(r"^[A-Za-z_][\w.\-]*(:[A-Za-z_][\w.\-]*)?$")
# read_file stays on for xsl:include; the resolver below decides which files may be read.
_ACCESS = etree.XSLTAccessControl(read_file=True, write_file=False, create_dir=False,
                                  read_network=False, write_network=False)
MAX_LOADED_BYTES = 64 * 1024 * 1024
"""Largest file a stylesheet may load (include or document())."""


class XsltSandboxError(Exception):
    """The stylesheet tried to load something outside its sandbox."""


class _FolderResolver(etree.Resolver):
    """Serves files from one folder only, parsed by the safe parser; refuses everything else."""

    def __init__(self, folder: Path) -> None:
        super().__init__()
        self.folder = folder.resolve()

    def resolve(self, url: str, pubid: str | None, context: object) -> object:
        parsed = urlsplit(url)
        if parsed.scheme not in ("", "file") or (parsed.scheme == "file" and parsed.netloc not in ("", "localhost")):
            raise XsltSandboxError(f"XSLT may not load {url!r}: only files in {self.folder}")
        path = Path(unquote(parsed.path) if parsed.scheme == "file" else url).resolve()
        if not path.is_relative_to(self.folder):
            raise XsltSandboxError(f"XSLT may not read {path}: outside the stylesheet's folder {self.folder}")
        try:
            with open(path, "rb") as fh:
                data = fh.read(MAX_LOADED_BYTES + 1)
        except OSError as exc:
            raise XsltSandboxError(f"XSLT cannot read {path}: {exc.strerror}") from None
        if len(data) > MAX_LOADED_BYTES:
            raise XsltSandboxError(f"XSLT may not load {path}: larger than {MAX_LOADED_BYTES} bytes")
        return self.resolve_string(data, context, base_url=path.as_uri())


def _safe_parser(folder: Path) -> etree.XMLParser:
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)
    parser.resolvers.add(_FolderResolver(folder))
    return parser


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
        self._base_url = Path(path).resolve().parent.as_uri() + "/"
        self._transform()  # fail early on a bad stylesheet

    def _transform(self) -> etree.XSLT:
        transform = getattr(self._local, "xslt", None)
        if transform is None:
            file = Path(self.path)
            if not file.is_file():
                raise ValueError(f"XSLT stylesheet {self.path} does not exist")
            parser = _safe_parser(file.parent)
            try:
                doc = etree.parse(str(file), parser)
                transform = etree.XSLT(doc, access_control=_ACCESS)
            except (etree.XMLSyntaxError, etree.XSLTParseError, XsltSandboxError) as exc:
                raise ValueError(f"XSLT stylesheet {self.path} cannot be used: {exc}") from None
            self._local.xslt = transform
        return transform

    def header(self) -> bytes:
        return f'<?xml version="1.0" encoding="UTF-8"?>\n<{self.root}>\n'.encode()

    def footer(self) -> bytes:
        return f"</{self.root}>\n".encode()

    def encode(self, record: Record) -> bytes:
        text = self._xml.record_text(record)
        # the record's base URI is the stylesheet's folder, so a relative link in its data resolves there
        doc = etree.fromstring(text.replace("<record>", f'<record xmlns="{NS}">', 1).encode("utf-8"),
                               base_url=self._base_url)
        transform = self._transform()
        try:
            result = transform(doc)
        except (etree.XSLTApplyError, XsltSandboxError) as exc:
            raise RecordError(f"XSLT failed: {exc}") from None
        root = result.getroot()
        if root is None:  # text output method: take the text as is
            return bytes(result).strip() + b"\n"
        return etree.tostring(root, encoding="utf-8") + b"\n"
