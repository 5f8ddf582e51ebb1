"""The ledger's Azure Blob store: one blob per job instance, ETag-conditional writes.

Kept apart from pipeline/ledger.py so the ledger's state machine, the job service and the workers
import without the Azure SDK; only code that really talks to storage loads it.
"""

from __future__ import annotations

from typing import Any, TypeVar

from azure.core import MatchConditions
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import BlobServiceClient, ContentSettings

from pipeline import settings
from pipeline.ledger import CONTAINER, StoreConflict

T = TypeVar("T")


def storage_client(cls: type[T], service: str, *args: Any, **kwargs: Any) -> T:
    """Build a blob or queue client from `AzureWebJobsStorage` or, with managed identity,
    `AzureWebJobsStorage__accountName` (the same two ways the Functions host connects)."""
    conn = settings.get("AzureWebJobsStorage")
    if conn:
        return cls.from_connection_string(conn, *args, **kwargs)  # type: ignore[attr-defined]
    account = settings.get("AzureWebJobsStorage__accountName")
    if account:
        from azure.identity import DefaultAzureCredential  # only needed in Azure; slow to import

        url = f"https://{account}.{service}.core.windows.net"
        return cls(url, *args, credential=DefaultAzureCredential(), **kwargs)
    raise settings.SettingError(
        "AzureWebJobsStorage",
        "is not set, and neither is AzureWebJobsStorage__accountName (storage through managed identity)",
    )


class BlobStore:
    """Ledger documents as blobs in one container; a stale ETag (412) or an existing blob on create
    (409/412) is a StoreConflict, so the ledger's loop redoes the change on a fresh read."""

    def __init__(self, service: BlobServiceClient, container: str = CONTAINER) -> None:
        self._container = service.get_container_client(container)
        self.container = self._container  # the job index (pipeline/jobindex.py) lives beside the documents
        self.name = container

    @classmethod
    def connect(cls, connection_string: str | None, container: str = CONTAINER, *,
                service: BlobServiceClient | None = None) -> BlobStore:
        if service is None:
            if not connection_string:
                raise ValueError("Ledger needs a connection string, a BlobServiceClient or a store")
            service = BlobServiceClient.from_connection_string(connection_string)
        return cls(service, container)

    @classmethod
    def from_settings(cls, container: str = CONTAINER) -> BlobStore:
        return cls(storage_client(BlobServiceClient, "blob"), container)

    def read(self, key: str) -> tuple[bytes, str] | None:
        try:
            download = self._container.get_blob_client(key).download_blob()
            return download.readall(), download.properties.etag
        except ResourceNotFoundError:
            return None

    def keys(self, prefix: str) -> list[str]:
        try:
            return [b.name for b in self._container.list_blobs(name_starts_with=prefix)]
        except ResourceNotFoundError:
            return []

    def write(self, key: str, data: bytes, etag: str | None) -> str:
        options: dict[str, Any] = ({"etag": etag, "match_condition": MatchConditions.IfNotModified} if etag
                                   else {"match_condition": MatchConditions.IfMissing})
        blob = self._container.get_blob_client(key)
        content = ContentSettings(content_type="application/json")
        try:
            try:
                return blob.upload_blob(data, overwrite=True, content_settings=content, **options)["etag"]
            except ResourceNotFoundError as exc:  # first write ever: create the container, then retry
                if getattr(exc, "error_code", None) != "ContainerNotFound":
                    raise
                try:
                    self._container.create_container()
                except ResourceExistsError:
                    pass
                return blob.upload_blob(data, overwrite=True, content_settings=content, **options)["etag"]
        except HttpResponseError as exc:
            if exc.status_code in (409, 412):  # 412: If-Match failed; 409/412: If-None-Match:*
                raise StoreConflict(key) from None
            raise
