"""A local folder destination: the default for local runs, the CLI, the demo and the tests.

Each output is written to a hidden temporary name in the target folder and renamed into place on
commit, so a crash never leaves a partial file under a final name (the commit removes the `.part`
files of writers of the same output that were killed before theirs). The temporary `.part` file is
also what makes a local output resumable: `checkpoint()` fsyncs it and names it in the state, and
`resume()` truncates it back to the checkpointed size (dropping whatever a crashed invocation wrote
after it) and re-reads it once, so even the SHA-256 of a resumed output is exact.
"""

from __future__ import annotations

import glob
import os
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from pipeline.destinations.base import DestinationError, OutputResult, StreamHasher
from pipeline.destinations.paths import check_path_length, fit_name

_REHASH_BUFFER = 1024 * 1024


def safe_relpath(relpath: str) -> str:
    """Refuse paths that would escape the destination root; names over the byte limit are shortened
    with a stable hash suffix, so the temporary name fits too (destinations/paths.py)."""
    parts = [p for p in relpath.replace("\\", "/").split("/") if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts) or any("\x00" in p for p in parts):
        raise ValueError(f"output path {relpath!r} is empty or leaves the destination folder")
    path = "/".join(fit_name(p) for p in parts)
    check_path_length(path)
    return path


class LocalOutput:
    def __init__(self, final: Path, relpath: str = "", *, _resume_part: Path | None = None,
                 _resume_position: int = 0) -> None:
        self.path = str(final)
        self.relpath = relpath or final.name
        self._final = final
        final.parent.mkdir(parents=True, exist_ok=True)
        self._hasher = StreamHasher()
        if _resume_part is None:
            self._tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.part")
            self._fh = open(self._tmp, "wb")
        else:
            self._tmp = _resume_part
            self._fh = open(self._tmp, "r+b")
            self._fh.truncate(_resume_position)
            while chunk := self._fh.read(_REHASH_BUFFER):
                self._hasher.update(chunk)

    @property
    def position(self) -> int:
        return self._hasher.size

    def write(self, data: bytes) -> None:
        self._fh.write(data)
        self._hasher.update(data)

    def checkpoint(self) -> dict[str, Any]:
        """fsync the .part file and name it: enough to continue in another process."""
        self._fh.flush()
        os.fsync(self._fh.fileno())
        return {"kind": "local", "relpath": self.relpath, "part": self._tmp.name, "position": self.position}

    def commit(self) -> OutputResult:
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        os.replace(self._tmp, self._final)
        # A writer killed before its commit (SIGKILL, scale-in) left its .part behind; the output is whole now.
        for stale in self._final.parent.glob(f".{glob.escape(self._final.name)}.*.part"):
            stale.unlink(missing_ok=True)
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
        rel = safe_relpath(relpath)
        return LocalOutput(self.root / rel, rel)

    def resume(self, state: dict[str, Any]) -> LocalOutput:
        """Continue an output from `LocalOutput.checkpoint()`; fails clearly if the .part is gone."""
        if state.get("kind") != "local":
            raise DestinationError(f"cannot resume a {state.get('kind')!r} output in local folder {self.root}")
        rel = safe_relpath(str(state["relpath"]))
        final = self.root / rel
        part_name = str(state["part"])
        if "/" in part_name or "\\" in part_name or not part_name.endswith(".part"):
            raise DestinationError(f"resume state names a bad temporary file {part_name!r}")
        part = final.with_name(part_name)
        position = int(state["position"])
        try:
            size = part.stat().st_size
        except FileNotFoundError:
            raise DestinationError(f"cannot resume {final}: its temporary file {part} is gone") from None
        if size < position:
            raise DestinationError(
                f"cannot resume {final}: {part} holds {size} bytes, fewer than the {position} checkpointed")
        return LocalOutput(final, rel, _resume_part=part, _resume_position=position)

    def delete(self, relpath: str) -> bool:
        """Remove a file (a stale `_FAILED.json`); False when it was not there."""
        try:
            (self.root / safe_relpath(relpath)).unlink()
        except FileNotFoundError:
            return False
        return True

    def write_bytes(self, relpath: str, data: bytes) -> OutputResult:
        out = self.open(relpath)
        try:
            out.write(data)
        except BaseException:
            out.abort()
            raise
        return out.commit()
