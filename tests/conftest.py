"""Shared test fixtures: Azurite (started once per test session) and a clean environment.

Azurite runs for the whole session, even for tests that do not touch storage, so every later test
can rely on real queues and blobs. Settings come from environment variables: `clean_env` gives each
test a copy it can change freely.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from pipeline.dev import azurite as azurite_launcher
from pipeline.settings import REGISTRY


@pytest.fixture(scope="session", autouse=True)
def azurite() -> Iterator[azurite_launcher.Azurite]:
    server = azurite_launcher.start()
    previous = os.environ.get("AzureWebJobsStorage")
    os.environ["AzureWebJobsStorage"] = server.connection_string
    try:
        yield server
    finally:
        server.stop()
        if previous is None:
            os.environ.pop("AzureWebJobsStorage", None)
        else:
            os.environ["AzureWebJobsStorage"] = previous


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, azurite: azurite_launcher.Azurite) -> pytest.MonkeyPatch:
    """Unset every registered setting except storage; tests set what they need."""
    for name in REGISTRY:
        if name != "AzureWebJobsStorage":
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AzureWebJobsStorage", azurite.connection_string)
    return monkeypatch


@pytest.fixture
def unique_name() -> str:
    """A name safe for queues and containers (3-63 lower-case letters, digits, dashes)."""
    return "t" + uuid.uuid4().hex[:20]
