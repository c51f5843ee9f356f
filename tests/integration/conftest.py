"""Integration tests run against the real local testbed: sshd, dockerd, registry, nginx.

The session starts the testbed itself (idempotent), so `pytest` on a fresh machine works.
"""
from __future__ import annotations

import pytest

from deploytasks import config as configuration
from harness import testbed

from .support import ROOT


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def bed():
    testbed.up()
    return testbed


@pytest.fixture(scope="session")
def local_config(bed) -> configuration.Config:
    return configuration.load(ROOT, "local")


@pytest.fixture
def fresh_host(local_config):
    testbed.reset_app(local_config)
    return local_config


@pytest.fixture
def proc_host(bed):
    """The process-release app (envs/local-process.env) on an empty server, emptied again after."""
    config = configuration.load(ROOT, "local-process")
    testbed.reset_app(config)
    yield config
    testbed.reset_app(config)
