"""Git SHAs as users type them: 7 to 40 hex characters, abbreviations included."""
from __future__ import annotations

import re

from .errors import ConfigError

SHA_RE = re.compile(r"^[0-9a-f]{7,40}$")


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
    short, full = sorted((a, b), key=len)
    return a == b or (len(short) >= 7 and full.startswith(short))
