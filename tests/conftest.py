"""Test-wide settings: caches go to a temporary directory, never to the user's home."""

import pytest


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("DRIFTING_CACHE", str(tmp_path_factory.getbasetemp() / "drifting-cache"))
