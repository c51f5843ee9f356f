"""Git SHAs as users type them: 7 to 40 hex characters, abbreviations included.

An abbreviation is expanded to the full SHA before anything connects (images are tagged by the
full SHA; releases and history are named by it): `expand` picks it among the names a registry or
a repository knows.
"""
from __future__ import annotations

import re
from collections.abc import Iterable

from .errors import ConfigError

SHA_RE = re.compile(r"^[0-9a-f]{7,40}$")
FULL_RE = re.compile(r"^[0-9a-f]{40}$")
SHOWN = 5  # matches named in an ambiguity error


def check(sha: str | None) -> str:
    sha = (sha or "").strip().lower()
    if not SHA_RE.match(sha):
        raise ConfigError(f"--sha {sha!r} is not a git SHA (7 to 40 hex characters)")
    return sha


def same(a: str | None, b: str | None) -> bool:
    """Equal, or one an abbreviation (7+ characters) of the other: `--sha 3f2c1e9` is the
    release whose /version answers the full SHA."""
    if not a or not b:
        return False
    short, whole = sorted((a, b), key=len)
    return a == b or (len(short) >= 7 and whole.startswith(short))


def full(sha: str) -> bool:
    return bool(FULL_RE.match(sha))


def starting(prefix: str, names: Iterable[str]) -> list[str]:
    """The full SHAs among `names` (registry tags, say: `latest` and `v1.2` are not SHAs) that
    start with `prefix`."""
    return sorted({name for name in names if full(name) and name.startswith(prefix)})


def listed(matches: list[str]) -> str:
    """The first few of `matches`, and how many more there are."""
    more = len(matches) - SHOWN
    return ", ".join(matches[:SHOWN]) + (f" and {more} more" if more > 0 else "")


def expand(prefix: str, tags: Iterable[str], image: str) -> str:
    """The one full SHA `prefix` abbreviates among the tags of `image`; a full SHA is itself."""
    if full(prefix):
        return prefix
    matches = starting(prefix, tags)
    if not matches:
        raise ConfigError(f"no image of {image} is tagged with a SHA starting {prefix}; nothing was changed")
    if len(matches) > 1:
        raise ConfigError(f"--sha {prefix} is ambiguous: {len(matches)} images of {image} are tagged with a SHA "
                          f"starting with it ({listed(matches)}); give more characters of the SHA")
    return matches[0]
