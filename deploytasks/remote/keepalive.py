"""Noticing a dead SSH peer in seconds: keepalives the host must answer, and a watchdog that
closes the connection when it stops answering.

paramiko's own keepalive (`Transport.set_keepalive`) only sends: nothing waits for an answer,
so over a silently cut network the connection looks alive until TCP gives up (many minutes)
and a running command waits on it as long. Here a global request with want_reply goes out
every `interval` seconds (any answer counts: OpenSSH refuses a request it does not know, and
the refusal is an answer); when one is not answered within `interval * count` seconds, the
transport is closed, which ends the running command's channel at once and fails every later
call (FabricTransport checks `dead`). The probes also keep NAT and firewall state alive.
"""
from __future__ import annotations

import threading

REQUEST = "keepalive@openssh.com"  # what OpenSSH's ServerAliveInterval sends


class Keepalive:
    """Watches one paramiko Transport (anything with global_request, is_active and close)."""

    def __init__(self, transport, interval: float, count: int):
        self.transport, self.interval, self.count = transport, interval, count
        self.dead = ""  # why the connection was declared dead, once it was
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="ssh-keepalive", daemon=True)

    def start(self) -> Keepalive:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()

    def _watch(self) -> None:
        patience = self.interval * self.count
        while not self._stopped.wait(self.interval):
            if not self.transport.is_active():
                return
            answered = threading.Event()
            # global_request(wait=True) returns on the answer or once the transport closes, never
            # on a timeout: it waits in a thread of its own, and this one keeps the time
            threading.Thread(target=self._probe, args=(answered,), name="ssh-keepalive-probe", daemon=True).start()
            if not answered.wait(patience) and not self._stopped.is_set():
                self.dead = (f"the host stopped answering: no answer to an SSH keepalive within {patience:g}s "
                             f"(SSH_ALIVE_SECONDS={self.interval:g} x SSH_ALIVE_COUNT={self.count}); "
                             "the connection was closed")
                self.transport.close()
                return

    def _probe(self, answered: threading.Event) -> None:
        try:
            self.transport.global_request(REQUEST, wait=True)
        except Exception:  # noqa: BLE001 - a transport failing under us is the watch loop's business
            return
        answered.set()
