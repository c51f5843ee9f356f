"""`python -m deploytasks`: the `deploytasks` command, for environments without its script on PATH."""
from __future__ import annotations

import sys

from .cli import main

sys.exit(main())
