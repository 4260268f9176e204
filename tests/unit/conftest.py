"""The unit tier: pure logic and single-process engine runs. No Ray cluster and no model training here
(those belong in tests/integration); the whole tier runs in under two minutes (`make unit`)."""

from __future__ import annotations

import sys

import pytest


def _ray_up() -> bool:
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


@pytest.fixture(autouse=True)
def _no_ray_cluster():
    """A unit test must not start Ray (in `make test` the integration tier's cluster may already be up)."""
    before = _ray_up()
    yield
    assert before or not _ray_up(), "a unit test started Ray: move it to tests/integration"


@pytest.fixture(scope="session")
def s3():
    """s3://raygen on a local S3-compatible server (moto) for this session."""
    from tests.s3server import s3_server

    with s3_server("raygen"):
        yield "s3://raygen"
