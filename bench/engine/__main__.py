"""`python -m bench.engine`: one engine's worker process (started by the parent)."""

from __future__ import annotations

import sys

from .worker import worker_cli

sys.exit(worker_cli())
