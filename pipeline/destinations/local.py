"""A local folder destination: the default for local runs, the CLI, the demo and the tests.

Each output is written to a hidden temporary name in the target folder and renamed into place on
commit, so a crash never leaves a partial file under a final name.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from urllib.parse import unquote, urlparse

from pipeline.destinations.base import OutputResult, StreamHasher


def safe_relpath(relpath: str) -> str:
    """Refuse paths that would escape the destination root."""
    parts = [p for p in relpath.replace("\\", "/").split("/") if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts):
        raise ValueError(f"output path {relpath!r} is empty or leaves the destination folder")
    return "/".join(parts)


class LocalOutput:
    def __init__(self, final: Path) -> None:
        self.path = str(final)
        self._final = final
        final.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.part")
        self._fh = open(self._tmp, "wb")
        self._hasher = StreamHasher()

    def write(self, data: bytes) -> None:
        self._fh.write(data)
        self._hasher.update(data)

    def commit(self) -> OutputResult:
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        os.replace(self._tmp, self._final)
        h = self._hasher
        return OutputResult(self.path, h.size, h.sha256, h.content_hash)

    def abort(self) -> None:
        if not self._fh.closed:
            self._fh.close()
        self._tmp.unlink(missing_ok=True)


class LocalDestination:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.url = str(self.root)

    @classmethod
    def from_url(cls, url: str) -> LocalDestination:
        if url.startswith("file:"):
            parsed = urlparse(url)
            if parsed.netloc not in ("", "localhost"):
                raise ValueError(f"file URL {url!r} names a host; use file:///absolute/path")
            return cls(unquote(parsed.path))
        return cls(url)

    def location(self, relpath: str) -> str:
        return str(self.root / safe_relpath(relpath))

    def open(self, relpath: str) -> LocalOutput:
        return LocalOutput(self.root / safe_relpath(relpath))

    def write_bytes(self, relpath: str, data: bytes) -> OutputResult:
        out = self.open(relpath)
        try:
            out.write(data)
        except BaseException:
            out.abort()
            raise
        return out.commit()
