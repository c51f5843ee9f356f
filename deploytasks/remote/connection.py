"""Opening SSH connections the way a deploy tool must: known host keys only, bounded waits.

Fabric trusts the first key a host presents unless told otherwise; a deploy tool must not.
An unknown key is refused with the exact command to accept it after checking it.
"""
from __future__ import annotations

import socket

import paramiko
from fabric import Config as FabricConfig
from fabric import Connection

from ..config import Config
from ..errors import ConnectError
from .fabric_transport import FabricTransport
from .keepalive import Keepalive


def connect(config: Config, host: str, *, accept_new_host_key: bool = False) -> FabricTransport:
    fabric_config = FabricConfig(overrides={
        "run": {"in_stream": False},
        "load_ssh_configs": False,
        "timeouts": {"connect": config.connect_timeout},
    })
    connect_kwargs = {"banner_timeout": config.connect_timeout, "auth_timeout": config.connect_timeout,
                      "look_for_keys": not config.ssh_key, "allow_agent": not config.ssh_key}
    if config.ssh_key:
        connect_kwargs["key_filename"] = [config.ssh_key]
    conn = Connection(host, user=config.ssh_user, port=config.ssh_port, config=fabric_config,
                      connect_timeout=config.connect_timeout, connect_kwargs=connect_kwargs)
    _check_host_keys(conn, config, accept_new_host_key)
    where = f"{config.ssh_user}@{host}:{config.ssh_port}"
    try:
        conn.open()
    except paramiko.BadHostKeyException as exc:
        raise ConnectError(f"{where}: host key CHANGED (not the one in {config.known_hosts}); "
                           f"refusing to connect: {exc}") from None
    except paramiko.SSHException as exc:
        if "not found in known_hosts" in str(exc):
            raise ConnectError(_unknown_key_message(config, host)) from None
        if isinstance(exc, paramiko.AuthenticationException):
            raise ConnectError(f"{where}: authentication refused (SSH_KEY={config.ssh_key or 'agent/default keys'})") from None
        raise ConnectError(f"{where}: SSH failed: {exc}") from None
    except (socket.timeout, TimeoutError):
        raise ConnectError(f"{where}: unreachable: no answer within CONNECT_TIMEOUT={config.connect_timeout:g}s") from None
    except (OSError, paramiko.ssh_exception.NoValidConnectionsError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ConnectError(f"{where}: unreachable: {reason}") from None
    # notice a dead connection in seconds instead of waiting on it until TCP gives up
    return FabricTransport(conn, Keepalive(conn.transport, config.ssh_alive_seconds, config.ssh_alive_count).start())


class _AppendNewKey(paramiko.MissingHostKeyPolicy):
    """--accept-new-host-key: add the one new line to KNOWN_HOSTS, leaving the rest of the file
    as it is (paramiko's AutoAddPolicy rewrites it and drops lines it cannot parse)."""

    def __init__(self, path: str):
        self.path = path

    def missing_host_key(self, client, hostname, key):
        with open(self.path, "a") as known:
            known.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")


def _check_host_keys(conn: Connection, config: Config, accept_new: bool) -> None:
    """Trust exactly KNOWN_HOSTS (not ~/.ssh/known_hosts as well); add to it only when asked."""
    client = paramiko.SSHClient()
    try:
        client.load_system_host_keys(config.known_hosts)  # read only: never rewritten
    except FileNotFoundError:
        pass  # no file: every key is unknown
    client.set_missing_host_key_policy(_AppendNewKey(config.known_hosts) if accept_new else paramiko.RejectPolicy())
    conn.client = client


def _unknown_key_message(config: Config, host: str) -> str:
    entry = host if config.ssh_port == 22 else f"[{host}]:{config.ssh_port}"
    return (f"{host}:{config.ssh_port}: host key unknown: {entry} is not in KNOWN_HOSTS={config.known_hosts}. "
            f"Check the key with the host's owner, then add it: "
            f"ssh-keyscan -p {config.ssh_port} {host} >> {config.known_hosts} "
            f"(or rerun once with --accept-new-host-key to trust and save the key it presents)")
