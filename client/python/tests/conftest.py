"""Fixtures shared by the SDK's tests against a real `hangar-server dev` (see cluster.py)."""

from __future__ import annotations

import pytest

from cluster import DevServer


@pytest.fixture(scope="module")
def dev(tmp_path_factory):
    """One `hangar-server dev` per test module (process runtime)."""
    server = DevServer(tmp_path_factory.mktemp("dev")).start()
    try:
        yield server
    finally:
        server.stop()
