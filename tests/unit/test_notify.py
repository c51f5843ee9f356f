"""notify: the webhook's body (Slack- and Discord-compatible) and its delivery to a real local server."""
from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from webhook_receiver import TOKEN, Receiver, closed_port

from deploytasks import notify

FACTS = {"kind": "deploy", "app": "shop", "env": "production", "id": "0123456789ab", "sha": "b" * 40,
         "hosts": ["app1", "app2"], "previous_sha": "a" * 40, "previous_shas": {"app1": "a" * 40, "app2": "a" * 40},
         "colour": "green", "user": "alice@laptop"}


@pytest.fixture
def receiver():
    server = Receiver()
    yield server
    server.close()


def test_start_names_what_goes_where_and_what_it_replaces():
    assert notify.message(notify.START, FACTS) == (
        "deploy `bbbbbbbbbbbb` to production (shop) started on app1, app2 by alice@laptop (was `aaaaaaaaaaaa`)")
    first = {**FACTS, "previous_sha": None}
    assert notify.message(notify.START, first).endswith("by alice@laptop")


def test_success_has_the_duration_and_the_probes_figures_when_there_are_some():
    done = {**FACTS, "duration_s": 42.14, "outcome": "ok", "outcomes": {"app1": "ok", "app2": "ok"}, "probe": {}}
    assert notify.message(notify.SUCCESS, done) == "deploy `bbbbbbbbbbbb` to production (shop) succeeded on app1, " \
                                                   "app2 in 42.1s"
    measured = {**done, "probe": {"failed": 0, "max_gap_s": 0.02}}
    assert notify.message(notify.SUCCESS, measured).endswith("in 42.1s (probe: failed 0, max_gap_s 0.02)")


def test_failure_has_the_error_and_each_hosts_outcome():
    failed = {**FACTS, "kind": "rollback", "duration_s": 3, "outcome": "failed", "error": "app2: not ready after 8s",
              "outcomes": {"app1": "rolled back", "app2": "failed"}}
    assert notify.message(notify.FAILURE, failed) == (
        "rollback `bbbbbbbbbbbb` to production (shop) FAILED after 3.0s: app2: not ready after 8s; app1 rolled back, "
        "app2 failed")


def test_the_body_reads_in_slack_and_discord_and_carries_the_facts():
    body = notify.payload(notify.START, FACTS)
    assert set(body) == {"text", "content", "deploytasks"}
    assert body["text"] == body["content"] == notify.message(notify.START, FACTS)
    assert body["deploytasks"] == {"event": "start", **FACTS}


def test_a_long_message_is_cut_to_what_discord_accepts():
    many = {**FACTS, "hosts": [f"app{i}.example.com" for i in range(200)]}
    text = notify.message(notify.START, many)
    assert len(text) == notify.CONTENT_MAX and text.endswith("…")


def test_send_posts_the_json_to_the_url(receiver):
    body = notify.payload(notify.START, FACTS)
    assert notify.send(receiver.url, body) == ""
    assert receiver.received == [(f"/services/{TOKEN}", body)]


@pytest.mark.parametrize("status", [400, 404, 500])
def test_an_error_answer_is_reported_by_its_status(receiver, status):
    receiver.status = status
    assert notify.send(receiver.url, {"text": "x"}) == f"answered HTTP {status}"


def test_a_closed_port_is_could_not_connect_and_never_names_the_url():
    url = f"http://127.0.0.1:{closed_port()}/services/{TOKEN}"
    why = notify.send(url, {"text": "x"})
    assert why == "could not connect" and TOKEN not in why


def test_a_webhook_that_never_answers_is_given_up_on_at_the_timeout():
    release = threading.Event()

    class Silent(BaseHTTPRequestHandler):
        def do_POST(self):
            release.wait(10)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Silent)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        started = time.monotonic()
        why = notify.send(f"http://127.0.0.1:{server.server_address[1]}/{TOKEN}", {"text": "x"}, timeout=0.5)
        assert why == "no answer within 0.5s" and time.monotonic() - started < 3
    finally:
        release.set()
        server.shutdown()
        server.server_close()
