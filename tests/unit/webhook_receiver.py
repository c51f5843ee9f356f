"""A real HTTP server on 127.0.0.1 standing in for a webhook (Slack, Discord, a team's own)."""
from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOKEN = "T0SECRET/B0SECRET/XXXXwebhooktokenXXXX"  # the secret part of a webhook URL: never printed


class Receiver:
    """A real HTTP server on 127.0.0.1: every POST's path and JSON body, answered with `status`."""

    def __init__(self):
        self.received: list[tuple[str, dict]] = []
        self.status = 204
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.received.append((self.path, json.loads(body)))
                self.send_response(receiver.status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/services/{TOKEN}"

    @property
    def events(self) -> list[str]:
        return [body["deploytasks"]["event"] for _, body in self.received]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def closed_port() -> int:
    """A port nothing listens on: connecting to it is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
