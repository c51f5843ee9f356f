"""Helpers shared by the integration tests (fixtures live in conftest.py)."""
from __future__ import annotations

import dataclasses
import json
import subprocess
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


def history(config) -> list[dict]:
    path = Path(config.deploy_path, "state", "history.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def containers(project: str) -> dict[str, str]:
    """service -> state of a compose project's containers."""
    out = subprocess.run(["docker", "ps", "-a", "--filter", f"label=com.docker.compose.project={project}",
                          "--format", '{{.Label "com.docker.compose.service"}} {{.State}}'],
                         capture_output=True, text=True, check=True).stdout
    return dict(line.split() for line in out.splitlines())
