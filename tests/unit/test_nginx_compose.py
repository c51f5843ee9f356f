"""nginx site rendering and the compose overlay that makes blue/green work."""
from __future__ import annotations

import dataclasses
import io
import re
import subprocess

import pytest
import yaml
from conftest import container_deploy, GOOD_ENV, REPO, make_root
from dotenv import dotenv_values

from deploytasks import nginx
from deploytasks.backends import compose
from deploytasks import config as configuration
from deploytasks.layout import Layout

SHA = "0123456789abcdef0123456789abcdef01234567"


class _Loader(yaml.SafeLoader):
    pass


class Reset(list):
    pass


class Override(list):
    pass


_Loader.add_constructor("!reset", lambda loader, node: Reset(loader.construct_sequence(node)))
_Loader.add_constructor("!override", lambda loader, node: Override(loader.construct_sequence(node)))


def _local(local_raw, **changes):
    """envs/local.env with keys changed, parsed (and so checked) as a deploy would."""
    return configuration.parse(REPO, "local", dict(local_raw, **changes), {})


@pytest.fixture
def relayed_config(local_raw):
    """The local environment with its web service on a TCP port (WEB_PORT)."""
    return _local(local_raw, WEB_PORT="8000", WEB_HOST_PORTS="21000,21001")


def _overlay(config, colour="green", sha=SHA, release_dir="/srv/example/releases/r1"):
    text = compose.overlay(config, compose.model(config), Layout.of(config), release_dir, sha, colour)
    return text, yaml.load(text, Loader=_Loader)


# --- nginx ----------------------------------------------------------------------------------------

def test_render_replaces_placeholders_and_leaves_nginx_syntax_alone():
    template = "a {{x}} b {{ y }} ${{x}}_v $host ${var} {z} {{x}}"
    assert nginx.render(template, {"x": "one", "y": 2}) == "a one b 2 $one_v $host ${var} {z} one"


def test_render_unknown_placeholder_fails():
    with pytest.raises(KeyError, match="nope"):
        nginx.render("server {{nope}};", {"x": 1})


def test_site_of_the_local_env(local_config):
    site = nginx.site(local_config)
    assert "{{" not in site and "}}" not in site
    assert site.count("server unix:/srv/example/run/web.sock max_fails=0") == 2
    assert re.search(r"^\s*listen 8080 default_server;$", site, re.M), "SERVER_NAME=_ is the catch-all"
    assert "location = /version { proxy_pass http://example_web; }" in site, "deploys check it in maintenance too"
    assert "include /srv/example/nginx/site.d/*.conf;" in site
    assert "server_name _;" in site
    assert "if (-f /srv/example/state/maintenance)" in site
    assert "    10.99.0.0/16 1;\n" in site
    assert "geo $example_maintenance_allow {" in site
    assert "location = /healthz { proxy_pass http://example_web; }" in site
    assert "location = /readyz { proxy_pass http://example_web; }" in site
    assert "return 503 '<!doctype html>" in site, "the maintenance page is inlined for every method"
    assert f"add_header Retry-After {nginx.RETRY_AFTER_SECONDS} always;" in site


def test_site_allowlist_and_names_per_config(local_config):
    config = dataclasses.replace(local_config, app_name="my-shop", maintenance_allow=("10.1.0.0/16", "192.0.2.7"),
                                 server_name="shop.example.com www.shop.example.com", nginx_listen=443,
                                 deploy_path="/opt/shop")
    site = nginx.site(config)
    assert "    10.1.0.0/16 1;\n    192.0.2.7 1;\n}" in site
    assert "upstream my_shop_web {" in site and "$my_shop_maintenance_allow" in site  # nginx variables need _
    assert "listen 443;" in site and "server_name shop.example.com www.shop.example.com;" in site
    assert "unix:/opt/shop/run/web.sock" in site and "/opt/shop/state/maintenance" in site


def test_maintenance_page_is_quoted_for_nginx(local_config, tmp_path):
    (tmp_path / "nginx").mkdir()
    (tmp_path / "nginx" / "maintenance.html").write_text("it's $5 \\ back soon")
    site = nginx.site(dataclasses.replace(local_config, maintenance_page=configuration.template(tmp_path, "maintenance")))
    assert "return 503 'it\\'s ${example_dollar}5 \\\\ back soon';" in site
    assert 'geo $example_dollar {\n    default "$";' in site


def test_site_without_allowlist(local_config):
    site = nginx.site(dataclasses.replace(local_config, maintenance_allow=()))
    assert re.search(r"geo \$example_maintenance_allow \{\n    default 0;\n\n\}", site)


_RELAY_SERVER = re.compile(
    r"^server \{\n    listen unix:(?P<socket>\S+);\n(?P<body>.*?)^\}$", re.M | re.S)


def test_a_relayed_site_relays_each_colour_socket_to_its_port(relayed_config):
    site = nginx.site(relayed_config)
    assert "{{" not in site and "}}" not in site
    relays = [(m["socket"], re.search(r"proxy_pass (\S+);", m["body"])[1],
               re.search(r"add_header X-Deploy-Colour (\S+) always;", m["body"])[1])
              for m in _RELAY_SERVER.finditer(site)]
    assert relays == [("/srv/example/run/blue/web.relay.sock", "http://127.0.0.1:21000", "blue"),
                      ("/srv/example/run/green/web.relay.sock", "http://127.0.0.1:21001", "green")]
    for m in _RELAY_SERVER.finditer(site):  # what the site set is passed on as it came; WebSockets too
        for line in ("proxy_http_version 1.1;", "proxy_set_header Host $http_host;",
                     "proxy_set_header X-Forwarded-For $http_x_forwarded_for;",
                     "proxy_set_header Upgrade $http_upgrade;", "proxy_set_header Connection $http_connection;"):
            assert f"        {line}\n" in m["body"], line
    # the public server still reaches the live colour through the one live link, now to a relay
    assert site.count("server unix:/srv/example/run/web.sock max_fails=0") == 2
    assert site.index("listen unix:/srv/example/run/green/web.relay.sock") < site.index("listen 8080")
    assert nginx.relays(relayed_config) in site and nginx.COLOUR_HEADER == "X-Deploy-Colour"


def test_a_site_without_web_port_has_no_relay(local_config):
    site = nginx.site(local_config)
    assert nginx.relays(local_config) == "" and "listen unix:" not in site and "X-Deploy-Colour" not in site


def test_the_site_proxies_http_1_1_and_passes_websocket_upgrades(local_config):
    site = nginx.site(local_config)
    assert "map $http_upgrade $example_connection {\n    default upgrade;\n    ''      close;\n}" in site
    server = site[site.index("server {\n    listen 8080"):]
    for line in ("proxy_http_version 1.1;", "proxy_set_header Upgrade $http_upgrade;",
                 "proxy_set_header Connection $example_connection;"):
        assert f"\n    {line}\n" in server, line


def _check_locations(site: str) -> list[str]:
    return re.findall(r"^    location = (\S*) \{ proxy_pass http://example_web; \}$", site, re.M)


def test_check_locations_one_per_distinct_path(local_config):
    assert _check_locations(nginx.site(local_config)) == ["/healthz", "/readyz", "/version"]
    # READY_PATH defaults to HEALTH_PATH, VERSION_PATH to nothing: one location, never an empty one
    defaults = dataclasses.replace(local_config, ready_path=local_config.health_path, version_path="")
    assert _check_locations(nginx.site(defaults)) == ["/healthz"]
    shared = dataclasses.replace(local_config, health_path="/up", ready_path="/up", version_path="/v")
    assert _check_locations(nginx.site(shared)) == ["/up", "/v"]


def test_static_files_and_uploads_are_served_by_nginx(local_raw):
    config = _local(local_raw, STATIC_URL="/assets.v2/", STATIC_PATH="/app/static", MEDIA_URL="/media/",
                    MEDIA_PATH="/app/media")
    expected = (
        "    location ~ ^/assets\\.v2/(?<example_asset>.*)$ {\n"
        "        root /srv/example/run/static;\n"
        "        try_files /live/$example_asset /previous/$example_asset =404;\n"
        "    }\n"
        "    location ^~ /media/ {\n"
        "        alias /srv/example/shared/media/;\n"
        "    }")
    assert nginx.files(config) == expected and expected in nginx.site(config)
    # before the catch-all location, inside the public server
    site = nginx.site(config)
    assert site.index("listen 8080") < site.index("location ^~ /media/") < site.index("location / {")
    only_media = dataclasses.replace(config, static_url="", static_path="")
    assert nginx.files(only_media) == "    location ^~ /media/ {\n        alias /srv/example/shared/media/;\n    }"


def test_no_files_locations_without_static_or_media(local_config):
    assert nginx.files(local_config) == "" and "location ~" not in nginx.site(local_config)


def _own_template(tmp_path, text: str):
    (tmp_path / "nginx").mkdir(exist_ok=True)
    (tmp_path / "nginx" / "site.conf.template").write_text(text)
    return configuration.template(tmp_path, "site")


def test_template_problems_flags_an_own_template_without_relays(tmp_path, local_config, relayed_config):
    packaged = local_config.site_template.read_text()
    assert nginx.template_problems(relayed_config) == [], "the packaged template has every placeholder"
    path = _own_template(tmp_path, packaged.replace("{{relays}}", ""))
    assert nginx.template_problems(dataclasses.replace(relayed_config, site_template=path)) == [
        f"{path}: lacks {{{{relays}}}}, needed for this configuration (see the packaged site.conf.template)"]
    assert nginx.template_problems(dataclasses.replace(local_config, site_template=path)) == [], \
        "without WEB_PORT the template needs no relays"


def test_template_problems_flags_files_unknown_names_and_old_check_paths(tmp_path, local_config):
    packaged = local_config.site_template.read_text()
    path = _own_template(tmp_path, packaged.replace("{{files}}", "{{fils}}"))
    config = dataclasses.replace(local_config, site_template=path, static_url="/static/", static_path="/app/static")
    assert nginx.template_problems(config) == [
        f"{path}: unknown placeholder(s) fils",
        f"{path}: lacks {{{{files}}}}, needed for this configuration (see the packaged site.conf.template)"]
    # a template written before check_locations: right for three paths, a duplicate location for fewer
    old = packaged.replace("{{check_locations}}", "    location = {{health_path}} { proxy_pass http://{{var}}_web; }\n"
                           "    location = {{ready_path}} { proxy_pass http://{{var}}_web; }\n"
                           "    location = {{version_path}} { proxy_pass http://{{var}}_web; }")
    path = _own_template(tmp_path, old)
    assert nginx.template_problems(dataclasses.replace(local_config, site_template=path)) == []
    assert nginx.template_problems(dataclasses.replace(local_config, site_template=path, version_path="")) == [
        f"{path}: lacks {{{{check_locations}}}}, needed for this configuration (see the packaged site.conf.template)"]


def test_config_reports_what_an_own_template_lacks(tmp_path):
    root = make_root(tmp_path, {"t": GOOD_ENV + "WEB_PORT=8000\n"})
    packaged = (configuration.PACKAGED_TEMPLATES / configuration.TEMPLATES["site"]).read_text()
    path = _own_template(root, packaged.replace("{{relays}}", ""))
    with pytest.raises(configuration.ConfigError) as caught:
        configuration.load(root, "t", environ={})
    assert caught.value.details == [
        f"{path}: lacks {{{{relays}}}}, needed for this configuration (see the packaged site.conf.template)"]


def test_install_step_validates_before_reload(local_config):
    step = nginx.install_step(local_config, "/srv/example/releases/r1/nginx/site.conf")
    mkdir, rendered, install = step.actions
    assert mkdir.argv == ("mkdir", "-p", "/srv/example/nginx/site.d", "/var/log/nginx")
    assert step.undo[0].argv[3:] == ("sh", "/var/lib/deploytasks-testbed/nginx/conf.d/example.conf",
                                     "/var/lib/deploytasks-testbed/nginx/conf.d/.example.conf.previous",
                                     "/var/lib/deploytasks-testbed/nginx/nginx.conf")
    assert rendered.path == "/srv/example/releases/r1/nginx/site.conf"
    assert rendered.content.decode() == nginx.site(local_config)
    assert install.argv[:2] == ("sh", "-c") and install.argv[3:] == (
        "sh", "/srv/example/releases/r1/nginx/site.conf", "/var/lib/deploytasks-testbed/nginx/conf.d/example.conf",
        "/var/lib/deploytasks-testbed/nginx/conf.d/.example.conf.previous",
        "/var/lib/deploytasks-testbed/nginx/nginx.conf")
    script = install.argv[2]
    assert script.index("nginx -t") < script.index("nginx -s reload")



def test_a_relayed_site_removes_stale_relay_sockets_and_keeps_nginx_startable(relayed_config):
    """A killed nginx leaves its relay sockets behind; neither a reload nor a start may trip on them."""
    step = nginx.install_step(relayed_config, "/srv/example/releases/r1/nginx/site.conf")
    sockets = ("/srv/example/run/blue/web.relay.sock", "/srv/example/run/green/web.relay.sock")
    assert tuple(nginx.relay_sockets(relayed_config)) == sockets
    assert tuple(nginx.listened_sockets(nginx.site(relayed_config))) == sockets, "what the site listens on"
    stale, boot = step.actions[1:3]
    assert stale.argv[-2:] == sockets and "ss -Hxl" in stale.argv[2]
    assert boot.argv[3:] == ("sh", "/etc/systemd/system/nginx.service.d/deploytasks-srv-example.conf", *sockets)


def test_the_boot_drop_in_is_written_once_where_systemd_runs(tmp_path, relayed_config):
    """Run the drop-in script for real, with a stand-in for systemd's run directory and systemctl."""
    boot = nginx.install_step(relayed_config, "/x/site.conf").actions[2]
    systemd, bin_dir, dropin = tmp_path / "systemd", tmp_path / "bin", tmp_path / "nginx.service.d" / "a.conf"
    bin_dir.mkdir()
    (bin_dir / "systemctl").write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path}/systemctl.log\n")
    (bin_dir / "systemctl").chmod(0o755)
    script = boot.argv[2].replace("/run/systemd/system", str(systemd))
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}

    def run():
        return subprocess.run(["sh", "-c", script, "sh", str(dropin), "/s/blue.sock", "/s/green.sock"],
                              env=env, capture_output=True, text=True, check=True).stdout

    assert run() == "" and not dropin.exists(), "no systemd: nothing written"
    systemd.mkdir()
    assert "drop-in written" in run()
    assert dropin.read_text().splitlines()[-1] == "ExecStartPre=-/bin/rm -f /s/blue.sock /s/green.sock"
    assert run() == "", "unchanged: not rewritten, no daemon-reload"
    assert (tmp_path / "systemctl.log").read_text() == "daemon-reload\n"


def test_a_site_without_web_port_has_no_relay_sockets_to_clean(local_config):
    step = nginx.install_step(local_config, "/x/site.conf")
    assert nginx.relay_sockets(local_config) == [] and len(step.actions) == 3
    assert nginx.listened_sockets(nginx.site(local_config)) == []

# --- compose overlay --------------------------------------------------------------------------

def test_overlay_per_colour(local_config):
    for colour in ("blue", "green"):
        text, doc = _overlay(local_config, colour)
        assert text.startswith(f"# Rendered by deploytasks for example {SHA} ({colour})")
        web = doc["services"]["web"]
        assert web["image"] == f"127.0.0.1:5000/example/web:{SHA}"
        assert web["volumes"] == [f"/srv/example/run/{colour}:/run/deploytasks"]
        assert web["environment"]["DEPLOY_COLOUR"] == colour and web["environment"]["DEPLOY_SHA"] == SHA
        assert web["environment"]["DEPLOY_ENV"] == "local"
        assert web["environment"]["GUNICORN_CMD_ARGS"] == \
            "--bind=unix:/run/deploytasks/web.sock --graceful-timeout=10"
        assert web["environment"]["APP_SOCKET"] == "/run/deploytasks/web.sock"
        assert web["env_file"] == ["/srv/example/releases/r1/app.env"]
        assert web["labels"] == {"deploytasks.sha": SHA, "deploytasks.colour": colour}
        assert web["stop_grace_period"] == "15s"
        assert "db" not in doc["services"]  # stateful services are never part of a colour


def test_overlay_resets_published_ports(local_config):
    text, doc = _overlay(local_config)
    assert "ports: !reset []" in text
    assert isinstance(doc["services"]["web"]["ports"], Reset) and doc["services"]["web"]["ports"] == []


def test_a_relayed_web_service_publishes_its_colour_port_on_loopback(relayed_config):
    published = {}
    for colour in ("blue", "green"):
        text, doc = _overlay(relayed_config, colour)
        web = doc["services"]["web"]
        # instead of the team's ports, not merged with them: each colour on its own loopback port
        assert isinstance(web["ports"], Override) and "ports: !override" in text and "!reset" not in text
        published[colour] = web["ports"]
        assert web["environment"]["GUNICORN_CMD_ARGS"] == "--bind=0.0.0.0:8000 --graceful-timeout=10"
        assert web["volumes"] == [f"/srv/example/run/{colour}:/run/deploytasks"]
    assert published == {"blue": ["127.0.0.1:21000:8000"], "green": ["127.0.0.1:21001:8000"]}


def test_the_unix_socket_web_service_keeps_its_bind_and_resets_ports(local_config):
    text, doc = _overlay(local_config, "blue")
    assert "!override" not in text and isinstance(doc["services"]["web"]["ports"], Reset)
    assert doc["services"]["web"]["environment"]["GUNICORN_CMD_ARGS"].startswith("--bind=unix:/run/deploytasks/web.sock ")


def test_uploads_are_mounted_from_the_shared_media_directory(local_raw):
    config = _local(local_raw, MEDIA_URL="/media/", MEDIA_PATH="/app/media/")
    for colour in ("blue", "green"):
        _, doc = _overlay(config, colour)
        assert doc["services"]["web"]["volumes"] == [f"/srv/example/run/{colour}:/run/deploytasks",
                                                     "/srv/example/shared/media:/app/media"]
    _, doc = _overlay(_local(local_raw, STATIC_URL="/static/", STATIC_PATH="/app/static"))
    assert doc["services"]["web"]["volumes"] == ["/srv/example/run/green:/run/deploytasks"], "static files: copied"


COMPOSE_STATIC_VOLUME = """\
services:
  web:
    image: x
    volumes:
      - static:/app/static/
      - /srv/data:/data
      - {type: bind, source: /etc/shop, target: /etc/app}
  db:
    image: redis
volumes:
  static:
"""


@pytest.mark.parametrize("static_path", ["/app/static", "/app/static/"])
def test_a_team_volume_at_static_path_is_left_out_of_each_colour(tmp_path, static_path):
    """Each colour serves the static files of its own image: a volume both would share is dropped
    (the overlay's list replaces the team's), the team's other volumes kept."""
    env = GOOD_ENV + f"STATIC_URL=/static/\nSTATIC_PATH={static_path}\n"
    config = configuration.load(make_root(tmp_path, {"t": env}, compose=COMPOSE_STATIC_VOLUME), "t", environ={})
    text, doc = _overlay(config, "blue", release_dir="/srv/shop/releases/r1")
    volumes = doc["services"]["web"]["volumes"]
    assert isinstance(volumes, Override) and "volumes: !override" in text
    assert volumes == ["/srv/data:/data", {"type": "bind", "source": "/etc/shop", "target": "/etc/app"},
                       "/srv/shop/run/blue:/run/deploytasks"]


def test_team_volumes_are_merged_as_compose_does_without_static_url(tmp_path):
    config = configuration.load(make_root(tmp_path, {"t": GOOD_ENV}, compose=COMPOSE_STATIC_VOLUME), "t", environ={})
    text, doc = _overlay(config, "blue", release_dir="/srv/shop/releases/r1")
    assert "!override" not in text and doc["services"]["web"]["volumes"] == ["/srv/shop/run/blue:/run/deploytasks"]


def test_overlay_shares_network_and_volumes(local_config):
    _, doc = _overlay(local_config)
    assert doc["networks"] == {"default": {"name": "example_default", "external": True}}
    assert doc["volumes"] == {"dbdata": {"name": "example_dbdata"}}


COMPOSE_MORE = """\
services:
  web:
    image: x
    networks: [default, backend]
  worker:
    image: x
  db:
    image: redis
    networks: [backend]
    volumes: [dbdata:/data, media:/media, legacy:/legacy]
networks:
  backend:
  proxy:
    external: true
volumes:
  dbdata:
  media:
    name: acme-media
  legacy:
    external: true
"""


@pytest.fixture
def more_config(tmp_path):
    env = GOOD_ENV.replace("STATELESS_SERVICES=web", "STATELESS_SERVICES=web,worker") + "IMAGE_WORKER=ghcr.io/acme/w\n"
    root = make_root(tmp_path, {"t": env}, compose=COMPOSE_MORE)
    return configuration.load(root, "t", environ={})


def test_overlay_with_several_services_networks_and_volumes(more_config):
    text, doc = _overlay(more_config, "blue", release_dir="/srv/shop/releases/r1")
    assert set(doc["services"]) == {"web", "worker"}
    worker = doc["services"]["worker"]
    assert "ports" not in worker  # nothing to reset
    assert "GUNICORN_CMD_ARGS" not in worker["environment"] and "APP_SOCKET" not in worker["environment"]
    assert worker["image"] == f"ghcr.io/acme/w:{SHA}"
    assert worker["volumes"] == ["/srv/shop/run/blue:/run/deploytasks"]
    assert doc["networks"] == {"default": {"name": "shop_default", "external": True},
                               "backend": {"name": "shop_backend", "external": True}}
    # volumes the team named or made external keep their names
    assert doc["volumes"] == {"dbdata": {"name": "shop_dbdata"}}


def test_shared_networks_are_created_by_the_deploy(more_config, first_state):

    plan = container_deploy(more_config, first_state, "abc1234", "r1")
    networks = [s for s in plan.steps if s.name == "networks"][0]
    assert [a.argv[-1] for a in networks.actions] == ["shop_default", "shop_backend"]


def test_overlay_keeps_an_explicitly_named_network(tmp_path):
    compose_text = COMPOSE_MORE.replace("  backend:\n", "  backend:\n    name: acme-backend\n")
    env = GOOD_ENV.replace("STATELESS_SERVICES=web", "STATELESS_SERVICES=web,worker") + "IMAGE_WORKER=ghcr.io/acme/w\n"
    config = configuration.load(make_root(tmp_path, {"t": env}, compose=compose_text), "t", environ={})
    _, doc = _overlay(config)
    assert doc["networks"]["backend"]["name"] == "acme-backend"


def test_compose_command_and_project(local_config):
    argv = compose.command(local_config, "/r", "example-blue", "ps")
    assert argv == ("docker", "compose", "-p", "example-blue", "--env-file", "/r/compose.env",
                    "-f", "/r/compose/compose.yml", "-f", "/r/compose.deploy.yml", "ps")
    assert compose.project(local_config) == "example" and compose.project(local_config, "green") == "example-green"


def test_interpolation_env(local_config):
    assert compose.interpolation_env(local_config, "abc1234", "blue") == \
        "DEPLOY_SHA=abc1234\nDEPLOY_COLOUR=blue\nDEPLOY_ENV=local\nAPP_NAME=example\n"


def test_model_merges_files_in_order(tmp_path):
    root = make_root(tmp_path, {})
    (root / "compose" / "override.yml").write_text("services:\n  web:\n    image: other\n  extra:\nvolumes:\n  more:\n")
    config = configuration.load(make_root(root, {"t": GOOD_ENV.replace(
        "COMPOSE_FILES=compose/compose.yml", "COMPOSE_FILES=compose/compose.yml,compose/override.yml")
        .replace("STATEFUL_SERVICES=db", "STATEFUL_SERVICES=db,extra")}), "t", environ={})
    model = compose.model(config)
    assert model["services"]["web"]["image"] == "other" and "ports" in model["services"]["web"]
    assert set(model["volumes"]) == {"dbdata", "more"}
    assert compose.release_files_names(config) == ["compose/compose.yml", "compose/override.yml"]


# --- the app's env file ------------------------------------------------------------------------

ROUND_TRIP = ["plain", "", "with spaces  inside", "$HOME and ${HOME} and $$", "a # not a comment", "#start",
              'double "quotes"', "tab\there", "ünïcødé ✓", "=equals=", "trailing space ", "semi;colon|pipe&`bq`"]


@pytest.mark.parametrize("value", ROUND_TRIP)
def test_app_env_round_trips_through_dotenv(value):
    text = compose.app_env({"KEY": value})
    assert text.count("\n") == 1 and text.startswith("KEY=")
    # compose does not interpolate single-quoted env_file values; python-dotenv would unless told not to
    assert dotenv_values(stream=io.StringIO(text), interpolate=False) == {"KEY": value}


@pytest.mark.parametrize("value, line", [
    ("it's", '"it\'s"'),
    ("it's $5", '"it\'s $$5"'),
    ("it's \"x\" \\ y", '"it\'s \\"x\\" \\\\ y"'),
])
def test_app_env_values_with_single_quotes_are_double_quoted_with_dollars_doubled(value, line):
    assert compose.app_env({"K": value}) == f"K={line}\n"


def test_app_env_keeps_order_and_one_line_per_key():
    text = compose.app_env({"A": "1", "B": "x y", "C": "it's"})
    assert text.splitlines() == ["A='1'", "B='x y'", "C=\"it's\""]


def _compose_go_single_quoted(line: str) -> str | None:
    """compose-go's dotenv reader (extractVarValue) ends a single-quoted value at the first `'`
    that is NOT preceded by a backslash ("skip escaped quote symbol"); None: unterminated."""
    value = line.split("=", 1)[1].rstrip("\n")
    assert value.startswith("'")
    for i in range(1, len(value)):
        if value[i] == "'" and value[i - 1] != "\\":
            return value[1:i]
    return None


def test_app_env_single_quoted_values_as_compose_reads_them():
    for value in ROUND_TRIP:
        assert _compose_go_single_quoted(compose.app_env({"K": value})) == value


def test_app_env_value_ending_in_backslash():
    line = compose.app_env({"PASSWORD": "pa55\\"})
    if line.startswith("PASSWORD='"):
        assert _compose_go_single_quoted(line) == "pa55\\"
    else:  # double-quoted: backslash escaped
        assert line == 'PASSWORD="pa55\\\\"\n'


def test_a_team_volume_where_uploads_go_is_replaced_not_mounted_twice(tmp_path):
    """With the static volume dropped the overlay's list replaces the team's: their `media` volume at
    MEDIA_PATH must not stay beside shared/media there (two mounts at one path)."""
    compose = COMPOSE_STATIC_VOLUME.replace("      - /srv/data:/data\n", "      - /srv/data:/data\n      - media:/app/media\n")
    env = GOOD_ENV + "STATIC_URL=/static/\nSTATIC_PATH=/app/static\nMEDIA_URL=/media/\nMEDIA_PATH=/app/media\n"
    config = configuration.load(make_root(tmp_path, {"t": env}, compose=compose), "t", environ={})
    _, doc = _overlay(config, "blue", release_dir="/srv/shop/releases/r1")
    volumes = doc["services"]["web"]["volumes"]
    targets = [v["target"] if isinstance(v, dict) else v.split(":")[1] for v in volumes]
    assert sorted(targets) == sorted(set(targets)) and "/srv/shop/shared/media:/app/media" in volumes
    assert "media:/app/media" not in volumes
