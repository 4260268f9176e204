"""The unit tier: pure logic and single-process engine runs. No Ray cluster and no model training here
(those belong in tests/integration); the whole tier runs in under two minutes (`make unit`)."""

from __future__ import annotations

import sys

import pytest


@pytest.fixture(autouse=True, scope="session")
def _no_ray_cluster():
    yield
    ray = sys.modules.get("ray")
    assert ray is None or not ray.is_initialized(), "a unit test started Ray: move it to tests/integration"
