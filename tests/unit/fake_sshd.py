"""An SSH server inside the test process (paramiko's server mode), reached through a proxy that
can cut the network silently: after `cut()`, bytes are swallowed in both directions while
both TCP connections stay open, as when a route or a NAT entry disappears. No sshd, no root.

Commands (the last word of the line the client sends decides, so a `timeout -k ...` wrapper
changes nothing): `hang` never ends; `sleep-N` answers after N seconds; anything else answers
"ok" at once. Every command line received is kept in `commands`.
"""
from __future__ import annotations

import re
import socket
import threading
import time

import paramiko

HOST_KEY = paramiko.ECDSAKey.generate()


class _Server(paramiko.ServerInterface):
    def __init__(self, sshd: FakeSSHD):
        self.sshd = sshd

    def get_allowed_auths(self, username):
        return "publickey"

    def check_auth_publickey(self, username, key):
        return paramiko.AUTH_SUCCESSFUL

    def check_channel_request(self, kind, chanid):
        return paramiko.OPEN_SUCCEEDED

    def check_channel_exec_request(self, channel, command):
        command = command.decode()
        self.sshd.commands.append(command)
        threading.Thread(target=self.sshd.execute, args=(channel, command), daemon=True).start()
        return True


class FakeSSHD:
    def __init__(self):
        self.commands: list[str] = []
        self._cut = threading.Event()
        self._sockets: list[socket.socket] = []
        self._transports: list[paramiko.Transport] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def known_hosts_line(self) -> str:
        return f"[127.0.0.1]:{self.port} {HOST_KEY.get_name()} {HOST_KEY.get_base64()}\n"

    def cut(self) -> None:
        self._cut.set()

    def close(self) -> None:
        self.listener.close()
        for transport in self._transports:
            transport.close()
        for sock in self._sockets:
            sock.close()

    def execute(self, channel, command: str) -> None:
        time.sleep(0.05)  # the exec request is answered first
        words = command.replace("&& true", "").split()
        last = words[-1] if words else ""
        if last == "hang":
            return
        sleep = re.fullmatch(r"sleep-([0-9.]+)", last)
        if sleep:
            time.sleep(float(sleep.group(1)))
        channel.sendall(b"ok\n")
        channel.send_exit_status(0)
        channel.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            ours, theirs = socket.socketpair()
            self._sockets += [client, ours, theirs]
            for source, sink in ((client, ours), (ours, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()
            transport = paramiko.Transport(theirs)
            transport.add_server_key(HOST_KEY)
            transport.start_server(server=_Server(self))
            self._transports.append(transport)

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                return
            if not data:
                return
            if not self._cut.is_set():
                try:
                    sink.sendall(data)
                except OSError:
                    return
