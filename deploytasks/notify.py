"""Notifications: one JSON POST to WEBHOOK_URL when a deploy or rollback starts, succeeds or fails.

The body is a message in Slack (`text`) and in Discord (`content`), each of which ignores the
other's field, plus the same facts as data (`deploytasks`) for a receiver of your own. Rich
formatting is left out on purpose: Slack's `attachments` is Discord's field for file uploads, and
each side's blocks or embeds are noise to the other, so one body serves both.

Delivery is best effort: a receiver that is down, slow or refusing is one warning line, never a
failed deploy. The URL is a secret (its path holds the token): nothing here ever prints it, and
a failure is described in words of our own, not in the HTTP library's (which quote the URL).
"""
from __future__ import annotations

from collections.abc import Mapping

import requests

from . import __version__

START, SUCCESS, FAILURE = "start", "success", "failure"
TIMEOUT = 5.0  # seconds: a webhook that does not answer by then is given up on
CONTENT_MAX = 2000  # Discord refuses a longer `content`
SHORT = 12  # SHA characters a message shows


def message(event: str, facts: Mapping) -> str:
    """The one line a person reads in the channel."""
    what = f"{facts['kind']} `{_short(facts.get('sha'))}` to {facts['env']} ({facts['app']})"
    hosts = ", ".join(facts.get("hosts") or ())
    if event == START:
        was = f" (was `{_short(facts['previous_sha'])}`)" if facts.get("previous_sha") else ""
        text = f"{what} started on {hosts} by {facts.get('user') or 'someone'}{was}"
    elif event == SUCCESS:
        text = f"{what} succeeded on {hosts} in {facts.get('duration_s', 0):.1f}s{_figures(facts.get('probe'))}"
    else:
        outcomes = ", ".join(f"{host} {outcome}" for host, outcome in (facts.get("outcomes") or {}).items())
        text = (f"{what} FAILED after {facts.get('duration_s', 0):.1f}s: {facts.get('error') or 'failed'}"
                f"{f'; {outcomes}' if outcomes else ''}{_figures(facts.get('probe'))}")
    return text if len(text) <= CONTENT_MAX else text[:CONTENT_MAX - 1] + "…"


def payload(event: str, facts: Mapping) -> dict:
    """The JSON body: the message for Slack and Discord, and the facts as data."""
    line = message(event, facts)
    return {"text": line, "content": line, "deploytasks": {"event": event, **facts}}


def send(url: str, body: dict, timeout: float = TIMEOUT) -> str:
    """POST `body` to `url`; "" once delivered (any 2xx), else why not, never naming the URL."""
    try:
        response = requests.post(url, json=body, timeout=timeout, allow_redirects=False,
                                 headers={"User-Agent": f"deploytasks/{__version__}"})
    except requests.Timeout:
        return f"no answer within {timeout:g}s"
    except requests.ConnectionError:
        return "could not connect"
    except requests.RequestException as error:
        return f"could not send ({error.__class__.__name__})"
    if not 200 <= response.status_code < 300:
        return f"answered HTTP {response.status_code}"
    return ""


def _short(sha: str | None) -> str:
    return (sha or "?")[:SHORT]


def _figures(probe: Mapping | None) -> str:
    """The in-deploy probe's figures, when the deploy measured any: ` (probe: failed 0, max_gap_s 0.02)`."""
    if not probe:
        return ""
    return " (probe: " + ", ".join(f"{name} {value}" for name, value in probe.items()) + ")"
