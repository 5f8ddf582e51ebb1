"""Where output bytes go. `open_destination(url)` picks the implementation from the URL.

- a plain path or `file:///path` -> `LocalDestination` (the default for local runs)
- `dropbox:/path` -> Dropbox (pipeline/destinations/dropbox.py)
"""

from __future__ import annotations

from pipeline.destinations.base import Destination, Output, OutputResult

__all__ = ["Destination", "Output", "OutputResult", "open_destination"]


def open_destination(url: str) -> Destination:
    """Build the destination for `url` (already template-expanded)."""
    if url.startswith("dropbox:"):
        from pipeline.destinations.dropbox import DropboxDestination

        return DropboxDestination.from_url(url)
    from pipeline.destinations.local import LocalDestination

    return LocalDestination.from_url(url)
