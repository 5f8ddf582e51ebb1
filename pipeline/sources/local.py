"""A local folder source (`file:///dir`): local runs, replays of downloaded exports, and tests."""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlparse

from pipeline.sources.base import Source, SourceEntry, SourceError, SourceFileNotFound, check_name


class LocalSource(Source):
    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.location = f"file://{self.folder}"

    @classmethod
    def from_url(cls, url: str) -> LocalSource:
        parsed = urlparse(url)
        if parsed.netloc not in ("", "localhost"):
            raise SourceError(f"file URL {url!r} names a host; use file:///absolute/path")
        return cls(unquote(parsed.path) or ".")

    def _path(self, name: str) -> Path:
        return self.folder / check_name(name)

    def list(self) -> list[SourceEntry]:
        try:
            with os.scandir(self.folder) as it:
                return [SourceEntry(e.name, e.stat().st_size) for e in it if e.is_file(follow_symlinks=False)]
        except FileNotFoundError:
            raise SourceFileNotFound(f"folder {self.location} does not exist") from None
        except OSError as exc:
            raise SourceError(f"cannot list {self.location}: {exc.strerror or exc}") from exc

    def open(self, name: str, offset: int = 0) -> BinaryIO:
        path = self._path(name)
        if path.is_symlink():  # a link could point anywhere; exports are plain files
            raise SourceError(f"{self.location}/{name} is a symbolic link; refusing to follow it")
        try:
            fh = open(path, "rb")  # the caller owns and closes the stream
        except FileNotFoundError:
            raise SourceFileNotFound(f"{name} is not in {self.location} (removed after it was listed?)") from None
        except OSError as exc:
            raise SourceError(f"cannot open {self.location}/{name}: {exc.strerror or exc}") from exc
        if offset:
            fh.seek(offset)
        return fh

    def size(self, name: str) -> int:
        try:
            return self._path(name).stat().st_size
        except FileNotFoundError:
            raise SourceFileNotFound(f"{name} is not in {self.location}") from None
