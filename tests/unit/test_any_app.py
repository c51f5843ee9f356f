"""Issue 10, "any app as it is": compose files deployed with their env files, `build:` sections
that never run on a host, and services left out of the deploy (EXCLUDE_SERVICES)."""
from __future__ import annotations

import pytest
import yaml
from conftest import GOOD_ENV, container_deploy, make_root, replace_keys, step_named

from deploytasks import config as configuration
from deploytasks.backends import compose
from deploytasks.errors import ConfigError
from deploytasks.layout import Layout
from deploytasks.plan import Put
from deploytasks.remote.console import MASK, Console

SHA = "bbbbbbb"
RELEASE = f"20240102T000000Z-{SHA}"
RELEASE_DIR = f"/srv/shop/releases/{RELEASE}"

ENV_FILES_COMPOSE = """\
services:
  web:
    image: example/web:latest
    env_file: [web.env, {path: ../config/optional.env, required: false}]
  db:
    image: postgres:16
    env_file: db.env
"""


def _root(tmp_path, compose_text=ENV_FILES_COMPOSE, env=GOOD_ENV, files=None):
    root = make_root(tmp_path, {"t": env}, compose=compose_text)
    for name, text in (files if files is not None else {
        "compose/web.env": "API_TOKEN=tok-123456\nGREETING=hello\n",
        "compose/db.env": "POSTGRES_PASSWORD=pw-abcdef\nDATABASE_URL=postgres://u:urlpass@db/x\n",
    }).items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def _problems(root) -> list[str]:
    with pytest.raises(ConfigError) as error:
        configuration.load(root, "t", environ={})
    return error.value.details


def _uploads(config, state) -> dict[str, Put]:
    plan = container_deploy(config, state, SHA, RELEASE)
    return {action.path: action for action in step_named(plan, "upload release").actions if isinstance(action, Put)}


# --- env files -----------------------------------------------------------------------------------

def test_env_files_of_stateless_and_stateful_services_go_up_with_the_release(tmp_path, first_state):
    config = configuration.load(_root(tmp_path), "t", environ={})
    assert [f.name for f in config.env_files] == ["compose/web.env", "compose/db.env"]  # optional.env: absent
    uploads = _uploads(config, first_state)
    for name in ("compose/web.env", "compose/db.env"):
        put = uploads[f"{RELEASE_DIR}/{name}"]
        assert put.mode == 0o600 and put.secret
        assert put.content == (tmp_path / name).read_bytes()
    # beside the compose file, where compose on the host resolves `web.env` (its project directory)
    assert f"{RELEASE_DIR}/compose/compose.yml" in uploads
    mkdir = step_named(container_deploy(config, first_state, SHA, RELEASE), "upload release").actions[0]
    assert f"{RELEASE_DIR}/compose" in mkdir.argv


def test_env_file_values_are_masked_like_app_env(tmp_path, first_state):
    config = configuration.load(_root(tmp_path), "t", environ={})
    secrets = config.secrets()
    assert {"tok-123456", "pw-abcdef", "urlpass"} <= set(secrets) and "hello" not in secrets
    console = Console(secrets=secrets)
    assert console.mask("token tok-123456, password pw-abcdef") == f"token {MASK}, password {MASK}"
    text = "\n".join(container_deploy(config, first_state, SHA, RELEASE).describe())
    assert "tok-123456" not in text and "pw-abcdef" not in text
    assert f"put {RELEASE_DIR}/compose/web.env (mode 0600" in text


def test_an_optional_env_file_that_exists_is_uploaded(tmp_path):
    root = _root(tmp_path, files={"compose/web.env": "A=1\n", "compose/db.env": "B=2\n", "config/optional.env": "C=3\n"})
    config = configuration.load(root, "t", environ={})
    assert "config/optional.env" in [f.name for f in config.env_files]


@pytest.mark.parametrize("spec", ["env_file: web.env", "env_file: [web.env]", "env_file: [{path: web.env}]",
                                  "env_file: {path: web.env, required: true}"])
def test_every_form_of_env_file(tmp_path, spec):
    text = f"services:\n  web:\n    image: x\n    {spec}\n  db:\n    image: redis\n"
    config = configuration.load(_root(tmp_path, text, files={"compose/web.env": "A=1\n"}), "t", environ={})
    assert [f.name for f in config.env_files] == ["compose/web.env"]


def test_env_files_are_relative_to_the_first_compose_files_directory(tmp_path):
    """Compose resolves a relative path of every -f file against the project directory: the first
    file's (checked with docker compose config v2.40)."""
    env = replace_keys(GOOD_ENV, COMPOSE_FILES="compose/compose.yml,deploy/override.yml")
    root = _root(tmp_path, "services:\n  web:\n    image: x\n    env_file: web.env\n  db:\n    image: redis\n", env,
                 files={"compose/web.env": "A=1\n", "compose/extra.env": "B=2\n",
                        "deploy/override.yml": "services:\n  web:\n    env_file: extra.env\n"})
    config = configuration.load(root, "t", environ={})
    assert [f.name for f in config.env_files] == ["compose/web.env", "compose/extra.env"]


def test_the_compose_model_appends_env_files_across_files_as_compose_does(tmp_path):
    (tmp_path / "a.yml").write_text("services:\n  web:\n    env_file: a.env\n")
    (tmp_path / "b.yml").write_text("services:\n  web:\n    env_file: [{path: b.env, required: false}]\n")
    model = configuration.compose_model((tmp_path / "a.yml", tmp_path / "b.yml"))
    assert configuration.env_file_entries(model["services"]["web"]) == [("a.env", True), ("b.env", False)]


def test_env_file_problems_are_reported_together_by_service(tmp_path):
    text = ("services:\n  web:\n    image: x\n    env_file: [missing.env, ../../outside.env, '.env.${DEPLOY_ENV}',"
            " ../app.env, /etc/shop/host.env]\n  db:\n    image: redis\n    env_file: [{path: gone.env, required: true}]\n")
    root = _root(tmp_path, text, replace_keys(GOOD_ENV, SSH_PORT="x"), files={})
    problems = _problems(root)
    assert "SSH_PORT: 'x' is not a whole number" in problems  # with the rest, at once
    found = [p for p in problems if "env_file" in p]
    assert found[0].startswith("COMPOSE_FILES: service web: env_file 'missing.env': cannot read ")
    assert found[1] == ("COMPOSE_FILES: service web: env_file '../../outside.env' is outside the repository: "
                        "only files inside it are uploaded")
    assert found[2] == ("COMPOSE_FILES: service web: env_file '.env.${DEPLOY_ENV}' uses a variable: write the path "
                        "out (it is read before connecting)")
    assert found[3] == ("COMPOSE_FILES: service web: env_file '../app.env' would replace app.env, which deploytasks "
                        "writes into each release: move or rename it")
    assert found[4].startswith("COMPOSE_FILES: service db: env_file 'gone.env': cannot read ")
    assert len(found) == 5  # an absolute path is the host's own file: compose reads it there


def test_an_env_file_linked_from_outside_the_repository_is_refused(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "web.env").write_text("A=1\n")
    root = _root(tmp_path / "repo", files={"compose/db.env": "B=2\n"})
    (root / "compose" / "web.env").symlink_to(tmp_path / "elsewhere" / "web.env")
    assert "COMPOSE_FILES: service web: env_file 'web.env' is outside the repository: only files inside it are " \
           "uploaded" in _problems(root)


def test_the_overlay_keeps_the_services_env_files_and_adds_app_env_last(tmp_path):
    config = configuration.load(_root(tmp_path), "t", environ={})
    text = compose.overlay(config, compose.model(config), Layout.of(config), RELEASE_DIR, SHA, "blue")
    # compose appends the overlay's env_file to the team's: app.env is read last and wins
    assert yaml.safe_load(text.split("\n", 1)[1])["services"]["web"]["env_file"] == [f"{RELEASE_DIR}/app.env"]


def test_reserved_release_names_include_what_the_container_backend_writes():
    assert {compose.OVERLAY, compose.INTERPOLATION_ENV} <= set(configuration.RESERVED_IN_RELEASE)


# --- build: never on a host; services left out ------------------------------------------------------

BUILD_COMPOSE = """\
services:
  web:
    build: .
    pull_policy: build
    ports: ["8000:8000"]
  worker:
    build: {context: ., dockerfile: Dockerfile.worker}
    image: ghcr.io/acme/worker:latest
  db:
    build: ./db
    image: postgres:16
  cache:
    image: redis
  proxy:
    build: ./nginx
    depends_on: [web]
    ports: ["80:80"]
"""
BUILD_ENV = replace_keys(GOOD_ENV, STATELESS_SERVICES="web,worker", STATEFUL_SERVICES="db,cache",
                         IMAGE_WORKER="ghcr.io/acme/worker", EXCLUDE_SERVICES="proxy")


def _overlay_services(config) -> tuple[str, dict]:
    text = compose.overlay(config, compose.model(config), Layout.of(config), RELEASE_DIR, SHA, "green")
    loader = type("Loader", (yaml.SafeLoader,), {})
    loader.add_constructor("!reset", lambda loader, node: "RESET")
    return text, yaml.load(text, Loader=loader)["services"]


def test_no_service_is_ever_built_on_the_host(tmp_path):
    config = configuration.load(_root(tmp_path, BUILD_COMPOSE, BUILD_ENV, files={}), "t", environ={})
    text, services = _overlay_services(config)
    # compose would build a missing image of a service with `build:`: the overlay drops every one
    assert services["web"]["build"] == services["worker"]["build"] == services["db"]["build"] == "RESET"
    assert services["web"]["pull_policy"] == "missing"  # `build` needs the build section it no longer has
    assert "pull_policy" not in services["worker"]
    assert services["db"] == {"build": "RESET"}  # a stateful service keeps its compose image
    assert "cache" not in services  # nothing to change
    assert services["web"]["image"] == f"ghcr.io/acme/shop-web:{SHA}"
    assert "    build: !reset []\n" in text


def test_excluded_services_are_gone_from_every_project(tmp_path, first_state):
    config = configuration.load(_root(tmp_path, BUILD_COMPOSE, BUILD_ENV, files={}), "t", environ={})
    assert config.excluded == ("proxy",)
    text, services = _overlay_services(config)
    assert services["proxy"] == "RESET" and "  proxy: !reset []\n" in text
    plan = container_deploy(config, first_state, SHA, RELEASE)
    assert not any("proxy" in action.argv for step in plan.steps for action in step.actions if hasattr(action, "argv"))


def test_a_build_only_service_without_an_image_is_a_clear_problem(tmp_path):
    text = BUILD_COMPOSE.replace("    build: ./db\n    image: postgres:16\n", "    build: ./db\n")
    problems = _problems(_root(tmp_path, text, replace_keys(BUILD_ENV, IMAGE_WEB=None), files={}))
    assert problems == [
        "COMPOSE_FILES: service 'db' only has build:, and deploytasks never builds on a host: give it an image: "
        "that CI pushes, or leave it out (EXCLUDE_SERVICES)",
        "IMAGE_WEB: missing: service 'web' only has build:, and deploytasks never builds on a host: set IMAGE_WEB to "
        "the image CI builds and pushes (tagged by SHA), or leave the service out (EXCLUDE_SERVICES)",
    ]


def test_excluded_service_names_are_checked(tmp_path):
    env = replace_keys(BUILD_ENV, EXCLUDE_SERVICES="proxy,nginx,cache")
    problems = _problems(_root(tmp_path, BUILD_COMPOSE, env, files={}))
    assert problems == [
        "EXCLUDE_SERVICES: cache cannot also be deployed (stateless or stateful)",
        "EXCLUDE_SERVICES: unknown service 'nginx' (compose defines cache, db, proxy, web, worker)",
    ]


def test_a_service_left_out_is_classified(tmp_path):
    problems = _problems(_root(tmp_path, BUILD_COMPOSE, replace_keys(BUILD_ENV, EXCLUDE_SERVICES=None), files={}))
    assert problems == ["STATEFUL_SERVICES: compose service 'proxy' is neither stateless nor stateful "
                        "(nor in EXCLUDE_SERVICES)"]


@pytest.mark.parametrize("needs", ["depends_on: [proxy]", "depends_on: {proxy: {condition: service_started}}",
                                   "links: ['proxy:edge']", "volumes_from: ['proxy:ro']", "network_mode: service:proxy"])
def test_a_deployed_service_needing_an_excluded_one_is_refused(tmp_path, needs):
    """compose refuses a project whose service depends on one that is not there (checked with
    docker compose config v2.40): say so before connecting, by key."""
    text = BUILD_COMPOSE.replace("    image: redis\n", f"    image: redis\n    {needs}\n")
    assert _problems(_root(tmp_path, text, BUILD_ENV, files={})) == [
        "EXCLUDE_SERVICES: service 'cache' needs 'proxy' (depends_on, links, volumes_from or network_mode), which is "
        "never started: compose would refuse the project; remove that dependency or deploy the service"]


def test_excluded_services_env_files_are_neither_checked_nor_uploaded(tmp_path):
    text = BUILD_COMPOSE.replace("    depends_on: [web]\n", "    depends_on: [web]\n    env_file: proxy.env\n")
    config = configuration.load(_root(tmp_path, text, BUILD_ENV, files={}), "t", environ={})
    assert config.env_files == ()


# --- the colours share volumes on purpose: compose's warning about it is not shown ----------------------

@pytest.mark.parametrize("line, dropped", [
    # as compose prints it without a terminal (over SSH), and with one
    ('time="2024-01-02T00:00:00Z" level=warning msg="volume \\"shop_media\\" already exists but was created for '
     'project \\"shop-blue\\" (expected \\"shop-green\\"). Use `external: true` to use an existing volume"', True),
    ('WARN[0000] volume "shop_dbdata" already exists but was created for project "shop" (expected "shop-green")', True),
    ('WARN[0000] volume "x" already exists but was created for project "other" (expected "shop-green")', False),
    ('WARN[0000] volume "x" already exists but was created for project "shop-blue2" (expected "shop-green")', False),
    ("Error response from daemon: no such image", False),
])
def test_the_shared_volume_warning_of_our_own_projects_is_quiet(tmp_path, line, dropped):
    import re

    config = configuration.load(_root(tmp_path), "t", environ={})
    assert bool(re.search(compose.shared_volume_warning(config), line)) == dropped


def test_every_compose_command_of_a_deploy_drops_that_warning(tmp_path, first_state):
    config = configuration.load(_root(tmp_path), "t", environ={})
    plan = container_deploy(config, first_state, SHA, RELEASE)
    commands = [a for step in plan.steps for a in (*step.actions, *step.undo, *step.diagnose)
                if hasattr(a, "argv") and ("compose" in a.argv[:2] or "migration" in " ".join(a.argv))]
    assert commands and all(c.quiet == compose.shared_volume_warning(config) for c in commands)
