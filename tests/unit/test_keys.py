"""keys: each env key is defined once, and the README, parse and the checks all follow that definition."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest
from conftest import COMPOSE, REPO, make_root

from deploytasks import config as configuration
from deploytasks import keys
from deploytasks.errors import ConfigError

# A valid value for every key whose default is required, empty or computed (the rest use their default).
SAMPLES = {
    "APP_NAME": "shop", "HOSTS": "app1.example.com,10.0.0.5", "SSH_KEY": "~/.ssh/id_ed25519",
    "DEPLOY_PATH": "/srv/shop", "STATELESS_SERVICES": "web", "STATEFUL_SERVICES": "db", "WEB_SERVICE": "web",
    "MIGRATE_COMMAND": "python3 manage.py migrate", "APP_ENV_FILE": "app.env", "APP_ENV_PASSTHROUGH": "DB_PASSWORD",
    "MAINTENANCE_ALLOW": "10.1.0.0/16,192.0.2.7", "SOURCE_PATH": "app", "BUILD_COMMAND": "make assets",
    "BUILD_INPUTS": "assets,Makefile", "BUILD_OUTPUT": "static", "SHARED_PATHS": "uploads", "TIMEOUT_STOP": "60",
    "EXCLUDE_SERVICES": "proxy", "READY_PATH": "/readyz", "VERSION_PATH": "/version", "WEB_PORT": "8000",
    "WEB_HOST_PORTS": "21000,21001", "STATIC_URL": "/static/", "STATIC_PATH": "/app/static", "MEDIA_URL": "/media/",
    "MEDIA_PATH": "/app/media", "START_COMMAND": "node server.js", "HOOKS_PER_HOST": "post-switch,pre-deploy",
    "WEBHOOK_URL": "https://hooks.example.com/services/T0/B0/not-a-real-token",
}
# What differs for process releases: no WEB_PORT (LISTEN=port instead), paths in the release
PROCESS_SAMPLES = {"WEB_PORT": "", "STATIC_PATH": "static", "MEDIA_PATH": "media"}
ENVIRON = {"DB_PASSWORD": "hunter2"}

# A value each kind of check refuses; Text, LocalPath and a pattern-less Items accept any text
# (config.py checks those against other keys or the project on disk).
BAD = {
    keys.Choice: "nope", keys.Integer: "2.5", keys.Number: "abc", keys.Match: "x; rm -rf /",
    keys.HostPath: "/srv/shop; rm -rf /", keys.Image: "ghcr.io/acme/web:latest", keys.Items: "ok,$(id)",
    keys.Networks: "all; deny", keys.Command: "'unclosed", keys.SecretUrl: "ftp://hooks.example.com/token",
}


def _accepts_anything(check) -> bool:
    return isinstance(check, (keys.Text, keys.LocalPath)) or (type(check) is keys.Items and check.pattern is None)


def _name(key: keys.Key) -> str:
    return "IMAGE_WEB" if key is keys.IMAGES else key.name


@pytest.fixture
def root(tmp_path, git_repo):
    """A project whose root is also its SOURCE_REPO (the default `.`), with the app's env file."""
    git_repo(tmp_path, [("one", {"app/app.py": "app = None\n"})])
    make_root(tmp_path, {}, compose=COMPOSE.replace("\nvolumes:", "\n  proxy:\n    image: nginx\nvolumes:"))
    (tmp_path / "app.env").write_text("SECRET_KEY=s3cr3t\n")
    return tmp_path


def _valid(mode: str) -> dict[str, str]:
    """Every key set explicitly (the process keys too: containers accept them and ignore them)."""
    raw = {name: SAMPLES.get(name, key.default) for name, key in keys.BY_NAME.items()}
    return dict(raw, **(PROCESS_SAMPLES if mode == "processes" else {}), MODE=mode, IMAGE_WEB="ghcr.io/acme/shop-web")


# --- the README ----------------------------------------------------------------------------------

def _readme_tables() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    return ["\n".join(block) for block in re.findall(r"(?m)((?:^\|.*\n)+)", section + "\n")
            for block in [block.rstrip("\n").split("\n")]]


def test_readme_tables_are_what_the_definitions_render():
    assert _readme_tables() == [keys.table(keys.GENERAL), keys.table(keys.PROCESSES)], \
        "README.md's configuration tables differ from deploytasks/keys.py: paste `python -m deploytasks.keys`"
    assert keys.tables() in (REPO / "README.md").read_text()


def test_the_module_prints_the_tables():
    out = subprocess.run([sys.executable, "-m", "deploytasks.keys"], cwd=REPO, capture_output=True, text=True,
                         check=True, timeout=60).stdout
    assert out == keys.tables()
    assert out.startswith("| key | default | meaning |\n| --- | --- | --- |\n| `APP_NAME` | required | ")


def test_defaults_are_shown_as_in_the_readme():
    shown = {key.name: key.default_text for key in keys.KEYS}
    assert shown["APP_NAME"] == "required" and shown["MODE"] == "`containers`"
    assert shown["STATEFUL_SERVICES"] == "empty" and shown["DEPLOY_PATH"] == "`/srv/<APP_NAME>`"
    assert shown["IMAGE_<SERVICE>"] == "required per stateless service"


# --- parse accepts exactly the defined keys --------------------------------------------------------

def test_every_key_without_a_usable_default_has_a_sample():
    assert {n for n, k in keys.BY_NAME.items() if not k.default or k.shown} <= set(SAMPLES)


@pytest.mark.parametrize("mode", keys.MODES)
def test_every_defined_key_is_accepted(root, mode):
    config = configuration.parse(root, "t", _valid(mode), ENVIRON)
    assert config.mode == mode and config.app_env == {"SECRET_KEY": "s3cr3t", "DB_PASSWORD": "hunter2"}


class _Recording(dict):
    """An env file that notes which keys parse reads."""

    def __init__(self, *args):
        super().__init__(*args)
        self.read: set[str] = set()

    def get(self, key, default=None):
        self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)


def test_parse_reads_exactly_the_defined_keys(root):
    raw = _Recording(_valid("processes"))
    configuration.parse(root, "t", raw, ENVIRON)
    assert {k for k in raw.read if not k.startswith(keys.IMAGE_PREFIX)} == set(keys.BY_NAME)
    containers = _Recording(_valid("containers"))
    configuration.parse(root, "t", containers, ENVIRON)
    assert "IMAGE_WEB" in containers.read
    assert {k for k in containers.read if k in keys.BY_NAME} == {k.name for k in keys.of(keys.GENERAL)}


def test_a_key_not_defined_is_unknown(root):
    raw = dict(_valid("containers"), FAVOURITE_COLOUR="blue", IMAGE_WORKER="ghcr.io/acme/worker")
    with pytest.raises(ConfigError) as caught:
        configuration.parse(root, "t", raw, ENVIRON)
    assert caught.value.details == ["IMAGE_WORKER: no stateless service of that name", "FAVOURITE_COLOUR: unknown key"]


# --- each check, by key --------------------------------------------------------------------------

CHECKED = [key for key in keys.KEYS if not _accepts_anything(key.check)]


@pytest.mark.parametrize("key", [pytest.param(key, id=_name(key)) for key in CHECKED])
def test_each_check_rejects_a_bad_value_naming_the_key(root, key):
    name, bad = _name(key), BAD[type(key.check)]
    own: list[str] = []
    key.check(name, bad, own)
    assert own and all(p.startswith(f"{name}: ") for p in own), own
    raw = dict(_valid(keys.PROCESSES if key.group == keys.PROCESSES else "containers"), **{name: bad})
    with pytest.raises(ConfigError) as caught:
        configuration.parse(root, "t", raw, ENVIRON)
    assert set(own) <= set(caught.value.details)


def test_every_kind_of_check_in_use_has_a_bad_value():
    assert {type(key.check) for key in CHECKED} == set(BAD)


def test_required_keys_report_missing_and_empty():
    problems: list[str] = []
    assert keys.BY_NAME["HOSTS"].read({}, problems) == ()
    assert keys.BY_NAME["HOSTS"].read({"HOSTS": " , "}, problems) == ()
    assert problems == ["HOSTS: missing (required)", "HOSTS: empty (required)"]


# --- the defaults are what parse uses ----------------------------------------------------------------

# keys whose value config.py turns into something else (project paths, the app's env), checked below
TRANSFORMED = {"COMPOSE_FILES", "SOURCE_REPO", "APP_ENV_FILE", "APP_ENV_PASSTHROUGH", "HOOKS_DIR"}
ATTRIBUTE = {"STATELESS_SERVICES": "stateless", "STATEFUL_SERVICES": "stateful", "EXCLUDE_SERVICES": "excluded"}


@pytest.mark.parametrize("mode", keys.MODES)
def test_defaults_are_what_parse_uses(tmp_path, git_repo, mode):
    git_repo(tmp_path, [("one", {"app/app.py": "app = None\n"})])
    root = make_root(tmp_path, {}, compose="services:\n  web:\n    image: acme/web\n")
    required = {"APP_NAME": "shop", "HOSTS": "h1", "MODE": mode}
    if mode == "containers":
        required.update(STATELESS_SERVICES="web", IMAGE_WEB="ghcr.io/acme/web")  # required for containers
    config = configuration.parse(root, "t", required, {})
    literal = [k for k in keys.BY_NAME.values() if k.default is not None and not k.shown and k.name not in required
               and k.name not in TRANSFORMED and (k.group == keys.GENERAL or mode == "processes")]
    assert len(literal) > 20 if mode == "processes" else len(literal) > 15
    for key in literal:
        owner = config.processes if key.group == keys.PROCESSES else config
        value, expected = getattr(owner, ATTRIBUTE.get(key.name, key.name.lower())), key.check(key.name, key.default, [])
        assert (value, type(value)) == (expected, type(expected)), key.name
    assert config.compose_files == (root / "compose/compose.yml",) and config.app_env == {}
    assert config.hooks_dir == root / ".deploytasks/hooks" and config.webhook_url == ""
    # the computed defaults, as the README describes them
    assert config.deploy_path == "/srv/shop" and config.web_service == "web" and config.ssh_key == ""
    assert config.migrate_command == () and config.stateless == ("web",)
    if mode == "processes":
        assert config.processes.source_repo == root
        assert (config.processes.source_path, config.processes.build_command, config.processes.build_inputs,
                config.processes.build_output) == ("", (), (), "")
    else:
        assert config.processes is None
