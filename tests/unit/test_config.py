"""config: env files are validated as a whole, by key, before anything connects."""
from __future__ import annotations

import dataclasses
import zlib
from pathlib import Path

import pytest
from conftest import GOOD_ENV, REPO, make_root, raw_of, replace_keys as _replace

from deploytasks import config as configuration
from deploytasks.errors import ConfigError, DeployError



def _problems(root, env="t", environ=None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        configuration.load(root, env, environ=environ or {})
    return caught.value.details


# --- the repo's own environment ---------------------------------------------------------------

def test_local_env_loads(local_config):
    c = local_config
    assert c.env == "local"
    assert c.app_name == "example"
    assert c.hosts == ("127.0.0.1",)
    assert c.ssh_port == 2222 and isinstance(c.ssh_port, int)
    assert c.deploy_path == "/srv/example"
    assert c.compose_files == (REPO / "compose" / "compose.yml",)
    assert c.stateless == ("web",) and c.stateful == ("db",) and c.web_service == "web"
    assert c.images == {"web": "127.0.0.1:5000/example/web"}
    assert c.nginx_listen == 8080
    assert c.health_interval == 0.5 and c.drain_timeout == 10
    assert c.migrate_command == ("python3", "/app/app.py", "migrate")
    assert c.maintenance_allow == ("10.99.0.0/16",)
    assert c.app_env["SECRET_KEY"] == "local-testbed-not-a-secret"
    assert c.mode == "containers"


def test_config_is_frozen_and_repr_hides_app_env(local_config):
    with pytest.raises(dataclasses.FrozenInstanceError):
        local_config.app_name = "other"
    assert "local-testbed-not-a-secret" not in repr(local_config)


def test_defaults_apply(tmp_path):
    root = make_root(tmp_path, {"t": "APP_NAME=shop\nHOSTS=h1\nSTATELESS_SERVICES=web\nSTATEFUL_SERVICES=db\n"
                                     "IMAGE_WEB=ghcr.io/acme/web\n"})
    c = configuration.load(root, "t", environ={})
    assert c.deploy_path == "/srv/shop"
    assert c.ssh_port == 22 and c.ssh_user == "root"
    assert c.nginx_listen == 80 and c.server_name == "_"
    # one health URL is enough: readiness asks it too, and the check after the switch needs no version URL
    assert (c.health_path, c.ready_path, c.version_path) == ("/healthz", "/healthz", "")
    assert c.check_paths == ("/healthz",)
    assert c.web_port is None and not c.relayed, "the app listens on its colour's unix socket"
    assert (c.static_url, c.static_path, c.media_url, c.media_path) == ("", "", "", "")
    assert c.keep_releases == 5
    assert c.migrate_command == ()
    assert c.app_env == {}


def test_missing_env_file_is_a_config_error(tmp_path):
    root = make_root(tmp_path, {})
    with pytest.raises(ConfigError, match="not found"):
        configuration.load(root, "nope", environ={})


# --- every problem at once -----------------------------------------------------------------

def test_several_problems_are_reported_together_by_key(tmp_path):
    text = _replace(GOOD_ENV, HOSTS=None, SSH_PORT="99999", STATELESS_SERVICES="web,worker",
                    IMAGE_WEB="GHCR.io/Acme/Web:latest", FAVOURITE_COLOUR="blue", CONNECT_TIMEOUT="abc")
    root = make_root(tmp_path, {"t": text})
    with pytest.raises(ConfigError) as caught:
        configuration.load(root, "t", environ={})
    error = caught.value
    message = str(error)
    problems = error.details
    by_key = {p.split(":", 1)[0] for p in problems}
    assert {"HOSTS", "SSH_PORT", "STATELESS_SERVICES", "IMAGE_WEB", "IMAGE_WORKER", "FAVOURITE_COLOUR",
            "CONNECT_TIMEOUT"} <= by_key
    assert "HOSTS: missing (required)" in problems
    assert "SSH_PORT: 99999 is out of range 1..65535" in problems
    assert "CONNECT_TIMEOUT: 'abc' is not a number" in problems
    assert "FAVOURITE_COLOUR: unknown key" in problems
    assert any(p.startswith("STATELESS_SERVICES: unknown service 'worker'") for p in problems)
    assert any(p.startswith("IMAGE_WEB: 'GHCR.io/Acme/Web:latest' is not an image name") for p in problems)
    # one error, whose text names the file and lists every problem on its own line
    assert message.startswith(f"envs/t.env: {len(problems)} problem(s):")
    for problem in problems:
        assert f"\n  - {problem}" in message


@pytest.mark.parametrize("value, expected", [
    ("abc", "SSH_PORT: 'abc' is not a whole number"),
    ("99999", "SSH_PORT: 99999 is out of range 1..65535"),
    ("0", "SSH_PORT: 0 is out of range 1..65535"),
    ("22.5", "SSH_PORT: '22.5' is not a whole number"),
])
def test_ssh_port_must_be_a_port(tmp_path, value, expected):
    root = make_root(tmp_path, {"t": _replace(GOOD_ENV, SSH_PORT=value)})
    assert _problems(root) == [expected]


def test_unknown_stateless_service_names_what_compose_defines(tmp_path):
    root = make_root(tmp_path, {"t": _replace(GOOD_ENV, STATELESS_SERVICES="api", IMAGE_WEB=None,
                                              IMAGE_API="ghcr.io/acme/api")})
    problems = _problems(root)
    assert "STATELESS_SERVICES: unknown service 'api' (compose defines db, web)" in problems
    # web is then neither stateless nor stateful
    assert "STATEFUL_SERVICES: compose service 'web' is neither stateless nor stateful (nor in EXCLUDE_SERVICES)" in problems


def test_unreadable_compose_file_is_a_problem(tmp_path):
    root = make_root(tmp_path, {"t": _replace(GOOD_ENV, COMPOSE_FILES="compose/missing.yml")})
    problems = _problems(root)
    assert len(problems) == 1 and problems[0].startswith("COMPOSE_FILES: cannot read")


@pytest.mark.parametrize("image", ["ghcr.io/acme/web:v1", "Web", "ghcr.io/acme/web@sha256:abc", "a//b",
                                   "localhost:5000", "web;id"])
def test_image_values_must_be_lowercase_names_without_tag(tmp_path, image):
    root = make_root(tmp_path, {"t": _replace(GOOD_ENV, IMAGE_WEB=f'"{image}"')})
    assert _problems(root) == [f"IMAGE_WEB: {image!r} is not an image name without tag"]


def test_image_with_registry_port_is_accepted(tmp_path):
    root = make_root(tmp_path, {"t": _replace(GOOD_ENV, IMAGE_WEB="127.0.0.1:5000/acme/web")})
    assert configuration.load(root, "t", environ={}).images == {"web": "127.0.0.1:5000/acme/web"}


def test_missing_image_and_image_for_unknown_service(tmp_path):
    root = make_root(tmp_path, {"t": _replace(GOOD_ENV, IMAGE_WEB=None, IMAGE_WORKER="ghcr.io/acme/w")})
    problems = _problems(root)
    assert any(p.startswith("IMAGE_WEB: missing") for p in problems)
    assert "IMAGE_WORKER: no stateless service of that name" in problems


def test_web_service_must_be_stateless_and_stateful_disjoint(tmp_path):
    root = make_root(tmp_path, {"t": _replace(GOOD_ENV, WEB_SERVICE="db", STATEFUL_SERVICES="db,web")})
    problems = _problems(root)
    assert "WEB_SERVICE: 'db' must be one of STATELESS_SERVICES" in problems
    assert "STATEFUL_SERVICES: web cannot also be stateless" in problems


@pytest.mark.parametrize("key, value, low, high", [
    ("KEEP_RELEASES", "1", 2, 100),
    ("NGINX_LISTEN", "70000", 1, 65535),
    ("HEALTH_INTERVAL", "0.01", 0.1, 60),
    ("CONNECT_TIMEOUT", "nan", 1, 300),
])
def test_numbers_out_of_range(tmp_path, key, value, low, high):
    root = make_root(tmp_path, {"t": _replace(GOOD_ENV, **{key: value})})
    assert _problems(root) == [f"{key}: {value} is out of range {low}..{high}"]


def test_mode_must_be_known(tmp_path):
    root = make_root(tmp_path, {"t": _replace(GOOD_ENV, MODE="vms")})
    assert "MODE: 'vms' must be one of containers, processes" in _problems(root)


def test_unsplittable_migrate_command(tmp_path):
    root = make_root(tmp_path, {"t": _replace(GOOD_ENV, MIGRATE_COMMAND="\"python3 -c 'x\"")})
    problems = _problems(root)
    assert len(problems) == 1 and problems[0].startswith("MIGRATE_COMMAND: cannot be split")


def test_empty_required_list(tmp_path):
    root = make_root(tmp_path, {"t": _replace(GOOD_ENV, HOSTS=",,")})
    assert _problems(root) == ["HOSTS: empty (required)"]


# --- hostile values ----------------------------------------------------------------------

HOSTILE = ["/srv/x; rm -rf /", "/srv/$(id)", "/srv/my app", "/srv/a\nb", "/srv/`id`", "srv/relative", "/srv/x|y"]


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_deploy_path_is_rejected(value):
    raw = raw_of(GOOD_ENV)
    raw["DEPLOY_PATH"] = value
    with pytest.raises(ConfigError) as caught:
        configuration.parse(REPO, "t", raw, {})
    assert any(p.startswith("DEPLOY_PATH:") for p in caught.value.details), caught.value.details


@pytest.mark.parametrize("value", ["h1;reboot", "$(id)", "h1 h2", "h1\nh2", "-oProxyCommand=sh", "h1`id`", "h1&"])
def test_hostile_hosts_are_rejected(value):
    raw = raw_of(GOOD_ENV)
    raw["HOSTS"] = f"ok.example.com,{value}"
    with pytest.raises(ConfigError) as caught:
        configuration.parse(REPO, "t", raw, {})
    assert any(p.startswith("HOSTS:") for p in caught.value.details), caught.value.details


@pytest.mark.parametrize("value", ["shop;id", "$(id)", "my shop", "shop\nx", "Shop", "-shop", "shop_1", "1shop"])
def test_hostile_app_name_is_rejected(value):
    raw = raw_of(GOOD_ENV)
    raw["APP_NAME"] = value
    with pytest.raises(ConfigError) as caught:
        configuration.parse(REPO, "t", raw, {})
    assert any(p.startswith("APP_NAME:") for p in caught.value.details), caught.value.details


def test_hostile_values_in_an_env_file_are_rejected_too(tmp_path):
    text = _replace(GOOD_ENV, DEPLOY_PATH='"/srv/x\\n/etc"', HOSTS='"a.example.com; id"', APP_NAME='"$(id)"')
    root = make_root(tmp_path, {"t": text})
    keys = {p.split(":", 1)[0] for p in _problems(root)}
    assert {"DEPLOY_PATH", "HOSTS", "APP_NAME"} <= keys


@pytest.mark.parametrize("key, value", [
    ("SSH_USER", "-oProxyCommand=x"), ("SERVER_NAME", "a.com; include /etc/passwd"),
    ("NGINX_SITE_DIR", "/etc/nginx/conf.d; id"), ("HEALTH_PATH", "/health z"), ("MAINTENANCE_ALLOW", "all; deny"),
])
def test_other_values_reaching_commands_or_nginx_are_checked(key, value):
    raw = raw_of(GOOD_ENV)
    raw[key] = value
    with pytest.raises(ConfigError) as caught:
        configuration.parse(REPO, "t", raw, {})
    assert any(p.startswith(f"{key}:") for p in caught.value.details), caught.value.details


@pytest.mark.parametrize("outside", ["absolute", "dotdot"])
def test_compose_files_outside_the_root_are_a_config_problem(tmp_path, outside):
    root = make_root(tmp_path / "root", {})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "compose.yml").write_text((root / "compose" / "compose.yml").read_text())
    value = str(elsewhere / "compose.yml") if outside == "absolute" else "../elsewhere/compose.yml"
    (root / "envs" / "t.env").write_text(_replace(GOOD_ENV, COMPOSE_FILES=value))
    problems = _problems(root)
    assert any(p.startswith("COMPOSE_FILES:") for p in problems)


# --- select_env ---------------------------------------------------------------------------

@pytest.fixture
def two_env_root(tmp_path):
    return make_root(tmp_path, {
        "staging": "HOSTS=s1.example.com,shared.example.com\n",
        "production": "HOSTS=p1.example.com, p2.example.com,shared.example.com\n",
    })


def test_select_env_by_flag(two_env_root):
    assert configuration.select_env(two_env_root, "staging") == "staging"


def test_select_env_unknown_lists_the_available(two_env_root):
    with pytest.raises(ConfigError, match=r"unknown environment 'prod': expected one of production, staging"):
        configuration.select_env(two_env_root, "prod")


@pytest.mark.parametrize("name", ["../staging", "Staging", "staging/../staging", "staging.env"])
def test_select_env_rejects_names_that_are_not_names(two_env_root, name):
    with pytest.raises(ConfigError, match="unknown environment"):
        configuration.select_env(two_env_root, name)


def test_select_env_from_deploy_env(two_env_root, monkeypatch):
    monkeypatch.setenv("DEPLOY_ENV", "production")
    assert configuration.select_env(two_env_root, None) == "production"
    assert configuration.select_env(two_env_root, None, host="s1.example.com") == "production"
    assert configuration.select_env(two_env_root, "staging") == "staging"  # the flag wins


def test_select_env_by_host(two_env_root):
    assert configuration.select_env(two_env_root, None, host="s1.example.com") == "staging"
    assert configuration.select_env(two_env_root, None, host="p2.example.com") == "production"


def test_select_env_by_host_ambiguous(two_env_root):
    with pytest.raises(ConfigError, match=r"exactly one environment \(several: production, staging\)"):
        configuration.select_env(two_env_root, None, host="shared.example.com")


def test_select_env_by_host_no_match(two_env_root):
    with pytest.raises(ConfigError, match=r"exactly one environment \(none\)"):
        configuration.select_env(two_env_root, None, host="s1")  # no partial matches


def test_select_env_needs_something(two_env_root):
    with pytest.raises(ConfigError, match="no environment selected"):
        configuration.select_env(two_env_root, None)


def test_available_envs_ignores_examples():
    assert "local" in configuration.available_envs(REPO)
    assert not any(name.endswith(".example") for name in configuration.available_envs(REPO))


# --- app env and secrets ---------------------------------------------------------------------

def test_secrets_are_the_values_of_secret_looking_keys(tmp_path):
    (tmp_path / "app.env").write_text("SECRET_KEY=sk-123\nDB_PASSWORD=pw-456\nAPI_TOKEN=tok-789\n"
                                      "DEBUG=false\nBOOT_SECONDS=2\nEMPTY_PASSWORD=\n")
    root = make_root(tmp_path, {"t": _replace(GOOD_ENV, APP_ENV_FILE="app.env")})
    c = configuration.load(root, "t", environ={})
    assert sorted(c.secrets()) == ["pw-456", "sk-123", "tok-789"]
    assert c.app_env["DEBUG"] == "false" and c.app_env["EMPTY_PASSWORD"] == ""


def test_passthrough_reads_named_process_variables(tmp_path):
    root = make_root(tmp_path, {"t": _replace(GOOD_ENV, APP_ENV_PASSTHROUGH="DB_PASSWORD, SENTRY_DSN")})
    c = configuration.load(root, "t", environ={"DB_PASSWORD": "hunter2", "SENTRY_DSN": "https://x@y/1", "OTHER": "no"})
    assert c.app_env == {"DB_PASSWORD": "hunter2", "SENTRY_DSN": "https://x@y/1"}
    assert c.secrets() == ["hunter2", "https://x@y/1"], "a DSN is a credential"


def test_passwords_inside_urls_are_secrets(tmp_path):
    root = make_root(tmp_path, {"t": _replace(GOOD_ENV, APP_ENV_PASSTHROUGH="DATABASE_URL,HOMEPAGE")})
    c = configuration.load(root, "t", environ={"DATABASE_URL": "postgres://app:s3cr3t@db:5432/app",
                                               "HOMEPAGE": "https://example.com/about"})
    assert c.secrets() == ["s3cr3t"]


def test_passthrough_reports_every_missing_variable(tmp_path):
    root = make_root(tmp_path, {"t": _replace(GOOD_ENV, APP_ENV_PASSTHROUGH="DB_PASSWORD,SENTRY_DSN,PRESENT")})
    problems = _problems(root, environ={"PRESENT": "1"})
    assert problems == ["APP_ENV_PASSTHROUGH: DB_PASSWORD is not set in the environment",
                        "APP_ENV_PASSTHROUGH: SENTRY_DSN is not set in the environment"]


def test_passthrough_names_must_be_variable_names_and_single_line(tmp_path):
    root = make_root(tmp_path, {"t": _replace(GOOD_ENV, APP_ENV_PASSTHROUGH="BAD-NAME,MULTI")})
    problems = _problems(root, environ={"BAD-NAME": "x", "MULTI": "a\nb"})
    assert "APP_ENV_FILE: 'BAD-NAME' is not a variable name" in problems
    assert "APP_ENV_FILE: MULTI spans several lines (not supported by compose env files)" in problems


def test_missing_app_env_file(tmp_path):
    root = make_root(tmp_path, {"t": _replace(GOOD_ENV, APP_ENV_FILE="nope.app.env")})
    assert _problems(root) == ["APP_ENV_FILE: nope.app.env not found"]


def test_config_error_is_a_deploy_error_with_details():
    error = ConfigError("head", ["a", "b"])
    assert isinstance(error, DeployError)
    assert str(error) == "head:\n  - a\n  - b"
    assert str(ConfigError("alone")) == "alone"


@pytest.mark.parametrize("value", ["/", "//", "/srv/.."])
def test_deploy_path_must_be_a_real_directory_below_root(value):
    raw = raw_of(GOOD_ENV)
    raw["DEPLOY_PATH"] = value
    with pytest.raises(ConfigError) as caught:
        configuration.parse(REPO, "t", raw, {})
    assert any(p.startswith("DEPLOY_PATH:") for p in caught.value.details)


def test_an_empty_required_key_is_one_problem(tmp_path):
    root = make_root(tmp_path, {"t": _replace(GOOD_ENV, HOSTS="")})
    assert _problems(root) == ["HOSTS: missing (required)"]


# --- health paths, relayed apps (WEB_PORT), static files and uploads ------------------------------

def _load(tmp_path, **changes):
    return configuration.load(make_root(tmp_path, {"t": _replace(GOOD_ENV, **changes)}), "t", environ={})


def _problems_with(tmp_path, **changes) -> list[str]:
    return _problems(make_root(tmp_path, {"t": _replace(GOOD_ENV, **changes)}))


def test_ready_path_defaults_to_the_health_path(tmp_path):
    c = _load(tmp_path, HEALTH_PATH="/up")
    assert (c.health_path, c.ready_path, c.version_path) == ("/up", "/up", "")
    assert c.check_paths == ("/up",)


def test_check_paths_are_the_distinct_paths_set_in_order(tmp_path):
    """Paths may now be shared (one URL for all three is the default): no longer a problem."""
    c = _load(tmp_path, HEALTH_PATH="/up", READY_PATH="/up", VERSION_PATH="/v")
    assert (c.ready_path, c.version_path) == ("/up", "/v") and c.check_paths == ("/up", "/v")
    c = _load(tmp_path, READY_PATH="/ready", VERSION_PATH="/version")
    assert c.check_paths == ("/healthz", "/ready", "/version")


def test_web_host_ports_default_from_the_app_name(tmp_path):
    c = _load(tmp_path)
    base = 20000 + 2 * (zlib.crc32(b"shop") % 5000)  # stable across versions: hosts keep their ports
    assert c.web_host_ports == (base, base + 1) and base % 2 == 0 and 20000 <= base < base + 1 <= 29999
    assert (c.port("blue"), c.port("green")) == (base, base + 1)
    blog = 20000 + 2 * (zlib.crc32(b"blog") % 5000)
    assert _load(tmp_path, APP_NAME="blog").web_host_ports == (blog, blog + 1) != c.web_host_ports


def test_web_port_makes_the_app_relayed_on_its_host_ports(tmp_path):
    c = _load(tmp_path, WEB_PORT="8000", WEB_HOST_PORTS="21000,21001")
    assert c.web_port == 8000 and c.relayed
    assert c.web_host_ports == (21000, 21001) and (c.port("blue"), c.port("green")) == (21000, 21001)


@pytest.mark.parametrize("value", ["21000", "21000,21000", "80,81", "21000,70000", "21000,21001,21002"])
def test_web_host_ports_must_be_two_different_unprivileged_ports(tmp_path, value):
    assert _problems_with(tmp_path, WEB_HOST_PORTS=value) == [
        f"WEB_HOST_PORTS: {value!r} must be two different ports in 1024..65535 (blue's, then green's)"]


def test_static_files_and_uploads_are_read(tmp_path):
    c = _load(tmp_path, STATIC_URL="/static/", STATIC_PATH="/app/static/", MEDIA_URL="/media/",
              MEDIA_PATH="/app/media")
    assert (c.static_url, c.static_path, c.media_url, c.media_path) == ("/static/", "/app/static/", "/media/",
                                                                        "/app/media")


@pytest.mark.parametrize("kind", ["STATIC", "MEDIA"])
@pytest.mark.parametrize("only", ["URL", "PATH"])
def test_files_url_and_path_come_together(tmp_path, kind, only):
    value = {"URL": f"/{kind.lower()}/", "PATH": "/app/files"}[only]
    assert _problems_with(tmp_path, **{f"{kind}_{only}": value}) == [f"{kind}_URL, {kind}_PATH: set both or neither"]


@pytest.mark.parametrize("url", ["/static", "/"])
def test_files_url_is_a_prefix_ending_in_a_slash(tmp_path, url):
    assert _problems_with(tmp_path, STATIC_URL=url, STATIC_PATH="/app/static") == [
        f"STATIC_URL: {url!r} must be a prefix ending in '/', not '/' itself"]


def test_files_url_is_not_a_check_path(tmp_path):
    assert _problems_with(tmp_path, HEALTH_PATH="/up/", MEDIA_URL="/up/", MEDIA_PATH="/app/media") == [
        "MEDIA_URL: '/up/' is also one of HEALTH_PATH, READY_PATH, VERSION_PATH"]


@pytest.mark.parametrize("path", ["static", "/app/../etc", "/app/static; id"])
def test_files_path_of_containers_is_absolute_in_the_image(tmp_path, path):
    assert _problems_with(tmp_path, STATIC_URL="/static/", STATIC_PATH=path) == [
        f"STATIC_PATH: {path!r} is not an absolute path inside the web image"]


def test_static_and_media_urls_differ(tmp_path):
    assert _problems_with(tmp_path, STATIC_URL="/files/", STATIC_PATH="/app/static", MEDIA_URL="/files/",
                          MEDIA_PATH="/app/media") == ["MEDIA_URL: must differ from STATIC_URL"]


def _process_env(repo, **changes) -> str:
    return _replace(f"APP_NAME=shop\nMODE=processes\nHOSTS=h1\nSOURCE_REPO={repo}\n", **changes)


def test_web_port_is_for_containers(tmp_path, process_repo):
    root = make_root(tmp_path, {"t": _process_env(process_repo[0], WEB_PORT="8000")})
    assert _problems(root) == ["WEB_PORT: for containers; a process server on a port is LISTEN=port (it gets $PORT)"]


def test_listen_on_a_port_needs_a_start_command(tmp_path, process_repo):
    root = make_root(tmp_path, {"t": _process_env(process_repo[0], LISTEN="port")})
    assert _problems(root) == ["LISTEN: port needs START_COMMAND (gunicorn of APP_MODULE listens on its socket)"]
    (root / "envs" / "t.env").write_text(_process_env(process_repo[0], LISTEN="port", START_COMMAND="node server.js"))
    c = configuration.load(root, "t", environ={})
    assert c.relayed and c.processes.listen == "port" and c.processes.start_command == ("node", "server.js")
    assert c.web_port is None


@pytest.mark.parametrize("path", ["/srv/app/static", "../static", "static/../.."])
def test_files_path_of_processes_is_relative_in_the_release(tmp_path, process_repo, path):
    root = make_root(tmp_path, {"t": _process_env(process_repo[0], STATIC_URL="/static/", STATIC_PATH=path)})
    assert _problems(root) == [f"STATIC_PATH: {path!r} is not a path in the release"]


# --- hooks and the webhook ---------------------------------------------------------------------

WEBHOOK = "https://hooks.slack.com/services/T000/B000/XXXXsecretXXXX"


def test_hooks_dir_is_in_the_repository_unless_absolute(tmp_path):
    root = make_root(tmp_path, {"t": GOOD_ENV, "abs": _replace(GOOD_ENV, HOOKS_DIR="/opt/hooks", HOOK_TIMEOUT="30",
                                                             HOOKS_PER_HOST="post-switch, deploy-failed")})
    default = configuration.load(root, "t", environ={})
    assert (default.hooks_dir, default.hooks_per_host, default.hook_timeout) == (root / ".deploytasks/hooks", (), 300)
    absolute = configuration.load(root, "abs", environ={})
    assert absolute.hooks_dir == Path("/opt/hooks") and absolute.hook_timeout == 30
    assert absolute.hooks_per_host == ("post-switch", "deploy-failed")


def test_hooks_per_host_names_only_hooks(tmp_path):
    root = make_root(tmp_path, {"t": _replace(GOOD_ENV, HOOKS_PER_HOST="post-switch,post_deploy")})
    assert _problems(root) == ["HOOKS_PER_HOST: 'post_deploy' not hook names (pre-deploy, post-switch, post-deploy, "
                               "deploy-failed)"]


def test_the_webhook_url_is_a_secret_and_so_is_its_path(tmp_path):
    root = make_root(tmp_path, {"t": _replace(GOOD_ENV, WEBHOOK_URL=WEBHOOK)})
    c = configuration.load(root, "t", environ={})
    assert c.webhook_url == WEBHOOK and WEBHOOK not in repr(c)
    assert c.secrets() == [WEBHOOK, "/services/T000/B000/XXXXsecretXXXX"]
    assert configuration.webhook_secrets("http://127.0.0.1:9/") == ["http://127.0.0.1:9/"], "no path worth masking"


def test_the_webhook_url_can_come_from_the_process_environment(tmp_path, monkeypatch):
    root = make_root(tmp_path, {"t": _replace(GOOD_ENV, WEBHOOK_URL="${CI_SLACK_WEBHOOK}")})
    monkeypatch.setenv("CI_SLACK_WEBHOOK", WEBHOOK)
    assert configuration.load(root, "t", environ={}).webhook_url == WEBHOOK


def test_a_malformed_webhook_url_is_refused_without_showing_it(tmp_path):
    root = make_root(tmp_path, {"t": _replace(GOOD_ENV, WEBHOOK_URL="hooks.slack.com/services/T/B/XXXXsecret")})
    problems = _problems(root)
    assert problems == ["WEBHOOK_URL: not an http:// or https:// URL (the value is a secret: not shown)"]
    assert "XXXXsecret" not in " ".join(problems)
