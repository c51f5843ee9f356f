"""`deploytasks init`: detection from a user's repository, files that load as written, never an overwrite."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import replace_keys
from dotenv import dotenv_values

from deploytasks import cli, keys, scaffold
from deploytasks import config as configuration

# A Django-style app: web and worker from the app's image, postgres and redis, and an nginx proxy
# built from ./nginx (which the host's nginx replaces).
DJANGO = """\
services:
  web:
    build: .
    image: ghcr.io/acme/shop:${TAG:-latest}
    command: gunicorn shop.wsgi:application
    ports: ["8000:8000"]
    environment:
      DATABASE_URL: postgres://shop:shop@db:5432/shop
    depends_on: [db, redis]
  worker:
    image: ghcr.io/acme/shop:${TAG:-latest}
    command: celery -A shop worker
  db:
    image: postgres:16
    volumes: [pgdata:/var/lib/postgresql/data]
  redis:
    image: redis:7-alpine
  nginx:
    build: ./nginx
    ports: ["80:80"]
    depends_on: [web]
volumes:
  pgdata:
"""

# The same app without the proxy, its worker built only (its image a placeholder), a cache from a
# registry mirror and the web service's image named with an interpolated registry.
REALISTIC = """\
services:
  db:
    image: docker.io/library/postgres:16-alpine
    volumes:
      - type: volume
        source: pgdata
        target: /var/lib/postgresql/data
  cache:
    image: ${MIRROR:-mirror.gcr.io}/valkey/valkey:8
  web:
    image: ${REGISTRY:-registry.acme.test:5000}/shop/web:${DEPLOY_SHA:-latest}
    ports: ["127.0.0.1:8000:8000"]
    healthcheck:
      test: ["CMD", "curl", "-f", "http://localhost:8000/healthz"]
  worker:
    build:
      context: .
      dockerfile: Dockerfile.worker
volumes:
  pgdata:
"""

SINGLE = """\
services:
  app:
    build: .
    ports: ["5000:5000"]
"""

EXPECTED_TASKS = {"deploy", "rollback", "promote", "status", "maintenance-on", "maintenance-off", "prune"}


def repo(base: Path, compose: dict[str, str] | None = None, name: str = "shop", git: bool = True) -> Path:
    """A user's repository: its compose files (relative path -> text) and an optional .git."""
    root = base / name
    root.mkdir(parents=True)
    if git:
        (root / ".git").mkdir()
    for path, text in (compose or {}).items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    return root


def init(root: Path, *args: str) -> int:
    return cli.main(["init", "--dir", str(root), *args])


def example(root: Path, env: str = "staging") -> dict[str, str]:
    return {k: v or "" for k, v in dotenv_values(root / "envs" / f"{env}.env.example").items()}


def copy_example(root: Path, env: str, **edits: str) -> None:
    """What the user does: copy the example to envs/<env>.env, edit the placeholder values."""
    text = (root / "envs" / f"{env}.env.example").read_text()
    (root / "envs" / f"{env}.env").write_text(replace_keys(text, **edits))


# --- detection ----------------------------------------------------------------------------------

def test_django_style_app(tmp_path):
    root = repo(tmp_path, {"compose.yml": DJANGO, "manage.py": ""})
    d = scaffold.detect(root)
    assert d.compose_files == ("compose.yml",) and d.mode == "containers"
    assert [s.name for s in d.role(scaffold.STATELESS)] == ["web", "worker"]
    assert [s.name for s in d.role(scaffold.STATEFUL)] == ["db", "redis"]
    assert [s.name for s in d.role(scaffold.LEFT_OUT)] == ["nginx"]
    assert d.web == "web" and d.migrate_command == "python manage.py migrate"

    text = scaffold.files(d)["envs/staging.env.example"]
    values = {k: v for k, v, _ in scaffold.env_entries(d, "staging")}
    assert values["STATELESS_SERVICES"] == "web,worker" and values["STATEFUL_SERVICES"] == "db,redis"
    assert values["IMAGE_WEB"] == values["IMAGE_WORKER"] == "ghcr.io/acme/shop"
    assert values["WEB_SERVICE"] == "web" and values["APP_NAME"] == "shop" and values["COMPOSE_FILES"] == "compose.yml"
    assert values["EXCLUDE_SERVICES"] == "nginx"
    assert "# nginx: only build: ./nginx: a reverse proxy, which the host's nginx replaces; deploytasks never" in text

    # the proxy is left out of the deploy: the example loads as written (its placeholders edited)
    assert init(root) == 0
    copy_example(root, "staging")
    config = configuration.load(root, "staging", environ={})
    assert config.excluded == ("nginx",) and config.stateless == ("web", "worker")


@pytest.mark.parametrize("env", ["staging", "production"])
def test_detected_example_copied_and_edited_loads(tmp_path, env):
    root = repo(tmp_path, {"compose/compose.yml": REALISTIC}, name="Acme_Shop.v2")
    assert init(root) == 0
    values = example(root, env)
    assert values["APP_NAME"] == "acme-shop-v2" and values["COMPOSE_FILES"] == "compose/compose.yml"
    assert values["STATELESS_SERVICES"] == "web,worker" and values["STATEFUL_SERVICES"] == "db,cache"
    assert values["IMAGE_WEB"] == "registry.acme.test:5000/shop/web"
    assert values["IMAGE_WORKER"] == "ghcr.io/your-org/worker"  # a placeholder, and a valid image name
    assert values["APP_ENV_FILE"] == f"envs/{env}.app.env" and values["MIGRATE_COMMAND"] == ""
    assert values["HOSTS"] == values["SERVER_NAME"] == scaffold.ENVS[env]

    copy_example(root, env, HOSTS="shop1.acme.test,shop2.acme.test", SERVER_NAME="shop.acme.test",
                 IMAGE_WORKER="ghcr.io/acme/shop-worker")
    config = configuration.load(root, env, environ={})
    assert config.stateless == ("web", "worker") and config.stateful == ("db", "cache")
    assert config.images == {"web": "registry.acme.test:5000/shop/web", "worker": "ghcr.io/acme/shop-worker"}
    assert config.web_service == "web" and config.deploy_path == "/srv/acme-shop-v2" and config.app_env == {}


def test_single_service_app_with_only_build(tmp_path):
    root = repo(tmp_path, {"compose.yaml": SINGLE})
    d = scaffold.detect(root)
    assert [(s.name, s.image, s.placeholder) for s in d.services] == [("app", "ghcr.io/your-org/app", True)]
    assert d.web == "app" and scaffold.placeholders(d) == ["HOSTS", "SERVER_NAME", "IMAGE_APP"]
    text = scaffold.files(d)["envs/staging.env.example"]
    assert text.startswith("# Copy to envs/staging.env (git ignores it) and edit the placeholders: "
                           "HOSTS, SERVER_NAME, IMAGE_APP.\n")
    assert "# placeholder: app only has build: .; CI builds it and pushes it here, tagged by SHA\nIMAGE_APP=" in text
    assert init(root) == 0
    copy_example(root, "staging")  # every placeholder is valid as it is
    assert configuration.load(root, "staging", environ={}).images == {"app": "ghcr.io/your-org/app"}


def test_docker_compose_yml_in_the_root_wins_over_subdirectories(tmp_path):
    root = repo(tmp_path, {"docker-compose.yml": SINGLE, "docker/compose.yml": DJANGO})
    d = scaffold.detect(root)
    assert d.compose_files == ("docker-compose.yml",) and d.unused == ("docker/compose.yml",)
    assert "# also found, not used: docker/compose.yml" in scaffold.files(d)["envs/staging.env.example"]


def test_compose_files_given_are_merged(tmp_path, capsys):
    override = "services:\n  app:\n    image: ghcr.io/acme/app:${TAG}\n  cache:\n    image: memcached:1.6\n"
    root = repo(tmp_path, {"compose.yml": SINGLE, "deploy/compose.prod.yml": override})
    assert init(root, "--compose", str(root / "compose.yml"), "--compose", str(root / "deploy/compose.prod.yml")) == 0
    values = example(root)
    assert values["COMPOSE_FILES"] == "compose.yml,deploy/compose.prod.yml"
    assert values["IMAGE_APP"] == "ghcr.io/acme/app" and values["STATEFUL_SERVICES"] == "cache"


def test_compose_file_outside_the_repository_is_refused(tmp_path, capsys):
    root = repo(tmp_path)
    (tmp_path / "elsewhere.yml").write_text(SINGLE)
    assert init(root, "--compose", str(tmp_path / "elsewhere.yml")) == 1
    assert "error: compose files must be inside the repository" in capsys.readouterr().err
    assert list(root.iterdir()) == [root / ".git"]


def test_unreadable_compose_file_is_an_error(tmp_path, capsys):
    root = repo(tmp_path, {"compose.yml": "services: [oops\n"})
    assert init(root) == 1
    assert "error: cannot read the compose files:" in capsys.readouterr().err


def test_no_compose_file_writes_process_examples(tmp_path):
    root = repo(tmp_path, {"manage.py": "", "shop/wsgi.py": "", "requirements.txt": "django\ngunicorn\n"})
    assert init(root) == 0
    text = (root / "envs" / "staging.env.example").read_text()
    assert "# No compose file was found, so this deploys the app as gunicorn processes on the host." in text
    values = example(root)
    assert values["MODE"] == "processes" and values["APP_MODULE"] == "shop.wsgi:application"
    assert values["MIGRATE_COMMAND"] == "python manage.py migrate"
    assert not any(key.startswith(("IMAGE_", "COMPOSE_", "STATE")) for key in values)
    copy_example(root, "staging")
    config = configuration.load(root, "staging", environ={})
    assert config.mode == "processes" and config.processes.app_module == "shop.wsgi:application"


def test_process_placeholder_app_module(tmp_path):
    d = scaffold.detect(repo(tmp_path))
    assert d.app_module == "" and "APP_MODULE" in scaffold.placeholders(d)
    assert dict((k, v) for k, v, _ in scaffold.env_entries(d, "staging"))["APP_MODULE"] == "app:app"


@pytest.mark.parametrize("name, spec, role", [
    ("web", {"image": "ghcr.io/acme/web:1"}, scaffold.STATELESS),
    ("api", {"build": ".", "volumes": ["media:/app/media"]}, scaffold.STATELESS),  # our code: volumes are shared
    ("files", {"image": "ghcr.io/acme/files", "volumes": ["files:/data"]}, scaffold.STATEFUL),
    ("search", {"image": "docker.elastic.co/elasticsearch/elasticsearch:8.15.0"}, scaffold.STATEFUL),
    ("db", {"image": "bitnami/postgresql:16"}, scaffold.STATEFUL),
    ("queue", {"image": "rabbitmq:3-management"}, scaffold.STATEFUL),
    ("proxy", {"image": "nginx:1.27-alpine", "ports": ["80:80"]}, scaffold.LEFT_OUT),
    ("db", {"build": "./docker/postgres"}, scaffold.LEFT_OUT),
    ("edge", {"build": {"context": "./caddy"}}, scaffold.LEFT_OUT),
    ("scratch", {"volumes": ["./x:/x"]}, scaffold.LEFT_OUT),
])
def test_classify(name, spec, role):
    assert scaffold.classify(name, spec).role == role


def test_what_the_configuration_check_will_refuse_is_shown(tmp_path, capsys):
    compose = ("services:\n  web:\n    build: .\n    volumes: ['.:/code']\n    env_file: .env\n"
               "    ports: ['8000:8000']\n")
    root = repo(tmp_path, {"docker-compose.yml": compose})
    assert init(root) == 0
    out = capsys.readouterr().out
    assert "  check: COMPOSE_FILES: service web: bind mount '.' is relative to the repository" in out
    example = (root / "envs" / "staging.env.example").read_text()
    assert "# check: COMPOSE_FILES: service web: bind mount '.' is relative to the repository" in example
    assert "env_file" not in example  # uploaded with the release: nothing to refuse


@pytest.mark.parametrize("image, name", [
    ("ghcr.io/acme/shop:${TAG:-latest}", "ghcr.io/acme/shop"),
    ("127.0.0.1:5000/example/web:${DEPLOY_SHA:-latest}", "127.0.0.1:5000/example/web"),
    ("${REGISTRY:-registry.acme.test}/shop/web", "registry.acme.test/shop/web"),
    ("${REGISTRY}/shop/web:${TAG}", "shop/web"),
    ("acme/web@sha256:0123abcd", "acme/web"),
    ("Acme/Web", "acme/web"),
    ("${IMAGE}", ""),
])
def test_image_name(image, name):
    assert scaffold.image_name(image) == name


@pytest.mark.parametrize("directory, name", [
    ("shop", "shop"), ("My_Shop.v2", "my-shop-v2"), ("2048-game", "game"), ("___", "app"), ("a" * 60, "a" * 40),
])
def test_app_name(directory, name):
    assert scaffold.app_name(directory) == name and keys.NAME_RE.match(name)


# --- writing ------------------------------------------------------------------------------------

def test_second_run_writes_nothing_and_an_existing_tasks_py_is_untouched(tmp_path, capsys):
    root = repo(tmp_path, {"compose.yml": DJANGO})
    (root / "tasks.py").write_text("# the team's own tasks\n")
    assert init(root) == 0
    first = capsys.readouterr().out
    assert "skipped tasks.py (exists: it needs `from deploytasks.tasks import ns`)" in first
    assert "wrote fabfile.py" in first and "updated .gitignore (+2 lines)" in first
    snapshot = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}

    assert init(root) == 0
    second = capsys.readouterr().out
    assert "wrote" not in second and "updated" not in second
    assert "skipped .gitignore (has every line)" in second
    for name in scaffold.files(scaffold.detect(root)):
        assert f"skipped {name} (exists" in second
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == snapshot
    assert (root / "tasks.py").read_text() == "# the team's own tasks\n"


def test_secret_files_are_private(tmp_path):
    root = repo(tmp_path)
    assert init(root) == 0
    for env in scaffold.ENVS:
        assert (root / "envs" / f"{env}.app.env").stat().st_mode & 0o777 == 0o600
        assert dotenv_values(root / "envs" / f"{env}.app.env") == {}


def test_dangling_symlink_is_not_overwritten(tmp_path):
    root = repo(tmp_path)
    (root / "fabfile.py").symlink_to(root / "missing.py")
    written, skipped = scaffold.write(root, {"fabfile.py": "x\n"})
    assert (written, skipped) == ([], ["fabfile.py"]) and not (root / "missing.py").exists()


def test_gitignore_gets_only_missing_lines(tmp_path, capsys):
    root = repo(tmp_path)
    (root / ".gitignore").write_text("__pycache__/\n  envs/*.env\n.venv/")  # no final newline
    assert init(root) == 0
    assert "updated .gitignore (+1 lines)" in capsys.readouterr().out
    assert (root / ".gitignore").read_text() == "__pycache__/\n  envs/*.env\n.venv/\nenvs/*.app.env\n"


def test_gitignore_keeps_secrets_out_but_not_the_examples(tmp_path):
    if not shutil.which("git"):
        pytest.skip("needs git")
    root = repo(tmp_path, git=False)
    subprocess.run(["git", "init", "-q", str(root)], check=True, capture_output=True, timeout=30)
    assert init(root) == 0
    copy_example(root, "staging")
    names = ["envs/staging.env", "envs/staging.app.env", "envs/staging.env.example", "tasks.py"]
    ignored = subprocess.run(["git", "-C", str(root), "check-ignore", *names], capture_output=True, text=True,
                             timeout=30).stdout.split()
    assert ignored == ["envs/staging.env", "envs/staging.app.env"]


def test_dry_run_writes_nothing(tmp_path, capsys):
    root = repo(tmp_path, {"compose.yml": DJANGO})
    before = sorted(root.rglob("*"))
    assert init(root, "--dry-run") == 0
    out = capsys.readouterr().out
    assert sorted(root.rglob("*")) == before
    assert "would write tasks.py" in out and "would update .gitignore (+2 lines)" in out and "wrote" not in out


def test_outside_a_git_repository_it_says_so_and_carries_on(tmp_path, capsys):
    root = repo(tmp_path, git=False)
    assert init(root) == 0
    assert f"note: {root} is not a git repository" in capsys.readouterr().out
    assert (root / "tasks.py").is_file()


def test_output_ends_with_the_next_steps(tmp_path, capsys):
    assert init(repo(tmp_path, {"compose.yml": DJANGO})) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-4:] == [
        "next steps:",
        "  1. cp envs/staging.env.example envs/staging.env   and edit HOSTS, SERVER_NAME",
        "  2. put the app's secrets in envs/staging.app.env (git ignores it)",
        "  3. inv deploy --env staging --sha <sha>   (or: fab -H <host> deploy --sha=<sha>)",
    ]
    assert any(line.startswith("nginx: the packaged site template and maintenance page are used") for line in lines)


# --- the real command, and the tasks it sets up -------------------------------------------------

def test_console_entry_runs_init(tmp_path):
    root = repo(tmp_path, {"compose.yml": DJANGO})
    run = subprocess.run([sys.executable, "-m", "deploytasks", "init", "--dir", str(root)], capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "wrote envs/staging.env.example" in run.stdout and (root / "fabfile.py").is_file()
    version = subprocess.run([sys.executable, "-m", "deploytasks", "--version"], capture_output=True, text=True,
                             timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("deploytasks ")


def _task_names(collection: dict, prefix: str = "") -> list[str]:
    names = [prefix + t["name"] for t in collection["tasks"]]
    for sub in collection["collections"]:
        names += _task_names(sub, f"{prefix}{sub['name']}.")
    return names


def test_written_tasks_py_and_fabfile_list_the_same_tasks(tmp_path):
    root = repo(tmp_path, {"compose.yml": DJANGO})
    assert init(root) == 0
    scripts = str(Path(sys.executable).parent)
    listed = {}
    for tool in ("inv", "fab"):
        exe = shutil.which(tool, path=scripts) or shutil.which(tool)
        assert exe, f"{tool} not installed"
        run = subprocess.run([exe, "--list", "--list-format", "json"], cwd=root, capture_output=True, text=True,
                             timeout=60)
        assert run.returncode == 0, (tool, run.stderr)
        listed[tool] = sorted(_task_names(json.loads(run.stdout)))
    assert listed["inv"] == listed["fab"] == sorted(EXPECTED_TASKS)
