"""Helpers shared by the integration tests (fixtures live in conftest.py)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import requests

from deploytasks import config as configuration
from deploytasks import operations
from harness import testbed

ROOT = Path(__file__).resolve().parents[2]
PUBLIC = "http://127.0.0.1:8080"


def target_of(config: configuration.Config, **changes) -> operations.Target:
    config = dataclasses.replace(config, **changes) if changes else config
    return operations.Target(config, config.hosts)


def serving() -> str:
    return requests.get(f"{PUBLIC}/version", timeout=5).text.strip()


def sha(name: str) -> str:
    return testbed.example_sha(name)
