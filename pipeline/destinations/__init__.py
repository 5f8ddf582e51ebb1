"""Where output bytes go. `open_destination(url)` picks the implementation from the URL.

- a plain path or `file:///path` -> `LocalDestination` (the default for local runs)
- `dropbox:/path` -> `DropboxDestination` (pipeline/destinations/dropbox.py)

Expand the `DESTINATION` template for a job first with `destination_url(...)` (paths.py); write one
file per record with `PerRecordSink` (per_record.py).
"""

from __future__ import annotations

from typing import Any

from pipeline.destinations.base import Destination, DestinationError, Output, OutputResult
from pipeline.destinations.paths import destination_url

__all__ = ["Destination", "DestinationError", "Output", "OutputResult", "destination_url", "open_destination"]


def open_destination(url: str, **dropbox_options: Any) -> Destination:
    """Build the destination for `url` (already template-expanded).

    `dropbox_options` go to `DropboxDestination.from_url` (`environ`, `session`, `timeout`,
    `deadline`, `max_attempts`) and are ignored for local folders, so callers need no branching.
    """
    if url.startswith("dropbox:"):
        from pipeline.destinations.dropbox import DropboxDestination

        return DropboxDestination.from_url(url, **dropbox_options)
    from pipeline.destinations.local import LocalDestination

    return LocalDestination.from_url(url)
