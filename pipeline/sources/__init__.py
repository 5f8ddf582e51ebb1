"""Where export files come from. `open_source(url)` picks the implementation from the URL
(sftp://, ftp://, ftps://, blob://, https://ACCOUNT.blob.core.windows.net/..., file:///).

Every source lists one folder and opens plain file names in it as streaming binary readers; see
`pipeline/sources/base.py` for the contract, the name checks and how dropped connections resume.
Protocol modules are imported only when their scheme is used, to keep start-up light.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlparse

from pipeline import settings
from pipeline.settings import SettingError
from pipeline.sources.base import (
    Source,
    SourceEntry,
    SourceError,
    SourceFileNotFound,
    SourceUnavailable,
    UnsafeName,
    check_name,
)

__all__ = [
    "Source", "SourceEntry", "SourceError", "SourceFileNotFound", "SourceUnavailable", "UnsafeName",
    "check_name", "open_source",
]

SCHEMES = "sftp://, ftp://, ftps://, blob://, https://ACCOUNT.blob.core.windows.net/..., file:///"


def open_source(url: str | None = None, environ: Mapping[str, str] | None = None) -> Source:
    """The source for `url` (default: the EXPORT_SOURCE setting). Connects lazily, on first use."""
    if url is None:
        url = settings.require("EXPORT_SOURCE", environ)
    url = url.strip()
    scheme = urlparse(url).scheme.lower()
    if scheme == "file" or not scheme:
        from pipeline.sources.local import LocalSource

        return LocalSource.from_url(url) if scheme else LocalSource(url)  # a plain local path
    if scheme == "sftp":
        from pipeline.sources.sftp import SftpSource

        return SftpSource.from_url(url, environ)
    if scheme in ("ftp", "ftps"):
        from pipeline.sources.ftp import FtpSource

        return FtpSource.from_url(url, environ)
    if scheme == "blob" or (scheme == "https" and ".blob." in urlparse(url).netloc):
        from pipeline.sources.blob import BlobSource

        return BlobSource.from_url(url, environ)
    raise SettingError("EXPORT_SOURCE", f"unsupported source {url!r}; use one of {SCHEMES}")
