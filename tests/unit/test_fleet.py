"""The fleet testbed's pure parts: names, addresses, the mount script, configs (no namespace made)."""
from __future__ import annotations

from pathlib import Path

import pytest
from conftest import REPO
from invoke import Context, Exit

import tasks as repo_tasks
from deploytasks import config as configuration
from harness import fleet, testbed


def test_hosts_are_named_and_addressed_by_index():
    h = fleet.host(3)
    assert (h.name, h.netns, h.address, h.veth) == ("h3", "dt-h3", "10.77.0.13", "dt-h3-veth")
    assert len(h.veth) <= 15  # IFNAMSIZ
    assert h.netns_path == Path("/run/netns/dt-h3")
    assert h.mnt_path == Path("/run/dt-fleet/mnt/h3")
    assert h.part("dockerd") == "fleet-h3-dockerd"
    assert h.enter("docker", "info") == ["nsenter", "--net=/run/netns/dt-h3", "--mount=/run/dt-fleet/mnt/h3",
                                         "--", "docker", "info"]
    with pytest.raises(testbed.TestbedError):
        fleet.host(5)


def test_paths_inside_a_host_map_to_its_own_directories():
    h = fleet.host(2)
    assert h.path("/srv/example/current") == fleet.FLEET_DIR / "h2/srv/example/current"
    assert h.path(str(testbed.NGINX_CONF)) == fleet.FLEET_DIR / "h2/nginx/nginx.conf"
    assert h.path(str(testbed.NGINX_SITE_DIR)) == fleet.FLEET_DIR / "h2/nginx/conf.d"
    assert h.path("/var/lib/docker") == fleet.FLEET_DIR / "h2/docker"
    with pytest.raises(ValueError):
        h.path("/srvx")
    with pytest.raises(ValueError):
        h.path("/etc/passwd")


def test_mount_script_binds_the_hosts_directories_and_a_fresh_run():
    script = fleet.mount_script(fleet.host(1))
    lines = script.splitlines()
    assert lines[0] == "set -eu"
    for inside, sub in fleet.BINDS.items():
        assert f"mount --bind {fleet.FLEET_DIR}/h1/{sub} {inside}" in lines
    assert "mount -t tmpfs -o mode=0755,nosuid,nodev dt-fleet-run /run" in lines
    # the copies of this side's mounts under the owned paths are dropped before binding over them
    drop = next(ln for ln in lines if "umount -l" in ln)
    assert "^(/run|/srv|/tmp|/var/lib/deploytasks-testbed/nginx|/var/lib/docker|/var/log/nginx)(/|$)" in drop
    assert lines.index(drop) < min(i for i, ln in enumerate(lines) if ln.startswith("mount "))
    assert lines[-1] == f"echo h1 > {fleet.HOST_MARKER}"


def test_each_host_sshd_listens_on_its_own_address_with_its_own_key():
    config = fleet.sshd_config(fleet.host(2))
    assert "ListenAddress 10.77.0.12\nPort 22\n" in config
    assert f"HostKey {fleet.FLEET_DIR}/h2/ssh/ssh_host_ed25519_key\n" in config
    assert "PidFile /run/sshd.pid\n" in config
    assert f"AuthorizedKeysFile {testbed.AUTHORIZED_KEYS}\n" in config
    # the single host's config is unchanged by the parameters (its sshd is not restarted)
    assert testbed._sshd_config().startswith(
        f"# deploytasks testbed sshd: root by key only, on loopback\nListenAddress 127.0.0.1\nPort 2222\n"
        f"HostKey {testbed.SSH_HOST_KEY}\nPidFile {testbed.SSH_DIR / 'sshd.pid'}\n")


def test_known_hosts_lists_each_address_without_port_brackets():
    text = fleet.known_hosts_text({"10.77.0.12": "ssh-ed25519 BBB", "10.77.0.11": "ssh-ed25519 AAA"})
    assert text == "10.77.0.11 ssh-ed25519 AAA\n10.77.0.12 ssh-ed25519 BBB\n"


def test_the_fleet_registry_serves_the_single_hosts_storage_on_the_bridge():
    config = fleet.registry_config()
    assert "  addr: 10.77.0.1:5000\n" in config
    assert config.replace("10.77.0.1:5000", testbed.REGISTRY) == testbed._registry_config()


def test_load_balancer_config_lists_the_hosts():
    config = fleet.lb_config([fleet.host(1), fleet.host(2)])
    assert "server 10.77.0.11:8080 " in config and "server 10.77.0.12:8080 " in config
    assert "10.77.0.13" not in config
    assert "listen 127.0.0.1:8090;" in config
    assert f"pid {fleet.LB_PID};" in config


def test_the_fleet_env_file_loads_with_the_fleets_hosts():
    config = configuration.load(REPO, "fleet")
    local = configuration.load(REPO, "local")
    assert config.hosts == ("10.77.0.11", "10.77.0.12", "10.77.0.13")
    assert config.hosts == tuple(fleet.host(i).address for i in (1, 2, 3))
    assert config.ssh_port == 22
    assert config.known_hosts == str(fleet.KNOWN_HOSTS)
    # each host's own /srv and nginx directory: the same paths as the single host's
    assert (config.deploy_path, config.nginx_conf, config.nginx_site_dir) == \
        (local.deploy_path, local.nginx_conf, local.nginx_site_dir)


def test_hosts_is_empty_without_a_fleet(tmp_path, monkeypatch):
    monkeypatch.setattr(fleet, "SIZE_FILE", tmp_path / "hosts")
    assert fleet.hosts() == []
    (tmp_path / "hosts").write_text("2\n")
    assert fleet.hosts() == ["10.77.0.11", "10.77.0.12"]


@pytest.mark.parametrize("hosts", [0, 5])
def test_testbed_up_refuses_a_fleet_size_out_of_range_before_starting_anything(hosts, monkeypatch):
    started = []
    monkeypatch.setattr(testbed, "up", lambda *a, **k: started.append("single"))
    monkeypatch.setattr(fleet, "up", lambda *a, **k: started.append("fleet"))
    with pytest.raises(Exit) as caught:
        repo_tasks.testbed_up(Context(), hosts=hosts)
    assert caught.value.code == 1 and "--hosts takes 1 to 4" in str(caught.value.message)
    assert started == []


@pytest.mark.parametrize("hosts, want", [(1, ["single"]), (3, [("fleet", 3)])])
def test_testbed_up_starts_the_fleet_only_when_asked(hosts, want, monkeypatch):
    started = []
    monkeypatch.setattr(testbed, "up", lambda *a, **k: started.append("single"))
    monkeypatch.setattr(fleet, "up", lambda n, *a, **k: started.append(("fleet", n)))
    repo_tasks.testbed_up(Context(), hosts=hosts)
    assert started == want


def test_a_host_is_found_by_its_address():
    assert fleet.of("10.77.0.14") == fleet.host(4)
    assert fleet.path_on("10.77.0.12", "/srv/example/state") == fleet.FLEET_DIR / "h2/srv/example/state"
    assert fleet.front() == ("127.0.0.1", 8090)
    for stranger in ("127.0.0.1", "10.77.0.15", "10.77.0.1"):
        with pytest.raises(testbed.TestbedError, match="not a host of the fleet"):
            fleet.of(stranger)


def test_the_fleet_env_points_every_hosts_web_at_the_fleets_one_database():
    config = configuration.load(REPO, "fleet")
    model = configuration.compose_model(config.compose_files)
    url = model["services"]["web"]["environment"]["REDIS_URL"]
    assert url == f"redis://{fleet.GATEWAY}:{fleet.DB_PORT}/0"


def test_a_hosts_nginx_is_the_single_hosts_plus_a_server_answering_on_the_site_port():
    config = fleet.nginx_config(fleet.host(3))
    single = testbed._nginx_config()
    assert config.startswith(single.rstrip()[:-1])  # the same, up to the end of http {}
    sites = config.index(f"include {testbed.NGINX_SITE_DIR}/*.conf;")
    placeholder = config.index("listen 8080;")
    assert sites < placeholder  # the sites first: the example's default_server wins once deployed
    assert "default_server" not in config
    assert 'return 404 "no site on h3\\n";' in config
