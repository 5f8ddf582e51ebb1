"""Azure blob source: an SFTP-enabled storage account where Alma's export profile drops files.

`blob://container/prefix` authenticates with a connection string (EXPORT_SOURCE_CONNECTION, default
AzureWebJobsStorage); `https://ACCOUNT.blob.core.windows.net/container/prefix` uses a managed
identity or developer login through azure-identity's DefaultAzureCredential, so no key is stored.
Downloads go in bounded ranges and resume at the byte offset, pinned to the blob's ETag so a blob
replaced mid-read fails clearly instead of splicing two versions.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Any, BinaryIO
from urllib.parse import unquote, urlparse

from azure.core import MatchConditions
from azure.core.exceptions import (
    HttpResponseError,
    IncompleteReadError,
    ResourceModifiedError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.storage.blob import BlobPrefix, BlobServiceClient, ContainerClient

from pipeline import settings
from pipeline.settings import SettingError
from pipeline.sources.base import (
    ResumingReader,
    Source,
    SourceEntry,
    SourceError,
    SourceFileNotFound,
    SourceUnavailable,
    buffered,
    check_name,
)

log = logging.getLogger(__name__)

CHUNK = 4 * 1024 * 1024  # the SDK fetches at most this much per request, so memory stays bounded
_TRANSIENT = (OSError, EOFError, ServiceRequestError, ServiceResponseError, IncompleteReadError)
_CLIENT_OPTIONS: dict[str, Any] = {
    "max_single_get_size": CHUNK, "max_chunk_get_size": CHUNK, "retry_total": 3,
    "connection_timeout": 30, "read_timeout": 60,
}


def _first_line(exc: Exception) -> str:
    text = str(getattr(exc, "message", None) or exc)
    return text.splitlines()[0] if text else type(exc).__name__


def _identity_client(account_url: str, options: dict[str, Any]) -> BlobServiceClient:
    """A client that signs in with the managed identity (or a developer's az login), no key stored."""
    from azure.identity import DefaultAzureCredential

    return BlobServiceClient(account_url, credential=DefaultAzureCredential(), **options)


class _Download:
    def __init__(self, chunks: Iterator[bytes], total_size: int) -> None:
        self._chunks = chunks
        self._pending = b""
        self._at = 0
        self.total_size = total_size

    def read(self, n: int) -> bytes:
        if not self._pending:
            try:
                self._pending = next(self._chunks, b"")
            except HttpResponseError as exc:
                if isinstance(exc, ResourceModifiedError) or exc.status_code == 412:
                    raise SourceError("the blob was replaced while it was being read") from exc
                if exc.status_code and exc.status_code >= 500:
                    raise SourceUnavailable(_first_line(exc)) from exc
                raise
        data = self._pending[self._at:self._at + n]  # copy only what is asked for
        self._at += len(data)
        if self._at >= len(self._pending):
            self._pending, self._at = b"", 0
        return data

    def close(self) -> None:
        self._chunks = iter(())


class BlobSource(Source):
    def __init__(self, container: ContainerClient, prefix: str, location: str) -> None:
        self._container = container
        self.prefix = prefix.strip("/")
        self.location = location

    @classmethod
    def from_url(cls, url: str, environ: Mapping[str, str] | None = None, chunk_size: int = CHUNK) -> BlobSource:
        """`chunk_size` bounds each download request (and so the memory one open file holds)."""
        options = dict(_CLIENT_OPTIONS, max_single_get_size=chunk_size, max_chunk_get_size=chunk_size)
        parsed = urlparse(url)
        if parsed.scheme == "blob":
            container = unquote(parsed.netloc)
            prefix = unquote(parsed.path)
            connection = settings.get("EXPORT_SOURCE_CONNECTION", environ) or settings.get(
                "AzureWebJobsStorage", environ)
            account = settings.get("AzureWebJobsStorage__accountName", environ)
            if connection:
                try:
                    service = BlobServiceClient.from_connection_string(connection, **options)
                except ValueError as exc:
                    raise SettingError("EXPORT_SOURCE_CONNECTION",
                                       f"is not a valid connection string: {exc}") from None
            elif account:  # the app's own storage, reached with its managed identity
                service = _identity_client(f"https://{account}.blob.core.windows.net", options)
            else:
                raise SettingError("EXPORT_SOURCE_CONNECTION", "is not set, and neither is AzureWebJobsStorage "
                                   "(a blob:// source needs a storage connection string)")
        else:
            parts = parsed.path.lstrip("/").split("/", 1)
            container, prefix = unquote(parts[0]), unquote(parts[1] if len(parts) > 1 else "")
            service = _identity_client(f"https://{parsed.netloc}", options)
        if not container:
            raise SettingError("EXPORT_SOURCE", f"names no container: {url!r} (blob://container/prefix)")
        location = f"{parsed.scheme}://{parsed.netloc}{parsed.path}"
        return cls(service.get_container_client(container), prefix, location)

    def _blob_name(self, name: str) -> str:
        check_name(name)
        return f"{self.prefix}/{name}" if self.prefix else name

    def list(self) -> list[SourceEntry]:
        start = f"{self.prefix}/" if self.prefix else None
        entries = []
        try:
            for item in self._container.walk_blobs(name_starts_with=start, delimiter="/"):
                if isinstance(item, BlobPrefix):
                    continue  # a "subfolder"
                name = item.name[len(start):] if start else item.name
                try:
                    check_name(name)
                except SourceError:
                    log.warning("ignoring blob with an unsafe name: %r", item.name)
                    continue
                entries.append(SourceEntry(name, item.size))
        except ResourceNotFoundError:
            raise SourceFileNotFound(f"container of {self.location} does not exist") from None
        except (ServiceRequestError, ServiceResponseError) as exc:
            raise SourceUnavailable(f"cannot list {self.location}: {exc}") from exc
        except HttpResponseError as exc:  # 403 (role or key), ClientAuthenticationError, ...
            raise SourceError(f"cannot list {self.location}: {_first_line(exc)}") from exc
        return entries

    def size(self, name: str) -> int:
        try:
            return int(self._container.get_blob_client(self._blob_name(name)).get_blob_properties().size)
        except ResourceNotFoundError:
            raise SourceFileNotFound(f"{name} is not in {self.location}") from None
        except HttpResponseError as exc:
            raise SourceError(f"cannot read {self.location}/{name}: {_first_line(exc)}") from exc

    def open(self, name: str, offset: int = 0) -> BinaryIO:
        blob = self._container.get_blob_client(self._blob_name(name))
        try:
            props = blob.get_blob_properties()
        except ResourceNotFoundError:
            raise SourceFileNotFound(f"{name} is not in {self.location} (removed after it was listed?)") from None
        except (ServiceRequestError, ServiceResponseError) as exc:
            raise SourceUnavailable(f"cannot reach {self.location}: {exc}") from exc
        except HttpResponseError as exc:
            raise SourceError(f"cannot read {self.location}/{name}: {_first_line(exc)}") from exc
        total, etag = int(props.size), props.etag

        def opener(at: int) -> _Download:
            if at >= total:
                return _Download(iter(()), total)
            try:
                downloader = blob.download_blob(offset=at, etag=etag, match_condition=MatchConditions.IfNotModified,
                                                max_concurrency=1)
            except ResourceNotFoundError:
                raise SourceFileNotFound(f"{name} is no longer in {self.location}") from None
            except ResourceModifiedError as exc:
                raise SourceError(f"{self.location}/{name} was replaced while it was being read") from exc
            return _Download(downloader.chunks(), total)

        return buffered(ResumingReader(name, opener, offset=offset, resumable=True, transient=_TRANSIENT,
                                       location=f"{self.location}/{name}"))

    def close(self) -> None:
        self._container.close()
